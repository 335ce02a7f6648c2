"""Ops that move or generate data within a block: Transpose, Reshape, Kron, MaskSlice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..abs.errors import FlowShapeError
from ..abs.formats import FORMAT, combined_format
from ..abs.op_args import arg_error, check_dim, check_size, is_int
from ..abs.vtensor import vTensor
from ._base import IndexerOp


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class Transpose(IndexerOp):
    """``[S, D0, D1] -> [S, D1, D0]``."""

    arity = 1
    triton_expr = "tl.permute({x}, (0, 2, 1))"

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        return combined_format(x.format), (x.inner[1], x.inner[0])

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0].transpose(1, 2)


class Reshape(IndexerOp):
    """Row-major reshape of each block: ``Reshape(-1, D0', D1')``, ``D0' * D1' == D0 * D1``."""

    arity = 1

    def __init__(self, lead: int, d0: int, d1: int) -> None:
        super().__init__()
        if not is_int(lead) or lead != -1:
            raise arg_error(f"Reshape keeps the block axis: its first argument must be -1, got {lead!r}")
        self.d0 = check_size("Reshape", "the second size", d0)
        self.d1 = check_size("Reshape", "the third size", d1)

    def params(self) -> dict[str, Any]:
        return {"d0": self.d0, "d1": self.d1}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        if x.inner[0] * x.inner[1] != self.d0 * self.d1:
            raise FlowShapeError(f"Reshape(-1, {self.d0}, {self.d1}) cannot hold a block of shape {list(x.inner)}")
        return combined_format(x.format), (self.d0, self.d1)

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return x.reshape(x.shape[0], self.d0, self.d1)


class Kron(IndexerOp):
    """Per-block Kronecker product over the chosen inner axes (the others broadcast elementwise).

    * ``dim=(1, 2)``: ``out[i*b0 + k, j*b1 + l] = x[i, j] * y[k, l]``;
    * ``dim=1``: ``out[i*b0 + k, j] = x[i, j] * y[k, j]``;
    * ``dim=2``: ``out[i, j*b1 + l] = x[i, j] * y[i, l]``.

    Each size on a Kronecker axis must be a power of two.
    """

    arity = 2

    def __init__(self, dim: int | tuple[int, int] = (1, 2)) -> None:
        super().__init__()
        dims = (dim,) if is_int(dim) else tuple(dim) if isinstance(dim, tuple | list) else ()
        if not dims or not all(is_int(d) for d in dims) or set(dims) - {1, 2}:
            raise arg_error(f"Kron: dim must be 1, 2 or (1, 2), got {dim!r}")
        self.dims = tuple(sorted(set(dims)))

    def params(self) -> dict[str, Any]:
        return {"dim": self.dims}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        x, y = inputs
        out = []
        for axis in (0, 1):
            a, b = x.inner[axis], y.inner[axis]
            if axis + 1 in self.dims:
                if not (_is_pow2(a) and _is_pow2(b)):
                    raise FlowShapeError(f"Kron: sizes on Kronecker axis {axis + 1} must be powers of two, got {a}, {b}")
                out.append(a * b)
            else:
                if a != b and 1 not in (a, b):
                    raise FlowShapeError(f"Kron: axis {axis + 1} sizes {a} and {b} do not broadcast")
                out.append(max(a, b))
        return combined_format(x.format, y.format), (out[0], out[1])

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        n = max(x.shape[0], y.shape[0])
        xe, ye = x[:, :, None, :, None], y[:, None, :, None, :]  # [N, a0, 1, a1, 1] * [N, 1, b0, 1, b1]
        if 1 not in self.dims:
            xe, ye = x[:, :, None, :, None], y[:, :, None, None, :]
        if 2 not in self.dims:
            xe, ye = x[:, :, None, :, None], y[:, None, :, :, None]
        prod = xe * ye  # [N, A0, B0, A1, B1] with size-1 axes where no Kronecker product is taken
        return prod.reshape(n, prod.shape[1] * prod.shape[2], prod.shape[3] * prod.shape[4])


class MaskSlice(IndexerOp):
    """Positional constant shaped like ``x``: ``alpha`` inside ``[start, end)`` along ``dim`` (1 or 2), else
    ``beta``. Multiply by it to zero a slice of features."""

    arity = 1

    def __init__(self, start: int, end: int, dim: int = 2, alpha: float = 1.0, beta: float = 0.0) -> None:
        super().__init__()
        self.dim = check_dim("MaskSlice", dim, (1, 2), "1 or 2")
        if not (is_int(start) and is_int(end)) or not 0 <= start <= end:
            raise arg_error(f"MaskSlice: need ints 0 <= start <= end, got [{start!r}, {end!r})")
        self.start, self.end = start, end
        self.alpha, self.beta = float(alpha), float(beta)

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "dim": self.dim, "alpha": self.alpha, "beta": self.beta}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        (x,) = inputs
        if self.end > x.inner[self.dim - 1]:
            raise FlowShapeError(f"MaskSlice: end {self.end} is past axis {self.dim} of size {x.inner[self.dim - 1]}")
        return combined_format(x.format), x.inner

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        idx = torch.arange(x.shape[self.dim], device=x.device)
        inside = (idx >= self.start) & (idx < self.end)
        shape = [1, 1, 1]
        shape[self.dim] = -1
        vals = torch.where(inside, self.alpha, self.beta).to(x.dtype).view(shape)
        return vals.expand_as(x).clone()
