"""Flow registry: ``@register("name")`` in-process, plus entry-point discovery of installed flow packages.

A flow package declares ``[project.entry-points."vortex_flow.flows"] my_flow = "my_pkg.my_flow"``; importing
that module runs its ``@register`` decorators. Discovery is lazy (on a missed lookup or a listing), happens once
per process, is skipped when ``VORTEX_DISABLE_PLUGIN_AUTOLOAD`` is set (``1``/``true``/``yes``/``on``), and can
be narrowed with the allow-list ``VORTEX_FLOWS=name,name`` (entry-point names or distribution names). A broken
flow package is recorded in :func:`broken_packages` (and whatever it registered before failing is rolled back);
it never stops the other packages from loading.

The registry is module-level state; :func:`snapshot`, :func:`restore` and :func:`isolated` save and restore it
(tests use them so that no registration leaks from one test into the next).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from vortex_torch._plugins import DISABLE_AUTOLOAD_ENV, autoload_disabled
from vortex_torch.abs.callsite import CallSite, at, traceback_callsite, user_callsite

from .errors import RegistryError, UnknownFlowError
from .flow import vFlow

ENTRY_POINT_GROUP = "vortex_flow.flows"
ALLOW_LIST_ENV = "VORTEX_FLOWS"
log = logging.getLogger(__name__)

F = TypeVar("F", bound=type[vFlow])

__all__ = [
    "ALLOW_LIST_ENV",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "FlowInfo",
    "RegistryError",
    "RegistrySnapshot",
    "aliases",
    "broken_packages",
    "discover",
    "get",
    "get_info",
    "has",
    "isolated",
    "list_flows",
    "list_keys",
    "register",
    "restore",
    "snapshot",
    "unknown_flow_message",
]


def class_site(cls: type) -> CallSite | None:
    """``file:line`` of a class statement, when its source can be found."""
    try:
        file = inspect.getsourcefile(cls)
        line = inspect.getsourcelines(cls)[1]
    except (TypeError, OSError):
        return None
    return CallSite(os.path.realpath(file), line) if file else None


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

    @property
    def location(self) -> str:
        """``file:line`` of the class (or its module name when the source cannot be found)."""
        site = class_site(self.cls)
        return str(site) if site is not None else f"module {self.cls.__module__}"


_REGISTRY: dict[str, FlowInfo] = {}
_ALIASES: dict[str, str] = {}
_BROKEN: dict[str, str] = {}
_current_package: list[str] = []
_discovered = False


# -- state: snapshot / restore ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrySnapshot:
    """A copy of the registry's module-level state."""

    registry: dict[str, FlowInfo]
    aliases: dict[str, str]
    broken: dict[str, str]
    discovered: bool


def snapshot() -> RegistrySnapshot:
    """Copy the registry's state (registered flows, aliases, broken packages, whether discovery ran)."""
    return RegistrySnapshot(dict(_REGISTRY), dict(_ALIASES), dict(_BROKEN), _discovered)


def restore(snap: RegistrySnapshot) -> None:
    """Put the registry back into the state of ``snap`` (in place: other modules keep their references)."""
    global _discovered
    _REGISTRY.clear()
    _REGISTRY.update(snap.registry)
    _ALIASES.clear()
    _ALIASES.update(snap.aliases)
    _BROKEN.clear()
    _BROKEN.update(snap.broken)
    _discovered = snap.discovered


@contextmanager
def isolated(*, clear: bool = False) -> Iterator[None]:
    """Undo every registration made inside the block; with ``clear``, start the block from an empty registry
    on which discovery has not run yet."""
    snap = snapshot()
    if clear:
        restore(RegistrySnapshot({}, {}, {}, False))
    try:
        yield
    finally:
        restore(snap)


# -- registration ----------------------------------------------------------------------------------------------
def _origin(cls: type) -> tuple[str, str]:
    try:
        path = inspect.getsourcefile(cls) or ""
    except TypeError:
        path = ""
    return os.path.realpath(path) if path else cls.__module__, cls.__qualname__


def _lookup(key: str) -> FlowInfo | None:
    return _REGISTRY.get(_ALIASES.get(key, key))


def _check_name(value: object, what: str, site: CallSite | None) -> str:
    if isinstance(value, type):
        raise RegistryError(
            f"@register is used without a name on class {value.__qualname__}{at(site)}. Fix: give the flow its "
            f"name, e.g. @register({_snake(value.__name__)!r})."
        )
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(
            f"@register needs a non-empty string {what}, got {value!r} ({type(value).__name__}){at(site)}. Fix: "
            "pass the name the flow is loaded by, e.g. @register('my_flow')."
        )
    if value != value.strip() or "," in value or any(c.isspace() for c in value):
        raise RegistryError(
            f"@register {what} {value!r} contains spaces or commas{at(site)}. Fix: use a name like 'my_flow' "
            f"(names are listed comma-separated in {ALLOW_LIST_ENV})."
        )
    return value


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out or "my_flow"


def _describe_class(info: FlowInfo | type) -> str:
    cls = info.cls if isinstance(info, FlowInfo) else info
    site = class_site(cls)
    where = str(site) if site is not None else f"module {cls.__module__}"
    package = f", package {info.package}" if isinstance(info, FlowInfo) else ""
    return f"class {cls.__qualname__} at {where}{package}"


