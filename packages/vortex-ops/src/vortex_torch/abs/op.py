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
            shapes = " and ".join(f"[*, {a}, {b}]" for a, b in inners)
            raise FlowShapeError(
                f"{op}: inputs {shapes} do not broadcast on axis {axis + 1} (sizes {sorted(sizes)}); each inner "
                "axis must be equal or 1 in every input"
            )
        out.append(sizes.pop() if sizes else 1)
    return (out[0], out[1])


class vOp:
    """A flow op. Calling it inside a flow method records a graph node; it computes nothing then.

    Subclasses define the shape rule (:meth:`infer`) and the plain-PyTorch semantics (:meth:`reference`), which
    every compiled kernel must reproduce.
    """

    side: ClassVar[str] = "indexer"
    #: a class default; ops whose placement depends on a parameter (``dim=0``) set it per instance
    schedule: Schedule = Schedule.W
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
        """Enforce "one op instance, one call site" within one trace, and the op's side (indexer or cache)."""
        from .context import ContextBase

        site = user_callsite()
        if not isinstance(ctx, ContextBase):
            raise FlowRuleError(
                f"{self.name} got ctx={ctx!r}{at(site)}: pass the ctx your flow method received, as ctx=ctx"
            )
        if ctx.side != self.side:
            raise FlowRuleError(self._wrong_side_message(ctx.side, site))
        if self._traced is not None and self._traced[0] == ctx.trace_id:
            first = self._traced[1]
            raise FlowRuleError(
                f"op instance {self!r} is called twice in one trace: first at {first}, again{at(site)}. An op "
                f"instance serves one call site. Fix: create one instance per call in __init__ (e.g. "
                f"self.{self.name.lower()}_a = {self!r} and self.{self.name.lower()}_b = {self!r})."
            )
        self._traced = (ctx.trace_id, site)
        return site

    def _wrong_side_message(self, ctx_side: str, site: CallSite | None) -> str:
        import importlib

        method = {"indexer": "forward_indexer", "cache": "forward_cache"}
        other = importlib.import_module(f"vortex_torch.{ctx_side}")
        if hasattr(other, self.name):
            fix = f"use vortex_torch.{ctx_side}.{self.name} there instead"
        else:
            fix = (
                f"vortex_torch.{ctx_side} has no {self.name}; {method.get(ctx_side, ctx_side)} cannot do this"
            )
        return (
            f"{self.name} from vortex_torch.{self.side} is an op of {method.get(self.side, self.side)} but is called "
            f"in {method.get(ctx_side, ctx_side)}{at(site)}. Fix: {fix}."
        )

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        """Output (format, inner shape) for these inputs; raises :class:`FlowShapeError` when they do not fit."""
        raise NotImplementedError

    # -- semantics -------------------------------------------------------------------------------------------
    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        """Plain-PyTorch semantics on aligned fp32 ``[N, D0, D1]`` tensors (leading axis broadcasts)."""
        raise NotImplementedError


def shape_error(op: vOp, message: str, site: CallSite | None) -> FlowShapeError:
    return FlowShapeError(f"{op.name}: {message}{at(site)}")


_BASES = frozenset({"vOp", "IndexerOp", "CacheOp"})


def shape_rule(op: vOp) -> str:
    """The op's shape rule for error messages, from the docstrings of its class and of the ancestors up to the
    one that defines ``infer``: the first paragraph that states a mapping (contains ``->``), else the first."""
    docs: list[str] = []
    for cls in type(op).__mro__:
        if cls.__name__ in _BASES or not cls.__module__.startswith("vortex_torch."):
            continue
        doc = (cls.__doc__ or "").strip()
        if doc:
            docs.append(" ".join(doc.split("\n\n")[0].split()).replace("``", ""))
        if "infer" in vars(cls):
            break
    with_arrow = [d for d in docs if "->" in d]
    return with_arrow[0] if with_arrow else (docs[0] if docs else "")
