"""Where kernels run (``vortex_torch.flow.backend``): explicit, never a side effect of an import.

Each case runs in a fresh interpreter without TRITON_INTERPRET, since this session's conftest has set it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the interpreter switch matters without CUDA"
)


def run(code: str, tmp: Path) -> dict[str, object]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_importing_the_library_sets_nothing(tmp_path: Path) -> None:
    out = run(
        """
        import json, os
        import vortex_torch.flow.testing, vortex_torch.flow.cli, vortex_torch.flow.check
        print(json.dumps({"env": os.environ.get("TRITON_INTERPRET")}))
        """,
        tmp_path,
    )
    assert out == {"env": None}


def test_compile_check_without_the_interpreter_says_what_to_do(tmp_path: Path) -> None:
    out = run(
        """
        import json
        from vortex_torch.abs.context import Geometry
        from vortex_torch.flow import build_vflow
        from vortex_torch.flow.testing import KernelBackendError, compile_check
        from vortex_torch.flow.trace import trace_flow
        traced = trace_flow(build_vflow("block_sparse_attention"), Geometry(head_dim=32, group_size=2))
        try:
            compile_check(traced)
        except KernelBackendError as exc:
            print(json.dumps({"error": str(exc)}))
        """,
        tmp_path,
    )
    assert "compile_check runs Triton kernels" in str(out["error"])
    assert "use_triton_interpreter_without_cuda()" in str(out["error"])


def test_switch_before_triton_is_imported(tmp_path: Path) -> None:
    out = run(
        """
        import json, os, sys
        from vortex_torch.flow.backend import use_triton_interpreter_without_cuda
        assert "triton" not in sys.modules
        got = use_triton_interpreter_without_cuda()
        from vortex_torch.kernels.select import triton_kernel  # defined after the switch: interpreted
        print(json.dumps({"got": got, "env": os.environ.get("TRITON_INTERPRET")}))
        """,
        tmp_path,
    )
    assert out == {"got": "interpreter", "env": "1"}


def test_switch_after_triton_is_imported_is_refused(tmp_path: Path) -> None:
    out = run(
        """
        import json
        import triton
        from vortex_torch.flow.backend import KernelBackendError, use_triton_interpreter_without_cuda
        try:
            use_triton_interpreter_without_cuda()
        except KernelBackendError as exc:
            print(json.dumps({"error": str(exc)}))
        """,
        tmp_path,
    )
    assert "Triton was imported before its interpreter was switched on" in str(out["error"])
