"""HTTP serving: ``python -m sglang.launch_server ... --vortex-config '<json>'`` answers ``/v1/completions``
with Vortex's backend, and a client cannot change the flow through the request body."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vortex_gpu_harness import QUICKSTART_VORTEX, skip_reason, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

STARTUP_S = 420
LONG_PROMPT = " ".join(f"item {i} is a {'red' if i % 3 else 'blue'} box near the door." for i in range(200))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path_factory.mktemp("http") / "server.log"
    cfg = {**QUICKSTART_VORTEX, "topk_val": 4}  # 6-block budget: long prompts are sparse
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", tiny_model(), "--host", "127.0.0.1",
        "--port", str(port), "--attention-backend", "flashinfer", "--page-size", "16",
        "--cuda-graph-max-bs-decode", "4", "--mem-fraction-static", "0.5", "--vortex-config", json.dumps(cfg),
    ]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"launch_server exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health_generate", timeout=30) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail(f"launch_server not healthy after {STARTUP_S}s:\n{log.read_text()[-6000:]}")
            time.sleep(2)
        yield base, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
        print(log.read_text()[-3000:])


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
