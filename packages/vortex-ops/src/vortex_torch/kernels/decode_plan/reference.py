"""Plain-PyTorch reference of a decode step's plan: this file DEFINES what the plan kernel computes.

A decode step of ``B`` requests has ``R = B * H_kv`` rows (row ``b * H_kv + h``, design §1). From SGLang's
``req_to_token`` map and the requests' lengths, the plan lists every row's blocks and sizes its selection
(design §3):

* ``n[r] = clamp(ceil(seq_len[b] / block_size), 1, max_blocks_per_row)`` blocks, the last one holding
  ``last_block_len[r] = seq_len[b] - (n[r] - 1) * block_size`` tokens (clamped to ``[1, block_size]``);
* ``dense_indptr [R+1]`` = exclusive cumsum of ``n``; ``dense_indices[dense_indptr[r] + j]`` is the id of
  block ``j`` of row ``r``: ``block_id(req_to_token[req_pool_indices[b], j * block_size], h)`` (design §2);
* ``budget[r]`` = the budget rule (design §5, :class:`vortex_torch.kernels.budget_rule.BudgetRule`) or,
  when a ``budget`` tensor is given (a ``schedule_policy``'s result), that tensor; either way clamped to
  ``[min(n, bos + eos), min(n, max_selected_per_row)]`` (``BudgetRule.clamp``, the one clamp every path
  applies, so no policy can ask for more than the selection buffers hold);
* ``sel_indptr [R+1]`` = exclusive cumsum of ``budget``.

Only the first ``dense_indptr[R]`` entries of ``dense_indices`` are defined; the rest of the caller's buffer
is scratch. The Triton kernel (``triton_kernel.py``) writes exactly these values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vortex_torch.abs.layout import PoolLayout

from ..budget_rule import BudgetRule


@dataclass
class PlanOut:
    """Where a plan is written (capture-stable buffers for CUDA graphs); every tensor int32.

    ``dense_indptr``/``sel_indptr [>= R+1]``, ``last_block_len``/``budget [>= R]``,
    ``dense_indices [>= R * max_blocks_per_row]``.
    """

    dense_indptr: torch.Tensor
    dense_indices: torch.Tensor
    last_block_len: torch.Tensor
    budget: torch.Tensor
    sel_indptr: torch.Tensor

    @classmethod
    def allocate(cls, max_rows: int, max_blocks_per_row: int, device: torch.device | str) -> PlanOut:
        def i32(n: int, fill: int = 0) -> torch.Tensor:
            return torch.full((n,), fill, dtype=torch.int32, device=device)

        return cls(
            dense_indptr=i32(max_rows + 1),
            dense_indices=i32(max(1, max_rows * max_blocks_per_row)),
            last_block_len=i32(max_rows, 1),
            budget=i32(max_rows),
            sel_indptr=i32(max_rows + 1),
        )


def row_blocks(
    seq_lens: torch.Tensor, block_size: int, num_kv_heads: int, max_blocks_per_row: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``seq_lens [B]`` -> ``(n [R], last_block_len [R])`` int64, row ``b * H_kv + h`` (any device)."""
    seq = seq_lens.to(torch.int64)
    n_req = torch.clamp((seq + block_size - 1) // block_size, min=1, max=max_blocks_per_row)  # [B]
    last = torch.clamp(seq - (n_req - 1) * block_size, min=1, max=block_size)  # [B]
    return n_req.repeat_interleave(num_kv_heads), last.repeat_interleave(num_kv_heads)


def plan_decode_reference(
    layout: PoolLayout,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    max_blocks_per_row: int,
    rule: BudgetRule,
    budget: torch.Tensor | None = None,
    out: PlanOut | None = None,
) -> PlanOut:
    """The plan of ``B = len(req_pool_indices)`` requests (module docstring), written into ``out``.

    Args:
        layout: page size, block size and ``H_kv`` of the pool.
        req_to_token: ``[num_reqs, max_context]`` int32: slot of token ``t`` of request row ``i``.
        req_pool_indices: ``[B]`` rows of ``req_to_token``; ``seq_lens``: ``[B]`` tokens, this step's included.
        max_blocks_per_row: static bound on a row's blocks (sizes ``dense_indices``).
        rule: the budget rule and its clamp bounds.
        budget: ``[R]`` budgets from a ``schedule_policy`` (clamped by ``rule``), or None for the rule itself.
        out: buffers to write (allocated when None); the plan occupies their leading entries.
    """
    batch, heads, bsz = int(req_pool_indices.shape[0]), layout.num_kv_heads, layout.block_size
    rows, m = batch * heads, int(max_blocks_per_row)
    device = seq_lens.device
    if out is None:
        out = PlanOut.allocate(rows, m, device)
    n, last = row_blocks(seq_lens[:batch], bsz, heads, m)  # [R], [R]
    b = rule(n) if budget is None else rule.clamp(n, budget[:rows])  # [R]
    dense_indptr = torch.zeros(rows + 1, dtype=torch.int64, device=device)
    torch.cumsum(n, 0, out=dense_indptr[1:])
    sel_indptr = torch.zeros(rows + 1, dtype=torch.int64, device=device)
    torch.cumsum(b, 0, out=sel_indptr[1:])
    nnz = int(dense_indptr[-1])
    row = torch.repeat_interleave(torch.arange(rows, device=device), n)  # [nnz]
    pos = torch.arange(nnz, device=device) - dense_indptr[row]  # [nnz]
    req = req_pool_indices[:batch].to(torch.int64)[row // heads]  # [nnz]
    slots = req_to_token[req, pos * bsz].to(torch.int64)  # [nnz] slot of each block's first token
    out.dense_indptr[: rows + 1] = dense_indptr.to(torch.int32)
    out.dense_indices[:nnz] = layout.block_id(slots, row % heads).to(torch.int32)
    out.last_block_len[:rows] = last.to(torch.int32)
    out.budget[:rows] = b.to(torch.int32)
    out.sel_indptr[: rows + 1] = sel_indptr.to(torch.int32)
    return out
