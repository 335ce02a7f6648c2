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

