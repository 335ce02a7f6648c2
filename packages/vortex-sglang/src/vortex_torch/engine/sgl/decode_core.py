"""The SGLang-independent core of a Vortex attention backend: plan a decode step, keep the aux fields current,
and run indexer -> selection -> sparse attention for one layer.

The backends of :mod:`.backend` wrap it with SGLang's plumbing (``ForwardBatch``, the KV pool, CUDA graphs);
CPU tests drive it directly against SGLang's real ``MHATokenToKVPool`` and compare with the reference runtime.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.kernels.sparse_decode.triton_kernel import SparseDecodeWorkspace, default_num_splits

from .flow_spec import PreparedFlow
from .planner import (
    BudgetFn,
    DecodePlan,
    DecodePlanBuffers,
    completed_block_ids,
    default_budget_fn,
    max_budget_bound,
    plan_decode,
)
from .policy import apply_policy, compile_policy

if TYPE_CHECKING:
    from vortex_torch.flow.compiler.base import IndexerPlan

log = logging.getLogger("vortex_torch.engine.sgl")

#: an attention over a step's selection, in place of the decode core's own: ``(q_rows [R, G, D], fields, plan) ->
#: out [R, G, D]`` (the FlashInfer backend's ``exact_attention`` mode: FlashInfer's decode over the selection)
AttendFn = Callable[[torch.Tensor, dict[str, torch.Tensor], DecodePlan], torch.Tensor]


def make_executor(
    prepared: PreparedFlow,
    layout: PoolLayout,
    impl_backend: str,
    cache_dir: str | None,
    enable_pdl: bool = False,
) -> Any:
    """The flow executor: generated Triton kernels (``"triton"``, launched with programmatic dependent launch
    when ``enable_pdl``) or the reference interpreter."""
    if impl_backend == "reference":
        from vortex_torch.flow.compiler.reference import ReferenceExecutor

        return ReferenceExecutor(prepared.traced, layout)
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor

    return TritonExecutor(prepared.traced, layout, cache_dir=cache_dir, enable_pdl=enable_pdl)


def make_budget_fn(
    prepared: PreparedFlow, device: torch.device, max_selected_per_row: int | None = None
) -> BudgetFn:
    """The default rule (a :class:`BudgetRule`, evaluated inside the plan kernel) or the ``schedule_policy``
    (compiled on CUDA, as is on the host: ``device="cpu"`` gives the rule for host-side planners).

    Every budget is clamped to ``[min(n, bos + eos), min(n, max_selected_per_row)]`` (a policy's too, on the
    host exactly as on the device), so a policy can never ask for more blocks than the buffers hold.
    """
    cfg = prepared.config
    bos, eos, topk, ratio = (
        cfg.block_reserved_bos,
        cfg.block_reserved_eos,
        cfg.topk_val,
        float(cfg.topk_ratio),
    )
    cap = max_selected_per_row if max_selected_per_row is not None else 1 << 30
    if prepared.policy is None:
        return default_budget_fn(topk, ratio, bos, eos, cap)
    raw = prepared.policy
    fn = compile_policy(raw, device)
    if fn is not raw:
        try:  # a policy torch.compile cannot take runs eagerly rather than failing inside a CUDA graph
            fn(torch.tensor([1, 64, 4096], dtype=torch.int32, device=device), topk, ratio, bos, eos)
        except Exception as exc:
            log.warning("schedule_policy: torch.compile failed (%s); running it eagerly", exc)
            fn = raw
    policy = fn

    def budget(n: torch.Tensor) -> torch.Tensor:
        return torch.clamp(apply_policy(policy, n.to(torch.int32), topk, ratio, bos, eos), max=cap)

    return budget


class VortexDecodeCore:
    """Vortex's per-step work for one pool (design §3), independent of SGLang's classes.

    Args:
        prepared: the config's flow, traced for this pool's geometry.
        layout: the pool layout (SGLang's page size, the config's block size, ``H_kv`` of this rank).
        context_len: longest sequence SGLang admits: rows have at most ``ceil(context_len / block_size)``
            blocks (the static size of every per-row list).
        device: where plans, policies and kernels run.
    """

    def __init__(
        self, prepared: PreparedFlow, layout: PoolLayout, *, context_len: int, device: torch.device | str
    ) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self.layout = layout
        self.device = torch.device(device)
        #: ``impl_backend="reference"``: the plain-PyTorch executor and attention (eager, host syncs)
        self.reference_kernels = self.config.impl_backend == "reference"
        self.executor = make_executor(
            prepared, layout, self.config.impl_backend, self.config.compilation_cache_dir, self.config.enable_pdl
        )
        self.max_blocks_per_row = max(1, math.ceil(context_len / layout.block_size))
        cfg = self.config
        #: static bound on every row's budget: the default rule's largest value, or max_topk_val for a policy
        self.max_selected_per_row = (
            max_budget_bound(self.max_blocks_per_row, cfg.topk_val, float(cfg.topk_ratio),
                             cfg.block_reserved_bos, cfg.block_reserved_eos)
            if prepared.policy is None
            else min(self.max_blocks_per_row, cfg.max_topk_val or self.max_blocks_per_row)
        )  # fmt: skip
        self.budget_fn = make_budget_fn(prepared, self.device, self.max_selected_per_row)
        #: attention's split scratch, allocated for the largest batch (allocate_buffers); None: per call
        self.attn_workspace: SparseDecodeWorkspace | None = None
        #: the indexer's plan (bounds, and the compiled indexer's per-row counters and score buffers), likewise
        self.indexer_plan: IndexerPlan | None = None
        #: "triton" sparse attention keeps softmax weights fp32 in p @ v (exact rounding) when True
        self.exact_attention = cfg.exact_attention
        self._enable_pdl = False
        self.enable_pdl = cfg.enable_pdl

    @property
    def enable_pdl(self) -> bool:
        """Whether the layer's Triton kernels (scoring, selection, attention) are launched with programmatic
        dependent launch (``VortexConfig.enable_pdl``; settable, e.g. by a benchmark comparing both)."""
        return self._enable_pdl

    @enable_pdl.setter
    def enable_pdl(self, on: bool) -> None:
        if on and self.reference_kernels:
            raise ValueError("enable_pdl: impl_backend='reference' launches no Triton kernels")
        if on:  # fail here, at engine start, rather than inside the first CUDA-graph capture
            from vortex_torch.kernels._sync import pdl_launch_options

            pdl_launch_options(True, self.device, "Vortex decode")
        self._enable_pdl = on
        if not self.reference_kernels:
            self.executor.enable_pdl = on

    @property
    def bos(self) -> int:
        return self.config.block_reserved_bos

    @property
    def eos(self) -> int:
        return self.config.block_reserved_eos

    def allocate_buffers(self, max_batch: int) -> DecodePlanBuffers:
        """Capture-stable plan buffers and attention scratch for up to ``max_batch`` requests (CUDA graphs)."""
        rows = max_batch * self.layout.num_kv_heads
        group, dim = self.prepared.geometry.group_size, self.prepared.geometry.head_dim
        splits = max(
            default_num_splits(1, self.max_selected_per_row, self.layout.block_size, dim, self.device, exact)
            for exact in (False, True)
        )  # fmt: skip
        self.attn_workspace = SparseDecodeWorkspace.allocate(rows, splits, group, dim, self.device)
        self.indexer_plan = self.executor.plan(rows, self.max_blocks_per_row, self.device)
        return DecodePlanBuffers.allocate(rows, self.max_blocks_per_row, self.device)

    def plan(
        self,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        buffers: DecodePlanBuffers | None = None,
        budget: torch.Tensor | None = None,
    ) -> DecodePlan:
        """The step's plan (``req_pool_indices``/``seq_lens`` ``[B]``, ``req_to_token [reqs, ctx]``; ``budget
        [R]`` when the caller computed the budgets on the host)."""
        return plan_decode(
            self.layout,
            req_to_token,
            req_pool_indices,
            seq_lens,
            max_blocks_per_row=self.max_blocks_per_row,
            budget_fn=self.budget_fn,
            max_selected_per_row=self.max_selected_per_row,
            buffers=buffers,
            budget=budget,
        )

    def update_cache(
        self, fields: dict[str, torch.Tensor], out_cache_loc: torch.Tensor, count: int | None = None
    ) -> None:
        """``forward_cache`` for every block whose last slot is in ``out_cache_loc [T]`` (K/V already written).

        ``count``: number of completed blocks when known on the host (extend); None in decode (a fixed-size
        masked candidate list, CUDA-graph safe). ``fields``: ``k``/``v`` ``[num_slots, H_kv, D]`` + aux fields.
        """
        if out_cache_loc is None or out_cache_loc.numel() == 0 or count == 0:
            return
        if count is None and not self.reference_kernels:  # decode: the kernel finds the completed blocks (one launch)
            self.executor.run_cache_decode(fields, out_cache_loc)
            return
        ids = completed_block_ids(self.layout, out_cache_loc, count=count)
        self.executor.run_cache(fields, ids)

    def select(
        self,
        q_rows: torch.Tensor,
        fields: dict[str, torch.Tensor],
        plan: DecodePlan,
        new_locs: torch.Tensor | None = None,
        attention: Any = None,
    ) -> torch.Tensor:
        """Indexer + selection: ``q_rows [R, G, D]`` -> ``plan.sel_indices`` (first ``sel_indptr[R]`` valid).
        ``new_locs [B]`` (only when ``executor.folds_cache_update``): the step's new token slots, whose completed
        blocks the scoring launch summarises first. ``attention`` (a ``FusedAttention``, only for an executor
        built with ``fuse_attention``): the same launch attends too (:meth:`decode_layer`)."""
        from vortex_torch.flow.compiler.base import SelectionSpec

        spec = SelectionSpec(sel_indptr=plan.sel_indptr, bos=self.bos, eos=self.eos)
        iplan = self.indexer_plan
        if iplan is None:  # no CUDA-graph buffers: the step's bound, scratch for this call only
            iplan = self.executor.plan(plan.num_rows, plan.max_blocks_per_row, q_rows.device)
        # (an eager batch above the graph buffers' size: ``run`` gives it scratch of its own)
        # the interpreter's segment ops need each entry's row and position (a host sync: eager paths only)
        dense = plan.dense_blocks_with_row_index() if self.executor.needs_row_index else plan.dense_blocks()
        extra = {} if attention is None else {"attention": attention}
        self.executor.run(q_rows, fields, dense, spec, plan.sel_indices, plan=iplan, new_locs=new_locs, **extra)
        return plan.sel_indices

    def attend(
        self, q_rows: torch.Tensor, fields: dict[str, torch.Tensor], plan: DecodePlan, sm_scale: float | None
    ) -> torch.Tensor:
        """Sparse attention over ``plan``'s selection: ``q_rows [R, G, D]`` -> ``o [R, G, D]`` (q's dtype).

        An fp8 pool's K/V are read as ``stored * fields["k_scale"]`` (``"v_scale"``), the ``[1]`` fp32 scales."""
        args = (q_rows, fields["k"], fields["v"], plan.sel_indptr, plan.sel_indices, plan.last_block_len)
        ps, bs = self.layout.page_size, self.layout.block_size
        k_scale, v_scale = fields.get("k_scale"), fields.get("v_scale")
        if self.reference_kernels:
            from vortex_torch.kernels.sparse_decode import sparse_decode_attention_reference

            return sparse_decode_attention_reference(*args, page_size=ps, block_size=bs, sm_scale=sm_scale, k_scale=k_scale, v_scale=v_scale)
        from vortex_torch.kernels.sparse_decode import sparse_decode_attention

        ws = self.attn_workspace
        num_rows, group, dim = q_rows.shape
        exact = self.exact_attention
        splits = default_num_splits(num_rows, plan.max_selected_per_row, bs, dim, q_rows.device, exact)
        if ws is not None and not ws.fits(num_rows, splits, group, dim):
            ws = None  # an eager batch above the CUDA-graph size: scratch for this call only
        return sparse_decode_attention(
            *args,
            page_size=ps,
            block_size=bs,
            sm_scale=sm_scale,
            max_blocks_per_row=plan.max_selected_per_row,
            workspace=ws,
            exact=exact,
            num_splits=splits,
            k_scale=k_scale, v_scale=v_scale,
            enable_pdl=self.enable_pdl,
        )

    def decode_layer(
        self,
        q_rows: torch.Tensor,
        fields: dict[str, torch.Tensor],
        plan: DecodePlan,
        sm_scale: float | None,
        attend: AttendFn | None = None,
        *,
        new_locs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One sparse layer of a decode step (K/V of this step already written); ``attend`` replaces
        :meth:`attend` (the FlashInfer backend runs FlashInfer's decode over the selection).

        ``new_locs [B]``: the step's new token slots, so the blocks they complete are summarised before scoring:
        inside the scoring launch when the executor folds it (``folds_cache_update``), else by
        :meth:`update_cache` first. None: the caller already updated the cache."""
        if q_rows.shape[0] != plan.num_rows:
            raise RuntimeError(
                f"Vortex decode: q has {q_rows.shape[0]} rows but the step's plan {plan.num_rows} "
                f"({plan.batch_size} requests x {plan.num_kv_heads} KV heads)"
            )
        fold = new_locs is not None and self.executor.folds_cache_update
        if new_locs is not None and not fold:
            self.update_cache(fields, new_locs)
        if attend is None and getattr(self.executor, "fuse_attention", False):
            # the executor attends in its own launch: the whole layer is one kernel (TritonExecutor). GQA
            # attention only: a subclass that attends otherwise (MLA) must not take this path
            if type(self).attend is not VortexDecodeCore.attend:
                raise RuntimeError(f"{type(self).__name__} attends with a kernel of its own: no fuse_attention")
            from vortex_torch.flow.compiler.triton_executor import FusedAttention

            out = torch.empty_like(q_rows)
            fused = FusedAttention(
                k=fields["k"], v=fields["v"], last_block_len=plan.last_block_len, out=out,
                sm_scale=sm_scale if sm_scale is not None else q_rows.shape[-1] ** -0.5,
                k_scale=fields.get("k_scale"), v_scale=fields.get("v_scale"), exact=self.exact_attention,
            )  # fmt: skip
            self.select(q_rows, fields, plan, new_locs=new_locs if fold else None, attention=fused)
            return out
        self.select(q_rows, fields, plan, new_locs=new_locs if fold else None)
        if attend is not None:
            return attend(q_rows, fields, plan)
        return self.attend(q_rows, fields, plan, sm_scale)
