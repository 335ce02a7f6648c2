"""``import vortex_torch`` -> the SGLang adapter (the ``vortex_torch.plugins`` entry point :func:`install`).

The quick start does ``import sglang as sgl; import vortex_torch`` and then ``sgl.Engine(..., vortex=...)``.
SGLang itself calls :func:`vortex_torch.engine.sgl.plugin.register` through the ``sglang.srt.plugins`` entry
point whenever it loads plugins, so this adapter is the belt to those braces: it makes sure the hooks are
registered in this process before SGLang applies them, even when that entry point is not visible (sources on
``PYTHONPATH``) or filtered out by ``SGLANG_PLUGINS``.

It stays cheap: without SGLang installed it does nothing; with SGLang installed but not imported it only
arms a one-shot import trigger (importing SGLang's plugin API costs seconds, which ``import vortex_torch``
must not pay); once ``sglang.srt.plugins`` is imported it registers the hooks (``register`` imports nothing
more). It never raises: a failure is logged and shows up when ``vortex=`` is used.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger("vortex_torch.engine.sgl")

TRIGGER_MODULE = "sglang.srt.plugins"


def _register_quietly() -> None:
    try:
        from .plugin import register

        register()
    except Exception:  # register() already logged a banner with the reason
        log.debug("vortex-sglang: hook registration failed", exc_info=True)


class _AfterImport(importlib.abc.MetaPathFinder):
    """One-shot finder: lets ``sglang.srt.plugins`` import normally, then registers the Vortex hooks."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRIGGER_MODULE:
            return None
        _remove_trigger()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader: Any = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register_quietly()

        loader.exec_module = exec_then_register
        return spec


_trigger: _AfterImport | None = None


def _remove_trigger() -> None:
    global _trigger
    if _trigger is not None and _trigger in sys.meta_path:
        sys.meta_path.remove(_trigger)
    _trigger = None


def install() -> None:
    """Make sure the Vortex hooks get registered in this process; a no-op when SGLang is not installed."""
    global _trigger
    try:
        if TRIGGER_MODULE in sys.modules:
            _register_quietly()
            return
        if importlib.util.find_spec("sglang") is None:
            return
        if _trigger is None:
            _trigger = _AfterImport()
            sys.meta_path.insert(0, _trigger)
    except Exception:  # never break `import vortex_torch`
        log.debug("vortex-sglang adapter: install failed", exc_info=True)
