"""``quest_sparse_attention``: Quest's per-block key bound with the group's mean query (arXiv:2406.10774)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["QuestSparseAttention"]


@register("quest_sparse_attention")
class QuestSparseAttention(vFlow):
    """Quest: score Σ_d max(q̄_d·M_d, q̄_d·m_d) from per-block elementwise max/min keys, mean query.

    * cache: ``max [1, D]`` and ``min [1, D]``, the elementwise max and min of the block's keys;
    * score: ``s_p = Σ_d max(q̄_d M_pd, q̄_d m_pd)``, an upper bound of ``<q̄, k_t>`` over the block's keys
      whatever the sign of each ``q̄_d``; ``q̄`` is the mean of the row's ``G`` query heads.
    """

    paper: ClassVar[str] = "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"
    arxiv: ClassVar[str] = "2406.10774"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.times_max = ix.Multiply()
        self.times_min = ix.Multiply()
        self.upper = ix.Maximum()
        self.total = ix.Sum(dim=2)
        self.select = ix.topK()
        self.key_max = cx.Max(dim=1)
        self.key_min = cx.Min(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"max": (1, head_dim), "min": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.key_max(cache["k"], cache["max"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, 1, D]
        self.key_min(cache["k"], cache["min"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, 1, D]
        hi = self.times_max(q_bar, cache["max"], ctx=ctx)  # [S, 1, D]
        lo = self.times_min(q_bar, cache["min"], ctx=ctx)
        score = self.total(self.upper(hi, lo, ctx=ctx), ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
