"""``lserve_sparse_attention``: Quest bound per 16-token sub-block and per query head (LServe,
arXiv:2502.14866)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["LServeSparseAttention"]


@register("lserve_sparse_attention")
class LServeSparseAttention(vFlow):
    """LServe: Quest bound of every (query head, 16-token sub-block) pair, max over both (Kron(dim=1)).

    * cache: ``max [n, D]`` and ``min [n, D]`` with ``n = block_size // sub_block``: the elementwise max and
      min keys of each ``sub_block``-token sub-block (MaxInterleave / MinInterleave);
    * score: ``s_p = max_{h, j} Σ_d max(q_hd M_pjd, q_hd m_pjd)``. ``Kron(dim=1)`` pairs every query head
      with every sub-block (``[G, D] ⊗ [n, D] -> [G·n, D]``), so a large block is kept when any of its small
      pieces may hold a large logit for any head: the physical block stays large (cheap attention) while
      the bound is as tight as Quest on small pages.

    ``block_size`` must be a multiple of ``sub_block``, and ``G`` and ``block_size // sub_block`` powers of
    two (Kron's rule); with ``block_size == sub_block`` the flow equals ``gqa_quest_sparse_attention``.

    Args:
        sub_block: tokens per sub-block (LServe's logical page; 16).
    """

    paper: ClassVar[str] = "LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention"
    arxiv: ClassVar[str] = "2502.14866"
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self, sub_block: int = 16) -> None:
        super().__init__()
        self.sub_block = int(sub_block)
        self.pair_max = ix.Kron(dim=1)
        self.pair_min = ix.Kron(dim=1)
        self.upper = ix.Maximum()
        self.total = ix.Sum(dim=2)
        self.best = ix.Max(dim=1)
        self.select = ix.topK()
        self.key_max = cx.MaxInterleave(dim=1, k=self.sub_block)
        self.key_min = cx.MinInterleave(dim=1, k=self.sub_block)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        subs = max(1, block_size // self.sub_block)
        return {"max": (subs, head_dim), "min": (subs, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.key_max(cache["k"], cache["max"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, n, D]
        self.key_min(cache["k"], cache["min"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        hi = self.pair_max(q, cache["max"], ctx=ctx)  # [B, G, D] ⊗ [S, n, D] -> [S, G·n, D]
        lo = self.pair_min(q, cache["min"], ctx=ctx)
        bound = self.total(self.upper(hi, lo, ctx=ctx), ctx=ctx)  # [S, G·n, 1]
        score = self.best(bound, ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
