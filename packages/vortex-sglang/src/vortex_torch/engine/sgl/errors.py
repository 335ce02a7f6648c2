"""The errors vortex-sglang raises on purpose, in a module of their own so that every other module can raise
them without importing the module that defines the rest (plugin, backend, config and policy import this one)."""

from __future__ import annotations

from vortex_torch.abs.config_fields import ConfigFieldError


class VortexSGLangError(RuntimeError):
    """vortex-sglang cannot run in this SGLang installation (wrong version, hooks not installed)."""


class VortexConfigError(ConfigFieldError):
    """An invalid ``VortexConfig`` value; the message names the field and how to fix it."""

    owner = "VortexConfig"
