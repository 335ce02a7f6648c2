"""``ContextBase``: the ``ctx`` a flow method receives while it is traced."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from .callsite import CallSite, at
from .errors import FlowRuleError, FlowShapeError
from .formats import FORMAT
from .graph import Graph, OpNode
from .shape_message import shape_message
from .vtensor import vTensor

if TYPE_CHECKING:
    from .op import vOp

_trace_ids = itertools.count(1)


@dataclass(frozen=True)
class Geometry:
    """The per-layer sizes a flow is traced and compiled for.

    ``group_size`` is G (query heads per KV head), ``head_dim`` D, ``block_size`` the tokens of one block,
    ``dtype`` the storage dtype of aux cache fields and indexer intermediates.
    """

    block_size: int = 16
    head_dim: int = 128
    group_size: int = 4
    dtype: torch.dtype = torch.bfloat16
    kv_dtype: torch.dtype = torch.bfloat16


class ContextBase:
    """Records the op graph of one flow method and exposes the layer geometry to it.

    Flow code only passes it on (``op(x, ctx=ctx)``) and may read ``ctx.group_size``, ``ctx.head_dim`` and
    ``ctx.block_size``; ``ctx.geometry`` holds them all, the aux-field ``dtype`` and ``kv_dtype`` included.
    """

    side: ClassVar[str] = ""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.trace_id = next(_trace_ids)
        self.graph = Graph(side=self.side)

    @property
    def block_size(self) -> int:
        return self.geometry.block_size

    @property
    def head_dim(self) -> int:
        return self.geometry.head_dim

    @property
    def group_size(self) -> int:
        return self.geometry.group_size

    @property
    def method(self) -> str:
        """The flow method this context traces."""
        return {"indexer": "forward_indexer", "cache": "forward_cache"}.get(self.side, self.side)

    def entry(self, name: str, inner: tuple[int, int], fmt: FORMAT, dtype: torch.dtype) -> vTensor:
        """Declare a named input of the method (``q``, ``o``, a cache field)."""
        t = self.graph.new_tensor(inner, fmt, dtype, name=name)
        t.trace_id = self.trace_id
        self.graph.entries[name] = t
        return t

    def check_input(self, op: vOp, t: object, site: CallSite | None) -> vTensor:
        """``t`` as an input of ``op``: a flow tensor of this very trace, and not the output slot ``o``."""
        if not isinstance(t, vTensor):
            if isinstance(t, torch.Tensor):
                fix = (
                    "flows cannot bring their own torch tensors; build constants with ops (MaskSlice gives a "
                    "positional constant) or keep learned values in a cache field"
                )
            else:
                fix = "pass the tensors the method received (q, cache['name']) or outputs of earlier ops"
            raise FlowRuleError(
                f"{op.name} got {type(t).__name__} {_short(t)} where a flow tensor was expected{at(site)}. Fix: {fix}."
            )
        if t.trace_id and t.trace_id != self.trace_id:
            raise FlowRuleError(
                f"{op.name} in {self.method} got {t.describe()} that was made by another method or trace"
                f"{at(site)}{_made_at(t)}. Tensors cannot cross methods: forward_cache and forward_indexer only "
                "share data through cache fields. Fix: write the value into a field declared in create_cache "
                "and read cache['field'] in the other method."
            )
        if t.name == "o" and self.graph.entries.get("o") is t:
            raise FlowRuleError(
                f"{op.name} got `o`{at(site)}: o is the selection slot that only the terminal "
                "topK()(score, o, ctx=ctx) / approxTopK(r)(score, o, ctx=ctx) fills. Fix: pass a score or another "
                "flow tensor."
            )
        return t

    def record(
        self,
        op: vOp,
        inputs: Sequence[vTensor],
        site: CallSite | None,
        *,
        writes: str | None = None,
        produces: bool = True,
    ) -> vTensor | None:
        """Append ``op(*inputs)`` to the graph and return its symbolic output.

        A shape error of the op's rule is re-raised naming the call site, the inputs and the rule.
        """
        out: vTensor | None = None
        if produces:
            try:
                fmt, inner = op.infer(inputs)
            except FlowShapeError as exc:
                raise FlowShapeError(shape_message(op, str(exc), inputs, site)) from None
            out = self.graph.new_tensor(inner, fmt, self.geometry.dtype)
            out.producer_site = site
            out.trace_id = self.trace_id
        self.graph.nodes.append(OpNode(op=op, inputs=tuple(inputs), output=out, writes=writes, site=site))
        return out


def _short(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _made_at(t: vTensor) -> str:
    return f"; the tensor was made at {t.producer_site}" if t.producer_site is not None else ""

