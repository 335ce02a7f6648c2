"""Cache ops: what ``forward_cache`` may call. Every tensor is one completed block, ``[1, D0, D1]`` in the
user's view (``cache["k"]`` and ``cache["v"]`` are ``[1, block_size, D]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..abs.callsite import at
from ..abs.context import ContextBase
from ..abs.errors import FlowRuleError, FlowShapeError
from ..abs.formats import FORMAT
from ..abs.op_args import check_size
from ..abs.vtensor import vTensor
from ..indexer import elementwise as ew
from ..indexer import matmul, reduce, shape
from ._base import CacheOp, cache_variant


class Context(ContextBase):
    """Trace context of ``forward_cache``."""

    side = "cache"


Mean = cache_variant(reduce.Mean, dims=(1, 2))
Max = cache_variant(reduce.Max, dims=(1, 2))
Min = cache_variant(reduce.Min, dims=(1, 2))
L2Norm = cache_variant(reduce.L2Norm, dims=(1, 2))
GeMM = cache_variant(matmul.GeMM)
Multiply = cache_variant(ew.Multiply)
Add = cache_variant(ew.Add)
Maximum = cache_variant(ew.Maximum)
Minimum = cache_variant(ew.Minimum)
WhereEqual = cache_variant(ew.WhereEqual)
WhereNotEqual = cache_variant(ew.WhereNotEqual)
WhereGreater = cache_variant(ew.WhereGreater)
WhereGreaterEqual = cache_variant(ew.WhereGreaterEqual)
WhereLess = cache_variant(ew.WhereLess)
WhereLessEqual = cache_variant(ew.WhereLessEqual)
Relu = cache_variant(ew.Relu)
Sigmoid = cache_variant(ew.Sigmoid)
Silu = cache_variant(ew.Silu)
Add_Mul = cache_variant(ew.Add_Mul)
Abs = cache_variant(ew.Abs)
Log = cache_variant(ew.Log)
Exp = cache_variant(ew.Exp)
MaskSlice = cache_variant(shape.MaskSlice)
Reshape = cache_variant(shape.Reshape)


class Interleave(CacheOp, reduce.Reduction):
    """Fold contiguous groups of ``k`` along ``dim`` (1 or 2): the axis shrinks from ``n`` to ``n // k``.

    ``MeanInterleave(dim=1, k=16)(cache["k"], f)`` stores one mean key per 16-token sub-block.
    """

    allowed_dims = (1, 2)

    def __init__(self, dim: int = 1, k: int = 16) -> None:
        super().__init__(dim)
        self.k = check_size(self.name, "k", k)

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "k": self.k}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        size = x.inner[self.dim - 1]
        if size % self.k:
            raise FlowShapeError(f"{self.name}: axis {self.dim} of size {size} is not a multiple of k={self.k}")
        inner = list(x.inner)
        inner[self.dim - 1] = size // self.k
        return FORMAT.RAGGED, (inner[0], inner[1])

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        n, d0, d1 = x.shape
        if self.dim == 1:
            grouped = x.reshape(n, d0 // self.k, self.k, d1)
            axis = 2
        else:
            grouped = x.reshape(n, d0, d1 // self.k, self.k)
            axis = 3
        if self.how == "mean":
            return grouped.mean(axis)
        if self.how == "amax":
            return grouped.amax(axis)
        if self.how == "amin":
            return grouped.amin(axis)
        return torch.sqrt((grouped * grouped).sum(axis))


class MeanInterleave(Interleave):
    __doc__ = Interleave.__doc__
    how = "mean"


class MaxInterleave(Interleave):
    __doc__ = Interleave.__doc__
    how = "amax"


class MinInterleave(Interleave):
    __doc__ = Interleave.__doc__
    how = "amin"


class L2NormInterleave(Interleave):
    __doc__ = Interleave.__doc__
    how = "l2"


class Fill(CacheOp):
    """``Fill(alpha)(cache["f"], loc=loc, ctx=ctx)``: set field ``f`` of each completed block to ``alpha``.

    Use it to reset per-block state that the indexer accumulates with ``Load``/``Save``.
    """

    arity = 0

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def __call__(self, *args: Any, loc: Any = None, ctx: ContextBase, output: Any = None) -> vTensor:
        site = self._claim(ctx)
        dest = args[0] if args else output
        if len(args) > 1 or not isinstance(dest, vTensor) or dest.format != FORMAT.PAGED or dest.name in ("k", "v"):
            raise FlowRuleError(f"Fill takes one declared cache field: Fill(a)(cache['f'], loc=loc, ctx=ctx){at(site)}")
        ctx.record(self, [], site, writes=dest.name, produces=False)
        return dest

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        """``alpha`` everywhere in the field; Fill has no tensor input, so executors pass it the field it writes
        (``[N, r, c]``, for the shape)."""
        return torch.full_like(xs[0], self.alpha)
