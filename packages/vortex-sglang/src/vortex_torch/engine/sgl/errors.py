"""The errors vortex-sglang raises on purpose, in a module of their own so that every other module can raise
them without importing the module that defines the rest (plugin, backend, config and policy import this one)."""

from __future__ import annotations

from vortex_torch.abs.errors import VortexError


class VortexSGLangError(RuntimeError):
    """vortex-sglang cannot run in this SGLang installation (wrong version, hooks not installed)."""


class VortexConfigError(VortexError, ValueError):
    """An invalid ``VortexConfig`` value; the message names the field and how to fix it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"VortexConfig.{field_name}: {message}")
        self.field = field_name
