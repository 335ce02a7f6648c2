"""Token table: a CSR block selection expanded to per-token page ids of SGLang's K/V buffers, the page table
FlashInfer's batch decode reads (``reference`` defines the semantics; ``triton_kernel`` is the fused version).

:func:`block_token_table` runs the Triton kernel on CUDA tensors (and on CPU when Triton's interpreter defined
the kernels), otherwise the reference: the rule of :func:`vortex_torch.kernels.use_triton`.
"""

from __future__ import annotations

import torch

from .._interpreter_compat import use_triton
from .reference import block_token_table_reference, token_counts
from .triton_kernel import block_token_table_triton


def block_token_table(
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
    """``out[tok_indptr[r]:tok_indptr[r+1]]`` = page ids (``slot * H_kv + head``) of row ``r``'s selected
    tokens, in selection order (see :func:`block_token_table_reference` for shapes)."""
    if use_triton(sel_indices):
        return block_token_table_triton(
            sel_indptr, sel_indices, last_block_len, tok_indptr, out, page_size=page_size,
            block_size=block_size, num_kv_heads=num_kv_heads, max_selected_per_row=max_selected_per_row,
        )  # fmt: skip
    return block_token_table_reference(
        sel_indptr, sel_indices, last_block_len, tok_indptr, out,
        page_size=page_size, block_size=block_size, num_kv_heads=num_kv_heads,
    )  # fmt: skip


__all__ = ["block_token_table", "block_token_table_reference", "block_token_table_triton", "token_counts"]
