"""`vortex eval`: task generators, the HF backend on a tiny random-weight Qwen3, the server backend against a
fake OpenAI server, and the command as a user runs it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch.flow.cli import main
from vortex_torch.flow.eval import (
    TASKS,
    EvalUsageError,
    make_sample,
    make_samples,
    parse_budgets,
    parse_contexts,
)
from vortex_torch.flow.eval.tasks import ContextTooShortError, estimate_tokens

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "examples" / "custom_sparse_attention.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def words(text: str) -> int:
    return len(text.split())


# -- tasks ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(TASKS))
def test_task_is_deterministic_fits_and_holds_its_answers(task: str) -> None:
    a = make_sample(task, 2048, 3, seed=7, count_tokens=estimate_tokens)
    assert a == make_sample(task, 2048, 3, seed=7, count_tokens=estimate_tokens)
    assert a != make_sample(task, 2048, 4, seed=7, count_tokens=estimate_tokens)
    assert a.prompt != make_sample(task, 2048, 3, seed=8, count_tokens=estimate_tokens).prompt
    question = a.prompt.rsplit("\n\n", 1)[1]
    haystack = a.prompt[: -len(question)]
    for answer in a.answers:
        assert answer in haystack  # findable in the context, not given away by the question
    if task != "vt":  # vt's question names the value, which is not one of its answers
        assert not any(answer in question for answer in a.answers)
    # the filler is grown to the largest that fits: one more sentence would overflow
    limit = 2048 - a.max_new_tokens
    assert limit - 8 < estimate_tokens(a.prompt) <= limit
    assert a.score(" ".join(a.answers)) == 1.0 and a.score("no idea") == 0.0


def test_multi_answer_tasks_score_partially_and_keep_needle_order() -> None:
    mv = make_sample("niah_multivalue", 1024, 0, seed=0, count_tokens=words)
    assert len(set(mv.answers)) == 4 and mv.score(mv.answers[0] + " " + mv.answers[2]) == 0.5
    vt = make_sample("vt", 1024, 0, seed=0, count_tokens=words)
    positions = [vt.prompt.index(f"VAR {name} =") for name in vt.answers]
    assert positions == sorted(positions)  # a chain reads top to bottom: VAR B = VAR A comes after VAR A = v


def test_prompts_are_the_same_in_another_process() -> None:
    """Seeded by string: no dependence on PYTHONHASHSEED or process state."""
    code = (
        "from vortex_torch.flow.eval import make_samples; from vortex_torch.flow.eval.tasks import estimate_tokens;"
        "import hashlib; s = make_samples(['passkey', 'vt'], 1024, 2, 5, estimate_tokens);"
        "print(hashlib.sha256(''.join(x.prompt for x in s).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = make_samples(["passkey", "vt"], 1024, 2, 5, estimate_tokens)
    assert got.stdout.strip() == hashlib.sha256("".join(x.prompt for x in here).encode()).hexdigest()


def test_too_short_context_is_refused() -> None:
    with pytest.raises(ContextTooShortError, match="too short for task 'niah_multivalue'"):
        make_sample("niah_multivalue", 256, 0, seed=0, count_tokens=lambda t: len(t))


def test_budget_and_context_parsing() -> None:
    b = parse_budgets("30,1/16,0.25,full")
    assert [(x.label, x.topk_val, x.topk_ratio) for x in b] == [
        ("30", 30, 0.0),
        ("1/16", 0, 0.0625),
        ("0.25", 0, 0.25),
        ("full", 0, 1.0),
    ]
    assert parse_contexts("4k, 512,8K") == [4096, 512, 8192]
    for bad in ("0", "-3", "2/1", "abc", "1/0", "", "30,30"):
        with pytest.raises(EvalUsageError, match="--budgets"):
            parse_budgets(bad)
    for bad in ("4x", "100", "", "1k,1024", "-4k"):
        with pytest.raises(EvalUsageError, match="--contexts"):
            parse_contexts(bad)


# -- the hf backend -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3 and a byte-level BPE tokenizer saved as a checkpoint: no download."""
    pytest.importorskip("transformers")
    from vortex_torch.flow.runtime.hf import make_tiny_qwen3

    spec = importlib.util.spec_from_file_location("mk_tiny", REPO / "tools" / "device" / "mk_tiny.py")
    assert spec is not None and spec.loader is not None
    mk_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk_tiny)
    path = tmp_path_factory.mktemp("tiny_qwen3")
    make_tiny_qwen3(seed=0).save_pretrained(path)
    mk_tiny.save_tokenizer(str(path), 1024)
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls: intra-op threads only add overhead on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hf_full_budget_equals_dense_token_for_token(tiny_dir: Path, one_thread: None) -> None:
    from vortex_torch.flow import build_vflow
    from vortex_torch.flow.eval import run_eval
    from vortex_torch.flow.eval.hf_backend import HFBackend, load_model
    from vortex_torch.flow.runtime import RuntimeConfig

    model, tok = load_model(str(tiny_dir), torch.device("cpu"), torch.float32, "sdpa")
    flow = lambda: build_vflow("custom_sparse_attention", str(QUICKSTART))
    backend = HFBackend(model, tok, flow, parse_budgets("1,full"), RuntimeConfig(), name="tiny")
    generated: list[list[int]] = []  # every generation's tokens: 5 dense, 5 at budget 1, 5 at full
    decode = backend.decode

    def recording_decode(ids: Sequence[int]) -> str:
        generated.append(list(ids))
        return decode(ids)

    backend.decode = recording_decode  # type: ignore[method-assign]
    result = run_eval(backend, list(TASKS), [512], num_samples=1, seed=0, progress=False)

    dense, one, full = generated[0:5], generated[5:10], generated[10:15]
    assert len(generated) == 15 and all(len(g) == TASKS[t][1] for g, t in zip(dense, TASKS, strict=True))
    assert full == dense  # every block attended: the sparse path must reproduce dense exactly
    assert len({tuple(g) for g in dense}) > 1  # the outputs depend on the prompt (the check is not vacuous)
    assert one != dense  # one block per row changes some outputs: the budget is really applied
    row = result["summary"][0]
    assert row["context"] == 512 and row["budgets"]["full"]["agreement"] == 1.0
    assert row["budgets"]["1"]["agreement"] < 1.0
    assert {(r["task"], r["budget"]) for r in result["results"]} == {
        (t, b) for t in TASKS for b in ("1", "full")
    }
    assert result["backend"]["budgets"]["full"] == {"topk_val": 0, "topk_ratio": 1.0}


