"""``vortex check``: load, validate, compile and measure one flow, in a worker process (see :mod:`.runner`)."""

from .options import DEFAULT_MIN_RECALL, DEFAULT_TIMEOUT_S, CheckOptions
from .report import EXPECTED_MIN_RECALL, render_text, to_json
from .runner import run_check

__all__ = [
    "DEFAULT_MIN_RECALL",
    "DEFAULT_TIMEOUT_S",
    "EXPECTED_MIN_RECALL",
    "CheckOptions",
    "render_text",
    "run_check",
    "to_json",
]
