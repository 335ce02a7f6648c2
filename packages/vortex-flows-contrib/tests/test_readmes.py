"""Each flow's README states facts that match the flow class, and the generated results agree with the
READMEs."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vortex_torch.flow import build_vflow

REPO = Path(__file__).resolve().parents[3]


def gen_flow_index() -> ModuleType:
    """tools/gen_flow_index.py as a module (it is a script, not part of a package)."""
    name = "vortex_tools_gen_flow_index"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "gen_flow_index.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def names(contrib: Any) -> list[str]:
    return list(contrib.entry_points)


def test_every_flow_has_a_readme_with_matching_facts(contrib: Any, names: list[str]) -> None:
    for name in names:
        readme = (contrib.src / name / "README.md").read_text()
        assert readme.startswith(f"# `{name}`"), f"{name}/README.md must start with its name"
        flow = build_vflow(name)
        arxiv = getattr(type(flow), "arxiv", "")
        if arxiv:
            assert f"arXiv:{arxiv}" in readme, f"{name}/README.md does not cite arXiv:{arxiv}"
        if getattr(type(flow), "mla", False):  # a vFlowMLA: DeepSeek's latent of 512 + 64
            flow.initialize(16, 512, 64)
            geo = "latent 512 + 64, bf16, block 16"
        else:
            flow.initialize(16, 128)
            geo = "D=128, bf16, block 16"
        match = re.search(rf"\*\*Cache per block\*\* \({re.escape(geo)}\): (\d+) bytes", readme)
        assert match, f"{name}/README.md lacks the '**Cache per block** ({geo}): N bytes' line"
        assert int(match.group(1)) == flow.aux_bytes_per_block(), (
            f"{name}: README states {match.group(1)} bytes"
        )
        radix_off = bool(getattr(type(flow), "requires_radix_cache_off", False))
        assert ("**Radix cache: must be off**" in readme) == radix_off, f"{name}: radix cache line"
        for section in ("## Algorithm", "## When to use it", "<!-- results:start -->"):
            assert section in readme, f"{name}/README.md lacks {section!r}"


def test_results_are_generated_and_the_readmes_agree(contrib: Any, names: list[str]) -> None:
    gen = gen_flow_index()
    results = {r["flow"]: r for r in gen.load_results(names)}
    assert sorted(results) == sorted(names), "flows without RESULTS.md: run python tools/gen_flow_index.py"
    for name, r in results.items():
        # either not measured, or filled from a committed GPU run (tools/gen_flow_index.py --gpu-results)
        gpu = r["gpu_step_time"]
        assert gpu == gen.NOT_MEASURED or " µs/layer (" in gpu, f"{name}: {gpu!r}"
        assert [b["budget"] for b in r["budgets"]] == ["1/8", "1/16", "1/32"]
        assert r["compiled_matches_reference"], f"{name}: the generator's compile check failed"
    stale = [str(p) for p, text in gen.rendered_readmes(names).items() if p.read_text() != text]
    assert not stale, f"READMEs disagree with RESULTS.md; run python tools/gen_flow_index.py: {stale}"
