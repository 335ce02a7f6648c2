"""Reductions: over an inner axis (dim 1 or 2, keepdim, fused) or over a row's blocks (dim 0, standalone)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..abs.errors import FlowShapeError
from ..abs.formats import FORMAT, combined_format
from ..abs.layout import DenseBlocks
from ..abs.op import Schedule
from ..abs.op_args import check_dim
from ..abs.vtensor import vTensor
from ._base import IndexerOp

# PyTorch prints "index_reduce() is in beta" once per process on the first amax/amin below; its results are
# tested against the reference here, so the notice is only noise in `vortex check`. Only that message, and only
# when raised from this module, is ignored.
warnings.filterwarnings(
    "ignore", message=r"index_reduce\(\) is in beta", category=UserWarning, module=re.escape(__name__) + "$"
)


def segment_reduce(x: torch.Tensor, seg: DenseBlocks, how: str) -> torch.Tensor:
    """Reduce ``x [nnz, D0, D1]`` over each row's blocks -> ``[R, D0, D1]`` (``how``: sum|mean|amax|amin|l2)."""
    out_shape = (seg.num_rows, *x.shape[1:])
    if how in ("amax", "amin"):
        out = torch.zeros(out_shape, dtype=x.dtype, device=x.device)
        return out.index_reduce_(0, seg.row_of, x, how, include_self=False)
    base = x * x if how == "l2" else x
    out = torch.zeros(out_shape, dtype=x.dtype, device=x.device).index_add_(0, seg.row_of, base)
    if how == "mean":
        return out / seg.lengths().to(x.dtype).view(-1, 1, 1)
    return torch.sqrt(out) if how == "l2" else out


class Reduction(IndexerOp):
    """Keepdim reduction. ``dim=1``: ``[S, D0, D1] -> [S, 1, D1]``; ``dim=2``: ``-> [S, D0, 1]``;
    ``dim=0``: over each row's blocks, RAGGED ``[S, D0, D1]`` -> BATCHED ``[B, D0, D1]``."""

    arity = 1
    how = "sum"
    allowed_dims: tuple[int, ...] = (0, 1, 2)

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = check_dim(self.name, dim, self.allowed_dims)
        self.schedule = Schedule.STANDALONE if dim == 0 else Schedule.FUSED

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        if self.dim == 0:
            if x.format == FORMAT.BATCHED:
                raise FlowShapeError(f"{self.name}(dim=0) reduces over a row's blocks: its input must be RAGGED")
            return FORMAT.BATCHED, x.inner
        inner = (1, x.inner[1]) if self.dim == 1 else (x.inner[0], 1)
        return combined_format(x.format), inner

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        axis = self.dim
        if self.how == "sum":
            return x.sum(axis, keepdim=True)
        if self.how == "mean":
            return x.mean(axis, keepdim=True)
        if self.how == "amax":
            return x.amax(axis, keepdim=True)
        if self.how == "amin":
            return x.amin(axis, keepdim=True)
        return torch.sqrt((x * x).sum(axis, keepdim=True))

    def reference_segmented(self, x: torch.Tensor, seg: DenseBlocks) -> torch.Tensor:
        return segment_reduce(x, seg, self.how)


class Sum(Reduction):
    """Sum along ``dim`` (keepdim)."""

    how = "sum"


class Mean(Reduction):
    """Mean along ``dim`` (keepdim)."""

    how = "mean"


class Max(Reduction):
    """Max along ``dim`` (keepdim)."""

    how = "amax"


class Min(Reduction):
    """Min along ``dim`` (keepdim)."""

    how = "amin"


class L2Norm(Reduction):
    """Euclidean norm along ``dim`` (keepdim)."""

    how = "l2"
