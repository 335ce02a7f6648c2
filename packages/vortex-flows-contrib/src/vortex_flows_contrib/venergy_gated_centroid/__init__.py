"""``venergy_gated_centroid``: centroid score scaled by the block's mean value norm."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["VEnergyGatedCentroid"]


@register("venergy_gated_centroid")
class VEnergyGatedCentroid(vFlow):
    """Value-energy gated centroid: score <q̄, c_p> · mean_t ||v_t||₂ per block.

    * cache: ``centroids [1, D]`` (mean key) and ``v_energy [1, 1]``, the mean L2 norm of the block's values;
    * score: ``s_p = <q̄, c_p> * e_p``: a block's contribution to the output is its attention weight times
      its values, so blocks with large values are favoured among those the query likes equally. (A negative
      logit is pushed further down by a large ``e_p``; the ranking of well-scored blocks is what matters.)
    """

    paper: ClassVar[str] = ""
    arxiv: ClassVar[str] = ""
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.gate = ix.Multiply()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)
        self.token_norm = cx.L2Norm(dim=2)
        self.energy = cx.Mean(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim), "v_energy": (1, 1)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)
        norms = self.token_norm(cache["v"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, bs, 1]
        self.energy(norms, cache["v_energy"], loc=loc, ctx=ctx)  # -> [1, 1, 1]

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        s = self.dot(self.q_mean(q, ctx=ctx), cache["centroids"], ctx=ctx)  # [S, 1, 1]
        score = self.gate(s, cache["v_energy"], ctx=ctx)
        self.select(score, o, ctx=ctx)
