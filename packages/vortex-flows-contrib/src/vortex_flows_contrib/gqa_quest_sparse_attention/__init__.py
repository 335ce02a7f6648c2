"""``gqa_quest_sparse_attention``: Quest's per-block key bound for every query head, max over the group."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["GQAQuestSparseAttention"]


@register("gqa_quest_sparse_attention")
class GQAQuestSparseAttention(vFlow):
    """GQA Quest: score max_h Σ_d max(q_hd·M_d, q_hd·m_d), the Quest bound of each query head.

    * cache: ``max [1, D]`` and ``min [1, D]``, the elementwise max and min of the block's keys;
    * score: the largest per-head Quest upper bound over the row's ``G`` query heads, so a block that bounds
      one head's logit high is kept even when the heads disagree.
    """

    paper: ClassVar[str] = "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"
    arxiv: ClassVar[str] = "2406.10774"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.times_max = ix.Multiply()
        self.times_min = ix.Multiply()
        self.upper = ix.Maximum()
        self.total = ix.Sum(dim=2)
        self.head_max = ix.Max(dim=1)
        self.select = ix.topK()
        self.key_max = cx.Max(dim=1)
        self.key_min = cx.Min(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"max": (1, head_dim), "min": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.key_max(cache["k"], cache["max"], loc=loc, ctx=ctx)
        self.key_min(cache["k"], cache["min"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        hi = self.times_max(q, cache["max"], ctx=ctx)  # [B, G, D] * [S, 1, D] -> [S, G, D]
        lo = self.times_min(q, cache["min"], ctx=ctx)
        bound = self.total(self.upper(hi, lo, ctx=ctx), ctx=ctx)  # [S, G, 1]
        score = self.head_max(bound, ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
