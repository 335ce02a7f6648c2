"""Synchronisation between the programs of one launch (the hand-off where a row's last program takes over what
the others stored: the sparse-decode split merges, the compiled indexer's later stages), and between one launch
and the next (programmatic dependent launch)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def release_fence(FENCE: tl.constexpr):
    """Every thread of the program: ``fence.acq_rel.gpu`` (CUDA's ``__threadfence``), so the global stores it made
    have reached L2 before a CTA barrier and one thread's hand-off atomic. Needed because the program that takes
    over reads those values through L2 (``.cg``, to never see a stale L1 line another CTA of its SM cached),
    and a CTA barrier alone orders them only as seen through the L1. ``FENCE=False`` (Triton's interpreter,
    which runs programs one after the other and has no inline PTX) emits nothing."""
    if FENCE:
        tl.inline_asm_elementwise(
            "fence.acq_rel.gpu;\n\tmov.b32 $0, $1;", "=r,r", [tl.zeros([1024], dtype=tl.int32)],
            dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip


# -- between launches: Hopper programmatic dependent launch (PDL) ------------------------------------------------


@triton.jit
def dependent_launch_prologue(PDL: tl.constexpr):
    """First statement of a kernel that may be launched with ``enable_pdl`` (see :func:`pdl_launch_options`).

    ``griddepcontrol.wait`` blocks until the previous kernel in the stream has completed and its memory is
    visible; ``griddepcontrol.launch_dependents`` then lets the next kernel, if it is also launched with PDL,
    be scheduled while this one runs. Nothing may touch global memory before the wait: with PDL this program
    can start while the previous kernel is still running. The next kernel's own wait covers everything this
    one writes, so signalling at the start is safe; what it gains is the next launch's latency and ramp-up,
    hidden behind this kernel's work. ``PDL=False`` (the default launch, and Triton's interpreter, which has
    no inline PTX) emits nothing."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def pdl_launch_options(enable_pdl: bool, device: torch.device, what: str) -> dict[str, bool]:
    """Launch keywords for a kernel that starts with :func:`dependent_launch_prologue` (its ``PDL`` constexpr
    is ``enable_pdl``): ``{"launch_pdl": True}`` or nothing.

    Programmatic dependent launch needs a CUDA device of compute capability 9.0 or newer (Hopper); asking for it
    anywhere else is an error, not a silent fallback to the plain launch."""
    if not enable_pdl:
        return {}
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        where = "a CPU (Triton's interpreter)" if device.type != "cuda" else (
            f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}"
        )
        raise ValueError(
            f"{what}: enable_pdl=True needs a CUDA GPU of compute capability >= 9.0 (Hopper), got {where}; "
            "pass enable_pdl=False"
        )
    return {"launch_pdl": True}
