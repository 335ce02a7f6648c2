"""The documentation's quick start runs verbatim on the GPU (flashinfer + Vortex, CUDA graphs on).

``tests/gpu/quickstart_driver.py`` executes ``examples/quickstart.py`` (the launch script, verbatim but for the
model path and the flow file's location) in a fresh process, exactly as a user would, then reuses its engine
for a mixed-length batch with sparse rows and a radix-cache hit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vortex_gpu_harness import MIXED_LENGTHS, QUICKSTART_VORTEX, Gen, skip_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]


@pytest.fixture(scope="module")
def quickstart(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("quickstart") / "result.json"
    driver = Path(__file__).with_name("quickstart_driver.py")
    proc = subprocess.run(
        [sys.executable, str(driver), str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        env=dict(os.environ),
    )
    print(proc.stdout[-4000:])
    print(proc.stderr[-8000:], file=sys.stderr)
    assert proc.returncode == 0, (
        f"the quick start failed (rc {proc.returncode}); stderr tail:\n{proc.stderr[-4000:]}"
    )
    return proc, json.loads(out.read_text())


def test_script_runs_verbatim_and_prints_its_generation(quickstart: tuple[Any, dict[str, Any]]) -> None:
    proc, res = quickstart
    assert isinstance(res["text"], str) and res["text"]
    assert res["text"] in proc.stdout  # the script's own print(out[0]["text"])
    assert res["text_again"] == res["text"]  # greedy and deterministic across calls


def test_vortex_is_on_with_the_quickstart_settings(quickstart: tuple[Any, dict[str, Any]]) -> None:
    sa = quickstart[1]["server_args"]
    assert (
        sa["page_size"] == 16
        and sa["disable_overlap_schedule"] is True
        and sa["disable_prefill_cuda_graph"] is True
    )
    assert sa["context_length"] == 8192  # max_seq_lens
    for key in ("topk_val", "layers_skip", "block_reserved_bos", "block_reserved_eos", "module_name"):
        assert sa["vortex"][key] == QUICKSTART_VORTEX[key]


def test_mixed_batch_and_prefix_hit(quickstart: tuple[Any, dict[str, Any]]) -> None:
    res = quickstart[1]
    mixed = [Gen.from_json(g) for g in res["mixed"]]
    assert len(mixed) == len(MIXED_LENGTHS)
    for g in mixed:
        assert len(g.tokens) == 24 and all(math.isfinite(lp) for lp in g.logprobs)
    assert Gen.from_json(res["prefix"][0]).cached_tokens >= 1024
