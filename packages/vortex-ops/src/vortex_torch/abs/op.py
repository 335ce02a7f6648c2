"""``vOp``: the base of every indexer and cache op."""

from __future__ import annotations

import enum
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .callsite import CallSite, at, user_callsite
from .context import ContextBase
from .errors import FlowRuleError, FlowShapeError
from .formats import FORMAT

if TYPE_CHECKING:
    from .layout import DenseBlocks
    from .vtensor import vTensor


class Schedule(enum.StrEnum):
    """Where the compiler places an op; also the kind of the kernel that runs it (``KernelGroup.kind``)."""

    #: inside one kernel with its neighbours: per block (RAGGED) or per row (BATCHED)
    FUSED = "fused"
    #: a kernel of its own, one program per row looping over the row's blocks (the ``dim=0`` ops)
    STANDALONE = "standalone"
    #: the terminal selection kernel (``topK`` / ``approxTopK``)
    SELECT = "select"


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

    An op is defined in one class: its shape rule (:meth:`infer`), its plain-PyTorch semantics
    (:meth:`reference` for a ``FUSED`` placement, :meth:`reference_segmented` for ``STANDALONE``), which every
    compiled kernel must reproduce, and, for an elementwise op, its Triton lowering as :attr:`triton_expr`.
    Ops that need more than one expression are lowered by a function that vortex-flow's compiler registers for
    the class (``vortex_torch.flow.compiler.lowering``); vortex-flow's ``test_op_coverage.py`` fails for an
    exported op without a reference or a lowering. docs/contributing-an-op.md walks through adding one.
    """

    side: ClassVar[str] = "indexer"
    #: a class default; ops whose placement depends on a parameter (``dim=0``) set it per instance
    schedule: Schedule = Schedule.FUSED
    #: number of tensor inputs in the call form
    arity: ClassVar[int] = 1
    #: The op as one Triton expression of its input tiles ``{x}`` (and ``{y}``) and of its :meth:`params` (as
    #: fp32 literals, ``{alpha}``), e.g. ``"tl.exp({x})"``; the compiler's generic lowering emits it. A string,
    #: so that vortex-ops needs nothing of the compiler; ``None`` for ops lowered by a registered function.
    triton_expr: ClassVar[str | None] = None

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
        """Plain-PyTorch semantics of a ``FUSED`` placement on aligned fp32 ``[N, D0, D1]`` tensors (the leading
        axis broadcasts)."""
        raise NotImplementedError(f"{self.name} has no fused reference")

    def reference_segmented(self, x: torch.Tensor, seg: DenseBlocks) -> torch.Tensor:
        """Plain-PyTorch semantics of a ``STANDALONE`` placement: ``x [nnz, D0, D1]`` RAGGED over the rows of
        ``seg``; the result is RAGGED, or BATCHED ``[R, D0, D1]`` for a reduction."""
        raise NotImplementedError(f"{self.name} has no row-wise (dim=0) reference")
