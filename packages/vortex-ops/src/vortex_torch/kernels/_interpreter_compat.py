"""Work-arounds for Triton-interpreter bugs, so CPU tests (``TRITON_INTERPRET=1``) run the real kernels.

Compiled (GPU) kernels are unaffected: the patch is applied only in interpreter mode.
"""

from __future__ import annotations

import os
from typing import Any

import triton.language as tl


def _fix_interpreter() -> None:
    """Work around two Triton-interpreter bugs (CPU tests only; compiled kernels are unaffected). Idempotent.

    * Scalars are shape-``[1]`` arrays converted with ``int(array)``, which numpy >= 2.4 rejects, so
      ``for i in range(lo, hi)`` with runtime bounds fails (triton-lang/triton#9171, fixed after 3.6).
    * bf16 is stored as ``uint16`` and ``tl.dot`` multiplies the bit patterns (triton-lang/triton#11584;
      the interpreter does not support bf16 math). Upcast bf16 dot operands to fp32, exact as on the GPU.
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

    interpreter._patch_lang_tensor = patched_tensor
    interpreter.InterpreterBuilder.create_dot = patched_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter()


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter()
