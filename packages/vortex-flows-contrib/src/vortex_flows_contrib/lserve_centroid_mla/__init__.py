"""``lserve_centroid_mla``: MLA sub-block centroids (16 tokens each) of the latent, max over sub-blocks."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlowMLA

__all__ = ["LServeCentroidMLA"]


@register("lserve_centroid_mla")
class LServeCentroidMLA(vFlowMLA):
    """MLA sub-block centroids: score max_j <q̄, c_pj> over the mean latents of a block's 16-token sub-blocks.

    * cache: ``centroids [n, kv_lora_rank + qk_rope_head_dim]`` with ``n = block_size // sub_block``: the mean
      latent ``[kv_c | k_pe]`` of each sub-block;
    * score: ``s_p = max_j <q̄, c_pj>`` with ``q̄`` the mean absorbed query (full logit, RoPE included): large
      blocks for attention, small-page resolution for scoring (LServe's idea, centroids for Quest's bound).

    ``block_size`` must be a multiple of ``sub_block``.

    Args:
        sub_block: tokens per sub-block (16).
    """

    paper: ClassVar[str] = "LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention"
    arxiv: ClassVar[str] = "2502.14866"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self, sub_block: int = 16) -> None:
        super().__init__()
        self.sub_block = int(sub_block)
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.best = ix.Max(dim=1)
        self.select = ix.topK()
        self.centroids = cx.MeanInterleave(dim=1, k=self.sub_block)

    def create_cache(self, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int) -> CacheSpec:
        return {"centroids": (max(1, block_size // self.sub_block), kv_lora_rank + qk_rope_head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroids(cache["latent"], cache["centroids"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, n, D]

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, 1, D]
        per_sub = self.dot(q_bar, cache["centroids"], ctx=ctx)  # [S, n, 1]
        score = self.best(per_sub, ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
