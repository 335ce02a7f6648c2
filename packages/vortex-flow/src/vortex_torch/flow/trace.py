"""Tracing a flow into op graphs and enforcing the flow rules, with errors that point at the flow's lines.

Every error raised here (and by the ops while they are traced) is a :class:`FlowRuleError` or
:class:`FlowShapeError`, raised before any GPU memory is touched. Its message names the flow file and line of
the offending call where there is one (``(at file.py:12: `code`)``) and ends with the fix.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from vortex_torch import cache as cache_ops
from vortex_torch import indexer as indexer_ops
from vortex_torch.abs.callsite import CallSite, at, traceback_callsite, user_callsite
from vortex_torch.abs.context import ContextBase, Geometry
from vortex_torch.abs.errors import FlowRuleError, FlowShapeError, VortexError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import Graph, OpNode
from vortex_torch.abs.vtensor import vTensor

from .flow import CacheSpec, vFlow

RESERVED_FIELDS = ("k", "v")
#: names of forward_indexer's own inputs; a cache field of that name would be ambiguous
RESERVED_NAMES = ("q", "o")


def _source_target(flow: vFlow, method: str = "") -> Any:
    return getattr(type(flow), method, None) if method else type(flow)


def method_site(flow: vFlow, method: str = "") -> CallSite | None:
    """``file:line`` of the ``def`` of a flow method (or of the class statement)."""
    target = _source_target(flow, method)
    try:
        file = inspect.getsourcefile(target)
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return None
    return CallSite(file, line) if file else None


def flow_location(flow: vFlow, method: str = "") -> str:
    """``file:line`` of the flow class (or of one of its methods)."""
    site = method_site(flow, method)
    return str(site) if site is not None else type(flow).__qualname__


def flow_file(flow: vFlow) -> str | None:
    try:
        return inspect.getsourcefile(type(flow))
    except TypeError:
        return None


def key_site(flow: vFlow, method: str, key: str) -> CallSite | None:
    """Line of the string literal ``key`` in a flow method (a dict key in ``create_cache``), else the ``def``."""
    fallback = method_site(flow, method)
    target = _source_target(flow, method)
    try:
        lines, start = inspect.getsourcelines(target)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (TypeError, OSError, SyntaxError):
        return fallback
    if fallback is None:
        return None
    hits: list[tuple[int, int]] = []  # (priority, line): a dict key beats any other mention
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            hits += [(0, k.lineno) for k in node.keys if isinstance(k, ast.Constant) and k.value == key]
        elif isinstance(node, ast.Constant) and node.value == key:
            hits.append((1, node.lineno))
    if not hits:
        return fallback
    return CallSite(fallback.filename, start + min(hits)[1] - 1)


def _where(site: CallSite | None, flow: vFlow, method: str) -> str:
    return at(site) if site is not None else f" ({type(flow).__qualname__}.{method})"


def declared_fields(flow: vFlow, block_size: int, head_dim: int) -> CacheSpec:
    """Call ``create_cache`` and check what it declares."""
    spec = _run_user(flow, "create_cache", block_size, head_dim)
    def_site = method_site(flow, "create_cache")
    example = "{'centroids': (1, head_dim)}"
    if spec is None:
        raise FlowRuleError(
            f"create_cache returned None{_where(def_site, flow, 'create_cache')}. Fix: return the aux fields as a "
            f"dict, e.g. `return {example}`, or `return {{}}` when the flow needs only k and v."
        )
    if not isinstance(spec, dict):
        raise FlowRuleError(
            f"create_cache must return a dict {{name: (rows, cols)}}, got {type(spec).__name__}"
            f"{_where(def_site, flow, 'create_cache')}. Fix: return e.g. {example}."
        )
    out: CacheSpec = {}
    for name, shape in spec.items():
        site = key_site(flow, "create_cache", name) if isinstance(name, str) else def_site
        where = _where(site, flow, "create_cache")
        if not isinstance(name, str) or not name.isidentifier():
            raise FlowRuleError(
                f"create_cache declares a field named {name!r}{where}: names must be identifier strings. Fix: "
                "use a name like 'centroids'."
            )
        if name in RESERVED_FIELDS:
            raise FlowRuleError(
                f"create_cache declares {name!r}{where}, but 'k' and 'v' are provided automatically "
                f"([block_size, head_dim] in the KV dtype). Fix: remove {name!r} from the returned dict."
            )
        if name in RESERVED_NAMES:
            raise FlowRuleError(
                f"create_cache declares a field named {name!r}{where}, the name of a forward_indexer input. "
                f"Fix: rename the field (e.g. {name + '_state'!r})."
            )
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise FlowRuleError(
                f"create_cache: field {name!r} maps to {shape!r}{where}, but every field is one [rows, cols] "
                f"matrix per block. Fix: map it to a (rows, cols) pair of positive ints, e.g. (1, head_dim)."
            )
        out[name] = (int(shape[0]), int(shape[1]))
    return out


class _TracedCache(Mapping[str, vTensor]):
    """The read-only ``cache`` dict a traced method sees; a missing key names the declared ones."""

    def __init__(self, entries: dict[str, vTensor], method: str) -> None:
        self._entries = entries
        self._method = method

    def __getitem__(self, key: str) -> vTensor:
        if key not in self._entries:
            site = user_callsite()
            close = difflib.get_close_matches(str(key), list(self._entries), n=1)
            guess = f"did you mean cache[{close[0]!r}]? Otherwise d" if close else "D"
            raise FlowRuleError(
                f"{self._method} reads cache[{key!r}], which create_cache does not declare{at(site)}. Declared: "
                f"{', '.join(sorted(self._entries))}. Fix: {guess}eclare the field in create_cache (every field "
                f"but 'k' and 'v' must be), e.g. return {{{str(key)!r}: (1, head_dim)}}."
            )
        return self._entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __setitem__(self, key: str, value: object) -> NoReturn:
        raise FlowRuleError(
            f"{self._method} assigns cache[{key!r}]{at(user_callsite())}: the cache dict is read-only. Fix: write a "
            f"declared field through an op's output argument, e.g. Mean(dim=1)(x, cache[{key!r}], loc=loc, "
            "ctx=ctx) in forward_cache or Save()(x, cache[...], ctx=ctx) in forward_indexer."
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class _Loc:
    """Stands for the written token slots while ``forward_cache`` is traced: it may only be passed on."""

    def __repr__(self) -> str:
        return "loc"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise FlowRuleError(
            f"forward_cache uses loc.{name}{at(user_callsite())}: loc stands for the token slots just written "
            "and may only be passed on to cache ops as loc=loc. Fix: remove the use."
        )

    def __getitem__(self, key: object) -> NoReturn:
        raise FlowRuleError(
            f"forward_cache indexes loc{at(user_callsite())}: loc may only be passed on to cache ops as loc=loc. "
            "Fix: remove the use."
        )


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
        return {n.writes for n in self.indexer.nodes if n.writes is not None and n.writes != "o"}

    @property
    def uses_save(self) -> bool:
        return bool(self.saved_fields)


def _entries(ctx: ContextBase, fields: CacheSpec, geometry: Geometry) -> dict[str, vTensor]:
    kv = (geometry.block_size, geometry.head_dim)
    out = {name: ctx.entry(name, kv, FORMAT.PAGED, geometry.kv_dtype) for name in RESERVED_FIELDS}
    out.update({name: ctx.entry(name, shape, FORMAT.PAGED, geometry.dtype) for name, shape in fields.items()})
    return out


def _attribute_hint(exc: BaseException, flow: vFlow) -> str:
    if isinstance(exc, AttributeError) and getattr(exc, "obj", None) is flow and getattr(exc, "name", None):
        close = difflib.get_close_matches(
            str(exc.name), [n for n in dir(flow) if not n.startswith("__")], n=1
        )
        if close:
            return f" Did you mean self.{close[0]}?"
        return f" Create self.{exc.name} in __init__ (after super().__init__())."
    if isinstance(exc, TypeError) and "ctx" in str(exc):
        return " Vortex ops take the context as a keyword: op(x, ctx=ctx)."
    return ""


_SHAPE_FIX = (
    "change the op's inputs, or the field's (rows, cols) in create_cache, so that the shapes agree (each op's "
    "docstring states its shape rule; tensors are [rows, D0, D1] and the inner axes broadcast when equal or 1)."
)


def _run_user(flow: vFlow, method: str, *args: Any) -> Any:
    """Call a flow method under tracing; any error names the flow line it comes from.

    A Vortex error that does not name a line yet gets the innermost flow-file frame appended; any other
    exception (a typo, a wrong call) becomes a :class:`FlowRuleError` with the file:line where it was raised.
    """
    try:
        return getattr(flow, method)(*args)
    except VortexError as exc:
        site = traceback_callsite(exc.__traceback__, prefer=flow_file(flow))
        msg = str(exc)
        if site is not None and str(site) not in msg:
            msg += at(site)
        if isinstance(exc, FlowShapeError) and "Fix" not in msg:
            msg += f". Fix: {_SHAPE_FIX}"
        if msg == str(exc):
            raise
        try:
            located = type(exc)(msg)
        except Exception:  # an error class with another constructor: keep it as is
            raise exc from None
        raise located.with_traceback(exc.__traceback__) from None
    except Exception as exc:
        site = traceback_callsite(exc.__traceback__, prefer=flow_file(flow))
        where = at(site) if site is not None else f" ({flow_location(flow, method)})"
        raise FlowRuleError(
            f"{type(flow).__qualname__}.{method} raised {type(exc).__name__}: {exc}{where}. Vortex calls it once "
            f"to trace the flow, before any GPU memory is allocated. Fix the code at that line."
            f"{_attribute_hint(exc, flow)}"
        ) from exc


def trace_flow(flow: vFlow, geometry: Geometry) -> TracedFlow:
    """Trace ``forward_indexer`` and ``forward_cache`` once and check the flow rules."""
    if not isinstance(flow, vFlow):
        raise FlowRuleError(
            f"trace_flow needs a vFlow instance, got {type(flow).__name__}. Fix: pass build_vflow(name, path), "
            "or an instance of a vortex_torch.flow.vFlow subclass."
        )
    fields = declared_fields(flow, geometry.block_size, geometry.head_dim)

    ictx = indexer_ops.Context(geometry)
    q = ictx.entry("q", (geometry.group_size, geometry.head_dim), FORMAT.BATCHED, geometry.kv_dtype)
    o = ictx.entry("o", (1, 1), FORMAT.RAGGED, torch.int32)
    _run_user(
        flow, "forward_indexer", q, o, _TracedCache(_entries(ictx, fields, geometry), "forward_indexer"), ictx
    )

    cctx = cache_ops.Context(geometry)
    _run_user(
        flow, "forward_cache", _TracedCache(_entries(cctx, fields, geometry), "forward_cache"), _Loc(), cctx
    )

    traced = TracedFlow(flow=flow, geometry=geometry, fields=fields, indexer=ictx.graph, cache=cctx.graph)
    _check_terminal(traced)
    _check_fields(traced)
    return traced


def _check_terminal(t: TracedFlow) -> None:
    terminals = [n for n in t.indexer.nodes if n.writes == "o"]
    where = _where(method_site(t.flow, "forward_indexer"), t.flow, "forward_indexer")
    if not terminals:
        raise FlowRuleError(
            f"forward_indexer of {type(t.flow).__qualname__} never selects blocks{where}: it has no terminal "
            "topK/approxTopK. Fix: end forward_indexer with topK()(score, o, ctx=ctx) or "
            "approxTopK(tolerate_ratio)(score, o, ctx=ctx), where score is a RAGGED [S, 1, 1] tensor."
        )
    if len(terminals) > 1:
        sites = ", then ".join(at(n.site)[2:-1] for n in terminals)
        raise FlowRuleError(
            f"forward_indexer calls topK/approxTopK {len(terminals)} times ({sites}). A flow selects blocks "
            "exactly once. Fix: combine the scores with ops (e.g. Maximum() or Add()) and call topK/approxTopK "
            "once, as the last call."
        )
    if t.indexer.nodes[-1] is not terminals[0]:
        after = t.indexer.nodes[t.indexer.nodes.index(terminals[0]) + 1 :]
        later = ", ".join(n.op.name for n in after)
        raise FlowRuleError(
            f"forward_indexer must end in its topK/approxTopK call{at(terminals[0].site)}, but {later} is called "
            f"after it{at(after[0].site)}. Fix: move every op before the topK/approxTopK call (or delete it)."
        )


def _check_fields(t: TracedFlow) -> None:
    cache_written = t.cache.written_fields()
    saved = t.saved_fields
    read = t.indexer.read_fields() - {"q", "o"}
    for name in t.fields:
        where = at(key_site(t.flow, "create_cache", name))
        if name not in cache_written and name not in saved:
            raise FlowRuleError(
                f"cache field {name!r} is declared in create_cache{where} but never written. Fix: store into it "
                f"in forward_cache (e.g. vortex_torch.cache.Mean(dim=1)(cache['k'], cache[{name!r}], loc=loc, "
                f"ctx=ctx)) or with indexer.Save, or remove it from create_cache."
            )
        if name not in read:
            also = (
                " (forward_cache reads it, but that does not count)" if name in t.cache.read_fields() else ""
            )
            raise FlowRuleError(
                f"cache field {name!r} is declared in create_cache{where} but never read by forward_indexer{also}. "
                f"Fix: use cache[{name!r}] in the score computed in forward_indexer, or remove the field from "
                "create_cache (it costs memory in every block of the KV pool)."
            )
    for name in sorted(saved):
        if name not in cache_written:
            save = next(n for n in t.indexer.nodes if n.writes == name)
            raise FlowRuleError(
                f"cache field {name!r} is accumulated with Save{at(save.site)} but forward_cache never resets it, "
                "so a new block would start from whatever the pool held. Fix: add "
                f"vortex_torch.cache.Fill(0.0)(cache[{name!r}], loc=loc, ctx=ctx) to forward_cache."
            )


def check_ops_are_known(t: TracedFlow) -> None:
    """Every node's op class must belong to vortex_torch (no user-defined vOp subclasses)."""
    for graph in (t.indexer, t.cache):
        for n in graph.nodes:
            if not type(n.op).__module__.startswith("vortex_torch."):
                raise FlowRuleError(
                    f"{n.op.name}{at(n.site)} is not a Vortex op (its class lives in {type(n.op).__module__}). "
                    "Fix: use the ops of vortex_torch.indexer / vortex_torch.cache; flows cannot define their own."
                )
