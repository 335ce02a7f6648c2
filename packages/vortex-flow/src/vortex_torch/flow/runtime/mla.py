"""``MLAReferenceRuntime``: the reference runtime for MLA models (DeepSeek-V2/V3, GLM) and ``vFlowMLA`` flows.

An MLA layer caches one latent row ``[kv_c | k_pe]`` per token (``D = kv_lora_rank + qk_rope_head_dim``). The
runtime is :class:`ReferenceRuntime` with one "KV head" whose K buffer is the latent (``[num_slots, 1, D]``, no
V buffer): rows are requests, ``G = H_q``, the flow is traced for an :class:`MLAGeometry`, ``forward_cache``
sees ``cache["latent"] [N, block_size, D]`` of every completed block, the indexer gets the absorbed queries
``q [B, H_q, D]`` and attention (:func:`sparse_mla_decode_reference`) returns ``o [B, H_q, kv_lora_rank]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vortex_torch.abs.context import Geometry
from vortex_torch.abs.mla import MLAGeometry
from vortex_torch.kernels.sparse_decode_mla.reference import sparse_mla_decode_reference

from ..flow import vFlow
from .config import RuntimeConfig
from .engine import AttentionImpl, ReferenceRuntime
from .pool import RequestId


class MLAReferenceRuntime(ReferenceRuntime):
    """CPU reference decode engine for one ``vFlowMLA`` over a ``num_layers``-layer MLA model.

    Args:
        flow: a ``vFlowMLA`` instance (a vFlow raises the flow-rule error that says so).
        num_layers: layers of the model.
        num_heads: query heads ``H_q`` (all attend to the one latent head).
        kv_lora_rank, qk_rope_head_dim: the latent's two parts (512 and 64 on DeepSeek-V2/V3).
        config, num_pages, kv_dtype, device, attention, check_selection, keep_selection_log,
        shuffle_pages_seed: as :class:`ReferenceRuntime` (``attention="triton"`` runs the MLA Triton kernel).
    """

    kv_fields = ("k",)

    def __init__(
        self,
        flow: vFlow,
        num_layers: int,
        num_heads: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        config: RuntimeConfig,
        num_pages: int,
        kv_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        *,
        attention: AttentionImpl = "reference",
        check_selection: bool = True,
        keep_selection_log: bool = False,
        shuffle_pages_seed: int | None = None,
    ) -> None:
        if kv_lora_rank <= 0 or qk_rope_head_dim < 0:
            raise ValueError(
                f"MLAReferenceRuntime: kv_lora_rank must be > 0 and qk_rope_head_dim >= 0, got {kv_lora_rank}, "
                f"{qk_rope_head_dim}"
            )
        self.kv_lora_rank = kv_lora_rank
        self.qk_rope_head_dim = qk_rope_head_dim
        super().__init__(
            flow,
            num_layers,
            1,
            kv_lora_rank + qk_rope_head_dim,
            num_heads,
            config,
            num_pages,
            kv_dtype,
            device,
            attention=attention,
            check_selection=check_selection,
            keep_selection_log=keep_selection_log,
            shuffle_pages_seed=shuffle_pages_seed,
        )

    def _make_geometry(
        self, config: RuntimeConfig, head_dim: int, group_size: int, kv_dtype: torch.dtype
    ) -> Geometry:
        return MLAGeometry(
            block_size=config.block_size,
            head_dim=head_dim,
            group_size=group_size,
            dtype=config.dtype,
            kv_dtype=kv_dtype,
            qk_rope_head_dim=self.qk_rope_head_dim,
        )

    @property
    def latent_dim(self) -> int:
        """``kv_lora_rank + qk_rope_head_dim``: the width of a latent row and of an absorbed query."""
        return self.head_dim

    # -- writes ---------------------------------------------------------------------------------------------------
    def append_latent(
        self, layer: int, rids: Sequence[RequestId], latent: torch.Tensor, counts: Sequence[int]
    ) -> torch.Tensor:
        """Write the next tokens' latents ``[sum(counts), D]`` (``[kv_c | k_pe]``, k_pe after RoPE) of several
        requests into ``layer`` and summarise every block they complete (see :meth:`append_kv`).

        Returns the completed block ids ``[M] int64``.
        """
        if latent.dim() != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"append_latent: latent must be [N, D={self.latent_dim}], got {tuple(latent.shape)}")
        return self.append_kv(layer, rids, latent[:, None, :], None, counts)

    def gather_latent(self, layer: int, rid: RequestId) -> torch.Tensor:
        """Latents ``layer`` holds for ``rid``, in position order -> ``[num_stored, D]``."""
        return self.gather_kv(layer, rid)[0][:, 0]

    # -- attention ------------------------------------------------------------------------------------------------
    def _attend(
        self,
        layer: int,
        q_rows: torch.Tensor,
        indptr: torch.Tensor,
        ids: torch.Tensor,
        last_block_len: torch.Tensor,
        sm_scale: float | None,
    ) -> torch.Tensor:
        latent = self.pool.k_cache(layer)  # [num_slots, 1, D]
        ps, bs = self.layout.page_size, self.layout.block_size
        args = (q_rows, latent, indptr, ids, last_block_len)
        if self.attention == "triton":
            from vortex_torch.kernels.sparse_decode_mla import sparse_mla_decode

            return sparse_mla_decode(
                *args, page_size=ps, block_size=bs, v_head_dim=self.kv_lora_rank, sm_scale=sm_scale
            )
        return sparse_mla_decode_reference(
            *args, page_size=ps, block_size=bs, v_head_dim=self.kv_lora_rank, sm_scale=sm_scale
        )
