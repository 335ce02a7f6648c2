"""Programmatic dependent launch (``enable_pdl``): each kernel's first act is ``griddepcontrol.wait``.

With PDL a kernel may be scheduled while the previous one in the stream still runs, so it must not touch global
memory before the wait. Checked on the sm_90 PTX of the real kernels (compiled here without a GPU); launching
with ``enable_pdl=True`` where PDL does not exist is an error, not a plain launch. The speed and the
correctness under CUDA graphs are GPU tests (``tests/gpu/test_launch_count.py``,
``packages/vortex-sglang/tests/test_decode_core.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vortex_torch.kernels._sync import pdl_launch_options
from vortex_torch.kernels.select import select_blocks_triton
from vortex_torch.kernels.sparse_decode import sparse_decode_attention

_PTX_ORDER = r"""
import json, re, sys
sys.path.insert(0, sys.argv[1])
from sm90_compile import compile_sm90
from vortex_torch.kernels.select.triton_kernel import _select_blocks_kernel
from vortex_torch.kernels.sparse_decode.triton_kernel import _split_kernel
from vortex_torch.kernels.sparse_decode_mla.triton_kernel import _mla_split_kernel

ACCESS = re.compile(r"\b(ld|st|atom|red|cp\.async)\.(global|bulk)|\bcp\.async\b")
result = {}
for fn in (_select_blocks_kernel, _split_kernel, _mla_split_kernel):
    for pdl in (True, False):
        lines = compile_sm90(fn, PDL=pdl).asm["ptx"].splitlines()
        at = lambda pat: next((i for i, x in enumerate(lines) if re.search(pat, x)), -1)
        result[f"{fn.__name__}:{pdl}"] = {
            "wait": at(r"griddepcontrol\.wait"),
            "launch_dependents": at(r"griddepcontrol\.launch_dependents"),
            "first_access": at(ACCESS.pattern),
        }
print("RESULT " + json.dumps(result))
"""


def test_every_kernel_waits_before_its_first_memory_access() -> None:
    """sm_90 PTX of the selection, sparse decode and sparse MLA decode kernels: with ``PDL`` the wait comes
    before the first global load/store/atomic and the kernel signals its dependents; without, neither
    instruction is emitted (the default launch is the kernel that was measured)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _PTX_ORDER, os.path.dirname(__file__)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert len(result) == 6
    for key, r in result.items():
        assert r["first_access"] > 0, key
        if key.endswith(":True"):
            assert 0 <= r["wait"] < r["first_access"], (key, r)
            assert r["launch_dependents"] > r["wait"], (key, r)
        else:
            assert r["wait"] == -1 and r["launch_dependents"] == -1, (key, r)


def test_launch_options_refuse_pdl_where_it_does_not_exist() -> None:
    assert pdl_launch_options(False, torch.device("cpu"), "k") == {}
    with pytest.raises(ValueError, match=r"k: enable_pdl=True needs a CUDA GPU of compute capability >= 9\.0"):
        pdl_launch_options(True, torch.device("cpu"), "k")


def test_kernels_refuse_pdl_on_the_interpreter() -> None:
    """On a CPU (Triton's interpreter) ``enable_pdl=True`` is an error naming the function, never a plain launch."""
    score = torch.randn(8)
    ptr = torch.tensor([0, 8], dtype=torch.int32)
    ids = torch.arange(8, dtype=torch.int32)
    sel = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="select_blocks_triton: enable_pdl=True"):
        select_blocks_triton(score, ptr, ids, sel, 1, 1, enable_pdl=True)
    q = torch.randn(1, 4, 16)
    kv = torch.randn(32, 2, 16)
    with pytest.raises(ValueError, match="sparse_decode_attention: enable_pdl=True"):
        sparse_decode_attention(q, kv, kv, torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32),
                                torch.tensor([16], dtype=torch.int32), page_size=16, block_size=16, enable_pdl=True)  # fmt: skip
