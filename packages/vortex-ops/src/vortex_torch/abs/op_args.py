"""Checks of op constructor arguments, raised at the flow line that built the op (``self.m = Mean(dim=3)``).

Flows build their ops in ``__init__``, so the error names that line (the innermost frame outside Vortex);
the loader adds the flow's name when it builds the flow.
"""

from __future__ import annotations

from collections.abc import Sequence

from .callsite import at, user_callsite
from .errors import FlowShapeError


def arg_error(message: str) -> FlowShapeError:
    """``message`` located at the flow line that constructed the op (when one is on the stack)."""
    return FlowShapeError(f"{message}{at(user_callsite())}. Fix: pass a value the op accepts")


def is_int(value: object) -> bool:
    """A plain int: ``True``/``False`` and floats (``1.0``) are rejected, they are almost always a typo."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_dim(op: str, dim: object, allowed: Sequence[int], phrase: str = "") -> int:
    """``dim`` as an int in ``allowed``; ``phrase`` says the choices in words ("0, 1 or 2")."""
    if not is_int(dim) or dim not in allowed:
        choices = phrase or f"one of {tuple(allowed)}"
        raise arg_error(f"{op}: dim must be {choices}, got {dim!r}")
    assert isinstance(dim, int)
    return dim


def check_size(op: str, what: str, value: object) -> int:
    """A positive int size (``Reshape``'s inner sizes, ``Interleave``'s ``k``, ``MaskSlice``'s bounds)."""
    if not is_int(value) or value <= 0:  # type: ignore[operator]
        raise arg_error(f"{op}: {what} must be positive (an int), got {value!r}")
    assert isinstance(value, int)
    return value
