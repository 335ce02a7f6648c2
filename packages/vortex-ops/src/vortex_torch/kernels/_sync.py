"""Synchronisation between the programs of one launch: the hand-off where a row's last program takes over
what the others stored (the sparse-decode split merges, the compiled indexer's later stages)."""

from __future__ import annotations

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
