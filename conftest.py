"""Repository-wide pytest setup.

Without a GPU, Triton kernels run in Triton's interpreter. The switch has to be set before any module
that defines a ``@triton.jit`` kernel is imported, which is why it lives here and not in a fixture.
"""

import os
import sys
from pathlib import Path

import torch

# tests/tool_loader.py: the one loader of repository scripts (tools/) that test files of tests/ and tests/gpu/ import
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
