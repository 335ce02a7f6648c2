"""Errors of flow registration and loading."""

from __future__ import annotations

from vortex_torch.abs.errors import FlowRuleError, FlowShapeError, VortexError

__all__ = ["FlowInitError", "FlowLoadError", "FlowRuleError", "FlowShapeError", "RegistryError", "VortexError"]


class RegistryError(VortexError):
    """A name registered twice, or a class that is not a vFlow."""


class FlowLoadError(VortexError):
    """A flow module cannot be found or read, or the requested name is not registered."""


class FlowInitError(VortexError):
    """The flow class could not be instantiated with the given arguments."""
