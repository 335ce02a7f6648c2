"""Sparse decode attention on FlashInfer's own batch-decode kernel (the flashinfer base backend).

Plain SGLang decodes with ``BatchDecodeWithPagedKVCacheWrapper`` over a page table of one token per page
(its ``kv_indices`` are token slots). Vortex runs the same kernel, one (request, kv-head) row per "request":

* K/V stay in SGLang's ``[num_slots, H_kv, D]`` buffers, viewed (no copy) as ``num_slots * H_kv`` pages of one
  token of one head (page ``slot * H_kv + h`` starts at element ``(slot * H_kv + h) * D``);
* each row's selected blocks are expanded to that page table (``vortex_torch.kernels.token_table``), inside
  the CUDA graph, per layer;
* the table's row offsets are fixed per step on the host (``host_token_plan``: a row's token count follows from
  its sequence length and budget alone, because the selection always ends with the row's partial last block),
  so the wrapper is planned like SGLang's own: eagerly per step, or before every CUDA-graph replay.

With every block selected a row's table is exactly the token list SGLang gives the kernel for that head, and
FlashInfer's split-KV partition of ``R = B * H_kv`` one-head rows equals its partition of ``B`` requests with
``H_kv`` heads, so the attention output is bit-identical to plain SGLang's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from vortex_torch.kernels.token_table import block_token_table, token_counts

from .planner import DecodePlan, row_blocks

log = logging.getLogger("vortex_torch.engine.sgl")

#: FlashInfer's float workspace (split-KV partial outputs) for the sparse wrappers
WORKSPACE_BYTES = 128 << 20


def host_token_plan(
    seq_lens_cpu: torch.Tensor,
    *,
    block_size: int,
    num_kv_heads: int,
    max_blocks_per_row: int,
    budget_fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's per-row budgets and token-table offsets, on the host.

    ``seq_lens_cpu [B]`` (tokens each request attends to, the decoded one included) -> ``budget [R] int32``
    (blocks per row, ``R = B * H_kv``, row ``b * H_kv + h``) and ``tok_indptr [R + 1] int32``. Rows count blocks
    with the device planner's :func:`.planner.row_blocks`; a row keeps ``budget`` blocks, its last one
    partial, so it has ``(budget - 1) * block_size + last_block_len`` tokens.
    """
    n_row, last_row = row_blocks(seq_lens_cpu, block_size, num_kv_heads, max_blocks_per_row)
    budget = budget_fn(n_row).to(torch.int32)
    counts = token_counts(budget, last_row, block_size)
    tok_indptr = torch.zeros(counts.numel() + 1, dtype=torch.int32)
    torch.cumsum(counts, 0, out=tok_indptr[1:])
    return budget, tok_indptr


def one_token_pages(buffer: torch.Tensor) -> torch.Tensor:
    """``[num_slots, H_kv, D]`` -> ``[num_slots * H_kv, 1, D]`` view: page ``slot * H_kv + h`` = that head's
    token (FlashInfer reads the strides; nothing is copied)."""
    slots, heads, dim = buffer.shape
    if buffer.stride(2) != 1 or buffer.stride(1) != dim or buffer.stride(0) != heads * dim:
        raise ValueError(f"expected a contiguous [slots, H_kv, D] K/V buffer, got strides {buffer.stride()}")
    return buffer.as_strided((slots * heads, 1, dim), (dim, dim, 1), buffer.storage_offset())


