"""Errors of ``vortex eval``: each is printed as one line, never a traceback."""

from __future__ import annotations

from vortex_torch.abs.errors import VortexError


class EvalError(VortexError):
    """The evaluation cannot run (model not loadable, server unreachable, ...): exit status 1."""


class EvalUsageError(EvalError):
    """A bad command-line value (names the flag and what it accepts): exit status 2."""


def first_line(exc: BaseException) -> str:
    """``exc`` as one line: library errors (transformers, urllib) often span many lines."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
