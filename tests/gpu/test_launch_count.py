"""Kernel launches of one sparse decode layer, for every flow we ship (issue 8: at most 3 per sparse layer).

The step is the one ``tools/bench/decode_step_bench.py`` times, the way the vortex-sglang backends drive it:
for a GQA flow its ``Case`` (a :class:`VortexDecodeCore` on a synthetic pool of Qwen3-8B geometry), for an
MLA flow (``vFlowMLA``) its ``MLACase`` (a :class:`VortexMLADecodeCore` on one latent buffer of
DeepSeek-V2-Lite geometry, 16 heads, 512 + 64). Per layer the decode cache update (folded into the scoring
launch when the flow has a scoring kernel: ``decode_layer(..., new_locs=)``), then indexer + selection +
sparse attention (``decode_layer``; MLA attention for an MLA flow); per step one plan shared by all layers.
Launches are counted with the torch profiler on eager calls (what SGLang's decode CUDA graph captures), after
a warm-up call that compiles the kernels.

Asserted per flow (the quick-start flow of ``examples/`` and every flow vortex-flows-contrib declares, GQA and
MLA):

* one sparse layer launches at most :data:`MAX_LAYER_LAUNCHES` kernels (scoring with the cache update folded
  in + selection + attention; a memset counts, it is a node of the graph too) and copies nothing between host
  and device;
* the per-step plan is exactly one launch, with no copy;
* the rows are really sparse (budget below the row's blocks), so the counts are those of scoring work.

Not checked here: that a row whose budget covers all its blocks launches no scoring work. Its launches are
the same kernels with less work inside, which launch counts cannot see.

Every flow is measured once per module (all of them, so that each failure shows the whole table); a flow
that fails to build is reported with its error. Small shapes (2048 tokens x batch 2), so it is fast.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[2]
CTX, BATCH, BUDGET_TOKENS = 2048, 2, 512  # 128 blocks per row, 32 selected
#: scoring (the decode cache update folded in) + top-k selection + attention (split merge inside): issue 8, item 2
MAX_LAYER_LAUNCHES = 3
QUICKSTART = "custom_sparse_attention"

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def contrib_flows(mla: bool) -> list[str]:
    """The GQA flows (``mla=False``) or the MLA flows (vFlowMLA, measured on the bench's ``MLACase``)
    vortex-flows-contrib declares as entry points (its pyproject.toml: the list cannot drift)."""
    from vortex_torch.flow import registry
    from vortex_torch.flow.flow import vFlowMLA

    data = tomllib.loads((ROOT / "packages" / "vortex-flows-contrib" / "pyproject.toml").read_text())
    registry.discover()
    names = sorted(data["project"]["entry-points"]["vortex_flow.flows"])
    return [n for n in names if issubclass(registry.get(n), vFlowMLA) == mla]


GQA_FLOWS = [QUICKSTART, *contrib_flows(mla=False)]
MLA_FLOWS = contrib_flows(mla=True)
FLOWS = GQA_FLOWS + MLA_FLOWS


def load_bench() -> ModuleType:
    return load_tool(ROOT / "tools" / "bench" / "decode_step_bench.py")


@dataclass
class Counts:
    """GPU activities of one flow's step; ``error`` when the step could not be built or run."""

    cache: list[str] = field(default_factory=list)
    indexer: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    layer: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    selected_blocks: int = 0
    dense_blocks: int = 0
    error: str = ""

    @staticmethod
    def launches(events: list[str]) -> int:
        return sum(1 for e in events if "Memcpy" not in e)

    @staticmethod
    def copies(events: list[str]) -> list[str]:
        return [e for e in events if "Memcpy" in e]

    def row(self, name: str) -> str:
        if self.error:
            return f"{name:34s} error: {self.error}"
        n = self.launches
        return (f"{name:34s} layer {n(self.layer):2d} = cache apart {n(self.cache)} + indexer {n(self.indexer)} + "
                f"attention {n(self.attention)}; plan {n(self.plan)}; copies "
                f"{len(self.copies(self.layer)) + len(self.copies(self.plan))}")  # fmt: skip


def measure(bench: ModuleType, flow: str) -> Counts:
    flow_ref = (
        (str(ROOT / "examples" / f"{QUICKSTART}.py"), QUICKSTART) if flow == QUICKSTART else (None, flow)
    )
    case_class = bench.MLACase if flow in MLA_FLOWS else bench.Case
    try:
        case = case_class(CTX, BATCH, BUDGET_TOKENS, layers=1, flow=flow_ref)
        f, q, core = case.fields[0], case.q[0], case.core
        events = bench.launch_events
        folded = core.executor.folds_cache_update  # else the cache update is a launch before the indexer
        counts = Counts(
            cache=[] if folded else events(lambda: core.update_cache(f, case.loc)),
            indexer=events(lambda: core.select(q, f, case.plan, new_locs=case.loc if folded else None)),
            attention=events(lambda: case.attend(0)),
            layer=events(lambda: case.layer(0)),
            plan=events(case.plan_step),
            selected_blocks=case.selected_blocks,
            dense_blocks=case.dense_blocks,
        )
    except Exception as exc:  # one broken flow must not hide the others' counts
        return Counts(error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        torch.cuda.empty_cache()
    return counts


@pytest.fixture(scope="module")
def measured() -> dict[str, Counts]:
    bench = load_bench()
    out = {flow: measure(bench, flow) for flow in FLOWS}
    print("\n" + table(out))
    return out


def table(measured: dict[str, Counts]) -> str:
    head = f"launches at {CTX} tokens x batch {BATCH}, budget {BUDGET_TOKENS} tokens"
    gqa = [f"{head}, GQA (Qwen3-8B geometry):", *(measured[f].row(f) for f in GQA_FLOWS)]
    mla = [f"{head}, MLA (DeepSeek-V2-Lite geometry):", *(measured[f].row(f) for f in MLA_FLOWS)]
    return "\n".join(gqa + mla)


def kernel_list(events: list[str]) -> str:
    return "\n".join(f"    {e[:110]}" for e in events)


@pytest.mark.parametrize("flow", FLOWS)
def test_sparse_layer_launches_at_most_three_kernels(flow: str, measured: dict[str, Counts]) -> None:
    c = measured[flow]
    assert not c.error, f"{flow}: {c.error}\n{table(measured)}"
    assert 0 < c.selected_blocks < c.dense_blocks, (
        f"{flow}: rows must be sparse for the count to mean anything ({c.selected_blocks} of {c.dense_blocks})"
    )
    assert not Counts.copies(c.layer), (
        f"{flow}: host/device copies in a decode layer:\n{kernel_list(c.layer)}"
    )
    n = Counts.launches(c.layer)
    assert n <= MAX_LAYER_LAUNCHES, (
        f"{flow}: {n} launches per sparse layer > {MAX_LAYER_LAUNCHES}:\n{kernel_list(c.layer)}\n\n"
        f"{table(measured)}"
    )


@pytest.mark.parametrize("flow", FLOWS)
def test_one_plan_launch_per_step(flow: str, measured: dict[str, Counts]) -> None:
    c = measured[flow]
    assert not c.error, f"{flow}: {c.error}\n{table(measured)}"
    assert not Counts.copies(c.plan), f"{flow}: host/device copies in the plan:\n{kernel_list(c.plan)}"
    n = Counts.launches(c.plan)
    assert n == 1, (
        f"{flow}: the per-step plan takes {n} launches:\n{kernel_list(c.plan)}\n\n{table(measured)}"
    )
