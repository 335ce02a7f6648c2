"""``ContextBase``: the ``ctx`` a flow method receives while it is traced."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .callsite import CallSite, at
from .errors import FlowRuleError
from .formats import FORMAT
from .graph import Graph, OpNode
from .op import vOp
from .vtensor import vTensor

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
    ``ctx.block_size``.
    """

    side: ClassVar[str] = ""
    mode: str = "profile"

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
    def vortex_dtype(self) -> torch.dtype:
        return self.geometry.dtype

    def entry(self, name: str, inner: tuple[int, int], fmt: FORMAT, dtype: torch.dtype) -> vTensor:
        """Declare a named input of the method (``q``, ``o``, a cache field)."""
        t = self.graph.new_tensor(inner, fmt, dtype, name=name)
        self.graph.entries[name] = t
        return t

    def check_input(self, op: vOp, t: object, site: CallSite | None) -> vTensor:
        if not isinstance(t, vTensor):
            raise FlowRuleError(
                f"{op.name} got a {type(t).__name__} where a flow tensor was expected{at(site)}. Flow methods "
                "may only pass the tensors they received (q, cache[...]) or op outputs to ops."
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
        """Append ``op(*inputs)`` to the graph and return its symbolic output."""
        out: vTensor | None = None
        if produces:
            fmt, inner = op.infer(inputs)
            out = self.graph.new_tensor(inner, fmt, self.geometry.dtype)
            out.producer_site = site
        self.graph.nodes.append(OpNode(op=op, inputs=tuple(inputs), output=out, writes=writes, site=site))
        return out
