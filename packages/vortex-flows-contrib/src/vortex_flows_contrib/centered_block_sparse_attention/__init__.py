"""``centered_block_sparse_attention``: centroid score minus its mean over the row (a Mean(dim=0) example)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["CenteredBlockSparseAttention"]


@register("centered_block_sparse_attention")
class CenteredBlockSparseAttention(vFlow):
    """Centered centroid score: s_p - mean_p(s) with s_p = <q̄, c_p> (Mean(dim=0) over the row's blocks).

    Subtracting a per-row constant preserves the order of the scores, so the selection equals
    ``block_sparse_attention``'s; the flow exists to show and test a dim-0 reduction (a BATCHED value
    broadcast back over the row's blocks), the building block of scores normalised per row.
    """

    paper: ClassVar[str] = "Kinetics: Rethinking Test-Time Scaling Laws"
    arxiv: ClassVar[str] = "2506.05333"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.row_mean = ix.Mean(dim=0)
        self.center = ix.Add(alpha=1.0, beta=-1.0)
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        s = self.dot(self.q_mean(q, ctx=ctx), cache["centroids"], ctx=ctx)  # [S, 1, 1]
        mu = self.row_mean(s, ctx=ctx)  # RAGGED [S, 1, 1] -> BATCHED [B, 1, 1]
        score = self.center(s, mu, ctx=ctx)  # s - mean over the row
        self.select(score, o, ctx=ctx)
