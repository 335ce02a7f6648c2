"""``quest_mla``: Quest's per-block bound on the MLA latent, with the mean absorbed query."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlowMLA

__all__ = ["QuestMLA"]


@register("quest_mla")
class QuestMLA(vFlowMLA):
    """Quest on MLA: score Σ_d max(q̄_d·M_d, q̄_d·m_d) from per-block elementwise max/min latents.

    * cache: ``max [1, D]`` and ``min [1, D]`` (``D = kv_lora_rank + qk_rope_head_dim``), the elementwise max and
      min of the block's latents ``[kv_c | k_pe]``;
    * score: ``s_p = Σ_d max(q̄_d M_pd, q̄_d m_pd)``, an upper bound of the full decode logit ``<q̄, latent_t>``
      (RoPE term included) over the block's tokens, ``q̄`` the mean of the request's absorbed queries.
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
        self.latent_max = cx.Max(dim=1)
        self.latent_min = cx.Min(dim=1)

    def create_cache(self, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int) -> CacheSpec:
        d = kv_lora_rank + qk_rope_head_dim
        return {"max": (1, d), "min": (1, d)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.latent_max(cache["latent"], cache["max"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, 1, D]
        self.latent_min(cache["latent"], cache["min"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, 1, D]
        hi = self.times_max(q_bar, cache["max"], ctx=ctx)  # [S, 1, D]
        lo = self.times_min(q_bar, cache["min"], ctx=ctx)
        score = self.total(self.upper(hi, lo, ctx=ctx), ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
