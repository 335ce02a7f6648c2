"""Where a kernel entry point runs, the check that names the fix, and work-arounds for interpreter bugs.

The dispatch rule of every kernel package (:func:`use_triton`): CUDA tensors run the Triton kernel; CPU tensors
run the plain-PyTorch reference (``reference.py``), unless Triton's interpreter defined this process's kernels
(:func:`interpreter_active`), in which case the Triton kernel runs in the interpreter (slow; tests and CPU
machines). Nothing in this package reads the environment: whether the interpreter is on is Triton's own
decision, taken per kernel at ``@triton.jit`` time from ``triton.knobs.runtime.interpret`` (the
``TRITON_INTERPRET`` variable), and read back here from the kernel object Triton made.

:func:`require_launchable` turns Triton's "0 active drivers" into a :class:`TritonUnavailableError` that says
what to do. The interpreter patches are applied only in interpreter mode; compiled (GPU) kernels are unaffected.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from vortex_torch.abs.errors import VortexError


class TritonUnavailableError(VortexError, RuntimeError):
    """A Vortex Triton kernel was called on tensors it cannot run on (CPU tensors, no Triton interpreter)."""


@triton.jit
def _probe():  # never launched: defined only to see how Triton defines kernels in this process
    pass


#: Every kernel of vortex_torch.kernels is defined (``@triton.jit``) while the package is imported, right after
#: this module, so the probe was made the way they were: an ``InterpretedFunction`` exactly when Triton's
#: interpreter was on at that moment. Fixed for the life of the process, like the kernels themselves.
_INTERPRETED = isinstance(_probe, InterpretedFunction)


def interpreter_active() -> bool:
    """Whether Triton's interpreter runs this process's Vortex kernels (it was on when they were defined)."""
    return _INTERPRETED


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether a kernel entry point runs its Triton kernel for ``tensor`` rather than its plain-PyTorch
    reference: a CUDA tensor, or any tensor when :func:`interpreter_active` (the module docstring's rule)."""
    return tensor.is_cuda or _INTERPRETED


def require_launchable(kernel: object, tensor: torch.Tensor, api: str, reference: str) -> None:
    """Raise :class:`TritonUnavailableError` unless ``kernel`` can run on ``tensor``'s device: a CUDA tensor,
    or a kernel defined under Triton's interpreter. ``api`` is the public function called, ``reference`` its
    plain-PyTorch twin (named in the fix)."""
    if tensor.is_cuda or isinstance(kernel, InterpretedFunction):
        return
    if triton.knobs.runtime.interpret:  # Triton's own switch, on now: it was off when the kernel was defined
        why = (
            "TRITON_INTERPRET=1 is set, but only after vortex_torch.kernels was imported (Triton reads it when a "
            "kernel is defined)"
        )
    else:
        why = "Triton compiles for CUDA GPUs only; on a CPU its interpreter must run the kernel"
    raise TritonUnavailableError(
        f"{api} got {tensor.device.type} tensors: {why}. Fix: move the tensors to a CUDA GPU; or set "
        f"TRITON_INTERPRET=1 in the environment before Python starts (slow; for tests and CPU machines); or call "
        f"{reference}, the plain-PyTorch reference with the same semantics."
    )


def _fix_interpreter() -> None:
    """Work around four Triton-interpreter bugs (CPU tests only; compiled kernels are unaffected). Idempotent.

    * Scalars are shape-``[1]`` arrays converted with ``int(array)``, which numpy >= 2.4 rejects, so
      ``for i in range(lo, hi)`` with runtime bounds fails (triton-lang/triton#9171, fixed after 3.6).
    * bf16 is stored as ``uint16`` and ``tl.dot`` multiplies the bit patterns (triton-lang/triton#11584;
      the interpreter does not support bf16 math). Upcast bf16 dot operands to fp32, exact as on the GPU.
    * fp32 -> bf16 casts truncate (the default rounding mode is passed as None and the mantissa is cut),
      where the GPU rounds to nearest even (``cvt.rn.bf16.f32``). Round to nearest even here too.
    * fp32 -> fp8 (e4m3fn, e5m2) casts lose the carry of a mantissa that rounds up into the next binade (a value
      just below 32 becomes 16) and round subnormals differently from the GPU's ``cvt.rn.satfinite``. Convert with
      torch (round to nearest even) instead; out-of-range values are clamped by the kernels before the cast.
    """
    import numpy as np
    from triton.runtime import interpreter

    if getattr(interpreter, "_vortex_fixed", False):
        return
    interpreter._vortex_fixed = True
    patch_tensor = interpreter._patch_lang_tensor
    create_dot = interpreter.InterpreterBuilder.create_dot

    def patched_tensor(tensor: Any, scope: Any) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    def as_fp32(x: Any) -> Any:
        if x.dtype.scalar != tl.bfloat16:
            return x
        return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def patched_dot(self: Any, a: Any, b: Any, *args: Any) -> Any:
        return create_dot(self, as_fp32(a), as_fp32(b), *args)

    cast_impl = interpreter.InterpreterBuilder.cast_impl
    fp_to_fp = interpreter.InterpreterBuilder.create_fp_to_fp

    def to_bf16_rtne(src: Any) -> Any:
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # ties to even
        nan = np.isnan(src.data)
        rounded[nan] = 0x7FC0
        return interpreter.TensorHandle(rounded, tl.bfloat16)

    def is_f32_to_bf16(src: Any, dst_type: Any) -> bool:
        return bool(src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16)

    fp8_torch = {tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2}

    def is_f32_to_fp8(src: Any, dst_type: Any) -> bool:
        return bool(src.dtype.scalar == tl.float32 and dst_type.scalar in fp8_torch)

    def to_fp8_rtne(src: Any, dst_type: Any) -> Any:
        x = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
        out = x.to(fp8_torch[dst_type.scalar]).view(torch.uint8).numpy()
        return interpreter.TensorHandle(out, dst_type.scalar)

    def patched_cast(self: Any, src: Any, dst_type: Any) -> Any:
        if is_f32_to_fp8(src, dst_type):
            return to_fp8_rtne(src, dst_type)
        return to_bf16_rtne(src) if is_f32_to_bf16(src, dst_type) else cast_impl(self, src, dst_type)

    def patched_fp_to_fp(self: Any, src: Any, dst_type: Any, rounding_mode: Any) -> Any:
        rtne = rounding_mode in (None, interpreter._ir.ROUNDING_MODE.RTNE)
        if is_f32_to_bf16(src, dst_type) and rtne:
            return to_bf16_rtne(src)
        if is_f32_to_fp8(src, dst_type) and rtne:
            return to_fp8_rtne(src, dst_type)
        return fp_to_fp(self, src, dst_type, rounding_mode)

    interpreter._patch_lang_tensor = patched_tensor
    interpreter.InterpreterBuilder.create_dot = patched_dot
    interpreter.InterpreterBuilder.cast_impl = patched_cast
    interpreter.InterpreterBuilder.create_fp_to_fp = patched_fp_to_fp


if _INTERPRETED:
    _fix_interpreter()
