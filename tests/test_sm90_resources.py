"""tools/sm90_resources.py: the decode kernels, compiled for sm_90 as their entry points launch them, fit a
GPU's shared memory at every block size, and one decode step's real launches (``--step``) compile and are
counted. The interpreter never checks shared memory: at rev 5becc2c, where a tile grew with the block size, an
MLA block of 256 tokens needed 321,536 bytes and a GQA one at D = 256 278,528, over sm_90's 232,448, so every
such launch would have failed on the GPU."""

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
        assert r["block_n"] <= 128, r  # a step's tile is part of a 256-token block
        assert 0 < r["registers"] <= 255, r
    assert proc.stdout.count("| sparse_") == 24


@pytest.mark.parametrize("kind", ["gqa", "mla"])
def test_a_decode_step_compiles_for_sm90(kind: str, tmp_path: Path) -> None:
    """The launches of one decode step of decode_step_bench's case (the plan, then one sparse layer), captured on
    the CPU and compiled as the GPU would: the layer is at most 3 Triton launches (issue 8's bound)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    pytest.importorskip("sglang")
    out = tmp_path / "rows.json"
    proc = run("--step", kind, "--ctx", "4096", "--batch", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    layer = [r["kernel"] for r in rows if r["kernel"].startswith("layer: ")]
    attention = "_mla_split_kernel" if kind == "mla" else "_split_kernel"
    assert [r["kernel"] for r in rows if r["kernel"].startswith("plan: ")] == ["plan: _plan_kernel"]
    assert 1 <= len(layer) <= 3 and layer[-1] == f"layer: {attention}", layer
    assert f"1 Triton launch(es) per step (the plan), {len(layer)} per sparse layer" in proc.stdout
    assert all(r["fits"] and r["registers"] > 0 for r in rows)


def test_bad_arguments_are_one_line_errors() -> None:
    proc = run("--block-sizes", "48")
    assert proc.returncode == 2 and "--block-sizes: 48 is not a power of two" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("--kinds", "select", interpret=True)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr
    proc = run("--step", "gqa", "--batch", "0")
    assert proc.returncode == 2 and "--batch: 0 is below 1" in proc.stderr
