"""Repository-wide pytest setup.

Without a GPU, Triton kernels run in Triton's interpreter. The switch has to be set before any module
that defines a ``@triton.jit`` kernel is imported, which is why it lives here and not in a fixture.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
