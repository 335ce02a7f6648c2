"""``python -m vortex_torch.engine.sgl.run MODULE ...`` (CPU): SGLang's own benchmark modules get
``--vortex-config``, it survives their ``Engine(**dataclasses.asdict(server_args))`` rebuild, and mistakes in the
command are one line and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vortex_torch.engine.sgl import run
from vortex_torch.engine.sgl.plugin import SKIP_VERSION_CHECK_ENV, config_of, vortex_cli_scope

pytestmark = pytest.mark.sglang


def _offline_throughput_like(sgl: Any, argv: list[str]) -> Any:
    """What ``sglang.benchmark.offline_throughput.cli_main`` does with the server flags: parse them, build
    ``ServerArgs.from_cli_args``, then ``Engine(**dataclasses.asdict(server_args))`` builds them again."""
    parser = argparse.ArgumentParser()
    sgl.ServerArgs.add_cli_args(parser)
    first = sgl.ServerArgs.from_cli_args(parser.parse_args(argv))
    return first, sgl.ServerArgs(**dataclasses.asdict(first))


def test_asdict_rebuild_keeps_the_config_only_inside_the_scope(
    sgl: Any, tiny_model_dir: Path, flow_config: dict[str, Any]
) -> None:
    """The reason for the scope: outside it the rebuilt ServerArgs has no Vortex config (a dense engine),
    inside it has the command line's."""
    value = json.dumps({**flow_config, "topk_val": 5})
    argv = ["--model-path", str(tiny_model_dir), "--device", "cpu", "--skip-tokenizer-init", "--vortex-config", value]
    first, again = _offline_throughput_like(sgl, argv)
    assert config_of(first) is not None and config_of(again) is None
    with vortex_cli_scope(value):
        first, again = _offline_throughput_like(sgl, argv)
    cfg = config_of(again)
    assert cfg is not None and cfg.topk_val == 5 and cfg == config_of(first)
    assert again.page_size == 16 and again.disable_overlap_schedule is True


def test_main_runs_the_module_inside_the_scope(
    sgl: Any, tiny_model_dir: Path, flow_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``main`` gives the module its own argv and runs it as ``__main__`` with the config carried; without
    ``--vortex-config`` the module's ServerArgs are plain SGLang's."""
    built: list[Any] = []

    def fake_run_module(name: str, run_name: str, alter_sys: bool) -> None:
        assert (name, run_name, alter_sys) == ("sglang.benchmark.offline_throughput", "__main__", True)
        assert sys.argv[0] == name
        built.append(_offline_throughput_like(sgl, sys.argv[1:])[1])

    monkeypatch.setattr(run.runpy, "run_module", fake_run_module)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    base = ["--model-path", str(tiny_model_dir), "--device", "cpu", "--skip-tokenizer-init"]
    value = json.dumps({**flow_config, "topk_val": 6})
    assert run.main(["sglang.benchmark.offline_throughput", *base, "--vortex-config", value]) == 0
    assert run.main(["sglang.benchmark.offline_throughput", *base]) == 0
    cfg = config_of(built[0])
    assert cfg is not None and cfg.topk_val == 6
    assert config_of(built[1]) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["json.tool"], "'json.tool' is not one of SGLang's modules"),
        (["sglang.benchmark.no_such_bench"], "no module named 'sglang.benchmark.no_such_bench'"),
        (["sglang.benchmark.offline_throughput", "--vortex-config", "{topk_val: 5"], "VortexConfig.<json>: not valid"),
        (["sglang.benchmark.offline_throughput", "--vortex-config", "NEGATIVE_TOPK"], "VortexConfig.topk_val"),
        (["sglang.benchmark.one_batch", "--tp-size", "2", "--vortex-config", "FLOW"], "use --tp-size 1 there"),
    ],
)
def test_command_mistakes_are_one_line_and_status_2(
    sgl: Any, argv: list[str], message: str, flow_config: dict[str, Any], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(run.runpy, "run_module", lambda *a, **k: pytest.fail("the module must not run"))
    values = {"FLOW": json.dumps(flow_config), "NEGATIVE_TOPK": json.dumps({**flow_config, "topk_val": -3})}
    argv = [values.get(a, a) for a in argv]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{run.PROG}: ") and message in err and err.count("\n") == 1


def test_sglang_benchmarks_list_the_flag_through_the_launcher(sgl: Any) -> None:
    """The real modules, in a fresh interpreter: their ``--help`` (argparse exits 0 after printing it) lists
    ``--vortex-config`` only when started through the launcher. ``offline_throughput`` imports Hugging Face
    ``datasets`` at the top, which this CPU environment may lack: then only ``one_batch`` is run."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    modules = ["sglang.benchmark.one_batch"]
    if importlib.util.find_spec("datasets") is not None:
        modules.append("sglang.benchmark.offline_throughput")
    for module in modules:
        via = subprocess.run([sys.executable, "-m", "vortex_torch.engine.sgl.run", module, "--help"],
                             capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert via.returncode == 0, via.stderr[-2000:]
        assert "--vortex-config" in via.stdout
        plain = subprocess.run([sys.executable, "-m", module, "--help"],
                               capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert plain.returncode == 0 and "--vortex-config" not in plain.stdout, plain.stderr[-2000:]


def test_an_unsupported_sglang_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the SGLang release the hooks target, the launcher says which one to install (not "no module")."""
    monkeypatch.setattr(run.importlib.util, "find_spec", lambda name: pytest.fail("checked the module first"))
    monkeypatch.setattr(run.runpy, "run_module", lambda *a, **k: pytest.fail("the module must not run"))
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.4.0")
    monkeypatch.delenv(SKIP_VERSION_CHECK_ENV, raising=False)
    assert run.main(["sglang.benchmark.one_batch"]) == 2
    err = capsys.readouterr().err
    assert "supports sglang==0.5.17 only" in err and "found sglang 0.4.0" in err and err.count("\n") == 1


def test_usage_without_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main([]) == 2
    assert run.main(["--help"]) == 0
    assert f"usage: {run.PROG} MODULE [ARGS...]" in capsys.readouterr().out

