"""``rope_unaware_block_sparse_mla``: MLA block top-k by the NoPE (content) part of the logit only."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlowMLA

__all__ = ["RopeUnawareBlockSparseMLA"]


@register("rope_unaware_block_sparse_mla")
class RopeUnawareBlockSparseMLA(vFlowMLA):
    """MLA centroid, RoPE masked: score <q̄_nope, c_p> with the query's qk_rope_head_dim RoPE columns zeroed.

    * cache: ``centroids [1, kv_lora_rank + qk_rope_head_dim]``, the block's mean latent;
    * score: ``s_p = <q̄ ⊙ m, c_p>`` with ``q̄`` the mean absorbed query and ``m`` 1 on the first
      ``kv_lora_rank`` columns, 0 on the RoPE ones (``MaskSlice`` + ``Multiply``): the content part
      ``<q_nope·W_UK, mean kv_c>`` only, blind to position. The mask is built for the model's own
      ``kv_lora_rank`` (the original assumed 512).
    """

    paper: ClassVar[str] = ""
    arxiv: ClassVar[str] = ""
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        #: 1 on [0, kv_lora_rank), 0 on the RoPE columns; made in create_cache, which knows kv_lora_rank
        self.nope_mask: ix.MaskSlice | None = None
        self.mask_rope = ix.Multiply()
        self.dot = ix.GeMM()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int) -> CacheSpec:
        self.nope_mask = ix.MaskSlice(0, kv_lora_rank, dim=2, alpha=1.0, beta=0.0)
        return {"centroids": (1, kv_lora_rank + qk_rope_head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["latent"], cache["centroids"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, 1, D]

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        assert self.nope_mask is not None  # create_cache runs before every trace
        q_bar = self.q_mean(q, ctx=ctx)  # [B, 1, D]
        q_nope = self.mask_rope(q_bar, self.nope_mask(q_bar, ctx=ctx), ctx=ctx)  # RoPE columns zeroed
        score = self.dot(q_nope, cache["centroids"], ctx=ctx)  # [S, 1, 1]
        self.select(score, o, ctx=ctx)
