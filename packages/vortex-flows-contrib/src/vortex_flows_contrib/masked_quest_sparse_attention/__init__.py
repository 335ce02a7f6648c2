"""``masked_quest_sparse_attention``: Quest with a slice of feature dimensions left out of the bound."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["MaskedQuestSparseAttention"]


@register("masked_quest_sparse_attention")
class MaskedQuestSparseAttention(vFlow):
    """Masked Quest: the Quest bound with feature dims [0, 8) of the mean query zeroed (MaskSlice).

    * cache: ``max [1, D]`` and ``min [1, D]`` as in ``quest_sparse_attention``;
    * score: ``s_p = Σ_{d ∉ [start, end)} max(q̄_d M_pd, q̄_d m_pd)``: ``MaskSlice(start, end)`` builds a 0/1
      feature mask that multiplies the mean query, so the masked dimensions (for instance a few outlier
      channels that dominate the bound) contribute nothing.

    Args:
        start, end: the masked feature range ``[start, end)`` (``end <= head_dim``).
    """

    paper: ClassVar[str] = "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"
    arxiv: ClassVar[str] = "2406.10774"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self, start: int = 0, end: int = 8) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.keep = ix.MaskSlice(start, end, dim=2, alpha=0.0, beta=1.0)
        self.apply_mask = ix.Multiply()
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
        self.key_max(cache["k"], cache["max"], loc=loc, ctx=ctx)
        self.key_min(cache["k"], cache["min"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, 1, D]
        q_kept = self.apply_mask(q_bar, self.keep(q_bar, ctx=ctx), ctx=ctx)  # dims [start, end) -> 0
        hi = self.times_max(q_kept, cache["max"], ctx=ctx)  # [S, 1, D]
        lo = self.times_min(q_kept, cache["min"], ctx=ctx)
        score = self.total(self.upper(hi, lo, ctx=ctx), ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
