"""Flow registry: ``@register("name")`` in-process, plus entry-point discovery of installed flow packages.

A flow package declares ``[project.entry-points."vortex_flow.flows"] my_flow = "my_pkg.my_flow"``; importing
that module runs its ``@register`` decorators. Discovery is lazy (on a missed lookup or a listing), happens once
per process, is skipped when ``VORTEX_DISABLE_PLUGIN_AUTOLOAD=1``, and can be narrowed with the allow-list
``VORTEX_FLOWS=name,name``. A broken flow package is recorded in :func:`broken_packages`, not fatal.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypeVar

from .errors import RegistryError
from .flow import vFlow

ENTRY_POINT_GROUP = "vortex_flow.flows"
log = logging.getLogger(__name__)

F = TypeVar("F", bound=type[vFlow])


@dataclass(frozen=True)
class FlowInfo:
    """What ``vortex list`` shows about a registered flow."""

    name: str
    cls: type[vFlow]
    package: str
    description: str

    @property
    def source(self) -> str:
        try:
            return inspect.getsourcefile(self.cls) or "?"
        except TypeError:
            return "?"


_REGISTRY: dict[str, FlowInfo] = {}
_ALIASES: dict[str, str] = {}
_BROKEN: dict[str, str] = {}
_current_package: list[str] = []
_discovered = False


def _origin(cls: type) -> tuple[str, str]:
    try:
        path = inspect.getsourcefile(cls) or ""
    except TypeError:
        path = ""
    return os.path.realpath(path) if path else cls.__module__, cls.__qualname__


def register(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Class decorator: make a :class:`vFlow` subclass loadable as ``name`` (and optional legacy ``aliases``)."""
    if not isinstance(name, str) or not name:
        raise RegistryError("register(name) needs a non-empty string name, e.g. @register('my_flow')")

    def wrap(cls: F) -> F:
        if not (isinstance(cls, type) and issubclass(cls, vFlow)):
            raise RegistryError(f"@register({name!r}) must decorate a vFlow subclass, got {cls!r}")
        for key in (name, *aliases):
            known = _REGISTRY.get(key)
            if known is not None and _origin(known.cls) != _origin(cls):
                raise RegistryError(
                    f"flow name {key!r} is registered twice: by {known.cls.__module__}.{known.cls.__qualname__} "
                    f"({known.source}, package {known.package}) and by {cls.__module__}.{cls.__qualname__} "
                    f"({_origin(cls)[0]}). Pick a different name."
                )
        doc = (inspect.getdoc(cls) or "").strip().splitlines()
        package = _current_package[-1] if _current_package else cls.__module__.split(".")[0]
        info = FlowInfo(name=name, cls=cls, package=package, description=doc[0] if doc else "")
        _REGISTRY[name] = info
        for alias in aliases:
            _ALIASES[alias] = name
        cls.name = name
        return cls

    return wrap


def _allowed(name: str) -> bool:
    allow = os.environ.get("VORTEX_FLOWS")
    return allow is None or name in {a.strip() for a in allow.split(",")}


def discover(force: bool = False) -> None:
    """Import every installed flow package of the ``vortex_flow.flows`` entry-point group (once)."""
    global _discovered
    if (_discovered and not force) or os.environ.get("VORTEX_DISABLE_PLUGIN_AUTOLOAD") == "1":
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if not _allowed(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        _current_package.append(dist)
        try:
            importlib.import_module(ep.value.split(":")[0])
        except RegistryError:
            raise
        except Exception as exc:  # a broken third-party package must not take the others down
            _BROKEN[f"{ep.name} ({dist})"] = f"{type(exc).__name__}: {exc}"
            log.warning("flow package %s from %s failed to load: %s", ep.value, dist, exc)
        finally:
            _current_package.pop()


def has(name: str) -> bool:
    return get_info(name, missing_ok=True) is not None


def get_info(name: str, *, missing_ok: bool = False) -> FlowInfo | None:
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        discover()
        key = _ALIASES.get(name, name)
    info = _REGISTRY.get(key)
    if info is None and not missing_ok:
        raise KeyError(name)
    return info


def get(name: str) -> type[vFlow]:
    """The flow class registered as ``name`` (or one of its aliases)."""
    info = get_info(name)
    assert info is not None
    return info.cls


def list_keys() -> list[str]:
    """Every registered flow name, after discovery."""
    discover()
    return sorted(_REGISTRY)


def list_flows() -> list[FlowInfo]:
    discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def aliases() -> dict[str, str]:
    return dict(_ALIASES)


def broken_packages() -> dict[str, str]:
    """Flow packages whose import failed during discovery: ``{"name (dist)": "error"}``."""
    return dict(_BROKEN)
