"""Every contrib flow is found by name through the ``vortex_flow.flows`` entry points, exactly as a
third-party flow package is; the original project's names resolve; an outsider's throwaway package is found
the same way."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vortex_torch.flow import build_vflow, registry
from vortex_torch.flow.cli import main as vortex_main
from vortex_torch.flow.testing import FlowContractTests
from vortex_torch.flow.trace import trace_flow

#: the names the original project (vortex_torch, ``flow/algorithms.py``) registered its flows under
ORIGINAL_NAMES = (
    "block_sparse_attention",
    "gqa_block_sparse_attention",
    "gqa_quest_sparse_attention",
    "lserve_sparse_attention",
    "lserve_centroid_sparse_attention",
    "masked_quest_sparse_attention",
    "centered_block_sparse_attention",
    "running_avg_block_sparse",
    "venergy_gated_centroid",
)


def test_one_entry_point_per_flow_package(contrib: Any) -> None:
    packages = contrib.flow_packages()
    assert contrib.entry_points == {name: f"vortex_flows_contrib.{name}" for name in packages}


def test_installed_metadata_lists_the_entry_points(contrib: Any) -> None:
    found = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == contrib.dist_name
    }
    assert found == contrib.entry_points


def test_every_flow_is_discovered_by_name(contrib: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """From an empty registry, a lookup by name imports the flow's module through its entry point; the flow
    is registered under its entry-point name, by the distribution, and no package is broken."""
    for module in contrib.entry_points.values():  # fresh imports, so that @register runs during discovery
        monkeypatch.delitem(sys.modules, module, raising=False)
    with registry.isolated(clear=True):
        for name, module in contrib.entry_points.items():
            info = registry.get_info(name)
            assert info is not None
            assert info.cls.__module__ == module
            assert info.package == contrib.dist_name
            assert type(build_vflow(name)).name == name
        broken = {k: v for k, v in registry.broken_packages().items() if contrib.dist_name in k}
        assert not broken
    for module in contrib.entry_points.values():  # drop the re-imported copies; monkeypatch restores the rest
        sys.modules.pop(module, None)


def test_original_names_resolve() -> None:
    for name in ORIGINAL_NAMES:
        assert registry.has(name), f"the original flow name {name!r} does not resolve"


def test_vortex_list_shows_every_flow_with_a_description(
    contrib: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vortex_main(["list", "--json"]) == 0
    listed = {f["name"]: f for f in json.loads(capsys.readouterr().out)["flows"]}
    for name in contrib.entry_points:
        assert name in listed, f"`vortex list` does not show {name}"
        description = listed[name]["description"]
        assert description and len(description) <= 110, description


OUTSIDER_FLOW = '''
"""A flow shipped by somebody else's package."""

from typing import Any

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.flow import register, vFlow


@register("outsider_max_key")
class OutsiderMaxKey(vFlow):
    """Scores a block by <q̄, max_t k_t>: an outsider's flow, found by name."""

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.select = ix.topK()
        self.key_max = cx.Max(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> dict[str, tuple[int, int]]:
        return {"kmax": (1, head_dim)}

    def forward_cache(self, cache: Any, loc: Any, ctx: Any) -> None:
        self.key_max(cache["k"], cache["kmax"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: Any, o: Any, cache: Any, ctx: Any) -> None:
        self.select(self.dot(self.q_mean(q, ctx=ctx), cache["kmax"], ctx=ctx), o, ctx=ctx)
'''


def test_outsider_package_is_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_dist: Callable[[Path, str, str, str], Path]
) -> None:
    """A flow in its own throwaway distribution (a module plus ``.dist-info`` on ``sys.path``) loads by name
    with ``build_vflow`` and is credited to its distribution."""
    site = tmp_path / "site-packages"
    (site / "outsider_flows").mkdir(parents=True)
    (site / "outsider_flows" / "__init__.py").write_text(textwrap.dedent(OUTSIDER_FLOW))
    make_dist(site, "outsider-flows", "0.3.0", "[vortex_flow.flows]\noutsider_max_key = outsider_flows\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        with registry.isolated(clear=True):
            flow = build_vflow("outsider_max_key")
            info = registry.get_info("outsider_max_key")
            assert info is not None and info.package == "outsider-flows"
            assert type(flow).__module__ == "outsider_flows"
            assert info.description.startswith("Scores a block by")
        assert not registry.has("outsider_max_key")  # the isolated block undid the registration
    finally:
        sys.modules.pop("outsider_flows", None)


def test_template_is_a_valid_flow_without_an_entry_point(contrib: Any) -> None:
    """``_template`` is what CONTRIBUTING.md copies: it traces, and it is not registered by default."""
    assert "vortex_flows_contrib._template" not in contrib.entry_points.values()
    sys.modules.pop("vortex_flows_contrib._template", None)
    try:
        with registry.isolated():
            importlib.import_module("vortex_flows_contrib._template")
            trace_flow(build_vflow("template_flow"), FlowContractTests.geometry)
    finally:
        sys.modules.pop("vortex_flows_contrib._template", None)
