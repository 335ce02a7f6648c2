"""``block_sparse_attention``: block top-k by key centroid, the quick-start flow (Kinetics,
arXiv:2506.05333)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["BlockSparseAttention"]


@register("block_sparse_attention")
class BlockSparseAttention(vFlow):
    """Block top-k by centroid: score <mean_g q_g, mean_t k_t> per block (Kinetics).

    * cache: ``centroids [1, D]`` = mean key of the block;
    * score: ``s_p = <q̄, c_p>`` with ``q̄`` the mean of the row's ``G`` query heads.
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

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, 1, D]

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, G, D] -> [B, 1, D]
        score = self.dot(q_bar, cache["centroids"], ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
