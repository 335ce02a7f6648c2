"""Ops over a row's blocks (dim 0): Softmax, Normalize, Conv1d. With dim 1 or 2 Softmax/Normalize act inside
a block and fuse like elementwise ops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..abs.errors import FlowShapeError
from ..abs.formats import FORMAT, combined_format
from ..abs.layout import DenseBlocks
from ..abs.op import Schedule
from ..abs.op_args import arg_error, check_dim
from ..abs.vtensor import vTensor
from ._base import IndexerOp
from .reduce import segment_reduce


class _AxisOp(IndexerOp):
    arity = 1
    allowed_dims: tuple[int, ...] = (0, 1, 2)

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self.dim = check_dim(self.name, dim, self.allowed_dims, "0, 1 or 2")
        self.schedule = Schedule.STANDALONE if dim == 0 else Schedule.FUSED

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        if self.dim == 0 and x.format == FORMAT.BATCHED:
            raise FlowShapeError(f"{self.name}(dim=0) works over a row's blocks: its input must be RAGGED")
        return (FORMAT.RAGGED if self.dim == 0 else combined_format(x.format)), x.inner


class Softmax(_AxisOp):
    """``softmax(scale * x)`` along ``dim``; ``dim=0`` normalises over each row's blocks."""

    def __init__(self, dim: int = 0, scale: float = 1.0) -> None:
        super().__init__(dim)
        self.scale = float(scale)

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "scale": self.scale}

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scale * xs[0], dim=self.dim)

    def reference_segmented(self, x: torch.Tensor, seg: DenseBlocks) -> torch.Tensor:
        z = self.scale * x
        e = torch.exp(z - segment_reduce(z, seg, "amax")[seg.row_of])
        return e / segment_reduce(e, seg, "sum")[seg.row_of]


class Normalize(_AxisOp):
    """``x / sum(x)`` along ``dim``; ``dim=0`` normalises over each row's blocks."""

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0] / xs[0].sum(self.dim, keepdim=True)

    def reference_segmented(self, x: torch.Tensor, seg: DenseBlocks) -> torch.Tensor:
        return x / segment_reduce(x, seg, "sum")[seg.row_of]


class Conv1d(IndexerOp):
    """Depthwise 1-D convolution along a row's blocks, zero-padded at the row's ends ("same" length).

    ``weight`` is a nested list ``[K, D0, D1]`` (or ``[K]``, shared by every feature);
    ``out[s] = sum_t weight[t] * x[s + t - (K - 1) // 2]``.
    """

    arity = 1
    schedule = Schedule.STANDALONE
    allowed_dims: tuple[int, ...] = (0,)

    def __init__(self, weight: Any, dim: int = 0, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dim = check_dim("Conv1d", dim, self.allowed_dims, "0 (it runs along a row's blocks)")
        try:
            w = torch.as_tensor(weight, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise arg_error(f"Conv1d: weight must be a nested list of numbers [K] or [K, D0, D1] ({exc})") from None
        if w.dim() == 1:
            w = w.view(-1, 1, 1)
        if w.dim() != 3 or w.shape[0] == 0 or 0 in w.shape:
            raise arg_error(f"Conv1d: weight must be [K] or [K, D0, D1], got shape {list(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise arg_error("Conv1d: weight must be finite")
        self.weight = w.to(dtype).float()

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight.tolist()}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        if x.format == FORMAT.BATCHED:
            raise FlowShapeError("Conv1d works over a row's blocks: its input must be RAGGED")
        w0, w1 = self.weight.shape[1:]
        for axis, (ws, xs) in enumerate(((w0, x.inner[0]), (w1, x.inner[1]))):
            if ws not in (1, xs):
                raise FlowShapeError(f"Conv1d: weight axis {axis + 1} has size {ws}, input has {xs}")
        return FORMAT.RAGGED, x.inner

    def reference_segmented(self, x: torch.Tensor, seg: DenseBlocks) -> torch.Tensor:
        k = self.weight.shape[0]
        half = (k - 1) // 2
        w = self.weight.to(x.device)
        out = torch.zeros_like(x)
        n = seg.lengths()[seg.row_of]
        for t in range(k):
            src = seg.pos + t - half
            ok = (src >= 0) & (src < n)
            flat = torch.where(ok, torch.arange(x.shape[0], device=x.device) + t - half, 0)
            out += torch.where(ok.view(-1, 1, 1), w[t] * x[flat], 0.0)
        return out
