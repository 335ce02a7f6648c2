"""Loading a flow by name, optionally from a user's ``.py`` file.

Every failure is a :class:`FlowLoadError`, :class:`RegistryError` or :class:`FlowInitError` raised before any
GPU memory is touched; its message names the flow file (and line, where there is one) and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from typing import Any

from vortex_torch.abs.callsite import at, traceback_callsite
from vortex_torch.abs.errors import VortexError

from . import registry
from .errors import FlowInitError, FlowLoadError, RegistryError, UnknownFlowError
from .flow import vFlow


def _check_path(path: str, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise FlowLoadError(
            f"{what} must be the path of a .py file, got {type(path).__name__} {path!r}. Fix: pass a str "
            "such as 'flows/my_flow.py'."
        )
    path = os.fspath(path)
    if not path:
        raise FlowLoadError(f"{what} is empty. Fix: pass the path of the .py file that defines the flow.")
    if not os.path.exists(path):
        resolved = os.path.abspath(path)
        near = ""
        parent = os.path.dirname(resolved)
        if os.path.isdir(parent):
            pys = sorted(f for f in os.listdir(parent) if f.endswith(".py"))[:10]
            if pys:
                near = f" The .py files in {parent} are: {', '.join(pys)}."
        raise FlowLoadError(
            f"{what} {path!r} does not exist (resolved to {resolved} from the working directory "
            f"{os.getcwd()}).{near} Fix: point {what} at your flow's .py file (an absolute path is safest)."
        )
    if os.path.isdir(path):
        pys = sorted(f for f in os.listdir(path) if f.endswith(".py"))[:10]
        listing = f" It contains: {', '.join(pys)}." if pys else " It contains no .py file."
        raise FlowLoadError(
            f"{what} {path!r} is a directory, not a flow file.{listing} Fix: point {what} at the .py "
            f"file that defines the flow, e.g. {os.path.join(path, pys[0] if pys else 'my_flow.py')!r}."
        )
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise FlowLoadError(
            f"{what} {path!r} is not a readable file. Fix: check its permissions, or point {what} at a "
            "regular .py file."
        )
    return path


def load_module_file(path: str, *, what: str = "module_path") -> list[str]:
    """Execute a flow file so its ``@register`` decorators run (under a private module name).

    ``what`` is how error messages name the path (``module_path`` for VortexConfig, ``FLOW`` for the CLI).

    Returns the names the file registered. Loading the same file again re-executes it and replaces its flows.
    When the file fails (syntax error, exception, a rejected ``@register``), nothing it registered is kept.
    """
    path = _check_path(path, what)
    real = os.path.realpath(path)
    mod_name = "vortex_user_flow_" + hashlib.sha1(real.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, real)
    if spec is None or spec.loader is None:
        raise FlowLoadError(
            f"{what} {path!r} cannot be imported as a Python module. Fix: give the flow file a .py suffix."
        )
    module = importlib.util.module_from_spec(spec)
    before = registry.snapshot()
    previous = sys.modules.get(mod_name)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        registry.restore(before)
        if previous is not None:
            sys.modules[mod_name] = previous
        else:
            sys.modules.pop(mod_name, None)
        if isinstance(exc, SyntaxError):
            code = (exc.text or "").rstrip("\n").strip()
            shown = f": `{code}`" if code else ""
            raise FlowLoadError(
                f"flow file {exc.filename or path}:{exc.lineno} has a syntax error: {exc.msg} (line {exc.lineno}"
                f"{shown}). Fix the syntax at that line."
            ) from exc
        if isinstance(exc, VortexError):
            raise
        if not isinstance(exc, Exception):
            raise
        site = traceback_callsite(exc.__traceback__, prefer=real)
        hint = " Install the missing module, or fix the import." if isinstance(exc, ImportError) else ""
        raise FlowLoadError(
            f"importing flow file {path} failed with {type(exc).__name__}: {exc}{at(site)}. Fix the code at that "
            f"line.{hint}"
        ) from exc
    return sorted(n for n, info in registry._REGISTRY.items() if before.registry.get(n) is not info)


def resolve_flow_class(module_name: str, module_path: str | None = None) -> type[vFlow]:
    """The class registered as ``module_name``, after loading ``module_path`` when given."""
    registered: list[str] | None = None
    if module_path is not None:
        registered = load_module_file(module_path)
    if not isinstance(module_name, str) or not registry.has(module_name):
        raise UnknownFlowError(registry.unknown_flow_message(module_name, module_path, registered))
    return registry.get(module_name)


def build_vflow(
    module_name: str, module_path: str | None = None, init_kwargs: dict[str, Any] | None = None
) -> vFlow:
    """Load and instantiate the flow ``module_name`` (from ``module_path`` if given)."""
    cls = resolve_flow_class(module_name, module_path)
    where = registry.class_site(cls)
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise FlowInitError(
            f"flow {module_name!r} ({cls.__qualname__}{at(where)}) does not implement {missing}. Fix: define "
            "create_cache, forward_cache and forward_indexer in the class."
        )
    kwargs = dict(init_kwargs or {})
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise FlowInitError(
            f"flow {module_name!r} ({cls.__qualname__}{at(where)}) does not accept init_kwargs {kwargs}: {exc}. "
            f"Fix: pass only the parameters of {cls.__qualname__}.__init__{inspect.signature(cls)}."
        ) from exc
    try:
        return cls(**kwargs)
    except Exception as exc:
        prefer = inspect.getsourcefile(cls) if where is not None else None
        site = traceback_callsite(exc.__traceback__, prefer=prefer)
        if isinstance(exc, VortexError) and site is not None and str(site) in str(exc):
            detail = str(exc)
        else:
            detail = f"{exc}{at(site)}"
        raise FlowInitError(
            f"constructing flow {module_name!r} ({cls.__qualname__}) failed with {type(exc).__name__}: {detail}. "
            "Fix the code at that line of __init__."
        ) from exc


__all__ = ["RegistryError", "build_vflow", "load_module_file", "resolve_flow_class"]
