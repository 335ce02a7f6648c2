"""``rope_aware_block_sparse_mla``: MLA block top-k by the full decode logit against the block's mean latent."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlowMLA

__all__ = ["RopeAwareBlockSparseMLA"]


@register("rope_aware_block_sparse_mla")
class RopeAwareBlockSparseMLA(vFlowMLA):
    """MLA centroid: score <q̄, c_p> with c_p the block's mean latent [kv_c | k_pe], NoPE and RoPE parts both.

    * cache: ``centroids [1, kv_lora_rank + qk_rope_head_dim]``, the mean of the block's latents;
    * score: ``s_p = <q̄, c_p>`` with ``q̄`` the mean of the request's absorbed queries ``[q_nope·W_UK | q_pe]``:
      the mean over the block of the full decode logit (RoPE term included), averaged over the heads.
    """

    paper: ClassVar[str] = "Kinetics: Rethinking Test-Time Scaling Laws"
    arxiv: ClassVar[str] = "2506.05333"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int) -> CacheSpec:
        return {"centroids": (1, kv_lora_rank + qk_rope_head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["latent"], cache["centroids"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, 1, D]

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, H_q, D] -> [B, 1, D]
        score = self.dot(q_bar, cache["centroids"], ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