class FlashInferSparseDecode:
    """FlashInfer decode wrappers for Vortex's sparse rows: one eager wrapper, one per captured batch size.

    Args:
        base: the SGLang ``FlashInferAttnBackend`` (its tensor-core choice and decode backend are mirrored).
        group / head_dim / num_kv_heads / block_size / page_size: the pool's geometry.
        kv_dtype: the pool's K/V dtype (fp8 for an fp8 cache: FlashInfer applies ``layer.k_scale_float`` /
            ``v_scale_float`` as SGLang's own decode does).
        q_dtype: the queries' dtype (the model's).
        max_blocks_per_row / max_selected_per_row: static bounds of the decode plan.
        budget_fn: the budget rule on host tensors (``n [R] -> [R]``).
    """

    def __init__(
        self,
        base: Any,
        *,
        group: int,
        head_dim: int,
        num_kv_heads: int,
        block_size: int,
        page_size: int,
        kv_dtype: torch.dtype,
        q_dtype: torch.dtype,
        max_blocks_per_row: int,
        max_selected_per_row: int,
        budget_fn: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
    ) -> None:
        from flashinfer import BatchDecodeWithPagedKVCacheWrapper

        self._wrapper_cls = BatchDecodeWithPagedKVCacheWrapper
        self.group, self.head_dim, self.num_kv_heads = group, head_dim, num_kv_heads
        self.block_size, self.page_size, self.device = block_size, page_size, device
        self.kv_dtype, self.q_dtype = kv_dtype, q_dtype
        self.max_blocks_per_row, self.max_selected_per_row = max_blocks_per_row, max_selected_per_row
        self.budget_fn = budget_fn
        self.use_tensor_cores = bool(getattr(base, "decode_use_tensor_cores", False))
        self.backend = getattr(base, "decode_backend", "auto")
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.eager = self._wrapper()
        self.graph_wrappers: dict[int, Any] = {}
        self.graph_indptr: torch.Tensor | None = None
        self.graph_indices: torch.Tensor | None = None
        self.graph_last: torch.Tensor | None = None
        self.current: Any = None
        self._no_indices = torch.zeros(0, dtype=torch.int32, device=device)

    def _wrapper(self, **graph_buffers: torch.Tensor) -> Any:
        return self._wrapper_cls(
            self.workspace, "NHD", backend=self.backend, use_tensor_cores=self.use_tensor_cores,
            use_cuda_graph=bool(graph_buffers), **graph_buffers,
        )  # fmt: skip

    def allocate_graph_buffers(self, max_bs: int) -> int:
        """Shared CUDA-graph page-table buffers for up to ``max_bs`` requests; returns their bytes."""
        rows = max_bs * self.num_kv_heads
        cap = rows * self.max_selected_per_row * self.block_size
        self.graph_indptr = torch.zeros(rows + 1, dtype=torch.int32, device=self.device)
        self.graph_indices = torch.zeros(cap, dtype=torch.int32, device=self.device)
        self.graph_last = torch.ones(rows, dtype=torch.int32, device=self.device)
        return 4 * (2 * rows + 1 + cap)

    def begin_step(self, seq_lens_cpu: torch.Tensor, *, graph: bool) -> torch.Tensor:
        """Plan this decode step's wrapper on the host; returns the rows' budgets (``[R] int32``, host) for the
        device plan, so the selection and the page table agree on every row's length."""
        budget, tok_indptr = host_token_plan(
            seq_lens_cpu, block_size=self.block_size, num_kv_heads=self.num_kv_heads,
            max_blocks_per_row=self.max_blocks_per_row, budget_fn=self.budget_fn,
        )  # fmt: skip
        rows = budget.numel()
        if graph:
            bs = seq_lens_cpu.numel()
            wrapper = self.graph_wrappers.get(bs)
            if wrapper is None:
                if self.graph_indptr is None or self.graph_indices is None or self.graph_last is None:
                    raise RuntimeError("Vortex: CUDA-graph decode before init_cuda_graph_state")
                wrapper = self._wrapper(
                    paged_kv_indptr_buffer=self.graph_indptr[: rows + 1],
                    paged_kv_indices_buffer=self.graph_indices,
                    paged_kv_last_page_len_buffer=self.graph_last[:rows],
                )
                self.graph_wrappers[bs] = wrapper
            indices = self._no_indices  # the token table kernel fills the wrapper's buffer in the graph
        else:
            wrapper = self.eager
            indices = torch.empty(int(tok_indptr[-1]), dtype=torch.int32, device=self.device)
        wrapper.plan(
            tok_indptr, indices, torch.ones(rows, dtype=torch.int32), self.group, 1, self.head_dim, 1,
            q_data_type=self.q_dtype, kv_data_type=self.kv_dtype, non_blocking=True,
        )  # fmt: skip
        self.current = wrapper
        return budget

    def attend(
        self, q_rows: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, plan: DecodePlan, layer: Any
    ) -> torch.Tensor:
        """``q_rows [R, G, D]`` -> ``o [R, G, D]``: the plan's selection expanded to the page table, then
        FlashInfer's decode over it (called as SGLang calls it for dense decode)."""
        wrapper = self.current
        if wrapper is None:
            raise RuntimeError("Vortex: sparse decode without a planned FlashInfer wrapper")
        block_token_table(
            plan.sel_indptr, plan.sel_indices, plan.last_block_len, wrapper._paged_kv_indptr_buf,
            wrapper._paged_kv_indices_buf, page_size=self.page_size, block_size=self.block_size,
            num_kv_heads=self.num_kv_heads, max_selected_per_row=plan.max_selected_per_row,
        )  # fmt: skip
        return wrapper.forward(
            q_rows,
            (one_token_pages(k_buf), one_token_pages(v_buf)),
            sm_scale=layer.scaling,
            logits_soft_cap=layer.logit_cap,
            k_scale=getattr(layer, "k_scale_float", None),
            v_scale=getattr(layer, "v_scale_float", None),
        )
