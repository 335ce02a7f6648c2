"""A/B of the quick-start indexer (scoring with the cache update folded, then selection) on one GPU, in one
process, timed as ``decode_step_bench`` times it (CUDA-graph replays over rotated layer copies):

  A  as built (the query mean hoisted out of the chunk loop, 8b265aa)
  B  the hoist off (``codegen._hoist`` a no-op: the scoring kernel of b17e296, 55.0 us on the H200)
  C  as built, the scoring kernel compiled with ``maxnreg=48``
  D  as built, ``block_chunk=128``
  S  the selection kernel alone (random scores, default launch)

Why (CPU analysis of the sm_90 cubins, 2026-12-05): with the hoist ptxas gives the scoring kernel 32 registers
and issues each 16-byte centroid load only after the previous one is used (1 load in flight per warp); without
it, or with ``maxnreg=48``, four loads are in flight, and with a 128-block chunk two. Whether that costs time at
32k x 32 (256 rows of 2048 blocks, 134 MB of centroids) is what this measures; the variants are interleaved
``--repeats`` times and each one's median is reported, with the registers the device compiled.

    VORTEX_MODELS=none bash tools/device/remote.sh py tools/device/ab_indexer.py --out $OUT/ab_indexer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "bench"))

import decode_step_bench as bench  # noqa: E402

import vortex_torch.flow.compiler.codegen as codegen  # noqa: E402
from vortex_torch.flow.compiler.triton_executor import TritonExecutor  # noqa: E402


class MaxNReg:
    """Stands in for the generated module: ``indexer[grid](...)`` launches with ``maxnreg`` added."""

    def __init__(self, module: Any, maxnreg: int) -> None:
        self.inner, self.maxnreg = module, maxnreg

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if name != "indexer":
            return fn
        maxnreg = self.maxnreg

        class Launcher:
            def __getitem__(self, grid: Any) -> Any:
                return lambda *a, **k: fn[grid](*a, maxnreg=maxnreg, **k)

        return Launcher()


def time_variant(case: Any, ex: TritonExecutor) -> float:
    core, p = case.core, case.plan
    saved = core.executor, core.indexer_plan
    core.executor = ex
    core.indexer_plan = ex.plan(case.batch * case.num_kv_heads, p.max_blocks_per_row, case.device)
    try:
        locs = case.loc if ex.folds_cache_update else None
        return bench.graph_us(
            [lambda i=i: core.select(case.q[i], case.fields[i], p, new_locs=locs) for i in range(case.layers)]
        )
    finally:
        core.executor, core.indexer_plan = saved


def registers(ex: TritonExecutor) -> Any:
    """The scoring kernel's registers per compiled specialisation (as the device compiled it)."""
    module = ex.module.inner if isinstance(ex.module, MaxNReg) else ex.module
    try:
        return {str(key): c.n_regs for dev in module.indexer.device_caches.values() for key, c in dev[0].items()}
    except Exception as exc:  # Triton's cache layout is internal: report, do not fail the A/B
        return f"n/a ({type(exc).__name__})"


def variants(case: Any) -> dict[str, TritonExecutor]:
    traced, layout = case.core.prepared.traced, case.layout
    out = {"A_as_built": TritonExecutor(traced, layout)}
    hoist = codegen._hoist
    codegen._hoist = lambda *a, **k: None  # type: ignore[assignment]
    try:
        out["B_unhoisted"] = TritonExecutor(traced, layout)
    finally:
        codegen._hoist = hoist
    if out["A_as_built"].source == out["B_unhoisted"].source:
        raise SystemExit("ab_indexer: switching the hoist off changed nothing in the generated source")
    out["C_maxnreg48"] = TritonExecutor(traced, layout)
    out["C_maxnreg48"].module = MaxNReg(out["C_maxnreg48"].module, 48)
    out["D_chunk128"] = TritonExecutor(traced, layout, block_chunk=128)
    return out


def measure(ctx: int, batch: int, repeats: int) -> dict[str, Any]:
    """One case: every variant ``repeats`` times, interleaved; the selection alone once."""
    case = bench.Case(ctx, batch, 2048, 4)
    exs = variants(case)
    times: dict[str, list[float]] = {name: [] for name in exs}
    for _ in range(repeats):
        for name, ex in exs.items():
            times[name].append(time_variant(case, ex))
    select_us = bench.graph_us(bench.select_only(case)())
    return {"ctx": ctx, "batch": batch, "budget_tokens": 2048,
            "indexer_us": {k: statistics.median(v) for k, v in times.items()}, "all_us": times,
            "select_only_us": select_us, "registers": {k: registers(ex) for k, ex in exs.items()}}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ab_indexer.json"))
    ap.add_argument("--cases", nargs="+", default=["32768x32", "32768x1"], help="CTXxBATCH (budget 2048)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every variant (medians)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for spec in args.cases:
        ctx, batch = (int(x) for x in spec.lower().split("x"))
        rows.append(measure(ctx, batch, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    result = {"gpu": torch.cuda.get_device_name(0), "triton": __import__("triton").__version__, "cases": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| ctx x batch | " + " | ".join(rows[0]["indexer_us"]) + " | selection alone |")
    print("|---" * (len(rows[0]["indexer_us"]) + 2) + "|")
    for r in rows:
        cells = " | ".join(f"{v:.1f}" for v in r["indexer_us"].values())
        print(f"| {r['ctx']} x {r['batch']} | {cells} | {r['select_only_us']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
