"""``h2o_sparse_attention``: heavy hitters by accumulated, decayed attention mass per block (H2O,
arXiv:2306.14048)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["H2OSparseAttention"]


@register("h2o_sparse_attention")
class H2OSparseAttention(vFlow):
    """H2O heavy hitters: a_t = decay·a_{t-1} + Σ_h softmax_p(scale·<q_h, c_p>), the block's attention mass.

    * cache: ``centroids [1, D]`` (mean key) and ``mass [1, 1]``, the accumulated attention mass, reset to 0
      by ``Fill`` when the block completes;
    * score: each query head's attention over the row's blocks is estimated from the centroid logits
      (``Softmax(dim=0)``), summed over the group's heads, and added to the block's decayed history
      (``Load`` / ``Add`` / ``Save``). Blocks that keep receiving attention (H2O's heavy hitters) win;
      recent blocks are covered by the always-kept ``eos`` blocks, H2O's recent window.

    Unlike H2O, nothing is evicted: every block stays in the pool and a block that becomes relevant again
    is found once its mass grows. Needs SGLang's radix cache off (``requires_radix_cache_off``).

    Args:
        decay: weight of the accumulated mass at each step (63/64).
        scale: softmax temperature on the centroid logits (0.09 ≈ 1/sqrt(128)).
    """

    paper: ClassVar[str] = (
        "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"
    )
    arxiv: ClassVar[str] = "2306.14048"
    requires_radix_cache_off: ClassVar[bool] = True

    def __init__(self, decay: float = 0.984375, scale: float = 0.09) -> None:
        super().__init__()
        self.logits = ix.GeMM()
        self.attention = ix.Softmax(dim=0, scale=scale)
        self.group_mass = ix.Sum(dim=2)
        self.history = ix.Load()
        self.accumulate = ix.Add(alpha=decay, beta=1.0)
        self.store = ix.Save()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)
        self.reset = cx.Fill(0.0)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim), "mass": (1, 1)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)
        self.reset(cache["mass"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        logits = self.logits(q, cache["centroids"], ctx=ctx)  # [B, G, D] x [S, 1, D] -> [S, 1, G]
        probs = self.attention(logits, ctx=ctx)  # per head, over the row's blocks
        mass = self.group_mass(probs, ctx=ctx)  # [S, 1, 1]
        acc = self.accumulate(self.history(cache["mass"], ctx=ctx), mass, ctx=ctx)  # decay * a_prev + mass
        self.store(acc, cache["mass"], ctx=ctx)
        self.select(acc, o, ctx=ctx)
