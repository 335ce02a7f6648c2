from typing import Dict
import torch
from vortex_torch.flow import vFlow, register
from vortex_torch.indexer import GeMM, Mean, topK
from vortex_torch.cache import Mean as CMean
from vortex_torch.abs import ContextBase


@register("custom_sparse_attention")
class CustomSparseAttention(vFlow):
    def __init__(self):
        super().__init__()
        # Indexer-side ops (run every decode step)
        self.mean = Mean(dim=1)  # average over the query heads
        self.gemm = GeMM()  # GeMM(x, y) = y @ xᵀ
        self.output_func = topK()  # must end in topK / approxTopK
        # Cache-side ops (run once per finished page)
        self.reduction = CMean(dim=1)  # one centroid (mean key) per page

    def forward_indexer(self, q, o, cache: Dict[str, torch.Tensor], ctx: ContextBase):
        # No native torch ops here — every tensor flows through Vortex ops.
        q_mean = self.mean(q, ctx=ctx)  # [B, 1, D]
        score = self.gemm(q_mean, cache["centroids"], ctx=ctx)  # [S, 1, 1]
        self.output_func(score, o, ctx=ctx)  # selected pages -> o

    def forward_cache(self, cache: Dict[str, torch.Tensor], loc, ctx: ContextBase):
        # triggered only when a page is finished
        self.reduction(cache["k"], cache["centroids"], loc=loc, ctx=ctx)

    def create_cache(self, block_size: int, head_dim: int):
        # "k" and "v" are provided automatically — do not declare them
        return {"centroids": (1, head_dim)}
