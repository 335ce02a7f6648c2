"""Packaging of the four distributions.

Each wheel holds only its own part of the shared ``vortex_torch`` package (vortex-ops alone ships
``vortex_torch/__init__.py``), and the wheels install into a fresh virtual environment: vortex-ops alone
works without vortex-flow, and all four together form one ``vortex_torch``.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# distribution -> (version file, the one top-level path its wheel may hold)
PACKAGES = {
    "vortex-ops": ("src/vortex_torch/__about__.py", "vortex_torch/"),
    "vortex-flow": ("src/vortex_torch/flow/__about__.py", "vortex_torch/flow/"),
    "vortex-sglang": ("src/vortex_torch/engine/__about__.py", "vortex_torch/engine/"),
    "vortex-flows-contrib": ("src/vortex_flows_contrib/__about__.py", "vortex_flows_contrib/"),
}
OPS_IMPORTS = ["vortex_torch", "vortex_torch.abs", "vortex_torch.indexer", "vortex_torch.cache"]


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def source_version(dist: str) -> str:
    text = (ROOT / "packages" / dist / PACKAGES[dist][0]).read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, f"no __version__ in {dist}'s version file"
    return match.group(1)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four wheels, built as the README says (`pip wheel --no-deps`; the hatchling backend of each package,
    the same build as `hatch build` or `python -m build`)."""
    out = tmp_path_factory.mktemp("wheels")
    dirs = [ROOT / "packages" / dist for dist in PACKAGES]
    run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, *dirs
    )
    built = {}
    for dist in PACKAGES:
        (whl,) = out.glob(f"{dist.replace('-', '_')}-*.whl")
        built[dist] = whl
    return built


def wheel_files(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        return [n for n in z.namelist() if ".dist-info/" not in n]


def wheel_metadata(whl: Path, name: str) -> str:
    with zipfile.ZipFile(whl) as z:
        (path,) = (n for n in z.namelist() if n.endswith(f".dist-info/{name}"))
        return z.read(path).decode()


@pytest.mark.parametrize("dist", PACKAGES)
def test_wheel_holds_only_its_own_subpackage(wheels: dict[str, Path], dist: str) -> None:
    whl = wheels[dist]
    assert whl.name.startswith(f"{dist.replace('-', '_')}-{source_version(dist)}-")
    files = wheel_files(whl)
    own = PACKAGES[dist][1]
    assert f"{own}__about__.py" in files and f"{own}py.typed" in files
    assert [f for f in files if not f.startswith(own)] == []
    if dist == "vortex-ops":
        assert "vortex_torch/__init__.py" in files
        assert [f for f in files if f.startswith(("vortex_torch/flow/", "vortex_torch/engine/"))] == []
    elif own.startswith("vortex_torch/"):
        assert "vortex_torch/__init__.py" not in files


def test_wheel_metadata(wheels: dict[str, Path]) -> None:
    def requires(dist: str, name: str) -> list[Requirement]:
        meta = email.parser.Parser().parsestr(wheel_metadata(wheels[dist], "METADATA"))
        return [r for r in map(Requirement, meta.get_all("Requires-Dist") or []) if r.name == name]

    # The torch range admits the GPU machine's 2.11 and the CPU machines' 2.13.
    (torch,) = requires("vortex-ops", "torch")
    assert {"2.11.0", "2.13.0"} <= set(torch.specifier.filter(["2.10.0", "2.11.0", "2.13.0", "2.15.0"]))
    # Triton: only the series that is tested (CI's interpreter and the GPU machine run 3.6).
    (triton,) = requires("vortex-ops", "triton")
    assert list(triton.specifier.filter(["3.5.0", "3.6.0", "3.6.1", "3.7.0", "4.0.0"])) == ["3.6.0", "3.6.1"]
    assert version("triton") in triton.specifier
    # Triton's interpreter (the kernels on a CPU) imports numpy, which triton does not declare.
    assert requires("vortex-ops", "numpy")
    assert requires("vortex-flow", "vortex-ops") and requires("vortex-sglang", "vortex-flow")
    # SGLang only through the `sglang` extra: the plain install must never pull it.
    sglang = requires("vortex-sglang", "sglang")
    assert sglang, "no sglang extra"
    for req in sglang:
        assert req.marker is not None and not req.marker.evaluate({"extra": ""})
        assert req.marker.evaluate({"extra": "sglang"})
    assert "vortex = vortex_torch.flow.cli:main" in wheel_metadata(wheels["vortex-flow"], "entry_points.txt")


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Path]:
    """A new, empty virtual environment. torch and triton take about 1.4 GB in it: in memory (/dev/shm)
    where there is room, as writing and deleting that much on disk takes about two minutes here."""
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and shutil.disk_usage(shm).free > 6 * 2**30
    root = Path(tempfile.mkdtemp(prefix="vortex-packaging-", dir=shm)) if in_memory else tmp_path
    venv = root / "venv"
    try:
        run(sys.executable, "-m", "venv", venv)
        yield venv
    finally:
        shutil.rmtree(root if in_memory else venv, ignore_errors=True)


def test_wheels_install_into_fresh_venv(wheels: dict[str, Path], venv: Path, tmp_path: Path) -> None:
    """What the README's install section says: the four wheels into a new virtual environment (torch first,
    from local disk), then `vortex check` on the quick-start flow with the installed console script."""
    py = venv / "bin" / "python"
    pip = (py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile")
    # The exact builds running here (torch 2.13.0+cpu lies on local disk): never a CUDA download.
    run(*pip, f"torch=={version('torch')}", f"triton=={version('triton')}")

    # vortex-ops alone: the core imports, vortex_torch.flow does not exist.
    run(*pip, "--no-deps", wheels["vortex-ops"])
    code = (
        "import importlib, importlib.util\n"
        f"for name in {OPS_IMPORTS!r}:\n"
        "    importlib.import_module(name)\n"
        "assert importlib.util.find_spec('vortex_torch.flow') is None, 'flow without vortex-flow'\n"
        "import vortex_torch\n"
        "print(vortex_torch.__version__, vortex_torch.__file__)\n"
    )
    out = run(py, "-c", code, cwd=tmp_path).split()
    assert out[0] == source_version("vortex-ops")
    assert out[1].startswith(str(venv)), "vortex_torch was not imported from the fresh venv"

    # All four: one vortex_torch package, consistent dependencies, the console script.
    run(*pip, wheels["vortex-flow"], wheels["vortex-sglang"], wheels["vortex-flows-contrib"])
    run(py, "-m", "pip", "check")
    code = (
        "import importlib.metadata as md, importlib.util\n"
        "import vortex_torch.flow, vortex_torch.engine, vortex_flows_contrib\n"
        "assert importlib.util.find_spec('sglang') is None, 'sglang installed without the extra'\n"
        f"print(*(md.version(d) for d in {list(PACKAGES)!r}))\n"
    )
    assert run(py, "-c", code, cwd=tmp_path).split() == [source_version(d) for d in PACKAGES]
    assert (venv / "bin" / "vortex").is_file()

    # The README's check, with the installed console script, as a user runs it: nothing set in the
    # environment (no TRITON_INTERPRET: on a CPU `vortex check` must manage Triton's interpreter itself).
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET"}}
    check = [str(venv / "bin" / "vortex"), "check", str(ROOT / "examples" / "custom_sparse_attention.py")]
    proc = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"vortex check failed in the fresh venv:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.startswith("vortex check: custom_sparse_attention ("), proc.stdout
    assert "needle recall" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    proc = subprocess.run([*check, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True, report
