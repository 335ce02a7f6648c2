"""``vortex eval`` on the GPU, both ways a user runs it (issue 10, item 8):

* ``--model PATH --device cuda``: the tiny random-weight model through transformers and Vortex's reference
  runtime on the GPU; in fp32 a full budget answers exactly what dense attention answers;
* ``--server-url``: SGLang servers on the same model (plain, Vortex at a full budget, Vortex at a 6-block
  budget), asked over their OpenAI API; the eval reaches each, scores every sample and writes its JSON and PNG.

Each runs ``vortex`` as a user does: a subprocess, in a clean environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vortex_gpu_harness import (
    FLOW_FILE,
    FULL_BUDGET_VORTEX,
    QUICKSTART_VORTEX,
    http_server,
    skip_reason,
    tiny_model,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def vortex(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``vortex ARGS`` in the environment a user's shell has (no pytest or Triton settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "PYTEST_"))}
    cmd = [sys.executable, "-c", "import sys; from vortex_torch.flow.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def read_result(out: Path) -> dict:  # type: ignore[type-arg]
    assert (out / "accuracy_vs_budget.png").read_bytes().startswith(PNG_MAGIC)
    return json.loads((out / "result.json").read_text())


def test_eval_of_a_hf_model_on_cuda_full_budget_equals_dense(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    proc = vortex([
        "eval", str(FLOW_FILE), "--model", tiny_model(), "--device", "cuda", "--dtype", "float32",
        "--contexts", "1024", "--samples", "2", "--tasks", "passkey,vt", "--budgets", "4,full", "--out", str(out),
    ])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = read_result(out)
    (row,) = result["summary"]
    print(json.dumps(row))
    assert row["context"] == 1024
    assert row["budgets"]["full"]["agreement"] == 1.0  # every block attended: dense, token for token
    assert len(result["outputs"]) == 4 and set(result["outputs"][0]["sparse"]) == {"4", "full"}


def test_eval_through_sglang_servers(tmp_path: Path) -> None:
    out = tmp_path / "servers"
    sparse_cfg = {**QUICKSTART_VORTEX, "topk_val": 4}  # 6 blocks of 16: a 1024-token prompt is sparse
    with (
        http_server(tmp_path / "dense.log", None, mem_fraction=0.25) as dense,
        http_server(tmp_path / "full.log", FULL_BUDGET_VORTEX, mem_fraction=0.25) as full,
        http_server(tmp_path / "sparse.log", sparse_cfg, mem_fraction=0.25) as sparse,
    ):
        proc = vortex([
            "eval", "--server-url", full, "--server-url", sparse, "--budgets", "full,topk4", "--dense-url", dense,
            "--tokenizer", tiny_model(), "--contexts", "1024", "--samples", "2", "--tasks", "passkey,vt",
            "--out", str(out),
        ])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = read_result(out)
    (row,) = result["summary"]
    print(json.dumps(row))
    assert result["backend"]["servers"] == {"full": full, "topk4": sparse}
    assert row["dense_accuracy"] is not None
    for label in ("full", "topk4"):
        assert set(row["budgets"][label]) == {"accuracy", "agreement"}
        assert row["budgets"][label]["agreement"] is not None
    # random bf16 weights give near-ties that any kernel difference may flip (tests/gpu/_harness.py): a full
    # budget agrees with dense on nearly every answer, not necessarily all
    assert row["budgets"]["full"]["agreement"] >= 0.75
