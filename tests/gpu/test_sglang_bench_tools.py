"""SGLang's own benchmark script with Vortex (GPU): ``sglang.benchmark.one_batch`` through
``python -m vortex_torch.engine.sgl.run``, on the tiny model, plain and with the quick start's ``VortexConfig``.

Both runs must finish and report a decode throughput; only the second logs the Vortex backend's CUDA-graph
buffers (the config reached the model runner ``one_batch`` builds in its own process; "Vortex on" is logged
before ``one_batch`` configures logging, so it is not shown); and a run given ``--vortex-config`` without the launcher
is refused by SGLang's parser, which is why the launcher exists. The tiny model's vocabulary (1024) is smaller
than the ids ``one_batch`` draws at random (< 10000), so the prompts come from a text file (byte-level
tokenizer: one token per character).
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vortex_gpu_harness import QUICKSTART_VORTEX, skip_reason, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

LAUNCHER = [sys.executable, "-m", "vortex_torch.engine.sgl.run"]


def one_batch(tmp: Path, vortex: dict[str, Any] | None, launcher: bool = True) -> tuple[Any, list[dict[str, Any]]]:
    """``one_batch`` at batch 2 over two ~700-token prompts, 16 new tokens; its process and result rows."""
    tmp.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join("".join(rng.choices(string.ascii_lowercase + " ", k=700)) for _ in range(2)))
    result = tmp / "result.jsonl"
    cmd = [*(LAUNCHER if launcher else [sys.executable, "-m"]), "sglang.benchmark.one_batch",
           "--model-path", tiny_model(), "--attention-backend", "flashinfer", "--page-size", "16",
           "--mem-fraction-static", "0.5", "--cuda-graph-max-bs", "4", "--batch-size", "2", "--input-len", "700",
           "--output-len", "16", "--prompt-filename", str(prompts), "--result-filename", str(result)]  # fmt: skip
    if vortex is not None:
        cmd += ["--vortex-config", json.dumps(vortex)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=dict(os.environ))
    print(proc.stdout[-3000:])
    print(proc.stderr[-6000:], file=sys.stderr)
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()] if result.exists() else []
    return proc, rows


def test_one_batch_plain_and_with_vortex(tmp_path: Path) -> None:
    plain, plain_rows = one_batch(tmp_path / "plain", None)
    assert plain.returncode == 0, plain.stderr[-3000:]
    vortex, vortex_rows = one_batch(tmp_path / "vortex", QUICKSTART_VORTEX)
    assert vortex.returncode == 0, vortex.stderr[-3000:]
    marker = "Vortex CUDA-graph plan buffers"  # VortexBackendMixin._vortex_allocate_graph_state's log line
    assert marker in vortex.stdout + vortex.stderr
    assert marker not in plain.stdout + plain.stderr
    for rows in (plain_rows, vortex_rows):
        assert rows and float(rows[-1]["median_decode_throughput"]) > 0


def test_without_the_launcher_the_flag_is_refused(tmp_path: Path) -> None:
    proc, rows = one_batch(tmp_path / "bare", QUICKSTART_VORTEX, launcher=False)
    assert proc.returncode == 2 and "--vortex-config" in proc.stderr and not rows
