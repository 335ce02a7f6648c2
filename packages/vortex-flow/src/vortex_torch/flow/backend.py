"""Where Vortex's Triton kernels run in this process: on CUDA, or in Triton's interpreter on a CPU.

Nothing here runs on import. A program that runs kernels (the ``vortex check`` worker, a flow author's
``conftest.py``) calls :func:`use_triton_interpreter_without_cuda` once, before anything imports Triton:
Triton decides at ``@triton.jit`` time whether a kernel is interpreted (from ``TRITON_INTERPRET``), and vortex-ops'
kernel dispatch follows the decision Triton took for its kernels (``vortex_torch.kernels.interpreter_active``),
so the switch has to be in the environment before the first kernel module is imported. This module is the only
library code that sets it, and only when asked; elsewhere library code only checks
(:func:`require_kernel_backend`) and says what to do.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

from vortex_torch.abs.errors import VortexError

INTERPRET_ENV = "TRITON_INTERPRET"

Backend = Literal["cuda", "interpreter"]

__all__ = [
    "INTERPRET_ENV",
    "KernelBackendError",
    "require_kernel_backend",
    "use_triton_interpreter_without_cuda",
]


class KernelBackendError(VortexError):
    """Triton kernels cannot run here: no CUDA and Triton's interpreter is not switched on (or too late)."""


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def use_triton_interpreter_without_cuda() -> Backend:
    """Return ``"cuda"`` when a CUDA device is present; otherwise switch Triton's interpreter on for this
    process and its children (``TRITON_INTERPRET=1``) and return ``"interpreter"``.

    Raises :class:`KernelBackendError` when there is no CUDA and Triton was imported before the switch (kernels
    defined by then would not be interpreted).
    """
    if _cuda():
        return "cuda"
    if os.environ.get(INTERPRET_ENV) != "1":
        if "triton" in sys.modules:
            raise KernelBackendError(
                "no CUDA device, and Triton was imported before its interpreter was switched on, so Vortex's "
                "kernels cannot run in this process. Fix: call vortex_torch.flow.backend."
                "use_triton_interpreter_without_cuda() before importing anything that imports triton (e.g. at "
                f"the top of conftest.py), or set {INTERPRET_ENV}=1 in the environment."
            )
        os.environ[INTERPRET_ENV] = "1"
    return "interpreter"


def require_kernel_backend(what: str) -> Backend:
    """Raise :class:`KernelBackendError` naming ``what`` unless CUDA is present or Triton's interpreter defined
    Vortex's kernels (imports them, and so Triton, when there is no CUDA)."""
    if _cuda():
        return "cuda"
    from vortex_torch.kernels import interpreter_active

    if interpreter_active():
        return "interpreter"
    raise KernelBackendError(
        f"{what} runs Triton kernels; there is no CUDA device and Triton's interpreter did not define Vortex's "
        "kernels (it was off when vortex_torch.kernels was imported). Fix: call "
        "vortex_torch.flow.backend.use_triton_interpreter_without_cuda() before anything imports triton (e.g. "
        f"at the top of conftest.py), or set {INTERPRET_ENV}=1 in the environment. `vortex check` does this "
        "itself."
    )
