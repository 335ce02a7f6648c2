"""The flow registry: ``@register``, entry-point discovery of installed flow packages (group
``vortex_flow.flows``), broken packages, the ``VORTEX_FLOWS`` allow-list and ``VORTEX_DISABLE_PLUGIN_AUTOLOAD``.

Installed packages are simulated with throwaway distributions made on the fly: a temporary directory on
``sys.path`` holding ``<dist>-<version>.dist-info/{METADATA,entry_points.txt}`` next to the flow modules.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from vortex_torch.abs.context import ContextBase, Geometry
from vortex_torch.abs.vtensor import vTensor
from vortex_torch.flow import CacheSpec, registry, vFlow
from vortex_torch.flow.errors import RegistryError, UnknownFlowError
from vortex_torch.flow.loader import build_vflow
from vortex_torch.flow.trace import trace_flow

FLOW_MODULE = """\
from vortex_torch.flow import vFlow, register
from vortex_torch import indexer as I
from vortex_torch import cache as C


@register({name!r})
class {cls}(vFlow):
    \"\"\"{doc}\"\"\"

    def __init__(self):
        super().__init__()
        self.mean = I.Mean(dim=1)
        self.gemm = I.GeMM()
        self.topk = I.topK()
        self.cmean = C.Mean(dim=1)

    def forward_indexer(self, q, o, cache, ctx):
        score = self.gemm(self.mean(q, ctx=ctx), cache["centroids"], ctx=ctx)
        self.topk(score, o, ctx=ctx)

    def forward_cache(self, cache, loc, ctx):
        self.cmean(cache["k"], cache["centroids"], loc=loc, ctx=ctx)

    def create_cache(self, block_size, head_dim):
        return {{"centroids": (1, head_dim)}}
"""


def flow_module(name: str, cls: str = "Flow", doc: str = "A test flow.") -> str:
    return FLOW_MODULE.format(name=name, cls=cls, doc=doc)


MakeDist = Callable[..., list[str]]


@pytest.fixture(autouse=True)
def sites(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """An empty registry on which discovery has not run; everything registered is undone afterwards.

    Discovery sees only the throwaway distributions of this test (the directories in the returned list), not
    whatever flow packages the test environment has installed. It still goes through importlib.metadata.
    """
    monkeypatch.delenv("VORTEX_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("VORTEX_FLOWS", raising=False)
    roots: list[Path] = []

    def scoped_entry_points(*, group: str) -> list[EntryPoint]:
        found = importlib.metadata.entry_points(group=group)
        return [
            ep
            for ep in found
            if ep.dist is not None and Path(str(ep.dist.locate_file(""))).resolve() in roots
        ]

    monkeypatch.setattr(registry, "entry_points", scoped_entry_points)
    with registry.isolated(clear=True):
        yield roots


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sites: list[Path]) -> Iterator[MakeDist]:
    """``make_dist(dist, {ep_name: module_source})`` installs a throwaway distribution; returns module names.

    Module names are unique per call, so no import is ever served from an earlier test's ``sys.modules``.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    sites.append(site.resolve())
    made: list[str] = []

    def make(dist: str, flows: dict[str, str], version: str = "1.0") -> list[str]:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[vortex_flow.flows]"]
        modules = []
        for ep_name, source in flows.items():
            module = f"vtx_test_{ep_name}_{uuid.uuid4().hex[:8]}"
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{ep_name} = {module}")
            modules.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()
        made.extend(modules)
        return modules

    yield make
    for module in made:
        sys.modules.pop(module, None)


# -- entry-point discovery -------------------------------------------------------------------------------------
def test_discovers_flows_of_installed_packages(make_dist: MakeDist) -> None:
    (module,) = make_dist(
        "acme-flows", {"acme_centroid": flow_module("acme_centroid", doc="Centroid scores.")}
    )
    assert module not in sys.modules  # discovery is lazy
    assert registry.has("acme_centroid")
    info = registry.get_info("acme_centroid")
    assert info is not None
    assert info.package == "acme-flows" and info.description == "Centroid scores."
    assert info.cls.__module__ == module and info.cls.name == "acme_centroid"
    assert info.source.endswith(f"{module}.py")
    assert registry.list_keys() == ["acme_centroid"]
    assert [f.name for f in registry.list_flows()] == ["acme_centroid"]
    assert registry.broken_packages() == {}
    # loadable by name alone, and traceable
    flow = build_vflow("acme_centroid")
    assert trace_flow(flow, Geometry()).terminal.op.name == "topK"


