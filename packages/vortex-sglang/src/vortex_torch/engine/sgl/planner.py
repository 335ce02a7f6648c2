"""The per-batch decode plan (design §3) and the completed-block lists of ``forward_cache``, from SGLang's
``req_to_token`` / ``seq_lens`` / ``out_cache_loc``, with torch ops only and no host synchronisation.

Everything here is plain PyTorch on whatever device the inputs live on (CPU in the tests, CUDA in SGLang) and
sized by static bounds, so the decode plan can be rebuilt into the same buffers before every CUDA-graph
replay. Rows are ``request * H_kv + kv_head`` (design §1); block ids follow design §2 (``PoolLayout``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.kernels.select.budget import default_budget

#: ``n_blocks [R] int64`` -> ``budget [R]`` integer: the budget rule (default or ``schedule_policy``)
BudgetFn = Callable[[torch.Tensor], torch.Tensor]


def default_budget_fn(topk_val: int, topk_ratio: float, bos: int, eos: int) -> BudgetFn:
    """Design §5's rule: ``budget(n) = min(n, max(topk_val + bos + eos, floor(n * topk_ratio)))``."""
    return lambda n: default_budget(n, topk_val, topk_ratio, bos, eos)


def max_budget_bound(max_blocks_per_row: int, topk_val: int, topk_ratio: float, bos: int, eos: int) -> int:
    """Largest budget the default rule gives a row of at most ``max_blocks_per_row`` blocks."""
    return min(max_blocks_per_row, max(topk_val + bos + eos, int(max_blocks_per_row * topk_ratio)))


@dataclass
class DecodePlanBuffers:
    """Capture-stable storage of decode plans for up to ``max_rows`` rows of ``max_blocks_per_row`` blocks.

    ``dense_indptr``/``sel_indptr [max_rows+1] int32``, ``last_block_len``/``budget [max_rows] int32``,
    ``dense_indices``/``sel_indices [max_rows * max_blocks_per_row] int32``. A plan of ``R`` rows lives in
    the leading slices, so every batch size maps to fixed addresses (CUDA graphs capture those).
    """

    dense_indptr: torch.Tensor
    dense_indices: torch.Tensor
    last_block_len: torch.Tensor
    budget: torch.Tensor
    sel_indptr: torch.Tensor
    sel_indices: torch.Tensor
    max_blocks_per_row: int

    @classmethod
    def allocate(
        cls, max_rows: int, max_blocks_per_row: int, device: torch.device | str
    ) -> DecodePlanBuffers:
        cap = max_rows * max_blocks_per_row

        def i32(n: int, fill: int = 0) -> torch.Tensor:
            return torch.full((n,), fill, dtype=torch.int32, device=device)

        return cls(
            dense_indptr=i32(max_rows + 1),
            dense_indices=i32(cap),
            last_block_len=i32(max_rows, 1),
            budget=i32(max_rows),
            sel_indptr=i32(max_rows + 1),
            sel_indices=i32(cap),
            max_blocks_per_row=max_blocks_per_row,
        )

    @property
    def max_rows(self) -> int:
        return self.last_block_len.numel()

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.dense_indptr, self.dense_indices, self.last_block_len, self.budget, self.sel_indptr,
                      self.sel_indices)
        )  # fmt: skip


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

    def exact_dense_blocks(self) -> DenseBlocks:
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


