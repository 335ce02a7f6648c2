"""Finding the line of user code that made a call, for error messages."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class CallSite:
    """A ``file:line`` in the flow author's code."""

    filename: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"


def _is_internal(filename: str) -> bool:
    # Every installed vortex_torch sub-package (ops, flow, engine) lives under a "vortex_torch" directory.
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_ROOT) or f"{os.sep}vortex_torch{os.sep}" in path


def user_callsite() -> CallSite | None:
    """The innermost stack frame outside Vortex's own packages (the flow author's line), if any."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_internal(filename) and not filename.startswith("<frozen"):
            return CallSite(filename, frame.f_lineno)
        frame = frame.f_back  # type: ignore[assignment]
    return None


def at(site: CallSite | None) -> str:
    """`` (at file:line)`` or the empty string, for appending to messages."""
    return f" (at {site})" if site is not None else ""
