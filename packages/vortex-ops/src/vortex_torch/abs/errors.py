"""Errors raised while defining, tracing and checking flows.

They are raised at load time, before any GPU memory is touched, and name the flow file and line where the
offending call was made so the author can fix it without reading Vortex's source.
"""

from __future__ import annotations


class VortexError(Exception):
    """Base class of every error Vortex raises on purpose."""


class FlowRuleError(VortexError):
    """A flow breaks one of the vFlow rules (native torch op, op reused, no terminal top-k, ...)."""


class FlowShapeError(FlowRuleError):
    """Two ops of a flow disagree on a tensor's shape or format."""
