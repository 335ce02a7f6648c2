"""The SGLang-independent core of sparse MLA decode (DeepSeek-V2/V3, GLM): :class:`VortexDecodeCore` for one
latent head, with MLA attention.

An MLA layer's pool (SGLang's ``MLATokenToKVPool``) holds one latent row ``[kv_c | k_pe]`` per token in a
``[num_slots, 1, kv_lora_rank + qk_rope_head_dim]`` buffer. To Vortex that is a K buffer with one head, so the
GQA core is reused unchanged for everything but attention: the in-graph plan (one kernel per step, rows =
requests since ``H_kv = 1``), the generated cache-update kernel over completed blocks of ``fields["k"]`` (the
latent; the flow reads it as ``cache["latent"]``), the compiled indexer with the absorbed queries ``q [B, H_q,
kv_lora_rank + qk_rope_head_dim]`` as rows ``[R, G = H_q, D]``, and the selection. Attention is
:func:`vortex_torch.kernels.sparse_decode_mla.sparse_mla_decode` over the selected latent blocks, one launch,
split scratch allocated with the plan buffers, returning ``o [B, H_q, kv_lora_rank]``.

``fields`` here is ``{"k": latent [num_slots, 1, D], **aux}`` (no ``"v"``); for an fp8 latent cache also
``"k_scale"`` / ``"v_scale"`` (``[1]`` fp32): keys are ``latent * k_scale`` (the compiled cache update and indexer
read the latent so too), values ``kv_c * v_scale``.
"""

from __future__ import annotations

import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.kernels.sparse_decode_mla.triton_kernel import SparseMLADecodeWorkspace, default_num_splits

from .decode_core import VortexDecodeCore
from .flow_spec import PreparedFlow
from .planner import DecodePlan, DecodePlanBuffers


class VortexMLADecodeCore(VortexDecodeCore):
    """Sparse decode of an MLA pool: plan, cache update, indexer and selection of :class:`VortexDecodeCore`
    (one latent head), attention over latent blocks.

    Args:
        prepared: the config's vFlowMLA traced for ``MLAGeometry(head_dim = kv_lora_rank + qk_rope_head_dim,
            group_size = H_q per rank)``.
        layout: the pool layout with ``num_kv_heads = 1``.
        context_len, device: as :class:`VortexDecodeCore`.
        kv_lora_rank: width of ``kv_c`` (the value and output width).
    """

    def __init__(
        self,
        prepared: PreparedFlow,
        layout: PoolLayout,
        *,
        context_len: int,
        device: torch.device | str,
        kv_lora_rank: int,
    ) -> None:
        if layout.num_kv_heads != 1:
            raise ValueError(f"an MLA pool has one latent head, got a layout with {layout.num_kv_heads}")
        super().__init__(prepared, layout, context_len=context_len, device=device)
        self.kv_lora_rank = kv_lora_rank
        self.num_heads = prepared.geometry.group_size
        #: MLA attention's split scratch for the largest batch (allocate_buffers); None: per call
        self.mla_workspace: SparseMLADecodeWorkspace | None = None

    def allocate_buffers(self, max_batch: int) -> DecodePlanBuffers:
        """Capture-stable plan buffers and MLA attention scratch for up to ``max_batch`` requests."""
        rows = max_batch  # one latent head: a row per request
        splits = max(  # exact_attention may be switched after this: room for both tilings
            default_num_splits(
                1, self.num_heads, self.max_selected_per_row, self.layout.block_size, self.kv_lora_rank,
                self.device, exact,
            )
            for exact in (False, True)
        )  # fmt: skip
        self.mla_workspace = SparseMLADecodeWorkspace.allocate(
            rows, splits, self.num_heads, self.kv_lora_rank, self.device
        )
        self.indexer_plan = self.executor.plan(rows, self.max_blocks_per_row, self.device)
        return DecodePlanBuffers.allocate(rows, self.max_blocks_per_row, self.device)

    def attend(
        self, q_rows: torch.Tensor, fields: dict[str, torch.Tensor], plan: DecodePlan, sm_scale: float | None
    ) -> torch.Tensor:
        """MLA attention over ``plan``'s selection: ``q_rows [B, H_q, D]`` (absorbed) -> ``o [B, H_q,
        kv_lora_rank]`` in q's dtype; values are the first ``kv_lora_rank`` columns of the latents."""
        args = (q_rows, fields["k"], plan.sel_indptr, plan.sel_indices, plan.last_block_len)
        ps, bs, rank = self.layout.page_size, self.layout.block_size, self.kv_lora_rank
        k_scale, v_scale = fields.get("k_scale"), fields.get("v_scale")
        if self.reference_kernels:
            from vortex_torch.kernels.sparse_decode_mla import sparse_mla_decode_reference

            return sparse_mla_decode_reference(
                *args, page_size=ps, block_size=bs, v_head_dim=rank, sm_scale=sm_scale, k_scale=k_scale, v_scale=v_scale
            )
        from vortex_torch.kernels.sparse_decode_mla import sparse_mla_decode

        ws = self.mla_workspace
        rows, heads, _ = q_rows.shape
        splits = default_num_splits(rows, heads, plan.max_selected_per_row, bs, rank, q_rows.device,
                                    self.exact_attention)  # fmt: skip
        if ws is not None and not ws.fits(rows, splits, heads, rank):
            ws = None  # an eager batch above the CUDA-graph size: scratch for this call only
        return sparse_mla_decode(
            *args,
            page_size=ps,
            block_size=bs,
            v_head_dim=rank,
            sm_scale=sm_scale,
            max_blocks_per_row=plan.max_selected_per_row,
            workspace=ws,
            exact=self.exact_attention,
            enable_pdl=self.enable_pdl,
            k_scale=k_scale, v_scale=v_scale,
        )
