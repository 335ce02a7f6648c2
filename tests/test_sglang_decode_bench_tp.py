"""tools/bench/sglang_decode_bench.py ``--tp-size N`` (issue 12) on the CPU: parsed as a positive integer, checked
against the visible GPUs and the model's heads before any GPU work (one line on stderr, exit 2), passed to every
engine (plain and Vortex, dummy-weight models included), recorded as ``tp_size`` in the result and in every e2e row,
with NVLink multicast kept off in the environment the engines inherit. ``main()`` runs in-process with a fake
``sglang.Engine`` and a fake GPU count."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "bench" / "sglang_decode_bench.py"
#: Qwen3-8B's attention geometry (tools/device/mk_tiny.py --preset qwen3-8b), as the bench's model
QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 1, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 4096, "max_position_embeddings": 40960}  # fmt: skip


bench = load_tool(TOOL, "sglang_decode_bench_under_tp_test")


def test_tp_size_is_a_positive_integer() -> None:
    assert bench.positive_int("2") == 2 and bench.positive_int("1") == 1
    for bad in ("0", "-2", "two", "1.5", "", "2x"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a positive integer"):
            bench.positive_int(bad)
    done = subprocess.run([sys.executable, str(TOOL), "--tp-size", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "argument --tp-size: '0' is not a positive integer" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_tp_problem_needs_the_gpus_and_heads_that_split() -> None:
    assert bench.tp_problem(1, 0) is None and bench.tp_problem(1, 0, QWEN3_8B) is None  # tp 1: as before
    assert bench.tp_problem(2, 2, QWEN3_8B) is None and bench.tp_problem(2, 8) is None
    why = bench.tp_problem(2, 1, QWEN3_8B)
    assert why is not None and why.startswith("--tp-size 2: needs 2 GPUs, 1 visible") and "\n" not in why
    assert "query heads do not split over 3 ranks" in str(bench.tp_problem(3, 4, QWEN3_8B))
    assert bench.tp_problem(16, 16, QWEN3_8B) is None  # 8 KV heads replicated to 16 ranks, as SGLang does
    mixed = {**QWEN3_8B, "num_attention_heads": 30, "num_key_value_heads": 5}
    assert "5 KV heads neither split over nor replicate to 3 ranks" in str(bench.tp_problem(3, 4, mixed))


def test_too_few_gpus_is_one_line_and_exit_2_before_any_gpu_work(tmp_path: Path) -> None:
    """From the command line, on this machine: more ranks than visible GPUs."""
    tp = max(2, torch.cuda.device_count() + 1)
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(TOOL), "--tp-size", str(tp), "--model", str(tmp_path / "absent"),
                           "--skip-kernels", "--out", str(out)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"sglang_decode_bench.py: error: --tp-size {tp}: needs {tp} GPUs, "
                     f"{torch.cuda.device_count()} visible (torch.cuda.device_count()); run on a machine with {tp} "
                     f"GPUs (e.g. the nvidia-h200-x{tp} kind) or pass --tp-size 1"], done.stderr  # fmt: skip
    assert not out.exists()  # nothing ran (the model directory was not even read)


# -- main() in-process: a fake GPU count and a fake sglang.Engine ------------------------------------------------------
class FakeEngine:
    """What the bench calls on an ``sgl.Engine``; records the keyword arguments and the environment at start."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        env = {k: os.environ.get(k) for k in bench.NO_MULTICAST}
        FakeEngine.made.append({"kwargs": kwargs, "env": env})

    def generate(self, input_ids: list[list[int]], sampling_params: dict[str, Any]) -> None:
        return None

    def flush_cache(self) -> bool:
        return True

    def shutdown(self) -> None:
        return None


