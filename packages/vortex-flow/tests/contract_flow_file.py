"""A flow in a plain file, loaded with ``build_vflow(name, module_path)`` by the contract run of
test_testing.py."""

from __future__ import annotations

from typing import Any

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow


@register("tt_file_centroid")
class FileCentroid(vFlow):
    """Centroid block top-k from a flow file: score <q̄, mean key> per block."""

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"centroids": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        self.select(self.dot(self.q_mean(q, ctx=ctx), cache["centroids"], ctx=ctx), o, ctx=ctx)
