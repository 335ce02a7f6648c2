"""Plain-PyTorch reference of the token table: a block selection expanded to one entry per token.

FlashInfer's batch decode reads a KV cache through a page table. Viewing SGLang's ``[num_slots, H_kv, D]``
buffer as pages of one token of one head (page ``slot * H_kv + head`` starts at element
``(slot * H_kv + head) * D``, i.e. ``PoolLayout.kv_offsets // D``), a (request, kv-head) row's selected blocks
become the list of its tokens' page ids, in the selection's order, the row's final block cut to its valid
length. That is the same table SGLang builds for dense decode (page size 1), one head at a time.
"""

from __future__ import annotations

import torch

from vortex_torch.abs.layout import PoolLayout


def token_counts(num_selected: torch.Tensor, last_block_len: torch.Tensor, block_size: int) -> torch.Tensor:
    """Tokens of each row: ``(num_selected - 1) * block_size + last_block_len`` (0 for an empty row).

    ``num_selected [R]``, ``last_block_len [R]`` -> ``[R]`` int64 (any device; the host plan uses it too).
    """
    n = num_selected.to(torch.int64)
    return torch.where(n > 0, (n - 1) * block_size + last_block_len.to(torch.int64), torch.zeros_like(n))


def block_token_table_reference(
    sel_indptr: torch.Tensor,
    sel_indices: torch.Tensor,
    last_block_len: torch.Tensor,
    tok_indptr: torch.Tensor,
    out: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    num_kv_heads: int,
) -> torch.Tensor:
    """Write ``out[tok_indptr[r] : tok_indptr[r + 1]]`` = the token page ids of row ``r``'s selected blocks.

    Args:
        sel_indptr: ``[R + 1]`` int, CSR offsets of the selection.
        sel_indices: ``[>= sel_indptr[R]]`` int, selected block ids (design §2), each row's final entry being
            the row's last (possibly partial) block, as the selection kernels emit.
        last_block_len: ``[R]`` int in ``[1, block_size]``: valid tokens of each row's final block.
        tok_indptr: ``[R + 1]`` int, ``cumsum`` of :func:`token_counts` (FlashInfer's ``kv_indptr``).
        out: ``[>= tok_indptr[R]]`` int32, written in place and returned.

    Entry of token ``t`` of block ``b``: ``(first_slot(b) + t) * H_kv + head(b)``.
    """
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=num_kv_heads)
    sel_ptr, tok_ptr = sel_indptr.tolist(), tok_indptr.tolist()
    for r in range(len(sel_ptr) - 1):
        blocks = sel_indices[sel_ptr[r] : sel_ptr[r + 1]].long()
        if blocks.numel() == 0:
            continue
        slots = layout.block_token_slots(blocks)  # [n, BS]
        ids = (slots * num_kv_heads + layout.block_head(blocks)[:, None]).reshape(-1)
        count = int(token_counts(torch.tensor([blocks.numel()]), last_block_len[r : r + 1].cpu(), block_size))
        if tok_ptr[r + 1] - tok_ptr[r] != count:
            raise ValueError(
                f"row {r}: tok_indptr gives {tok_ptr[r + 1] - tok_ptr[r]} tokens, the selection {count}"
            )
        out[tok_ptr[r] : tok_ptr[r + 1]] = ids[:count].to(out.dtype)
    return out
