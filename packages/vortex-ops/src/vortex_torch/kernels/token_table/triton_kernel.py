"""Triton token table (semantics: ``reference.block_token_table_reference``): one program per (row, chunk of blocks).

A pure index expansion, sized by static bounds (grid ``(R, cdiv(max_selected_per_row, BLOCKS))``), so it runs
inside a CUDA graph; rows shorter than the bound leave their extra programs idle.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._interpreter_compat import require_launchable
from .._layout import block_first_slot, block_head


@triton.jit
def _token_table_kernel(
    sel_indptr_ptr,
    sel_indices_ptr,
    last_len_ptr,
    tok_indptr_ptr,
    out_ptr,
    PAGE: tl.constexpr,
    BS: tl.constexpr,
    BS_PAD: tl.constexpr,
    H_KV: tl.constexpr,
    BLOCKS: tl.constexpr,  # selected blocks per program
):
    row = tl.program_id(0)
    start = tl.load(sel_indptr_ptr + row).to(tl.int64)
    n = tl.load(sel_indptr_ptr + row + 1).to(tl.int64) - start
    tok0 = tl.load(tok_indptr_ptr + row).to(tl.int64)
    last = tl.load(last_len_ptr + row).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)  # [BLOCKS] position in the row
    in_row = i < n
    b = tl.load(sel_indices_ptr + start + i, mask=in_row, other=0).to(tl.int64)  # [BLOCKS] block ids
    head = block_head(b, PAGE, BS, H_KV)  # [BLOCKS]
    first = block_first_slot(b, PAGE, BS, H_KV)  # [BLOCKS] slot of the block's first token
    t = tl.arange(0, BS_PAD)  # [BS_PAD]
    count = tl.where(i == n - 1, last, BS)  # [BLOCKS] valid tokens: the row's final block may be partial
    valid = in_row[:, None] & (t[None, :] < count[:, None])  # [BLOCKS, BS_PAD]
    ids = (first[:, None] + t[None, :]) * H_KV + head[:, None]  # [BLOCKS, BS_PAD]
    tl.store(out_ptr + tok0 + i[:, None] * BS + t[None, :], ids.to(tl.int32), mask=valid)


def block_token_table_triton(
    sel_indptr: torch.Tensor,
    sel_indices: torch.Tensor,
    last_block_len: torch.Tensor,
    tok_indptr: torch.Tensor,
    out: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    num_kv_heads: int,
    max_selected_per_row: int,
) -> torch.Tensor:
    """Same contract as ``block_token_table_reference``; ``max_selected_per_row >= max_r b_r`` sizes the grid
    (static, so no host sync). ``out`` int32."""
    require_launchable(_token_table_kernel, out, "block_token_table_triton", "block_token_table_reference")
    rows = last_block_len.numel()
    if rows == 0 or max_selected_per_row <= 0:
        return out
    blocks = max(1, min(64, triton.next_power_of_2(max(1, 256 // block_size))))
    grid = (rows, triton.cdiv(max_selected_per_row, blocks))
    _token_table_kernel[grid](
        sel_indptr, sel_indices, last_block_len, tok_indptr, out,
        PAGE=page_size, BS=block_size, BS_PAD=triton.next_power_of_2(block_size), H_KV=num_kv_heads,
        BLOCKS=blocks, num_warps=4,
    )  # fmt: skip
    return out
