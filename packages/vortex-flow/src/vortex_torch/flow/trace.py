"""Tracing a flow into op graphs and enforcing the flow rules, with errors that point at the flow's lines.

Every error raised here (and by the ops while they are traced) is a :class:`FlowRuleError` or
:class:`FlowShapeError`, raised before any GPU memory is touched. Its message names the flow file and line of
the offending call where there is one (``(at file.py:12: `code`)``) and ends with the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from vortex_torch import cache as cache_ops
from vortex_torch import indexer as indexer_ops
from vortex_torch.abs.callsite import at, user_callsite
from vortex_torch.abs.context import ContextBase, Geometry
from vortex_torch.abs.errors import FlowRuleError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import Graph, OpNode
from vortex_torch.abs.mla import MLAGeometry
from vortex_torch.abs.vtensor import vTensor

from .flow import CacheSpec, vFlow
from .user_code import (
    LATENT,
    RESERVED_FIELDS,
    RESERVED_NAMES,
    declared_fields,
    flow_location,
    is_mla_flow,
    key_site,
    method_site,
    run_user,
    site_text,
)

__all__ = ["RESERVED_FIELDS", "RESERVED_NAMES", "TracedFlow", "check_ops_are_known", "trace_flow"]


class _TracedCache(Mapping[str, vTensor]):
    """The read-only ``cache`` dict a traced method sees; a missing key names the declared ones."""

    def __init__(self, entries: dict[str, vTensor], method: str, *, mla: bool = False) -> None:
        self._entries = entries
        self._method = method
        self._mla = mla

    def __getitem__(self, key: str) -> vTensor:
        if key not in self._entries:
            site = user_callsite()
            if self._mla and key in RESERVED_FIELDS:
                raise FlowRuleError(
                    f"{self._method} reads cache[{key!r}]{at(site)}, but an MLA flow has no 'k' or 'v': the pool "
                    "holds one latent row [kv_c | k_pe] per token (kv_lora_rank + qk_rope_head_dim wide). Fix: "
                    "read cache['latent'] (its first kv_lora_rank columns play both roles)."
                )
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


def _entries(ctx: ContextBase, fields: CacheSpec, geometry: Geometry, mla: bool) -> dict[str, vTensor]:
    kv = (geometry.block_size, geometry.head_dim)
    if mla:
        # The latent IS the framework's K buffer ([num_slots, 1, kv_lora_rank + qk_rope_head_dim]): the graph
        # reads it as "k", so every executor and kernel generator addresses it exactly like a GQA key cache with
        # one head; the flow author sees (and messages name) it as "latent". An MLA flow has no "v".
        latent = ctx.entry("k", kv, FORMAT.PAGED, geometry.kv_dtype)
        latent.label = LATENT
        out = {LATENT: latent}
    else:
        out = {name: ctx.entry(name, kv, FORMAT.PAGED, geometry.kv_dtype) for name in RESERVED_FIELDS}
    out.update({name: ctx.entry(name, shape, FORMAT.PAGED, geometry.dtype) for name, shape in fields.items()})
    return out


def trace_flow(flow: vFlow, geometry: Geometry) -> TracedFlow:
    """Trace ``forward_indexer`` and ``forward_cache`` once and check the flow rules."""
    if not isinstance(flow, vFlow):
        raise FlowRuleError(
            f"trace_flow needs a vFlow instance, got {type(flow).__name__}. Fix: pass build_vflow(name, path), "
            "or an instance of a vortex_torch.flow.vFlow subclass."
        )
    mla = is_mla_flow(flow)
    _check_geometry(flow, geometry, mla)
    if isinstance(geometry, MLAGeometry):
        fields = declared_fields(flow, geometry.block_size, geometry.kv_lora_rank, geometry.qk_rope_head_dim)
    else:
        fields = declared_fields(flow, geometry.block_size, geometry.head_dim)

    ictx = indexer_ops.Context(geometry)
    q = ictx.entry("q", (geometry.group_size, geometry.head_dim), FORMAT.BATCHED, geometry.kv_dtype)
    o = ictx.entry("o", (1, 1), FORMAT.RAGGED, torch.int32)
    icache = _TracedCache(_entries(ictx, fields, geometry, mla), "forward_indexer", mla=mla)
    run_user(flow, "forward_indexer", q, o, icache, ictx)

    cctx = cache_ops.Context(geometry)
    ccache = _TracedCache(_entries(cctx, fields, geometry, mla), "forward_cache", mla=mla)
    run_user(flow, "forward_cache", ccache, _Loc(), cctx)

    traced = TracedFlow(flow=flow, geometry=geometry, fields=fields, indexer=ictx.graph, cache=cctx.graph)
    _check_terminal(traced)
    _check_fields(traced)
    return traced


def _check_geometry(flow: vFlow, geometry: Geometry, mla: bool) -> None:
    """An MLA flow runs on MLA layers only (latent cache), a vFlow on MHA/GQA layers only (k and v)."""
    where = f" ({flow_location(flow)})"
    if mla and not isinstance(geometry, MLAGeometry):
        raise FlowRuleError(
            f"{type(flow).__qualname__} is a vFlowMLA{where}: it reads the latent cache of an MLA model (DeepSeek, "
            f"GLM), but this model has MHA/GQA attention (k and v, head_dim={geometry.head_dim}). Fix: run it on an "
            "MLA model, or write the flow as a vFlow (create_cache(block_size, head_dim), cache['k'] / cache['v'])."
        )
    if not mla and isinstance(geometry, MLAGeometry):
        raise FlowRuleError(
            f"{type(flow).__qualname__} is a vFlow{where}, but this model uses MLA (one latent cache "
            f"[kv_c | k_pe] of width {geometry.kv_lora_rank} + {geometry.qk_rope_head_dim} per token, no k or v). "
            "Fix: write the flow as a vFlowMLA (from vortex_torch.flow import vFlowMLA; create_cache(block_size, "
            "kv_lora_rank, qk_rope_head_dim); read cache['latent'])."
        )


def _check_terminal(t: TracedFlow) -> None:
    terminals = [n for n in t.indexer.nodes if n.writes == "o"]
    where = site_text(method_site(t.flow, "forward_indexer"), t.flow, "forward_indexer")
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
    src = "cache['latent']" if is_mla_flow(t.flow) else "cache['k']"
    for name in t.fields:
        where = at(key_site(t.flow, "create_cache", name))
        if name not in cache_written and name not in saved:
            raise FlowRuleError(
                f"cache field {name!r} is declared in create_cache{where} but never written. Fix: store into it "
                f"in forward_cache (e.g. vortex_torch.cache.Mean(dim=1)({src}, cache[{name!r}], loc=loc, "
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