#: every ``torch.cuda.get_device_name`` call main() made (the first GPU query after the checks)
GPU_QUERIES: list[int] = []


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``run(argv, gpus)``: ``main()`` with ``torch.cuda.device_count() == gpus`` and a fake ``sglang`` whose
    ``Engine`` is :class:`FakeEngine`; NVLink multicast set *on* in the environment first (main must turn it off;
    monkeypatch restores it); temporary (dummy) models under ``tmp_path``; ``GPU_QUERIES`` records every
    ``torch.cuda.get_device_name`` call."""
    FakeEngine.made = []
    GPU_QUERIES.clear()
    monkeypatch.setitem(sys.modules, "sglang", types.SimpleNamespace(Engine=FakeEngine))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # the bench's clock starts at import (a process runs it once); here it must start with the run, or its time
    # budget (--budget-s, 430 s) is spent by the tests that ran before this one
    monkeypatch.setattr(bench, "T0", time.time())
    for key, off in bench.NO_MULTICAST.items():
        monkeypatch.setenv(key, "1" if off == "0" else "0")

    def run(argv: list[str], gpus: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)

        def device_name(index: int = 0) -> str:
            GPU_QUERIES.append(index)
            return "GPU X"

        monkeypatch.setattr(torch.cuda, "get_device_name", device_name)
        monkeypatch.setattr(sys, "argv", ["sglang_decode_bench.py", *argv])
        bench.main()

    return run


def model_dir(tmp_path: Path, **cfg: Any) -> Path:
    out = tmp_path / "qwen3-8b-l1"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**QWEN3_8B, **cfg}))
    (out / "model.safetensors").write_bytes(b"weights")
    return out


def test_every_engine_gets_the_tp_size_and_the_json_records_it(
    tmp_path: Path, fake_gpus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernels: list[tuple[Any, ...]] = []  # the one-layer section times one rank's layer
    monkeypatch.setattr(bench, "kernel_case", lambda *a: kernels.append(a) or {"ctx": a[0], "batch": a[1], "error": "-"})
    model = model_dir(tmp_path)
    out, e2e = tmp_path / "full.json", tmp_path / "e2e.json"
    fake_gpus(["--tp-size", "2", "--ctx", "8192", "--batch", "1", "--model", str(model), "--dummy-layers", "36",
               "--cases", "2048x1", "32768x16", "--engines", "plain", "vortex", "vortex:pdl", "--budgets", "512",
               "--steps", "4", "--out", str(out), "--e2e-out", str(e2e)], gpus=2)  # fmt: skip
    assert kernels == [(8192, 1, 40960, 2)]
    made = FakeEngine.made
    assert GPU_QUERIES  # main() did reach its GPU work (and the fakes stood in for it)
    assert [("vortex" in m["kwargs"], m["kwargs"].get("vortex", {}).get("enable_pdl")) for m in made] == [
        (False, None), (True, False), (True, True)]  # fmt: skip
    for m in made:
        kw = m["kwargs"]
        assert kw["tp_size"] == 2, kw
        assert m["env"] == bench.NO_MULTICAST  # what the scheduler processes inherit
        # the dummy flow: weights left behind, 36 layers of the model's geometry, SGLang's random weights
        assert kw["load_format"] == "dummy" and Path(kw["model_path"]).parent == tmp_path
        served = json.loads((Path(kw["model_path"]) / "config.json").read_text())
        assert (served["num_hidden_layers"], served["num_attention_heads"], served["num_key_value_heads"]) == (36, 32, 8)
        assert not list(Path(kw["model_path"]).glob("*.safetensors"))
    result = json.loads(out.read_text())
    assert result["tp_size"] == 2 and result["complete"] and result["comm_env"] == bench.NO_MULTICAST
    assert all("tok_per_s" in r for recs in result["engines"].values() for r in recs)
    rows = json.loads(e2e.read_text())
    assert len(rows) == 2 * 2 and rows == result["e2e"]  # 2 Vortex engines x 2 cases
    assert all(r["tp_size"] == 2 and r["plain_tok_s"] and r["vortex_tok_s"] for r in rows)
    assert "GPU X x 2, tp 2" in bench.report(result)


def test_tp_1_is_the_default_and_still_recorded(tmp_path: Path, fake_gpus: Any) -> None:
    model = model_dir(tmp_path)
    out = tmp_path / "full.json"
    fake_gpus(["--skip-kernels", "--model", str(model), "--cases", "2048x1", "--steps", "4", "--out", str(out)], gpus=1)
    assert [m["kwargs"]["tp_size"] for m in FakeEngine.made] == [1, 1]  # plain, vortex512
    assert "load_format" not in FakeEngine.made[0]["kwargs"]
    result = json.loads(out.read_text())
    assert result["tp_size"] == 1 and [r["tp_size"] for r in result["e2e"]] == [1]
    assert bench.report(result).splitlines()[0] == f"## SGLang decode bench (GPU X, {result['date']})"
    # a result written before the option existed: its rows are tp 1
    old = {k: v for k, v in result.items() if k != "tp_size"}
    assert [r["tp_size"] for r in bench.e2e_rows(old)] == [1]


@pytest.mark.parametrize(
    ("argv", "gpus", "message"),
    [
        (["--tp-size", "2"], 1, "--tp-size 2: needs 2 GPUs, 1 visible"),
        (["--tp-size", "3"], 4, "--tp-size 3: the model's 32 query heads do not split over 3 ranks"),
    ],
)
def test_a_tp_size_the_machine_or_model_cannot_run_stops_before_any_gpu_work(
    tmp_path: Path, fake_gpus: Any, capsys: pytest.CaptureFixture[str], argv: list[str], gpus: int, message: str
) -> None:
    model = model_dir(tmp_path)
    out = tmp_path / "full.json"
    with pytest.raises(SystemExit) as stop:
        fake_gpus([*argv, "--model", str(model), "--out", str(out)], gpus=gpus)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sglang_decode_bench.py: error: {message}"), err
    assert not GPU_QUERIES and not FakeEngine.made and not out.exists()  # no GPU query, engine or JSON


def test_engine_kwargs_pass_tp_size_to_plain_and_vortex_alike() -> None:
    plain = bench.engine_kwargs("/m", None, False, True, 2)
    vortex = bench.engine_kwargs("/m", {"topk_val": 30}, False, True, 2)
    assert plain["tp_size"] == vortex["tp_size"] == 2
    assert {k: v for k, v in vortex.items() if k != "vortex"} == plain
    assert bench.engine_kwargs("/m", None, False, False)["tp_size"] == 1
