"""Running and locating the flow author's code: the file:line of a flow method or of a ``create_cache`` key,
calling a flow method so that any error names the flow line it comes from, and the fields ``create_cache``
declares.

It needs nothing of :mod:`.flow` but its types, so :class:`~.flow.vFlow` can call :func:`declared_fields`
and :mod:`.trace` can build on the rest without an import cycle.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
from typing import TYPE_CHECKING, Any

from vortex_torch.abs.callsite import CallSite, at, traceback_callsite
from vortex_torch.abs.errors import FlowRuleError, FlowShapeError, VortexError

if TYPE_CHECKING:
    from .flow import CacheSpec, vFlow

RESERVED_FIELDS = ("k", "v")
#: the one field the framework provides to an MLA flow (``vFlowMLA``): the latent ``[kv_c | k_pe]`` of each token
LATENT = "latent"
#: fields an MLA flow may not declare: its latent is provided, and it has no k or v
MLA_RESERVED_FIELDS = (LATENT, "k", "v")
#: names of forward_indexer's own inputs; a cache field of that name would be ambiguous
RESERVED_NAMES = ("q", "o")
#: the executors' ``fields`` entries for the dequantisation scales of an fp8 K/V cache (``compiler.base``)
KV_SCALE_NAMES = ("k_scale", "v_scale")


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


def site_text(site: CallSite | None, flow: vFlow, method: str) -> str:
    """`` (at file:line: `code`)``, or `` (Class.method)`` when the source cannot be found."""
    return at(site) if site is not None else f" ({type(flow).__qualname__}.{method})"


def is_mla_flow(flow: object) -> bool:
    """Whether ``flow`` is a ``vFlowMLA`` (its class says so with ``mla = True``)."""
    return bool(getattr(type(flow), "mla", False))


def cache_signature_error(flow: vFlow) -> FlowRuleError | None:
    """A :class:`FlowRuleError` when ``create_cache`` has the other kind of flow's signature, else None.

    A vFlow's is ``create_cache(block_size, head_dim)``, a vFlowMLA's ``create_cache(block_size, kv_lora_rank,
    qk_rope_head_dim)``; a flow of the wrong base class is the usual cause."""
    mla = is_mla_flow(flow)
    want = 3 if mla else 2
    try:
        sig = inspect.signature(flow.create_cache)
        sig.bind(*range(want))
    except (TypeError, ValueError):
        pass
    else:
        return None
    where = site_text(method_site(flow, "create_cache"), flow, "create_cache")
    if mla:
        return FlowRuleError(
            f"{type(flow).__qualname__} is a vFlowMLA, whose create_cache takes (block_size, kv_lora_rank, "
            f"qk_rope_head_dim){where}. Fix: `def create_cache(self, block_size, kv_lora_rank, qk_rope_head_dim)`, "
            "or derive the class from vFlow if the flow is for MHA/GQA models."
        )
    return FlowRuleError(
        f"{type(flow).__qualname__} is a vFlow, whose create_cache takes (block_size, head_dim){where}. Fix: "
        "`def create_cache(self, block_size, head_dim)`, or derive the class from vFlowMLA if the flow is for "
        "MLA models (DeepSeek, GLM)."
    )


def declared_fields(flow: vFlow, block_size: int, *dims: int) -> CacheSpec:
    """Call ``create_cache(block_size, *dims)`` and check what it declares.

    ``dims`` is ``(head_dim,)`` for a vFlow and ``(kv_lora_rank, qk_rope_head_dim)`` for a vFlowMLA.
    """
    mla = is_mla_flow(flow)
    bad_sig = cache_signature_error(flow)
    if bad_sig is not None:
        raise bad_sig
    spec = run_user(flow, "create_cache", block_size, *dims)
    def_site = method_site(flow, "create_cache")
    example = "{'centroids': (1, kv_lora_rank + qk_rope_head_dim)}" if mla else "{'centroids': (1, head_dim)}"
    provided = "the latent" if mla else "k and v"
    if spec is None:
        raise FlowRuleError(
            f"create_cache returned None{site_text(def_site, flow, 'create_cache')}. Fix: return the aux fields as a "
            f"dict, e.g. `return {example}`, or `return {{}}` when the flow needs only {provided}."
        )
    if not isinstance(spec, dict):
        raise FlowRuleError(
            f"create_cache must return a dict {{name: (rows, cols)}}, got {type(spec).__name__}"
            f"{site_text(def_site, flow, 'create_cache')}. Fix: return e.g. {example}."
        )
    out: CacheSpec = {}
    for name, shape in spec.items():
        site = key_site(flow, "create_cache", name) if isinstance(name, str) else def_site
        where = site_text(site, flow, "create_cache")
        if not isinstance(name, str) or not name.isidentifier():
            raise FlowRuleError(
                f"create_cache declares a field named {name!r}{where}: names must be identifier strings. Fix: "
                "use a name like 'centroids'."
            )
        if mla and name == LATENT:
            raise FlowRuleError(
                f"create_cache declares {name!r}{where}, but an MLA flow's 'latent' ([kv_c | k_pe], "
                "[block_size, kv_lora_rank + qk_rope_head_dim] in the KV dtype) is provided automatically. Fix: "
                f"remove {name!r} from the returned dict."
            )
        if mla and name in RESERVED_FIELDS:
            raise FlowRuleError(
                f"create_cache declares {name!r}{where}, but an MLA flow has no 'k' or 'v': the pool holds one "
                "latent row [kv_c | k_pe] per token, provided as cache['latent']. Fix: remove "
                f"{name!r} from the returned dict and read cache['latent']."
            )
        if name in RESERVED_FIELDS:
            raise FlowRuleError(
                f"create_cache declares {name!r}{where}, but 'k' and 'v' are provided automatically "
                f"([block_size, head_dim] in the KV dtype). Fix: remove {name!r} from the returned dict."
            )
        if name in KV_SCALE_NAMES:
            raise FlowRuleError(
                f"create_cache declares a field named {name!r}{where}, the name the framework gives the fp8 KV "
                f"cache's dequantisation scale. Fix: rename the field (e.g. {name + '_field'!r})."
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


def run_user(flow: vFlow, method: str, *args: Any) -> Any:
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