def row_blocks(
    seq_lens: torch.Tensor, block_size: int, num_kv_heads: int, max_blocks_per_row: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``seq_lens [B]`` -> ``(n_blocks [R], last_block_len [R])`` int64, row ``b * H_kv + h`` (any device; the
    device planner and the host planner of the FlashInfer path both count blocks with it)."""
    seq = seq_lens.to(torch.int64)
    n_req = torch.clamp((seq + block_size - 1) // block_size, min=1, max=max_blocks_per_row)  # [B]
    last = torch.clamp(seq - (n_req - 1) * block_size, min=1, max=block_size)  # [B]
    return n_req.repeat_interleave(num_kv_heads), last.repeat_interleave(num_kv_heads)


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
    """Build a decode step's plan on the inputs' device, with no host synchronisation.

    Args:
        layout: the pool layout (page size, block size, ``H_kv``).
        req_to_token: ``[num_reqs + 1, max_context] int32``: SGLang's slot of token ``t`` of request row ``i``.
        req_pool_indices: ``[B]`` rows of ``req_to_token`` of the batch's requests.
        seq_lens: ``[B]`` tokens each request attends to, the token being decoded included (``>= 1``).
        max_blocks_per_row: static bound on ``ceil(seq_len / block_size)`` (SGLang's context length over the
            block size); every list is sized ``R * max_blocks_per_row``.
        budget_fn: ``n [R] int64 -> budget [R]`` (clamped here to ``[min(n, bos + eos) .. n]`` by the caller's
            rule; :func:`default_budget_fn` or a compiled ``schedule_policy``).
        max_selected_per_row: static bound on the budget (split count of the attention kernel); default
            ``max_blocks_per_row``.
        buffers: write into these capture-stable buffers (CUDA graphs) instead of fresh tensors.
        budget: ``[R]`` budgets already computed on the host (FlashInfer path, which needs them there to plan);
            replaces ``budget_fn`` when given.

    Block ``j`` of row ``(b, h)`` is the block of the slot of token ``j * block_size`` of request ``b`` and KV
    head ``h``: ``layout.block_id(req_to_token[req_pool_indices[b], j * block_size], h)``.
    """
    device = seq_lens.device
    batch, heads, bsz = int(req_pool_indices.shape[0]), layout.num_kv_heads, layout.block_size
    rows, m = batch * heads, int(max_blocks_per_row)
    cap = rows * m
    if buffers is not None and (rows > buffers.max_rows or m != buffers.max_blocks_per_row):
        raise ValueError(
            f"decode plan of {rows} rows x {m} blocks does not fit buffers of {buffers.max_rows} rows x "
            f"{buffers.max_blocks_per_row} blocks"
        )

    n_row, last_row = row_blocks(seq_lens[:batch], bsz, heads, m)  # [R], [R]

    indptr64 = torch.zeros(rows + 1, dtype=torch.int64, device=device)
    torch.cumsum(n_row, 0, out=indptr64[1:])  # [R+1]

    # Gather form of the CSR fill: entry p belongs to row searchsorted(indptr[1:], p) at position p - indptr[row].
    p = torch.arange(cap, dtype=torch.int64, device=device)  # [cap]
    row = torch.searchsorted(indptr64[1:], p, right=True).clamp_(max=max(rows - 1, 0))  # [cap]
    pos = p - indptr64[row]  # [cap]
    tok = (pos * bsz).clamp_(min=0, max=req_to_token.shape[1] - 1)  # [cap] token of the block's first slot
    req = req_pool_indices[:batch].to(torch.int64)[row // heads]  # [cap]
    slots = req_to_token[req, tok].to(torch.int64)  # [cap]
    ids = layout.block_id(slots, row % heads).to(torch.int32)  # [cap]; entries >= nnz are scratch

    if budget is None:
        budget = budget_fn(n_row).to(torch.int32)  # [R]
    else:
        budget = budget.to(device=device, dtype=torch.int32, non_blocking=True)  # [R]
    sel64 = torch.zeros(rows + 1, dtype=torch.int64, device=device)
    torch.cumsum(budget.to(torch.int64), 0, out=sel64[1:])  # [R+1]

    if buffers is None:
        dense_indptr, dense_indices = indptr64.to(torch.int32), ids
        last_block_len, sel_indptr = last_row.to(torch.int32), sel64.to(torch.int32)
        sel_indices = torch.zeros(cap, dtype=torch.int32, device=device)
    else:
        dense_indptr = buffers.dense_indptr[: rows + 1]
        dense_indptr.copy_(indptr64)
        dense_indices = buffers.dense_indices[:cap]
        dense_indices.copy_(ids)
        last_block_len = buffers.last_block_len[:rows]
        last_block_len.copy_(last_row)
        buffers.budget[:rows].copy_(budget)
        budget = buffers.budget[:rows]
        sel_indptr = buffers.sel_indptr[: rows + 1]
        sel_indptr.copy_(sel64)
        sel_indices = buffers.sel_indices[:cap]
    return DecodePlan(
        batch_size=batch,
        num_kv_heads=heads,
        dense_indptr=dense_indptr,
        dense_indices=dense_indices,
        last_block_len=last_block_len,
        budget=budget,
        sel_indptr=sel_indptr,
        sel_indices=sel_indices,
        max_blocks_per_row=m,
        max_selected_per_row=min(m, max_selected_per_row) if max_selected_per_row is not None else m,
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
