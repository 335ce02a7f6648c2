"""Test setup of vortex-sglang: SGLang (when installed) with the Vortex hooks applied the way SGLang does it.

Tests marked ``sglang`` run against the real SGLang 0.5.17 classes (``ServerArgs``, the plugin loader, the KV
pool); they are skipped with the reason of ``sglang_missing_reason`` when SGLang is not importable (the marker
alone is enough: ``pytest_runtest_setup`` below).
``tools/setup.sh`` installs SGLang's Python side into ``.venv`` (``tools/install_sglang_cpu.sh``), so CI runs
them. The hooks are applied through SGLang's own entry-point machinery (``load_plugins()``), which finds the
``sglang.srt.plugins`` entry point of the installed (editable) vortex-sglang distribution.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location("vortex_sgl_testlib", Path(__file__).with_name("_testlib.py"))
assert _spec is not None and _spec.loader is not None
testlib = importlib.util.module_from_spec(_spec)
sys.modules["vortex_sgl_testlib"] = testlib
_spec.loader.exec_module(testlib)
FLOW_FILE, FLOW_NAME, TINY_CONFIG = testlib.FLOW_FILE, testlib.FLOW_NAME, testlib.TINY_CONFIG
sglang_missing_reason = testlib.sglang_missing_reason


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``sglang`` is skipped when SGLang is missing, also when it only runs SGLang in a
    subprocess and never asks for the ``sgl`` fixture (``hatch run test`` installs no SGLang)."""
    if item.get_closest_marker("sglang") is not None:
        reason = sglang_missing_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def sgl() -> Any:
    """SGLang's server-args module with every plugin loaded (``load_plugins()``, the real machinery)."""
    reason = sglang_missing_reason()
    if reason:
        pytest.skip(reason)
    from sglang.srt.plugins import load_plugins

    load_plugins()
    import sglang.srt.server_args as server_args

    return server_args


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with only ``config.json`` (enough for ``ServerArgs`` to resolve on the CPU)."""
    out = tmp_path_factory.mktemp("tiny_qwen3")
    (out / "config.json").write_text(json.dumps(TINY_CONFIG))
    return out


@pytest.fixture
def make_server_args(sgl: Any, tiny_model_dir: Path) -> Callable[..., Any]:
    """``ServerArgs(model_path=<tiny>, device="cpu", skip_tokenizer_init=True, **kwargs)``."""

    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("model_path", str(tiny_model_dir))
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("skip_tokenizer_init", True)
        return sgl.ServerArgs(**kwargs)

    return build


@pytest.fixture
def cli_args(sgl: Any, tiny_model_dir: Path) -> Callable[..., Any]:
    """``prepare_server_args([--model-path <tiny> --device cpu --skip-tokenizer-init, *argv])``."""

    def build(*argv: str) -> Any:
        base = ["--model-path", str(tiny_model_dir), "--device", "cpu", "--skip-tokenizer-init"]
        return sgl.prepare_server_args([*base, *argv])

    return build


@pytest.fixture
def flow_config() -> dict[str, Any]:
    """The quick start's flow, as VortexConfig fields."""
    return {"module_path": str(FLOW_FILE), "module_name": FLOW_NAME}