def test_discovery_runs_once_unless_forced(make_dist: MakeDist) -> None:
    make_dist("first-pkg", {"first_flow": flow_module("first_flow")})
    assert registry.list_keys() == ["first_flow"]
    make_dist("late-pkg", {"late_flow": flow_module("late_flow")})
    registry.discover()  # already ran: the package installed afterwards is not seen...
    assert "late_flow" not in registry.list_keys()
    registry.discover(force=True)  # ...until discovery is forced
    assert registry.list_keys() == ["first_flow", "late_flow"]


def test_broken_package_is_recorded_and_does_not_stop_others(make_dist: MakeDist) -> None:
    broken_source = flow_module("half_registered") + "\nraise RuntimeError('missing CUDA toolkit')\n"
    make_dist("broken-flows", {"broken": broken_source})
    make_dist("good-flows", {"good": flow_module("good_flow")})
    assert registry.list_keys() == ["good_flow"]  # the broken package's registration was rolled back
    broken = registry.broken_packages()
    assert list(broken) == ["broken (broken-flows)"]
    assert "RuntimeError: missing CUDA toolkit" in broken["broken (broken-flows)"]
    assert ".py:" in broken["broken (broken-flows)"]  # names the file and line
    # a lookup of a missing name mentions the broken package
    with pytest.raises(UnknownFlowError, match=r"failed to load: broken \(broken-flows\)"):
        registry.get("half_registered")


def test_package_that_cannot_be_imported(make_dist: MakeDist) -> None:
    make_dist("needs-dep", {"needs": "import not_installed_dependency_xyz\n"})
    make_dist("fine", {"fine": flow_module("fine_flow")})
    assert registry.has("fine_flow")
    assert "ModuleNotFoundError" in registry.broken_packages()["needs (needs-dep)"]


def test_name_clash_between_packages_is_a_broken_package(make_dist: MakeDist) -> None:
    make_dist("pkg-a", {"a": flow_module("shared_name", cls="FlowA")})
    make_dist("pkg-b", {"b": flow_module("shared_name", cls="FlowB")})
    make_dist("pkg-c", {"c": flow_module("other_name")})
    keys = registry.list_keys()
    assert keys == ["other_name", "shared_name"]
    (problem,) = registry.broken_packages().values()
    assert "RegistryError" in problem and "registered twice" in problem
    assert "FlowA" in problem and "FlowB" in problem


def test_allow_list_by_entry_point_name(make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch) -> None:
    (wanted,) = make_dist("multi", {"wanted": flow_module("wanted_flow")})
    (unwanted,) = make_dist("other", {"unwanted": flow_module("unwanted_flow")})
    monkeypatch.setenv("VORTEX_FLOWS", " wanted , not_installed ")
    assert registry.list_keys() == ["wanted_flow"]
    assert wanted in sys.modules and unwanted not in sys.modules  # not even imported


