"""Errors of flow registration and loading.

Like the flow-rule errors of :mod:`vortex_torch.abs.errors`, they are raised at load time, before any GPU
memory is touched, name the flow file (and line, where there is one) and say how to fix the problem.
"""

from __future__ import annotations

from vortex_torch.abs.errors import FlowRuleError, FlowShapeError, VortexError

__all__ = [
    "FlowInitError",
    "FlowLoadError",
    "FlowRuleError",
    "FlowShapeError",
    "RegistryError",
    "UnknownFlowError",
    "VortexError",
]


class RegistryError(VortexError):
    """A name registered twice, a bad name, or a class that is not a vFlow."""


class FlowLoadError(VortexError):
    """A flow module cannot be found or read, or the requested name is not registered."""


class UnknownFlowError(FlowLoadError, KeyError):
    """No flow is registered under the requested name (also a ``KeyError``, for ``registry.get``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FlowInitError(VortexError):
    """The flow class could not be instantiated with the given arguments."""
