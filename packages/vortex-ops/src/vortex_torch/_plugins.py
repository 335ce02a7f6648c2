"""Entry-point plugins of ``vortex_torch``.

Any installed distribution can hook into ``import vortex_torch`` by declaring a zero-argument callable in the
``vortex_torch.plugins`` entry-point group, e.g. in its ``pyproject.toml``::

    [project.entry-points."vortex_torch.plugins"]
    sglang_adapter = "vortex_torch.engine.sgl.adapter:install"

``import vortex_torch`` calls every such hook once per process. Setting
``VORTEX_DISABLE_PLUGIN_AUTOLOAD=1`` turns that automatic call off; :func:`load_plugins` still loads them when
called explicitly. A hook that raises is an error (:class:`PluginLoadError`), never skipped silently.
"""

from __future__ import annotations

import os
import threading
from importlib.metadata import EntryPoint, entry_points

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "PluginLoadError",
    "autoload_disabled",
    "load_plugins",
]

ENTRY_POINT_GROUP = "vortex_torch.plugins"
DISABLE_AUTOLOAD_ENV = "VORTEX_DISABLE_PLUGIN_AUTOLOAD"

_lock = threading.RLock()
_loaded: set[tuple[str, str, str]] = set()  # entry points whose hook returned normally
_loading = False  # guards against a hook that (indirectly) calls load_plugins() again


class PluginLoadError(RuntimeError):
    """A ``vortex_torch.plugins`` entry point could not be imported, or its hook raised.

    ``entry_point`` is the entry point's ``name = value`` and ``distribution`` the distribution declaring it;
    the original exception is the ``__cause__``.
    """

    def __init__(self, message: str, *, entry_point: str = "", distribution: str = "") -> None:
        super().__init__(message)
        self.entry_point = entry_point
        self.distribution = distribution


def autoload_disabled() -> bool:
    """Whether ``VORTEX_DISABLE_PLUGIN_AUTOLOAD`` asks ``import vortex_torch`` not to load plugins."""
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _distribution_name(ep: EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return "<unknown distribution>"
    return f"{dist.name} {dist.version}"


def load_plugins() -> list[str]:
    """Call every ``vortex_torch.plugins`` hook not yet called in this process.

    Returns the names of the hooks called by this invocation (empty when all had run already). A hook that
    fails is not marked as loaded, so the next call raises again instead of skipping it.

    Raises:
        PluginLoadError: a hook failed to import or raised; the original exception is its ``__cause__``.
    """
    global _loading
    called: list[str] = []
    with _lock:
        if _loading:
            return called
        _loading = True
        try:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                dist = _distribution_name(ep)
                key = (dist, ep.name, ep.value)
                if key in _loaded:
                    continue
                try:
                    hook = ep.load()
                    hook()
                except Exception as exc:
                    raise PluginLoadError(
                        f"vortex_torch plugin {ep.name!r} = {ep.value!r} from distribution {dist!r} "
                        f"(entry-point group {ENTRY_POINT_GROUP!r}) failed: {type(exc).__name__}: {exc}. "
                        f"Fix or uninstall that distribution, or set {DISABLE_AUTOLOAD_ENV}=1 to skip "
                        "plugin autoloading.",
                        entry_point=f"{ep.name} = {ep.value}",
                        distribution=dist,
                    ) from exc
                _loaded.add(key)
                called.append(ep.name)
        finally:
            _loading = False
    return called
