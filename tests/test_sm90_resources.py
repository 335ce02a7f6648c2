"""tools/sm90_resources.py: the decode kernels, compiled for sm_90 with their launchers' own configurations,
fit a GPU's shared memory at every block size (the interpreter never checks this; a tile that grew with the
block size needed 313 KB for an MLA block of 256 tokens, over sm_90's 227 KB, and failed every launch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "sm90_resources.py"


def run(*args: str, interpret: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(TOOL), *args], env=env, capture_output=True, text=True, timeout=900)


def test_large_blocks_fit_sm90(tmp_path: Path) -> None:
    pytest.importorskip("triton.backends.nvidia.compiler")
    out = tmp_path / "rows.json"
    proc = run("--kinds", "gqa", "mla", "--block-sizes", "256", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["kernel"] for r in rows} == {"sparse_decode", "sparse_mla_decode"} and len(rows) == 24
    for r in rows:
        assert r["fits"] and 0 < r["shared"] <= 232448, r
        assert r["tile_tokens"] <= 128, r  # a step is part of a 256-token block
        assert 0 < r["registers"] <= 255, r
    assert proc.stdout.count("| sparse_") == 24


def test_bad_arguments_are_one_line_errors() -> None:
    proc = run("--block-sizes", "48")
    assert proc.returncode == 2 and "--block-sizes: 48 is not a power of two" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("--kinds", "select", interpret=True)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr
