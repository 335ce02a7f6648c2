"""The per-batch decode plan (design §3) and the completed-block lists of ``forward_cache``, from SGLang's
``req_to_token`` / ``seq_lens`` / ``out_cache_loc``, with no host synchronisation.

The plan is one kernel (:mod:`vortex_torch.kernels.decode_plan`; its plain-PyTorch reference on a CPU without
the Triton interpreter), sized by static bounds, so the backends run it inside the decode CUDA graph. Rows are ``request * H_kv + kv_head`` (design §1); block ids follow design §2 (``PoolLayout``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.kernels import use_triton
from vortex_torch.kernels.decode_plan import BudgetRule, PlanOut, plan_decode_reference, row_blocks
from vortex_torch.kernels.decode_plan import plan_decode as kernel_plan_decode

__all__ = [
    "BudgetFn", "BudgetRule", "DecodePlan", "DecodePlanBuffers", "completed_block_ids", "count_completed_blocks",
    "default_budget_fn", "dummy_block_ids", "max_budget_bound", "plan_decode", "row_blocks",
]  # fmt: skip

#: ``n_blocks [R] int64`` -> ``budget [R]`` integer: the budget rule (a :class:`BudgetRule`) or a ``schedule_policy``
BudgetFn = Callable[[torch.Tensor], torch.Tensor]


def default_budget_fn(
    topk_val: int, topk_ratio: float, bos: int, eos: int, max_selected_per_row: int = 1 << 30
) -> BudgetRule:
    """Design §5's rule: ``budget(n) = min(n, max(topk_val + bos + eos, floor(n * topk_ratio)))`` (a
    :class:`BudgetRule`, which the plan kernel evaluates itself instead of running torch ops)."""
    return BudgetRule(topk_val, float(topk_ratio), bos, eos, max_selected_per_row)


def max_budget_bound(max_blocks_per_row: int, topk_val: int, topk_ratio: float, bos: int, eos: int) -> int:
    """Largest budget the default rule gives a row of at most ``max_blocks_per_row`` blocks."""
    return min(max_blocks_per_row, max(topk_val + bos + eos, int(max_blocks_per_row * topk_ratio)))


@dataclass
class DecodePlanBuffers:
    """Capture-stable storage of decode plans for up to ``max_rows`` rows of ``max_blocks_per_row`` blocks:
    the plan kernel's :class:`PlanOut` plus ``sel_indices [max_rows * max_blocks_per_row] int32``. A plan of
    ``R`` rows lives in the leading slices, so every batch size maps to fixed addresses (CUDA graphs)."""

    out: PlanOut
    sel_indices: torch.Tensor
    max_blocks_per_row: int

    @classmethod
    def allocate(
        cls, max_rows: int, max_blocks_per_row: int, device: torch.device | str
    ) -> DecodePlanBuffers:
        return cls(
            out=PlanOut.allocate(max_rows, max_blocks_per_row, device),
            sel_indices=torch.zeros(max(1, max_rows * max_blocks_per_row), dtype=torch.int32, device=device),
            max_blocks_per_row=max_blocks_per_row,
        )

    @property
    def max_rows(self) -> int:
        return self.out.last_block_len.numel()

    @property
    def nbytes(self) -> int:
        o = self.out
        return sum(
            t.numel() * t.element_size()
            for t in (o.dense_indptr, o.dense_indices, o.last_block_len, o.budget, o.sel_indptr, self.sel_indices)
        )


@dataclass
class DecodePlan:
    """One decode step's metadata, shared by every layer (design §3). ``R = batch * H_kv`` rows.

    * ``dense_indptr [R+1] int32`` / ``dense_indices [R * max_blocks_per_row] int32``: every block of every
      row in position order; only the first ``dense_indptr[R]`` entries are meaningful (the tail is scratch);
    * ``last_block_len [R] int32``: valid tokens of each row's final block, in ``[1, block_size]``;
    * ``budget [R] int32``, ``sel_indptr [R+1] int32``: blocks each row attends to and their CSR offsets;
    * ``sel_indices [R * max_blocks_per_row] int32``: where the selection writes the chosen block ids;
    * ``max_blocks_per_row``: static bound on ``n_r``; ``max_selected_per_row``: static bound on the budget.
    """

    batch_size: int
    num_kv_heads: int
    dense_indptr: torch.Tensor
    dense_indices: torch.Tensor
    last_block_len: torch.Tensor
    budget: torch.Tensor
    sel_indptr: torch.Tensor
    sel_indices: torch.Tensor
    max_blocks_per_row: int
    max_selected_per_row: int

    @property
    def num_rows(self) -> int:
        return self.last_block_len.numel()

    def dense_blocks(self) -> DenseBlocks:
        """The dense lists as ``DenseBlocks`` for the compiled (Triton) executor, without a host sync.

        ``indices`` is the whole capacity-sized buffer (the executor reads each row through ``indptr`` only);
        ``row_of``/``pos`` are left empty: the compiled executor never reads them.
        """
        empty = torch.zeros(0, dtype=torch.int64, device=self.dense_indptr.device)
        return DenseBlocks(
            indptr=self.dense_indptr,
            indices=self.dense_indices,
            last_block_len=self.last_block_len,
            row_of=empty,
            pos=empty,
        )

    def dense_blocks_with_row_index(self) -> DenseBlocks:
        """``DenseBlocks`` cut to the real ``nnz``, with ``row_of``/``pos`` (synchronises: eager paths only,
        e.g. the reference executor and the debug dump)."""
        nnz = int(self.dense_indptr[-1])
        lens = (self.dense_indptr[1:] - self.dense_indptr[:-1]).long()
        row_of = torch.repeat_interleave(torch.arange(self.num_rows, device=lens.device), lens)
        pos = torch.arange(nnz, device=lens.device) - self.dense_indptr[:-1].long()[row_of]
        return DenseBlocks(
            indptr=self.dense_indptr,
            indices=self.dense_indices[:nnz],
            last_block_len=self.last_block_len,
            row_of=row_of,
            pos=pos,
        )


def plan_decode(
    layout: PoolLayout,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    max_blocks_per_row: int,
    budget_fn: BudgetFn,
    max_selected_per_row: int | None = None,
    buffers: DecodePlanBuffers | None = None,
    budget: torch.Tensor | None = None,
) -> DecodePlan:
    """Build a decode step's plan on the inputs' device, with no host synchronisation: one kernel launch
    (:func:`vortex_torch.kernels.decode_plan.plan_decode`) for the default rule, plus the policy's own torch
    ops when ``budget_fn`` is a ``schedule_policy``. Captured in the decode CUDA graph by the backends.

    Args:
        layout: the pool layout (page size, block size, ``H_kv``).
        req_to_token: ``[num_reqs + 1, max_context] int32``: SGLang's slot of token ``t`` of request row ``i``.
        req_pool_indices: ``[B]`` rows of ``req_to_token`` of the batch's requests.
        seq_lens: ``[B]`` tokens each request attends to, the token being decoded included (``>= 1``).
        max_blocks_per_row: static bound on ``ceil(seq_len / block_size)`` (SGLang's context length over the
            block size); every list is sized ``R * max_blocks_per_row``.
        budget_fn: a :class:`BudgetRule` (evaluated inside the kernel) or a policy ``n [R] int64 -> [R]``.
        max_selected_per_row: static bound on the budget; every budget, a policy's too, is clamped to it
            (and to ``[min(n, bos + eos), n]``). Default ``max_blocks_per_row``.
        buffers: write into these capture-stable buffers (CUDA graphs) instead of fresh tensors.
        budget: ``[R]`` budgets already computed on the host (FlashInfer path, which needs them there to plan);
            replaces ``budget_fn``'s value (still clamped) when given.
    """
    batch, heads = int(req_pool_indices.shape[0]), layout.num_kv_heads
    rows, m = batch * heads, int(max_blocks_per_row)
    max_sel = min(m, max_selected_per_row) if max_selected_per_row is not None else m
    if buffers is not None and (rows > buffers.max_rows or m != buffers.max_blocks_per_row):
        raise ValueError(
            f"decode plan of {rows} rows x {m} blocks does not fit buffers of {buffers.max_rows} rows x "
            f"{buffers.max_blocks_per_row} blocks"
        )
    if isinstance(budget_fn, BudgetRule):  # evaluated inside the kernel (or clamps a host-given budget)
        rule = dataclasses.replace(budget_fn, max_selected_per_row=min(budget_fn.max_selected_per_row, max_sel))
    else:  # a policy (apply_policy already clamped it below to min(n, bos + eos)): only the upper bound here
        rule = BudgetRule(0, 0.0, 0, 0, max_sel)
        if budget is None:
            n_row, _ = row_blocks(seq_lens[:batch], layout.block_size, heads, m)
            budget = budget_fn(n_row)
    if budget is not None:
        budget = budget.to(device=seq_lens.device, dtype=torch.int32, non_blocking=True)
    out = buffers.out if buffers is not None else None
    planner = kernel_plan_decode if use_triton(seq_lens) else plan_decode_reference
    out = planner(
        layout, req_to_token, req_pool_indices[:batch], seq_lens[:batch], max_blocks_per_row=m, rule=rule,
        budget=budget, out=out,
    )  # fmt: skip
    sel = buffers.sel_indices if buffers is not None else torch.zeros(max(1, rows * m), dtype=torch.int32,
                                                                       device=seq_lens.device)  # fmt: skip
    return DecodePlan(
        batch_size=batch,
        num_kv_heads=heads,
        dense_indptr=out.dense_indptr[: rows + 1],
        dense_indices=out.dense_indices[: max(1, rows * m)],
        last_block_len=out.last_block_len[:rows],
        budget=out.budget[:rows],
        sel_indptr=out.sel_indptr[: rows + 1],
        sel_indices=sel[: max(1, rows * m)],
        max_blocks_per_row=m,
        max_selected_per_row=max_sel,
    )


def dummy_block_ids(layout: PoolLayout, device: torch.device | str) -> torch.Tensor:
    """``[H_kv] int64``: a block of SGLang's padding page 0 per KV head (``block_id(0, h)``). SGLang never
    allocates page 0 to a request, so summarising it is harmless: masked candidates are redirected there."""
    return layout.block_id(torch.zeros(layout.num_kv_heads, dtype=torch.int64, device=device),
                           torch.arange(layout.num_kv_heads, device=device))  # fmt: skip


def completed_block_ids(
    layout: PoolLayout, out_cache_loc: torch.Tensor, *, count: int | None = None
) -> torch.Tensor:
    """Block ids whose last token slot is in ``out_cache_loc`` (the slots this forward wrote), all KV heads.

    ``out_cache_loc [T]`` int -> ``[N * H_kv] int64`` (token-major, head-minor), no host sync:

    * ``count`` given (extend: the number of completed blocks, known on the host from the prefix and extend
      lengths): exactly the ``count`` completing slots, compacted with ``nonzero_static``;
    * ``count`` None (decode, CUDA-graph safe): one candidate per written slot and head, ``N = T``; a slot that
      completes no block yields a block of the padding page 0 instead (see :func:`dummy_block_ids`).

    SGLang's paged allocator keeps ``slot % page_size == position % page_size``, so a slot completes its block
    exactly when its token is a block's last one (``PoolLayout.completes_block``).
    """
    loc = out_cache_loc.reshape(-1).to(torch.int64)  # [T]
    heads = torch.arange(layout.num_kv_heads, device=loc.device)  # [H]
    done = layout.completes_block(loc)  # [T] bool
    if count is not None:
        try:
            idx = torch.nonzero_static(done, size=int(count), fill_value=0).reshape(-1)  # [N], no sync
        except (RuntimeError, NotImplementedError):  # a torch build without it on this device: sync instead
            idx = done.nonzero().reshape(-1)
        return layout.block_id(loc[idx][:, None], heads[None, :]).reshape(-1)
    ids = layout.block_id(loc[:, None], heads[None, :])  # [T, H]
    return torch.where(done[:, None], ids, dummy_block_ids(layout, loc.device)[None, :]).reshape(-1)


def count_completed_blocks(block_size: int, prefix_lens: list[int], extend_lens: list[int]) -> int:
    """Blocks completed by an extend (host lists): ``sum((p + e) // block_size - p // block_size)``."""
    return sum((p + e) // block_size - p // block_size for p, e in zip(prefix_lens, extend_lens, strict=True))
