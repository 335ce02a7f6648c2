"""Fused Triton kernels, each beside the plain-PyTorch reference (``reference.py``) that defines it."""

from . import _interpreter_compat as _interpreter_compat
from ._interpreter_compat import TritonUnavailableError, interpreter_active, use_triton

__all__ = ["TritonUnavailableError", "interpreter_active", "use_triton"]