def register(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Class decorator: make a :class:`vFlow` subclass loadable as ``name`` (and optional legacy ``aliases``).

    Registering the same class again (the same file loaded twice) replaces the entry; registering a different
    class under a taken name raises :class:`RegistryError` naming both classes' files and lines.
    """
    site = user_callsite()
    _check_name(name, "name", site)
    for alias in aliases:
        _check_name(alias, "alias", site)

    def wrap(cls: F) -> F:
        if not (isinstance(cls, type) and issubclass(cls, vFlow)):
            what = f"class {cls.__qualname__}" if isinstance(cls, type) else f"{type(cls).__name__} {cls!r}"
            raise RegistryError(
                f"@register({name!r}) decorates {what}, which is not a vFlow subclass{at(site)}. Fix: derive it "
                "from vortex_torch.flow.vFlow and implement create_cache, forward_cache and forward_indexer."
            )
        for key in (name, *aliases):
            known = _lookup(key)
            if known is not None and _origin(known.cls) != _origin(cls):
                raise RegistryError(
                    f"flow name {key!r} is registered twice: by {_describe_class(known)} and by "
                    f"{_describe_class(cls)}{at(site)}. Fix: give one of them a different name (flow names are "
                    "global across installed flow packages and loaded flow files)."
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


# -- discovery -------------------------------------------------------------------------------------------------
def allow_list() -> set[str] | None:
    """The names in ``VORTEX_FLOWS`` (entry-point or distribution names), or None when it is unset."""
    allow = os.environ.get(ALLOW_LIST_ENV)
    if allow is None:
        return None
    return {a.strip() for a in allow.split(",") if a.strip()}


def _allowed(ep_name: str, dist: str, allow: set[str] | None) -> bool:
    return allow is None or ep_name in allow or dist in allow


def discover(force: bool = False) -> None:
    """Import every installed flow package of the ``vortex_flow.flows`` entry-point group (once per process).

    A package whose import fails is recorded in :func:`broken_packages` with the error and the file:line it came
    from, and what it registered before failing is rolled back; the other packages still load.
    """
    global _discovered
    if autoload_disabled() or (_discovered and not force):
        return
    _discovered = True
    allow = allow_list()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        if not _allowed(ep.name, dist, allow):
            continue
        key = f"{ep.name} ({dist})"
        before = snapshot()
        _current_package.append(dist)
        try:
            importlib.import_module(ep.module)
        except Exception as exc:  # a broken third-party package must not take the others down
            _REGISTRY.clear()
            _REGISTRY.update(before.registry)
            _ALIASES.clear()
            _ALIASES.update(before.aliases)
            site = traceback_callsite(exc.__traceback__)
            _BROKEN[key] = f"{type(exc).__name__}: {exc}{at(site)}"
            log.warning(
                "flow package %s = %s from distribution %s failed to load and is skipped: %s",
                ep.name,
                ep.value,
                dist,
                _BROKEN[key],
            )
        else:
            _BROKEN.pop(key, None)
        finally:
            _current_package.pop()


# -- lookup ----------------------------------------------------------------------------------------------------
def has(name: str) -> bool:
    """Whether ``name`` (or an alias) is registered, after discovery."""
    return get_info(name, missing_ok=True) is not None


def get_info(name: str, *, missing_ok: bool = False) -> FlowInfo | None:
    """The registry entry of ``name`` (or an alias); runs discovery on a miss."""
    info = _lookup(name)
    if info is None:
        discover()
        info = _lookup(name)
    if info is None and not missing_ok:
        raise UnknownFlowError(unknown_flow_message(name))
    return info


def get(name: str) -> type[vFlow]:
    """The flow class registered as ``name`` (or one of its aliases); :class:`UnknownFlowError` (a KeyError)
    when there is none."""
    info = get_info(name)
    assert info is not None
    return info.cls


def list_keys() -> list[str]:
    """Every registered flow name, after discovery."""
    discover()
    return sorted(_REGISTRY)


def list_flows() -> list[FlowInfo]:
    """Every registered flow, after discovery."""
    discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def aliases() -> dict[str, str]:
    """``{alias: name}``."""
    return dict(_ALIASES)


def broken_packages() -> dict[str, str]:
    """Flow packages whose import failed during discovery: ``{"entry point (distribution)": "error (at file:line)"}``."""
    return dict(_BROKEN)


def unknown_flow_message(
    name: Any, module_path: str | None = None, registered_there: list[str] | None = None
) -> str:
    """The message for a missing flow: the known names, the closest one, what a loaded file registered."""
    known = sorted(_REGISTRY)
    where = f" in {module_path}" if module_path else ""
    parts = [f"no flow is registered as {name!r}{where}."]
    if module_path is not None and registered_there is not None:
        there = ", ".join(repr(n) for n in registered_there) if registered_there else "no flow"
        parts.append(f"That file registers {there}.")
    parts.append(f"Known flows: {', '.join(known) if known else '(none)'}.")
    close = difflib.get_close_matches(str(name), known + sorted(_ALIASES), n=1)
    if close:
        parts.append(f"Did you mean {close[0]!r}?")
    if module_path is None:
        parts.append(
            "Fix: pass module_path=<your flow's .py file> to load it from a file, or install the package that "
            "provides it (installed flow packages are found through the 'vortex_flow.flows' entry points)."
        )
    else:
        parts.append(
            f"Fix: decorate the flow class in that file with @register({name!r}), or load it by the name it "
            "registers."
        )
    if _BROKEN:
        parts.append(
            f"Flow packages that failed to load: {'; '.join(f'{k}: {v}' for k, v in _BROKEN.items())}."
        )
    return " ".join(parts)
