"""Test setup of vortex-flows-contrib: the package is "installed" for the session the way pip would.

A temporary ``site`` directory holding
``vortex_flows_contrib-<version>.dist-info/{METADATA,entry_points.txt}`` goes first on ``sys.path``;
``entry_points.txt`` is generated from this package's ``pyproject.toml``, so the tests exercise the very
entry points a wheel would ship and cannot drift from them. The flow modules are found through ``src/``
(already importable). Flows are then found by name the way users find them: ``build_vflow(name)`` ->
registry miss -> entry-point discovery -> import of ``vortex_flows_contrib.<name>``.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vortex_torch.flow import registry

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = PACKAGE_ROOT / "pyproject.toml"
SRC = PACKAGE_ROOT / "src" / "vortex_flows_contrib"
DIST_NAME = "vortex-flows-contrib"

MakeDist = Callable[[Path, str, str, str], Path]


def _entry_point_groups() -> dict[str, dict[str, str]]:
    with PYPROJECT.open("rb") as fh:
        groups = tomllib.load(fh)["project"].get("entry-points", {})
    assert isinstance(groups, dict)
    return groups


def _version() -> str:
    about: dict[str, str] = {}
    exec((SRC / "__about__.py").read_text(), about)
    return about["__version__"]


def entry_points_txt(groups: dict[str, dict[str, str]]) -> str:
    """``entry_points.txt`` as a wheel built from ``pyproject.toml`` holds it (every entry-point group)."""
    lines: list[str] = []
    for group, eps in groups.items():
        lines += [f"[{group}]", *(f"{name} = {value}" for name, value in eps.items()), ""]
    return "\n".join(lines)


def install_dist(site: Path, dist: str, version: str, entry_points: str) -> Path:
    """Write ``<dist>-<version>.dist-info/{METADATA,entry_points.txt}`` into ``site`` (on ``sys.path``)."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)
    importlib.invalidate_caches()
    return info


@dataclass(frozen=True)
class ContribInstall:
    """The simulated installation: ``site`` (first on ``sys.path``), the distribution name, the package's
    source directory and its flow entry points ``{name: module}`` as ``pyproject.toml`` declares them."""

    site: Path
    dist_name: str
    src: Path
    entry_points: dict[str, str]

    def flow_packages(self) -> list[str]:
        """Sub-packages that hold a flow (``_template`` and other private ones excluded)."""
        return sorted(
            p.name for p in self.src.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_")
        )


@pytest.fixture(scope="session", autouse=True)
def contrib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContribInstall]:
    """vortex-flows-contrib's metadata first on ``sys.path`` for the session, and discovery re-armed.

    Flow modules that an earlier test imported inside ``registry.isolated()`` (a discovery run there) are
    imported but no longer registered; they are dropped from ``sys.modules`` so discovery runs their
    ``@register`` again, as in a fresh process.
    """
    groups = _entry_point_groups()
    site = tmp_path_factory.mktemp("site-packages")
    install_dist(site, DIST_NAME, _version(), entry_points_txt(groups))
    sys.path.insert(0, str(site))
    for module in groups.get(registry.ENTRY_POINT_GROUP, {}).values():
        sys.modules.pop(module, None)
    registry.discover(force=True)
    yield ContribInstall(
        site=site, dist_name=DIST_NAME, src=SRC, entry_points=dict(groups.get(registry.ENTRY_POINT_GROUP, {}))
    )
    sys.path.remove(str(site))
    importlib.invalidate_caches()


@pytest.fixture
def make_dist() -> MakeDist:
    """``make_dist(site, dist, version, entry_points_txt)`` writes a throwaway distribution's metadata."""
    return install_dist
