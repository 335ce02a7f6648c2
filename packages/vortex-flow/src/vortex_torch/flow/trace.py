"""Tracing a flow into op graphs and enforcing the flow rules, with errors that point at the flow's lines."""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vortex_torch import cache as cache_ops
from vortex_torch import indexer as indexer_ops
from vortex_torch.abs.context import ContextBase, Geometry
from vortex_torch.abs.errors import FlowRuleError, VortexError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import Graph, OpNode
from vortex_torch.abs.vtensor import vTensor

from .flow import CacheSpec, vFlow

RESERVED_FIELDS = ("k", "v")


def flow_location(flow: vFlow, method: str = "") -> str:
    """``file:line`` of the flow class (or of one of its methods)."""
    target: Any = getattr(type(flow), method, None) if method else type(flow)
    try:
        file = inspect.getsourcefile(target) or "?"
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return type(flow).__qualname__
    return f"{file}:{line}"


def declared_fields(flow: vFlow, block_size: int, head_dim: int) -> CacheSpec:
    """Call ``create_cache`` and check what it declares."""
    where = flow_location(flow, "create_cache")
    spec = flow.create_cache(block_size, head_dim)
    if not isinstance(spec, dict):
        raise FlowRuleError(f"create_cache must return a dict {{name: (rows, cols)}}, got {type(spec).__name__} ({where})")
    out: CacheSpec = {}
    for name, shape in spec.items():
        if name in RESERVED_FIELDS:
            raise FlowRuleError(
                f"create_cache declares {name!r} ({where}): 'k' and 'v' are provided automatically — remove it"
            )
        if not isinstance(name, str) or not name.isidentifier():
            raise FlowRuleError(f"create_cache: field name {name!r} must be an identifier string ({where})")
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or not all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise FlowRuleError(
                f"create_cache: field {name!r} must map to (rows, cols) of positive ints, got {shape!r} ({where})"
            )
        out[name] = (int(shape[0]), int(shape[1]))
    return out


class _TracedCache(Mapping[str, vTensor]):
    """The ``cache`` dict a traced method sees; a missing key names the declared ones."""

    def __init__(self, entries: dict[str, vTensor], method: str) -> None:
        self._entries = entries
        self._method = method

    def __getitem__(self, key: str) -> vTensor:
        if key not in self._entries:
            from vortex_torch.abs.callsite import at, user_callsite

            raise FlowRuleError(
                f"{self._method} reads cache[{key!r}], which create_cache does not declare{at(user_callsite())}; "
                f"available: {', '.join(sorted(self._entries))}"
            )
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class _Loc:
    """Stands for the written token slots while ``forward_cache`` is traced."""

    def __repr__(self) -> str:
        return "loc"


@dataclass
class TracedFlow:
    """A flow's two op graphs for one geometry, checked against the flow rules."""

    flow: vFlow
    geometry: Geometry
    fields: CacheSpec
    indexer: Graph
    cache: Graph

    @property
    def terminal(self) -> OpNode:
        return next(n for n in self.indexer.nodes if n.writes == "o")

    @property
    def saved_fields(self) -> set[str]:
        return {n.writes for n in self.indexer.nodes if n.writes not in (None, "o")}  # type: ignore[misc]

    @property
    def uses_save(self) -> bool:
        return bool(self.saved_fields)


def _entries(ctx: ContextBase, fields: CacheSpec, geometry: Geometry) -> dict[str, vTensor]:
    kv = (geometry.block_size, geometry.head_dim)
    out = {name: ctx.entry(name, kv, FORMAT.PAGED, geometry.kv_dtype) for name in RESERVED_FIELDS}
    out.update({name: ctx.entry(name, shape, FORMAT.PAGED, geometry.dtype) for name, shape in fields.items()})
    return out


def _run_user(flow: vFlow, method: str, *args: Any) -> None:
    try:
        getattr(flow, method)(*args)
    except VortexError:
        raise
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "vortex_torch" not in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else flow_location(flow, method)
        raise FlowRuleError(
            f"tracing {type(flow).__qualname__}.{method} failed at {where}: {type(exc).__name__}: {exc}"
        ) from exc


def trace_flow(flow: vFlow, geometry: Geometry) -> TracedFlow:
    """Trace ``forward_indexer`` and ``forward_cache`` once and check the flow rules."""
    fields = declared_fields(flow, geometry.block_size, geometry.head_dim)

    ictx = indexer_ops.Context(geometry)
    q = ictx.entry("q", (geometry.group_size, geometry.head_dim), FORMAT.BATCHED, geometry.kv_dtype)
    o = ictx.entry("o", (1, 1), FORMAT.RAGGED, torch.int32)
    _run_user(flow, "forward_indexer", q, o, _TracedCache(_entries(ictx, fields, geometry), "forward_indexer"), ictx)

    cctx = cache_ops.Context(geometry)
    _run_user(flow, "forward_cache", _TracedCache(_entries(cctx, fields, geometry), "forward_cache"), _Loc(), cctx)

    traced = TracedFlow(flow=flow, geometry=geometry, fields=fields, indexer=ictx.graph, cache=cctx.graph)
    _check_terminal(traced)
    _check_fields(traced)
    return traced


def _check_terminal(t: TracedFlow) -> None:
    terminals = [n for n in t.indexer.nodes if n.writes == "o"]
    where = flow_location(t.flow, "forward_indexer")
    if not terminals:
        raise FlowRuleError(
            f"forward_indexer of {type(t.flow).__qualname__} ({where}) never selects blocks: it must end in "
            "topK()(score, o, ctx=ctx) or approxTopK(ratio)(score, o, ctx=ctx)"
        )
    if len(terminals) > 1:
        sites = ", ".join(str(n.site) for n in terminals)
        raise FlowRuleError(f"forward_indexer calls topK/approxTopK {len(terminals)} times ({sites}); call it once")
    if t.indexer.nodes[-1] is not terminals[0]:
        later = t.indexer.nodes[-1]
        raise FlowRuleError(
            f"forward_indexer must end in its topK/approxTopK call ({terminals[0].site}), but {later.op.name} is "
            f"called after it (at {later.site})"
        )


def _check_fields(t: TracedFlow) -> None:
    where = flow_location(t.flow, "create_cache")
    written = t.cache.written_fields() | t.indexer.written_fields()
    read = t.indexer.read_fields() - {"q", "o"}
    for name in t.fields:
        if name not in written:
            raise FlowRuleError(
                f"cache field {name!r} (declared at {where}) is never written: store into it in forward_cache "
                f"(e.g. CMean(dim=1)(cache['k'], cache[{name!r}], loc=loc, ctx=ctx)) or with Save, or remove it"
            )
        if name not in read:
            raise FlowRuleError(
                f"cache field {name!r} (declared at {where}) is never read by forward_indexer: use it in the "
                "score or remove it from create_cache"
            )
    for name in t.saved_fields:
        fills = [n for n in t.cache.nodes if n.writes == name]
        if not fills:
            raise FlowRuleError(
                f"field {name!r} is accumulated with Save but forward_cache never resets it: add "
                f"Fill(0.0)(cache[{name!r}], loc=loc, ctx=ctx) so a new block starts from a known value"
            )


def check_ops_are_known(t: TracedFlow) -> None:
    """Every node's op class must belong to vortex_torch (no user-defined vOp subclasses)."""
    for graph in (t.indexer, t.cache):
        for n in graph.nodes:
            if not type(n.op).__module__.startswith("vortex_torch."):
                raise FlowRuleError(f"{n.op.name} at {n.site} is not a Vortex op; flows may only use Vortex ops")

