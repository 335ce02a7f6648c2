"""fp8 KV caches and fp8 aux fields: the one rule every kernel and reference follows.

**K/V (SGLang's convention).** With ``--kv-cache-dtype fp8_e4m3`` / ``fp8_e5m2`` SGLang stores every key as
``stored = key / k_scale`` cast to fp8 (values ``v_scale`` likewise), with one scalar scale per layer
(``RadixAttention.k_scale_float``; ``None`` means 1.0). So the value a kernel must use is

    value = stored.to(fp32) * scale

:func:`dequantize` is that rule in plain PyTorch (the ``reference.py`` references and the reference executor use
it); the Triton kernels apply it in registers (attention folds ``k_scale`` into the softmax scale and
``v_scale`` into the output, which is the same product up to fp32 rounding). A scale only applies to an fp8
buffer: SGLang writes a 16/32-bit cache unscaled, so scales given with a bf16 buffer are ignored.

In kernels a scale is a ``[1]`` fp32 device tensor read in-kernel (so CUDA graphs capture its address, not its
value); :func:`scale_tensor` turns a float / tensor / None into one.

**Aux fields.** ``VortexConfig.dtype = "fp8_e4m3"`` (or ``"fp8_e5m2"``) stores summaries in fp8 with no scale:
a store saturates to the largest finite value (±448 for e4m3, ±57344 for e5m2) and rounds to nearest
(:func:`saturate_cast`), so a summary of keys that fit in a bf16 cache never turns into inf/NaN. Summaries
of keys (means, mins/maxes, norms of a block) are in the keys' range, where e4m3 keeps 3 mantissa bits
(relative error <= 2^-4) down to 2^-6 and e5m2 2 bits down to 2^-14.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: fp8 dtypes Vortex reads and writes (SGLang's ``fp8_e4m3`` -> float8_e4m3fn, ``fp8_e5m2`` -> float8_e5m2)
FP8_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e4m3fn, torch.float8_e5m2)
#: largest finite value of each fp8 dtype (a saturating store clamps to it)
FP8_MAX: dict[torch.dtype, float] = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}

Scale = float | torch.Tensor | None


def is_fp8(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is one of :data:`FP8_DTYPES`."""
    return dtype in FP8_DTYPES


def scale_value(scale: Scale) -> float | torch.Tensor:
    """``scale`` as a multiplier: 1.0 for None, a float, or a 0-d fp32 tensor (never read on the host)."""
    if scale is None:
        return 1.0
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"a KV scale must be one scalar per layer, got a tensor of shape {tuple(scale.shape)}")
        return scale.reshape(()).float()
    return float(scale)


def dequantize(stored: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Plain-PyTorch dequantisation of K/V: ``stored.float() * scale`` for fp8 ``stored``, ``stored.float()``
    otherwise (any shape; fp32 result)."""
    x = stored.float()
    if not is_fp8(stored.dtype):
        return x
    s = scale_value(scale)
    return x * (s.to(x.device) if isinstance(s, torch.Tensor) else s)


def scale_tensor(scale: Scale, device: torch.device | str) -> torch.Tensor:
    """``scale`` as the ``[1]`` fp32 tensor on ``device`` that kernels read (a view when it already is one;
    otherwise a new tensor: give kernels captured in a CUDA graph a tensor made once)."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"a KV scale must be one scalar per layer, got a tensor of shape {tuple(scale.shape)}")
        t = scale.reshape(1)
        if t.dtype != torch.float32 or t.device != torch.device(device):
            t = t.to(device=device, dtype=torch.float32)
        return t
    return torch.full((1,), 1.0 if scale is None else float(scale), dtype=torch.float32, device=device)


def saturate_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` stored in ``dtype``: fp8 clamps to ``±FP8_MAX`` first (a saturating store, as the generated
    kernels do); other dtypes are a plain cast."""
    if is_fp8(dtype):
        m = FP8_MAX[dtype]
        return x.float().clamp(-m, m).to(dtype)
    return x.to(dtype)


@triton.jit
def store_cast(x, ptr):
    """Generated kernels' cast of an fp32 tile ``x`` to the element type of ``ptr`` (the field it is stored
    into): fp8 saturates to ``±FP8_MAX`` first (:func:`saturate_cast`); a compile-time branch, so any other
    dtype is the plain ``x.to(...)``."""
    ty: tl.constexpr = ptr.dtype.element_ty
    if ty == tl.float8e4nv:
        x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    elif ty == tl.float8e5:
        x = tl.minimum(tl.maximum(x, -57344.0), 57344.0)
    return x.to(ty)
