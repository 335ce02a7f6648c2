"""The ``vortex_torch.plugins`` entry-point hook.

Each test makes a throwaway installed distribution on the fly (``<name>.dist-info`` with ``METADATA`` and
``entry_points.txt`` beside a plugin module) and puts it on the path. In-process tests see only that
distribution; the subprocess tests run a real ``import vortex_torch`` in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from vortex_torch import _plugins
from vortex_torch._plugins import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP, PluginLoadError, load_plugins

LOG_ENV = "VORTEX_TEST_PLUGIN_LOG"

PLUGIN_MODULE = f"""
import os

def install():
    with open(os.environ[{LOG_ENV!r}], "a") as f:
        f.write("installed\\n")

def boom():
    raise RuntimeError("kaput")
"""


def make_distribution(root: Path, name: str, module: str, entry_points: dict[str, str]) -> None:
    """Write distribution ``name`` (version 0.0.1) with ``entry_points`` in our group, and ``module``."""
    info = root / f"{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    (root / f"{module}.py").write_text(PLUGIN_MODULE)


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def plugin_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(directory for throwaway distributions, call log). In-process, only that directory's distributions
    are visible and the loader starts with nothing loaded; everything is restored afterwards."""
    dists = tmp_path / "dists"
    dists.mkdir()
    log = tmp_path / "calls.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    stdlib = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
    monkeypatch.setattr(sys, "path", [str(dists), *(p for p in sys.path if p in stdlib)])
    monkeypatch.setattr(_plugins, "_loaded", set())
    for module in ("vortex_test_plugin", "vortex_test_other_plugin"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return dists, log


def test_hook_is_called_exactly_once(plugin_env: tuple[Path, Path]) -> None:
    dists, log = plugin_env
    make_distribution(
        dists, "vortex-test-plugin", "vortex_test_plugin", {"good": "vortex_test_plugin:install"}
    )

    assert load_plugins() == ["good"]
    assert calls(log) == 1
    assert load_plugins() == []
    assert calls(log) == 1


def test_failing_hook_names_entry_point_and_distribution(plugin_env: tuple[Path, Path]) -> None:
    dists, log = plugin_env
    make_distribution(
        dists,
        "vortex-test-plugin",
        "vortex_test_plugin",
        {"good": "vortex_test_plugin:install", "bad": "vortex_test_plugin:boom"},
    )

    with pytest.raises(PluginLoadError) as info:
        load_plugins()
    message = str(info.value)
    assert "'bad'" in message and "vortex_test_plugin:boom" in message
    assert "vortex-test-plugin 0.0.1" in message and "kaput" in message
    assert info.value.distribution == "vortex-test-plugin 0.0.1"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert calls(log) == 1

    # No silent fallback: the failed hook is tried (and fails) again; the good one is not re-run.
    with pytest.raises(PluginLoadError, match="'bad'"):
        load_plugins()
    assert calls(log) == 1


def test_unimportable_hook_is_a_plugin_load_error(plugin_env: tuple[Path, Path]) -> None:
    dists, _ = plugin_env
    make_distribution(
        dists, "vortex-test-plugin", "vortex_test_plugin", {"gone": "vortex_no_such_module:install"}
    )

    with pytest.raises(PluginLoadError, match=r"'gone'.*vortex-test-plugin") as info:
        load_plugins()
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize(("value", "disabled"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_disable_env_values(monkeypatch: pytest.MonkeyPatch, value: str, disabled: bool) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, value)
    assert _plugins.autoload_disabled() is disabled


# --- `import vortex_torch` in a fresh interpreter --------------------------------------------------------


def run_python(
    code: str, dists: Path, log: Path, *, disable: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != DISABLE_AUTOLOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(dists), env.get("PYTHONPATH")) if p)
    env[LOG_ENV] = str(log)
    if disable:
        env[DISABLE_AUTOLOAD_ENV] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_calls_hook_once_per_process(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    make_distribution(
        tmp_path, "vortex-test-plugin", "vortex_test_plugin", {"good": "vortex_test_plugin:install"}
    )

    code = "import importlib, vortex_torch; importlib.reload(vortex_torch); vortex_torch.load_plugins()"
    proc = run_python(code, tmp_path, log)
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == 1


def test_disable_env_skips_autoload(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    make_distribution(
        tmp_path, "vortex-test-plugin", "vortex_test_plugin", {"good": "vortex_test_plugin:install"}
    )

    code = "import os, vortex_torch; print(os.path.exists(os.environ['VORTEX_TEST_PLUGIN_LOG']))"
    proc = run_python(code, tmp_path, log, disable=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"

    # An explicit call still loads them.
    proc = run_python("import vortex_torch; vortex_torch.load_plugins()", tmp_path, log, disable=True)
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == 1


def test_import_with_failing_hook_fails_every_time(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    make_distribution(
        tmp_path, "vortex-test-bad-plugin", "vortex_test_plugin", {"bad": "vortex_test_plugin:boom"}
    )

    code = """
for _ in range(2):
    try:
        import vortex_torch
    except Exception as exc:
        print(type(exc).__name__)
"""
    proc = run_python(code, tmp_path, log)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PluginLoadError", "PluginLoadError"]

    proc = run_python("import vortex_torch", tmp_path, log)
    assert proc.returncode != 0
    assert "PluginLoadError" in proc.stderr and "'bad'" in proc.stderr
    assert "vortex-test-bad-plugin 0.0.1" in proc.stderr and "RuntimeError: kaput" in proc.stderr
