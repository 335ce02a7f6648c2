"""Design §2's block arithmetic as Triton device functions: the one copy every kernel (hand-written or
generated) uses, mirroring :class:`vortex_torch.abs.layout.PoolLayout` on the host.

``PAGE`` (page size), ``BS`` (block size) and ``H_KV`` are constexprs, so the divisions compile to shifts or
multiply-highs. Inputs may be int32 or int64 tensors; callers pass int64 where a product can pass 2**31.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def block_id(slot, head, PAGE: tl.constexpr, BS: tl.constexpr, H_KV: tl.constexpr):
    """Block of token slot ``slot`` and KV head ``head``: ``((slot // PAGE) * H_KV + head) * BPP + slot % PAGE // BS``."""
    BPP: tl.constexpr = PAGE // BS
    return ((slot // PAGE) * H_KV + head) * BPP + (slot % PAGE) // BS


@triton.jit
def block_head(blk, PAGE: tl.constexpr, BS: tl.constexpr, H_KV: tl.constexpr):
    """KV head of block ``blk``."""
    BPP: tl.constexpr = PAGE // BS
    return (blk // BPP) % H_KV


@triton.jit
def block_first_slot(blk, PAGE: tl.constexpr, BS: tl.constexpr, H_KV: tl.constexpr):
    """Token slot of the first token of block ``blk`` (its tokens are the next ``BS`` slots)."""
    BPP: tl.constexpr = PAGE // BS
    return (blk // (H_KV * BPP)) * PAGE + (blk % BPP) * BS


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
