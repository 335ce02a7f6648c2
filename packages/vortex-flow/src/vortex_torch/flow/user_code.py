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


def site_text(site: CallSite | None, flow: vFlow, method: str) -> str:
    """`` (at file:line: `code`)``, or `` (Class.method)`` when the source cannot be found."""
    return at(site) if site is not None else f" ({type(flow).__qualname__}.{method})"


def declared_fields(flow: vFlow, block_size: int, head_dim: int) -> CacheSpec:
    """Call ``create_cache`` and check what it declares."""
    spec = run_user(flow, "create_cache", block_size, head_dim)
    def_site = method_site(flow, "create_cache")
    example = "{'centroids': (1, head_dim)}"
    if spec is None:
        raise FlowRuleError(
            f"create_cache returned None{site_text(def_site, flow, 'create_cache')}. Fix: return the aux fields as a "
            f"dict, e.g. `return {example}`, or `return {{}}` when the flow needs only k and v."
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
