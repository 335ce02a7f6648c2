"""``vOp``: the base of every indexer and cache op."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .callsite import CallSite, at, user_callsite
from .errors import FlowRuleError, FlowShapeError
from .formats import FORMAT

if TYPE_CHECKING:
    from .context import ContextBase
    from .vtensor import vTensor


class Schedule(enum.Enum):
    """How the compiler may place an op: fused into a workload kernel (W) or run as its own kernel (S)."""

    W = "fused"
    S = "standalone"


def broadcast_inner(op: str, *inners: tuple[int, int]) -> tuple[int, int]:
    """NumPy broadcasting of inner shapes ``(D0, D1)``: each axis equal or 1."""
    out = []
    for axis in range(2):
        sizes = {s[axis] for s in inners} - {1}
        if len(sizes) > 1:
            shapes = ", ".join(f"[*, {a}, {b}]" for a, b in inners)
            raise FlowShapeError(f"{op}: inputs {shapes} do not broadcast on axis {axis + 1}")
        out.append(sizes.pop() if sizes else 1)
    return (out[0], out[1])


class vOp:  # noqa: N801 - the name users know from the original project
    """A flow op. Calling it inside a flow method records a graph node; it computes nothing then.

    Subclasses define the shape rule (:meth:`infer`) and the plain-PyTorch semantics (:meth:`reference`), which
    every compiled kernel must reproduce.
    """

    side: ClassVar[str] = "indexer"
    schedule: ClassVar[Schedule] = Schedule.W
    #: number of tensor inputs in the call form
    arity: ClassVar[int] = 1

    def __init__(self) -> None:
        self._traced: tuple[int, CallSite | None] | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def params(self) -> dict[str, Any]:
        """Constructor parameters, for reprs, codegen and cache keys."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name}({args})"

    # -- tracing ---------------------------------------------------------------------------------------------
    def _claim(self, ctx: ContextBase) -> CallSite | None:
        """Enforce "one op instance, one call site" within one trace."""
        from .context import ContextBase

        site = user_callsite()
        if not isinstance(ctx, ContextBase):
            raise FlowRuleError(f"{self.name}: pass the ctx your flow method received as ctx=ctx{at(site)}")
        if ctx.side != self.side:
            where = "forward_indexer" if self.side == "indexer" else "forward_cache"
            pkg = "vortex_torch.indexer" if ctx.side == "indexer" else "vortex_torch.cache"
            raise FlowRuleError(
                f"{self.name} from vortex_torch.{self.side} can only be used in {where}; "
                f"use the {pkg} op of the same name here{at(site)}"
            )
        if self._traced is not None and self._traced[0] == ctx.trace_id:
            first = self._traced[1]
            raise FlowRuleError(
                f"op instance {self.name} is called twice (first at {first}, again{at(site)}). An op instance "
                "serves one call site: create a second instance in __init__ for the second call."
            )
        self._traced = (ctx.trace_id, site)
        return site

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        """Output (format, inner shape) for these inputs; raises :class:`FlowShapeError` when they do not fit."""
        raise NotImplementedError

    # -- semantics -------------------------------------------------------------------------------------------
    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        """Plain-PyTorch semantics on aligned fp32 ``[N, D0, D1]`` tensors (leading axis broadcasts)."""
        raise NotImplementedError


def shape_error(op: vOp, message: str, site: CallSite | None) -> FlowShapeError:
    return FlowShapeError(f"{op.name}: {message}{at(site)}")
