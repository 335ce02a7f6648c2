"""GPU suite setup: registers ``_harness.py`` as ``vortex_gpu_harness`` (importable under
``--import-mode=importlib``). Tests here are marked ``gpu`` and ``sglang`` and skip with a reason when the GPU,
SGLang or the tiny model (``$VORTEX_TINY_MODEL``) is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("vortex_gpu_harness", Path(__file__).with_name("_harness.py"))
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules["vortex_gpu_harness"] = harness
_spec.loader.exec_module(harness)
