"""``running_avg_block_sparse``: centroid score smoothed over decode steps with Load/Save (radix cache
off)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["RunningAvgBlockSparse"]


@register("running_avg_block_sparse")
class RunningAvgBlockSparse(vFlow):
    """Running-average centroid score: r_t = 0.5·r_{t-1} + <q̄, c_p>, carried per block across steps.

    * cache: ``centroids [1, D]`` (mean key) and ``running_score [1, 1]``, reset to 0 by ``Fill`` when the
      block completes;
    * score: ``r_t = decay * r_{t-1} + <q̄, c_p>``: ``Load`` reads last step's value, ``Save`` stores this
      step's, and the top-k runs on ``r_t``. Blocks that mattered to recent queries stay attractive for a
      few steps, which damps selection flicker between consecutive tokens.

    Needs SGLang's radix cache off (``requires_radix_cache_off``): a reused prefix block would carry another
    request's running score.

    Args:
        decay: weight of the previous step's score (0.5).
    """

    paper: ClassVar[str] = ""
    arxiv: ClassVar[str] = ""
    requires_radix_cache_off: ClassVar[bool] = True

    def __init__(self, decay: float = 0.5) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.previous = ix.Load()
        self.update = ix.Add(alpha=decay, beta=1.0)
        self.store = ix.Save()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)
        self.reset = cx.Fill(0.0)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim), "running_score": (1, 1)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)
        self.reset(cache["running_score"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        s = self.dot(self.q_mean(q, ctx=ctx), cache["centroids"], ctx=ctx)  # [S, 1, 1]
        r = self.update(self.previous(cache["running_score"], ctx=ctx), s, ctx=ctx)  # decay * r_prev + s
        self.store(r, cache["running_score"], ctx=ctx)
        self.select(r, o, ctx=ctx)
