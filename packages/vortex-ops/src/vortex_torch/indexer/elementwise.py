"""Elementwise ops. Math is fp32 on aligned ``[N, D0, D1]`` tensors; inner shapes broadcast NumPy-style."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..abs.formats import FORMAT, combined_format
from ..abs.op import broadcast_inner
from ..abs.vtensor import vTensor
from ._base import IndexerOp

#: What the Where* ops return where their predicate fails: an additive mask value that survives bf16.
MASKED = -1e30


class _Unary(IndexerOp):
    """``f(beta * x + alpha)``-style unary op with two scalar parameters."""

    arity = 1
    default_alpha = 0.0
    default_beta = 1.0

    def __init__(self, alpha: float | None = None, beta: float | None = None) -> None:
        super().__init__()
        self.alpha = float(self.default_alpha if alpha is None else alpha)
        self.beta = float(self.default_beta if beta is None else beta)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        return combined_format(*(t.format for t in inputs)), inputs[0].inner


class Relu(_Unary):
    """``x if x >= alpha else beta`` (defaults: the standard ReLU). Shape ``[S, D0, D1] -> [S, D0, D1]``."""

    triton_expr = "tl.where({x} >= {alpha}, {x}, {beta})"

    default_beta = 0.0

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return torch.where(x >= self.alpha, x, torch.full_like(x, self.beta))


class Sigmoid(_Unary):
    """``1 / (1 + exp(beta * x + alpha))``; the defaults (alpha=0, beta=-1) give the standard sigmoid."""

    triton_expr = "1.0 / (1.0 + tl.exp(({beta} * {x} + {alpha})))"

    default_beta = -1.0

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return 1.0 / (1.0 + torch.exp(self.beta * x + self.alpha))


class Silu(_Unary):
    """``x / (1 + exp(beta * x + alpha))``; the defaults (alpha=0, beta=-1) give the standard SiLU."""

    triton_expr = "{x} / (1.0 + tl.exp(({beta} * {x} + {alpha})))"

    default_beta = -1.0

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return x / (1.0 + torch.exp(self.beta * x + self.alpha))


class Add_Mul(_Unary):  # noqa: N801 - the name users know from the original project
    """``beta * x + alpha``."""

    triton_expr = "({beta} * {x} + {alpha})"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return self.beta * x + self.alpha


class Abs(_Unary):
    """``|beta * x + alpha|``."""

    triton_expr = "tl.abs(({beta} * {x} + {alpha}))"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return torch.abs(self.beta * x + self.alpha)


class Log(_Unary):
    """``log(beta * x + alpha)``."""

    triton_expr = "tl.log(({beta} * {x} + {alpha}))"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return torch.log(self.beta * x + self.alpha)


class Exp(_Unary):
    """``exp(beta * x + alpha)``."""

    triton_expr = "tl.exp(({beta} * {x} + {alpha}))"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        (x,) = xs
        return torch.exp(self.beta * x + self.alpha)


class _Binary(IndexerOp):
    arity = 2

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        return combined_format(*(t.format for t in inputs)), broadcast_inner(self.name, *(t.inner for t in inputs))


class Multiply(_Binary):
    """``x * y`` (broadcasting)."""

    triton_expr = "{x} * {y}"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        return x * y


class Add(_Binary):
    """``alpha * x + beta * y`` (broadcasting)."""

    triton_expr = "{alpha} * {x} + {beta} * {y}"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        return self.alpha * x + self.beta * y


class Maximum(_Binary):
    """``max(x, y)`` elementwise."""

    triton_expr = "tl.maximum({x}, {y})"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        return torch.maximum(x, y)


class Minimum(_Binary):
    """``min(x, y)`` elementwise."""

    triton_expr = "tl.minimum({x}, {y})"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        return torch.minimum(x, y)


class _Where(_Binary):
    """Additive mask: 0 where ``predicate(x, y)`` holds, else ``MASKED`` (-1e30)."""

    predicate = "=="

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        x, y = xs
        ops = {
            "==": torch.eq, "!=": torch.ne, ">": torch.gt, ">=": torch.ge, "<": torch.lt, "<=": torch.le,
        }  # fmt: skip
        hold = ops[self.predicate](x, y)
        return torch.where(hold, torch.zeros_like(x * y), torch.full_like(x * y, MASKED))


class WhereEqual(_Where):
    """0 where ``x == y`` else -1e30."""

    predicate = "=="
    triton_expr = f"tl.where({{x}} == {{y}}, 0.0, {MASKED!r})"


class WhereNotEqual(_Where):
    """0 where ``x != y`` else -1e30."""

    predicate = "!="
    triton_expr = f"tl.where({{x}} != {{y}}, 0.0, {MASKED!r})"


class WhereGreater(_Where):
    """0 where ``x > y`` else -1e30."""

    predicate = ">"
    triton_expr = f"tl.where({{x}} > {{y}}, 0.0, {MASKED!r})"


class WhereGreaterEqual(_Where):
    """0 where ``x >= y`` else -1e30."""

    predicate = ">="
    triton_expr = f"tl.where({{x}} >= {{y}}, 0.0, {MASKED!r})"


class WhereLess(_Where):
    """0 where ``x < y`` else -1e30."""

    predicate = "<"
    triton_expr = f"tl.where({{x}} < {{y}}, 0.0, {MASKED!r})"


class WhereLessEqual(_Where):
    """0 where ``x <= y`` else -1e30."""

    predicate = "<="
    triton_expr = f"tl.where({{x}} <= {{y}}, 0.0, {MASKED!r})"
