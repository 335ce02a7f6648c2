"""Finding the line of user code that made a call, for error messages.

"User code" is every frame outside Vortex's own packages (every directory of the ``vortex_torch`` namespace
package: vortex-ops, vortex-flow, vortex-sglang), outside PyTorch (``torch.nn.functional.softmax(q)`` reaches
our guard through ``torch.overrides``) and outside the import machinery. A flow file in a directory that merely
happens to be called ``vortex_torch`` (a clone of the upstream repository) still counts as user code.
"""

from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass
from types import FrameType, TracebackType

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_internal_cache: dict[str, bool] = {}


@dataclass(frozen=True)
class CallSite:
    """A ``file:line`` in the flow author's code."""

    filename: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"

    @property
    def source(self) -> str:
        """The stripped text of the line (empty when the file cannot be read)."""
        linecache.checkcache(self.filename)
        return linecache.getline(self.filename, self.lineno).strip()


def _internal_roots() -> list[str]:
    roots = [_PACKAGE_ROOT]
    pkg = sys.modules.get("vortex_torch")
    for p in list(getattr(pkg, "__path__", [])):
        roots.append(os.path.abspath(p))
    torch = sys.modules.get("torch")
    torch_file = getattr(torch, "__file__", None)
    if torch_file:
        roots.append(os.path.dirname(os.path.abspath(torch_file)))
    return roots


def is_internal(filename: str) -> bool:
    """Whether ``filename`` belongs to Vortex, PyTorch or the import system rather than to the flow author."""
    known = _internal_cache.get(filename)
    if known is not None:
        return known
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>, ...
        result = filename.startswith("<frozen")
    else:
        path = os.path.abspath(filename)
        result = any(path == r or path.startswith(r + os.sep) for r in _internal_roots())
    if "vortex_torch" in sys.modules:  # the namespace package's directories are all known by now
        _internal_cache[filename] = result
    return result


def user_callsite(frame: FrameType | None = None) -> CallSite | None:
    """The innermost stack frame outside Vortex's own packages (the flow author's line), if any.

    Starts at ``frame`` (default: the caller of this function).
    """
    f: FrameType | None = frame if frame is not None else sys._getframe(1)
    while f is not None:
        if not is_internal(f.f_code.co_filename):
            return CallSite(f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    return None


def called_from_user_code(depth: int = 2) -> bool:
    """Whether the frame ``depth`` levels above this call is user code (1 = this function's caller)."""
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return False
    return not is_internal(frame.f_code.co_filename)


def traceback_callsite(tb: TracebackType | None, prefer: str | None = None) -> CallSite | None:
    """The innermost user frame of a traceback: where a flow author's code raised (or called what raised).

    With ``prefer`` (a file path), the innermost frame in that file wins over other user frames.
    """
    sites: list[CallSite] = []
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not is_internal(filename):
            sites.append(CallSite(filename, tb.tb_lineno))
        tb = tb.tb_next
    if prefer is not None:
        real = os.path.realpath(prefer)
        preferred = [s for s in sites if os.path.realpath(s.filename) == real]
        if preferred:
            return preferred[-1]
    return sites[-1] if sites else None


def at(site: CallSite | None) -> str:
    """`` (at file:line: `source`)`` or the empty string, for appending to messages."""
    if site is None:
        return ""
    text = site.source
    return f" (at {site}: `{text}`)" if text else f" (at {site})"
