"""Per-block matrix products."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..abs.errors import FlowShapeError
from ..abs.formats import FORMAT, combined_format
from ..abs.vtensor import vTensor
from ._base import IndexerOp


class GeMM(IndexerOp):
    """``GeMM(x, y) = y @ xᵀ`` per block: x ``[1 or S, Nx, K]``, y ``[S, Ny, K]`` -> ``[S, Ny, Nx]``.

    The usual call scores blocks against the query: ``GeMM(q_mean [B, 1, D], centroids [S, 1, D]) -> [S, 1, 1]``.
    """

    arity = 2

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        x, y = inputs
        if x.inner[1] != y.inner[1]:
            raise FlowShapeError(
                f"{self.name}(x, y) contracts the last axis: x is [*, {x.inner[0]}, {x.inner[1]}] but y is "
                f"[*, {y.inner[0]}, {y.inner[1]}]"
            )
        return combined_format(x.format, y.format), (y.inner[0], x.inner[0])

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        return torch.matmul(y, x.transpose(1, 2))


class GeMV(GeMM):
    """Dot product per block: x ``[B, 1, D]``, y ``[S, 1, D]`` -> ``[S, 1, 1]``."""

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        x, y = inputs
        if x.inner[0] != 1 or y.inner[0] != 1:
            raise FlowShapeError(f"{self.name} takes vectors [*, 1, D]; got x {x.shape} and y {y.shape} (use GeMM)")
        return super().infer(inputs)