def test_allow_list_by_distribution_name(make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist("team-flows", {"one": flow_module("one"), "two": flow_module("two", cls="Two")})
    make_dist("other", {"three": flow_module("three")})
    monkeypatch.setenv("VORTEX_FLOWS", "team-flows")
    assert registry.list_keys() == ["one", "two"]


def test_empty_allow_list_loads_nothing(make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist("pkg", {"x": flow_module("x_flow")})
    monkeypatch.setenv("VORTEX_FLOWS", "")
    assert registry.list_keys() == []


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_disable_plugin_autoload(make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    (module,) = make_dist("pkg", {"x": flow_module("x_flow")})
    monkeypatch.setenv("VORTEX_DISABLE_PLUGIN_AUTOLOAD", value)
    assert not registry.has("x_flow")
    assert registry.list_keys() == []
    assert module not in sys.modules
    with pytest.raises(UnknownFlowError, match="Known flows: \\(none\\)"):
        build_vflow("x_flow")
    monkeypatch.delenv("VORTEX_DISABLE_PLUGIN_AUTOLOAD")
    assert registry.has("x_flow")  # discovery had not run, so it runs now


# -- register --------------------------------------------------------------------------------------------------
def _make_flow_class(name: str = "Local") -> type[vFlow]:
    class Local(vFlow):
        def forward_indexer(
            self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase
        ) -> None:
            pass

        def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
            pass

        def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
            return {}

    Local.__qualname__ = name
    return Local


def test_register_and_get() -> None:
    cls = registry.register("local", aliases=("old_local",))(_make_flow_class())
    assert registry.get("local") is cls and registry.get("old_local") is cls
    assert cls.name == "local"
    assert registry.aliases() == {"old_local": "local"}
    info = registry.get_info("local")
    assert info is not None and info.package == __name__.split(".")[0]


def test_same_class_registered_twice_is_fine() -> None:
    cls = _make_flow_class()
    registry.register("again")(cls)
    registry.register("again")(cls)
    assert registry.get("again") is cls


def test_two_classes_one_name() -> None:
    registry.register("taken")(_make_flow_class("FirstLocal"))
    with pytest.raises(RegistryError, match="'taken' is registered twice") as info:
        registry.register("taken")(_make_flow_class("SecondLocal"))
    msg = str(info.value)
    assert "FirstLocal" in msg and "SecondLocal" in msg and "test_registry.py:" in msg


def test_alias_clashing_with_a_name() -> None:
    registry.register("owner")(_make_flow_class("Owner"))
    with pytest.raises(RegistryError, match="'owner' is registered twice"):
        registry.register("newcomer", aliases=("owner",))(_make_flow_class("Newcomer"))


@pytest.mark.parametrize("name", [None, 3, "", "a b", "a,b"])
def test_register_rejects_bad_names(name: object) -> None:
    with pytest.raises(RegistryError) as info:
        registry.register(name)  # type: ignore[arg-type]
    assert "test_registry.py:" in str(info.value) and "Fix" in str(info.value)


def test_register_rejects_non_flows() -> None:
    with pytest.raises(RegistryError, match="not a vFlow subclass"):
        registry.register("plain")(object)  # type: ignore[type-var]
    with pytest.raises(RegistryError, match="not a vFlow subclass"):
        registry.register("func")(len)  # type: ignore[type-var]


def test_get_unknown_is_a_key_error() -> None:
    registry.register("known_one")(_make_flow_class())
    with pytest.raises(KeyError) as info:
        registry.get("known_on")
    assert isinstance(info.value, UnknownFlowError)
    assert "Known flows: known_one" in str(info.value) and "Did you mean 'known_one'?" in str(info.value)


# -- isolation -------------------------------------------------------------------------------------------------
def test_snapshot_and_restore() -> None:
    registry.register("kept")(_make_flow_class())
    snap = registry.snapshot()
    registry.register("dropped")(_make_flow_class("Dropped"))
    registry._BROKEN["x (y)"] = "boom"
    registry.restore(snap)
    assert registry.list_keys() == ["kept"] and registry.broken_packages() == {}


def test_isolated_undoes_registrations() -> None:
    registry.register("outer")(_make_flow_class())
    with registry.isolated():
        registry.register("inner")(_make_flow_class("Inner"))
        assert registry.has("inner") and registry.has("outer")
    assert not registry.has("inner") and registry.has("outer")
    with registry.isolated(clear=True):
        assert not registry.has("outer")
    assert registry.has("outer")


def test_no_state_leaks_between_tests_a() -> None:
    registry.register("leak_check")(_make_flow_class())


def test_no_state_leaks_between_tests_b() -> None:
    assert not registry.has("leak_check")
