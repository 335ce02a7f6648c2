"""vortex-ops on its own: the README's kernel snippet runs as written, and on a CPU without Triton's interpreter
every Triton kernel raises ``TritonUnavailableError`` naming the fix (never Triton's "0 active drivers").

Both run in a fresh interpreter with ``TRITON_INTERPRET`` removed from the environment: the repository's
conftest sets it for the test process, which is exactly what a user's process does not have.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown.read_text(), re.S | re.M)


def run_clean(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_readme_kernel_snippet_runs_as_written(tmp_path: Path) -> None:
    (block,) = python_blocks(README)
    proc = run_clean(block, tmp_path)
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"torch\.Size\(\[2, 4, 64\]\) max \|triton - reference\| = (\S+)\n", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) < 1e-5


CALLS = {
    "sparse_decode_attention": """
        from vortex_torch.kernels.sparse_decode import sparse_decode_attention
        q = torch.randn(1, 4, 64); kv = torch.randn(32, 1, 64)
        sparse_decode_attention(q, kv, kv, i32([0, 1]), i32([1]), i32([16]), page_size=16, block_size=16)
    """,
    "select_blocks_triton": """
        from vortex_torch.kernels.select import select_blocks_triton
        select_blocks_triton(torch.randn(3), i32([0, 3]), i32([0, 1, 2]), i32([0, 2]), 1, 1)
    """,
    "block_token_table_triton": """
        from vortex_torch.kernels.token_table import block_token_table_triton
        block_token_table_triton(i32([0, 1]), i32([1]), i32([16]), i32([0, 16]), i32([0] * 16), page_size=16,
                                 block_size=16, num_kv_heads=1, max_selected_per_row=1)
    """,
}  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message; on a GPU host CPU tensors are a user error")
@pytest.mark.parametrize("late", [False, True], ids=["unset", "set-after-import"])
@pytest.mark.parametrize("api", CALLS)
def test_cpu_without_interpreter_says_what_to_do(tmp_path: Path, api: str, late: bool) -> None:
    code = "import os, torch\nfrom vortex_torch.kernels import TritonUnavailableError\n"
    code += "i32 = lambda xs: torch.tensor(xs, dtype=torch.int32)\n"
    if late:  # the kernels are defined (imported) first, the variable set afterwards: too late for Triton
        code += "import vortex_torch.kernels.sparse_decode, vortex_torch.kernels.select, vortex_torch.kernels.token_table\n"
        code += "os.environ['TRITON_INTERPRET'] = '1'\n"
    code += "try:\n" + textwrap.indent(textwrap.dedent(CALLS[api]).strip(), "    ") + "\n"
    code += "except TritonUnavailableError as exc:\n    print(exc)\nelse:\n    print('no error')\n"
    proc = run_clean(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout
    assert message.startswith(f"{api} got cpu tensors: "), message
    assert "Fix: move the tensors to a CUDA GPU; or set TRITON_INTERPRET=1" in message
    assert ("after vortex_torch.kernels was imported" in message) == late
    assert "active drivers" not in message + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA tensors always run the Triton kernel")
@pytest.mark.parametrize("switch", ["unset", "before-import", "after-import"])
def test_cpu_dispatch_follows_how_triton_defined_the_kernels(tmp_path: Path, switch: str) -> None:
    """CPU tensors run the Triton kernel only when Triton's interpreter defined it; set too late (or never),
    the entry point runs the reference instead of failing, and no environment read overrides that."""
    code = "import json, os, torch\n"
    if switch == "before-import":
        code += "os.environ['TRITON_INTERPRET'] = '1'\n"
    code += "from vortex_torch.kernels import interpreter_active, use_triton\n"
    code += "from vortex_torch.kernels.select import select_blocks, select_blocks_triton\n"
    if switch == "after-import":
        code += "os.environ['TRITON_INTERPRET'] = '1'\n"
    code += textwrap.dedent("""
        i32 = lambda xs: torch.tensor(xs, dtype=torch.int32)
        args = (torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2]), i32([0, 5]), i32([10, 11, 12, 13, 14]), i32([0, 3]), 1, 1)
        got = select_blocks(*args).tolist()
        print(json.dumps({"active": interpreter_active(), "triton": use_triton(torch.zeros(1)), "got": got,
                          "kernel": type(select_blocks_triton.__globals__["_select_blocks_kernel"]).__name__}))
    """)
    proc = run_clean(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    interpreted = switch == "before-import"
    assert out["active"] is interpreted and out["triton"] is interpreted
    assert (out["kernel"] == "InterpretedFunction") is interpreted
    assert out["got"] == [10, 12, 14]  # bos, the top middle block (0.9), eos
