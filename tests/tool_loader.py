"""Loading a repository script (``tools/...``, not a package) as a module, for the tests of the tools.

The tools are scripts run by path, so the tests load them by path too; the repository's root ``conftest.py``
puts this folder on ``sys.path`` so that every test file (``tests/`` and ``tests/gpu/``) imports this one loader.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_tool(path: Path, name: str | None = None) -> ModuleType:
    """The script at ``path`` executed as module ``name`` (default: its file name's stem), registered in
    ``sys.modules`` first (dataclasses and pickling look the module up by name while it runs)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
