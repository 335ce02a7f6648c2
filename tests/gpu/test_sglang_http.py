"""HTTP serving: ``python -m sglang.launch_server ... --vortex-config '<json>'`` answers ``/v1/completions``
with Vortex's backend, and a client cannot change the flow through the request body."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vortex_gpu_harness import QUICKSTART_VORTEX, http_server, skip_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

LONG_PROMPT = " ".join(f"item {i} is a {'red' if i % 3 else 'blue'} box near the door." for i in range(200))


def post(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("http") / "server.log"
    cfg = {**QUICKSTART_VORTEX, "topk_val": 4}  # 6-block budget: long prompts are sparse
    with http_server(log, cfg) as base:
        yield base, log


def completion(base: str, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    return post(f"{base}/v1/completions", body)


def test_v1_completions_served_by_vortex(server: tuple[str, Path]) -> None:
    base, log = server
    short = completion(base, "The capital of France is")
    long = completion(base, LONG_PROMPT)
    for res in (short, long):
        assert res["object"] == "text_completion"
        assert isinstance(res["choices"][0]["text"], str) and res["choices"][0]["text"]
        assert res["usage"]["completion_tokens"] == 16
    assert long["usage"]["prompt_tokens"] > 6 * 16, "the long prompt must exceed the 6-block budget"
    text = log.read_text()
    assert "Vortex on: flow 'custom_sparse_attention'" in text  # --vortex-config reached ServerArgs
    assert "VortexFlashInferBackend" in text  # and the scheduler built the Vortex backend


def test_clients_cannot_choose_or_load_a_flow(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _log = server
    marker = tmp_path / "loaded"
    evil = tmp_path / "evil_flow.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('loaded')\n")
    attempt = {"module_path": str(evil), "module_name": "evil", "topk_val": 1 << 20}
    ref = completion(base, LONG_PROMPT)
    got = completion(
        base, LONG_PROMPT, vortex=attempt, vortex_config=json.dumps(attempt), enable_vortex_sparsity=True
    )
    assert got["choices"][0]["text"] == ref["choices"][0]["text"]
    raw = post(
        f"{base}/generate", {"text": LONG_PROMPT, "sampling_params": {"max_new_tokens": 4}, "vortex": attempt}
    )
    assert "text" in raw
    assert not marker.exists(), "a request body made the server import a file"
