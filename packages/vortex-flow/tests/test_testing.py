"""The contract suite shipped for flow authors (``vortex_torch.flow.testing``): a good flow passes it, and
each broken flow fails the test that is about its defect, with a message that names the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, registry, vFlow
from vortex_torch.flow.compiler import reference as reference_module
from vortex_torch.flow.compiler.reference import ReferenceExecutor
from vortex_torch.flow.testing import FlowContractTests, compile_check
from vortex_torch.flow.trace import trace_flow


class TestFlowFromFile(FlowContractTests):
    """A correct flow, loaded from a plain file, passes the whole suite."""

    flow_name = "tt_file_centroid"
    flow_path = str(Path(__file__).with_name("contract_flow_file.py"))


class _Centroid(vFlow):
    """Scores blocks by <q̄, mean key>."""

    def __init__(self) -> None:
        super().__init__()
        self.q_mean = ix.Mean(dim=1)
        self.dot = ix.GeMM()
        self.select = ix.topK()
        self.centroid = cx.Mean(dim=1)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"c": (1, head_dim)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.centroid(cache["k"], cache["c"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        self.select(self.dot(self.q_mean(q, ctx=ctx), cache["c"], ctx=ctx), o, ctx=ctx)


class _Stateful(_Centroid):
    """Accumulates the centroid score across steps but forgets to declare requires_radix_cache_off."""

    def __init__(self) -> None:
        super().__init__()
        self.prev = ix.Load()
        self.acc = ix.Add()
        self.save = ix.Save()
        self.reset = cx.Fill(0.0)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"c": (1, head_dim), "acc": (1, 1)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        super().forward_cache(cache, loc, ctx)
        self.reset(cache["acc"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        s = self.acc(
            self.prev(cache["acc"], ctx=ctx), self.dot(self.q_mean(q, ctx=ctx), cache["c"], ctx=ctx), ctx=ctx
        )
        self.save(s, cache["acc"], ctx=ctx)
        self.select(s, o, ctx=ctx)


class _Blind(_Centroid):
    """Scores every block the same, whatever the query: it cannot find needles."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = cx.Fill(0.0)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"e": (1, 1)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.flat(cache["e"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        self.select(cache["e"], o, ctx=ctx)


class _Undocumented(_Centroid):
    pass


_Undocumented.__doc__ = None


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test flows registered; no entry-point discovery (a lookup that misses must not import the flow
    packages installed in the environment inside this isolated block)."""
    monkeypatch.setenv("VORTEX_DISABLE_PLUGIN_AUTOLOAD", "1")
    with registry.isolated():
        register("tt_centroid")(_Centroid)
        register("tt_stateful")(_Stateful)
        register("tt_blind")(_Blind)
        register("tt_undocumented")(_Undocumented)
        yield


def suite(name: str, **attrs: Any) -> FlowContractTests:
    cls = type(f"Suite_{name}", (FlowContractTests,), {"flow_name": name, **attrs})
    return cls()


def test_a_good_flow_passes_the_cheap_tests(registered: None) -> None:
    s = suite("tt_centroid")
    s.test_registered_and_loads_by_name()
    s.test_traces_under_the_flow_rules()
    s.test_needle_recall()


def test_missing_flow_name_is_explained() -> None:
    with pytest.raises(AssertionError, match="must set flow_name"):
        suite("").make_flow()


def test_stateful_flow_must_declare_radix_cache_off(registered: None) -> None:
    with pytest.raises(AssertionError, match="requires_radix_cache_off = True"):
        suite("tt_stateful").test_traces_under_the_flow_rules()
    _Stateful.requires_radix_cache_off = True  # type: ignore[attr-defined]
    try:
        suite("tt_stateful").test_traces_under_the_flow_rules()
    finally:
        del _Stateful.requires_radix_cache_off  # type: ignore[attr-defined]


def test_blind_flow_fails_needle_recall(registered: None) -> None:
    with pytest.raises(AssertionError, match=r"needle recall .* < min_needle_recall"):
        suite("tt_blind").test_needle_recall()
    suite("tt_blind", min_needle_recall=0.0).test_needle_recall()


def test_flow_class_declares_its_recall_bar(registered: None) -> None:
    """``expected_min_recall`` on the flow class is the bar (None: none), unless the test class sets its own."""
    _Blind.expected_min_recall = None  # type: ignore[attr-defined]
    try:
        assert suite("tt_blind").recall_bar() == (None, "_Blind.expected_min_recall")
        suite("tt_blind").test_needle_recall()
        with pytest.raises(AssertionError, match=r"needle recall .* < min_needle_recall 0.5"):
            suite("tt_blind", min_needle_recall=0.5).test_needle_recall()
        _Blind.expected_min_recall = 0.5  # type: ignore[attr-defined]
        with pytest.raises(AssertionError, match=r"needle recall .* < _Blind.expected_min_recall 0.5"):
            suite("tt_blind").test_needle_recall()
    finally:
        del _Blind.expected_min_recall  # type: ignore[attr-defined]
    assert suite("tt_blind").recall_bar() == (0.9, "min_needle_recall")


def test_undocumented_flow_fails_registration_test(registered: None) -> None:
    with pytest.raises(AssertionError, match="needs its own docstring"):
        suite("tt_undocumented").test_registered_and_loads_by_name()


def test_missing_alias_is_reported(registered: None) -> None:
    with pytest.raises(Exception, match="tt_old_name"):
        suite("tt_centroid", flow_aliases=("tt_old_name",)).test_registered_and_loads_by_name()


class _Off(ReferenceExecutor):
    """A wrong "reference": shifts every selection by one and scales aux fields."""

    def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
        super().run_cache(fields, block_ids)
        for name in self.traced.fields:
            fields[name][block_ids.long()] *= 1.5

    def run(self, *args: Any, **kwargs: Any) -> None:
        super().run(*args, **kwargs)
        out = args[4]
        out.copy_(out.roll(1))


def test_compile_check_reports_disagreement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    traced = trace_flow(_Centroid(), FlowContractTests.geometry)
    good = compile_check(traced, cache_dir=str(tmp_path))
    assert good.ok and good.mismatches == [] and good.kernels_per_layer == 2 and good.cache_kernels == 1
    assert good.cache_folded  # the quick-start flow has a scoring kernel: decode folds its forward_cache in
    assert good.as_dict()["compiled_matches_reference"] is True
    monkeypatch.setattr(reference_module, "ReferenceExecutor", _Off)
    bad = compile_check(traced, cache_dir=str(tmp_path))
    assert not bad.ok and not bad.selections_equal and not bad.aux_close
    assert any("compiled selected" in m for m in bad.mismatches)
    assert any(m.startswith("aux field 'c' differs after forward_cache") for m in bad.mismatches)
