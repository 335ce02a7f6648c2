"""``template_flow``: the starting point of a new contrib flow (see CONTRIBUTING.md).

Copy this folder to ``vortex_flows_contrib/<your_flow>/``, rename the class and the registered name, and
replace the centroid score below with your algorithm. Keep the module to one flow, written with the ops of
``vortex_torch.indexer`` (in ``forward_indexer``) and ``vortex_torch.cache`` (in ``forward_cache``) only.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["TemplateFlow"]


@register("template_flow")
class TemplateFlow(vFlow):
    """Template: score <q̄, c_p> with q̄ the mean query and c_p the block's mean key (replace this line).

    The first docstring line is what ``vortex list`` shows: one line, what the score is. The rest says what
    each cache field holds and how the score is computed from it.
    """

    #: title of the paper the flow implements ("" if none) and its arXiv id ("" if none)
    paper: ClassVar[str] = ""
    arxiv: ClassVar[str] = ""
    #: True when forward_indexer Saves state (Load/Save): SGLang must then run with the radix cache off
    requires_radix_cache_off: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        # One op instance per call site; indexer ops run every decode step, cache ops once per block.
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        # Aux fields per block, {name: (rows, cols)}; "k" and "v" are provided.
        return {"centroids": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)  # [1, bs, D] -> [1, 1, D]

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        q_bar = self.q_mean(q, ctx=ctx)  # [B, G, D] -> [B, 1, D]
        score = self.dot(q_bar, cache["centroids"], ctx=ctx)  # [S, 1, 1], one score per block
        self.select(score, o, ctx=ctx)
