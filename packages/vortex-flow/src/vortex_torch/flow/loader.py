"""Loading a flow by name, optionally from a user's ``.py`` file."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from typing import Any

from . import registry
from .errors import FlowInitError, FlowLoadError
from .flow import vFlow


def load_module_file(path: str) -> None:
    """Execute a flow file so its ``@register`` decorators run (under a private module name)."""
    if not os.path.exists(path):
        raise FlowLoadError(f"module_path {path!r} does not exist: point module_path at your flow's .py file")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise FlowLoadError(f"module_path {path!r} is not a readable file")
    real = os.path.realpath(path)
    mod_name = "vortex_user_flow_" + hashlib.sha1(real.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, real)
    if spec is None or spec.loader is None:
        raise FlowLoadError(f"module_path {path!r} cannot be imported as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except registry.RegistryError:
        raise
    except SyntaxError as exc:
        raise FlowLoadError(f"flow file {path} has a syntax error at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        raise FlowLoadError(f"importing flow file {path} failed: {type(exc).__name__}: {exc}") from exc


def resolve_flow_class(module_name: str, module_path: str | None = None) -> type[vFlow]:
    """The class registered as ``module_name``, after loading ``module_path`` when given."""
    if module_path is not None:
        load_module_file(module_path)
    if not registry.has(module_name):
        known = ", ".join(registry.list_keys()) or "(none)"
        where = f" in {module_path}" if module_path else " among installed flows"
        hint = "" if module_path else "; set module_path to load a flow from a file"
        raise FlowLoadError(f"no flow registered as {module_name!r}{where}. Known flows: {known}{hint}")
    return registry.get(module_name)


def build_vflow(module_name: str, module_path: str | None = None, init_kwargs: dict[str, Any] | None = None) -> vFlow:
    """Load and instantiate the flow ``module_name`` (from ``module_path`` if given)."""
    cls = resolve_flow_class(module_name, module_path)
    kwargs = dict(init_kwargs or {})
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise FlowInitError(f"flow {module_name!r} ({cls.__qualname__}) does not accept {kwargs}: {exc}") from exc
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise FlowInitError(f"constructing flow {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