def _clean_env() -> dict[str, str]:
    """What a user's shell has: no TRITON_INTERPRET or other test-session settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "PYTEST_"))}


def test_cli_subprocess_writes_json_and_png(tiny_dir: Path, tmp_path: Path) -> None:
    vortex = Path(sys.executable).parent / "vortex"
    out = tmp_path / "eval out"
    cmd = [str(vortex), "eval", str(QUICKSTART), "--model", str(tiny_dir), "--contexts", "512"]
    cmd += ["--samples", "1", "--tasks", "passkey,vt", "--budgets", "2,full", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bars off a terminal, no stray warnings
    assert "wrote" in proc.stdout and "agreement with dense" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    for key in ("backend", "tasks", "contexts", "budgets", "summary", "results", "outputs", "time_s"):
        assert key in result
    assert result["budgets"] == ["2", "full"] and result["contexts"] == [512]
    assert (
        result["backend"]["model"] == str(tiny_dir) and result["backend"]["flow"] == "custom_sparse_attention"
    )
    assert result["summary"][0]["budgets"]["full"]["agreement"] == 1.0
    assert len(result["outputs"]) == 2 and set(result["outputs"][0]["sparse"]) == {"2", "full"}
    png = (out / "accuracy_vs_budget.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000


# -- the server backend ---------------------------------------------------------------------------------------------
class FakeServer:
    """An OpenAI-style ``/v1/models`` + ``/v1/completions`` on 127.0.0.1 that answers from a prompt -> answers
    map (``oracle``) or never (``wrong``), and records every request body."""

    def __init__(self, answers: dict[str, tuple[str, ...]], mode: str) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

            def _send(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._send({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body | {"_path": self.path, "_type": self.headers["Content-Type"]})
                found = answers.get(body["prompt"], ())
                text = " " + ", ".join(found) if mode == "oracle" else " I do not know."
                self._send({"choices": [{"index": 0, "text": text, "finish_reason": "length"}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[FakeServer, FakeServer, dict[str, tuple[str, ...]]]]:
    samples = make_samples(list(TASKS), 512, 2, 0, estimate_tokens)  # what `vortex eval` generates below
    answers = {s.prompt: s.answers for s in samples}
    good, bad = FakeServer(answers, "oracle"), FakeServer(answers, "wrong")
    yield good, bad, answers
    good.close()
    bad.close()


def test_server_backend_request_shape_and_scoring(
    servers: tuple[FakeServer, FakeServer, dict[str, tuple[str, ...]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, bad, answers = servers
    argv = ["eval", "--server-url", good.url, "--server-url", bad.url, "--budgets", "good,bad"]
    argv += ["--dense-url", good.url, "--contexts", "512", "--samples", "2", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    # dense and budget "good" both went to the good server, budget "bad" to the other
    assert len(good.requests) == 2 * len(answers) and len(bad.requests) == len(answers)
    max_new = {s.prompt: s.max_new_tokens for s in make_samples(list(TASKS), 512, 2, 0, estimate_tokens)}
    for req in good.requests + bad.requests:
        assert req["_path"] == "/v1/completions" and req["_type"] == "application/json"
        assert req["model"] == "fake-model" and req["temperature"] == 0
        assert req["prompt"] in answers and req["max_tokens"] == max_new[req["prompt"]]
    result = json.loads((tmp_path / "result.json").read_text())
    row = result["summary"][0]
    assert row["dense_accuracy"] == 1.0
    assert row["budgets"]["good"] == {"accuracy": 1.0, "agreement": 1.0}
    assert row["budgets"]["bad"] == {"accuracy": 0.0, "agreement": 0.0}
    assert result["backend"]["servers"] == {"good": good.url, "bad": bad.url}
    assert (tmp_path / "accuracy_vs_budget.png").read_bytes().startswith(PNG_MAGIC)


def test_server_without_dense_url_reports_no_agreement(
    servers: tuple[FakeServer, FakeServer, dict[str, tuple[str, ...]]], tmp_path: Path
) -> None:
    good, _, _ = servers
    argv = ["eval", "--server-url", good.url, "--contexts", "512", "--samples", "2", "--out", str(tmp_path)]
    assert main([*argv, "--tasks", "passkey"]) == 0
    row = json.loads((tmp_path / "result.json").read_text())["summary"][0]
    assert row["dense_accuracy"] is None and row["budgets"]["vortex"] == {"accuracy": 1.0, "agreement": None}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bad input: one line, the right exit status ---------------------------------------------------------------------
BAD_FLAGS = [
    (["--model", "m", "--contexts", "4x"], "--contexts"),
    (["--model", "m", "--contexts", "100"], "--contexts"),
    (["--model", "m", "--budgets", "0"], "--budgets"),
    (["--model", "m", "--budgets", "3/2"], "--budgets"),
    (["--model", "m", "--tasks", "passkey,nope"], "--tasks"),
    (["--model", "m", "--samples", "0"], "--samples"),
    (["--model", "m", "--device", "tpu"], "--device"),
    (["--model", "m", "--block-size", "12"], "--block-size"),
    (["--model", "m", "--page-size", "24"], "--page-size"),
    (["--model", "m", "--eos", "0"], "--eos"),
    (["--model", "m", "--layers-skip", "a,b"], "--layers-skip"),
    (["--model", "m", "--block-size", "abc"], "--block-size"),  # argparse's own type check
    (["--model", "m", "--progress", "loud"], "--progress"),
    (["--contexts", "512"], "--model"),  # neither backend
    (["--model", "m", "--server-url", "http://x"], "--server-url"),  # both
    (["--server-url", "ftp://x"], "http"),
    (["--server-url", "http://a", "--server-url", "http://b"], "--budgets"),  # two servers, no labels
]


@pytest.mark.parametrize(("flags", "names"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_exit_2(
    flags: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(QUICKSTART), *flags]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse-level errors exit from the parser
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and names in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (
            ["--layers-skip", "0,7", "--contexts", "512"],
            "--layers-skip has [7], but the model has only 2 layers",
        ),
        (["--contexts", "256"], "--contexts: context 256 is too short for task"),  # with this tokenizer
        (["--contexts", "8k"], "--contexts: 8192 tokens exceeds the model's max_position_embeddings=4096"),
    ],
)
def test_flags_checked_against_the_model(
    tiny_dir: Path, flags: list[str], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(QUICKSTART), "--model", str(tiny_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expect in err


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--model", "/nonexistent/model-dir"], "cannot load its tokenizer"),
        (["--server-url", "http://127.0.0.1:{port}"], "cannot reach http://127.0.0.1:"),
    ],
)
def test_unreachable_model_or_server_is_one_line_exit_1(
    flags: list[str], expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [f.format(port=_closed_port()) for f in flags]
    argv = [
        "eval",
        str(QUICKSTART),
        *flags,
        "--contexts",
        "512",
        "--samples",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expect in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_missing_flow_file_is_one_line(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "/nonexistent/flow.py", "--model", str(tiny_dir), "--contexts", "512"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(r"does not exist", err)
