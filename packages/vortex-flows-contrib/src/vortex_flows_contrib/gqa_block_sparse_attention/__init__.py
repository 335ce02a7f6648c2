"""``gqa_block_sparse_attention``: per-head softmax over blocks of the centroid logits, max over the group."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["GQABlockSparseAttention"]


@register("gqa_block_sparse_attention")
class GQABlockSparseAttention(vFlow):
    """GQA block top-k: max over the group's heads of softmax over blocks of scale·<q_h, c_p>.

    * cache: ``centroids [1, D]`` = mean key of the block;
    * score: ``s_p = max_h softmax_p(scale * <q_h, c_p>)``; each head votes with its own attention
      distribution over the row's blocks, so a block one head needs is not averaged away.

    Args:
        scale: softmax temperature on the centroid logits (0.09 ≈ 1/sqrt(128)).
    """

    paper: ClassVar[str] = "Native Sparse Attention (GQA-group block selection)"
    arxiv: ClassVar[str] = "2502.11089"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self, scale: float = 0.09) -> None:
        super().__init__()
        self.logits = ix.GeMM()
        self.softmax = ix.Softmax(dim=0, scale=scale)
        self.head_max = ix.Max(dim=2)
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        logits = self.logits(q, cache["centroids"], ctx=ctx)  # [B, G, D] x [S, 1, D] -> [S, 1, G]
        probs = self.softmax(logits, ctx=ctx)  # over the row's blocks, per head
        score = self.head_max(probs, ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
