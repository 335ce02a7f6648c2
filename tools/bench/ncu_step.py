"""Nsight Compute over one decode step: every kernel of Vortex's sparse layer and of dense FlashInfer, profiled
one by one with cold caches, so the time a kernel takes can be read against the bytes it moves and what its
warps wait on.

    VORTEX_MODELS=none bash tools/device/remote.sh bench ncu_step --cases 32768x32 2048x1 [--budget 2048] [--mla] [--kv-dtype fp8_e4m3]

``decode_step_bench`` times the step as CUDA-graph replays; it cannot say *why* a kernel is slower than its
floor. This script builds the same case (``decode_step_bench.Case`` / ``MLACase``, one layer), and for each
case runs a child process of itself under ``ncu --profile-from-start off``: the child JIT-warms every kernel,
then launches the step's plan, one sparse layer and dense FlashInfer's decode once inside
``torch.cuda.profiler.start()/stop()``. ncu replays each kernel with its caches flushed (``--cache-control
all``, its default: no kernel finds the previous one's data in L2) and clocks left alone
(``--clock-control none``, so the clocks are those the benches run at).

Writes into ``--out-dir`` (default ``$VORTEX_OUT`` or ``.``):

* ``ncu-summary.md``: per case and kernel, its phase (``plan`` / ``sparse`` / ``dense``), grid, block,
  registers, duration, DRAM bytes read and the rate that makes, DRAM and SM throughput as % of peak, achieved
  occupancy and the three largest warp stall reasons, then each phase's total time;
* ``ncu.json``: the same rows; ``ncu-raw.csv``: every metric ncu collected (``--page raw``), all cases;
* ``ncu-details.txt``: ncu's own per-kernel report (``--page details``), all cases.

The phase of a kernel comes from its position: the child records the Triton kernels it launches in the plan
and sparse phases by name (every Vortex kernel is a Triton kernel; ncu names a Triton kernel after its function)
and writes them beside the report; ncu's first kernels must carry those names, in that order, and every later
one is dense FlashInfer's. Otherwise the phases are left as ``?`` and the summary says so. (The torch profiler,
which ``decode_step_bench`` counts launches with, is not used here: it would subscribe to CUPTI beside ncu.)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: ncu sections: time and throughput, launch shape, occupancy, memory traffic, what warps wait on
SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "MemoryWorkloadAnalysis", "WarpStateStats", "SchedulerStats")
#: the columns of the summary, ncu's raw metric names (units as ``--print-units base`` gives them)
TIME = "gpu__time_duration.sum"  # ns
DRAM_READ = "dram__bytes_read.sum"  # bytes
DRAM_PCT = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
SM_PCT = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
REGISTERS = "launch__registers_per_thread"
GRID = "launch__grid_size"
BLOCK = "launch__block_size"
STALL = re.compile(r"^smsp__average_warps?_issue_stalled_(\w+?)_per_issue_active\.ratio$")
PHASES = ("plan", "sparse", "dense")
#: collected whatever the sections hold (the summary's time and bytes)
METRICS = (TIME, DRAM_READ, "dram__bytes_write.sum")


def parse_case(spec: str) -> tuple[int, int]:
    """``"CTXxBATCH"`` -> ``(ctx, batch)``; ``ValueError`` naming the accepted form otherwise."""
    m = re.fullmatch(r"(\d+)[xX](\d+)", spec.strip())
    if not m or int(m.group(1)) < 256 or int(m.group(2)) < 1:
        raise ValueError(f"--cases: {spec!r} is not CTXxBATCH with CTX >= 256 and BATCH >= 1 (e.g. 32768x32)")
    return int(m.group(1)), int(m.group(2))


def find_ncu() -> str | None:
    """The ``ncu`` executable: on PATH, else under the usual CUDA install folders."""
    found = shutil.which("ncu")
    if found:
        return found
    import glob

    for pattern in ("/usr/local/cuda*/bin/ncu", "/usr/local/cuda*/nsight-compute*/ncu", "/opt/nvidia/nsight-compute/*/ncu"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def ncu_command(ncu: str, report: str, child: list[str]) -> list[str]:
    """The profiling command of one case: ``child`` (argv of the child process) under ncu, into ``report``."""
    cmd = [ncu, "--profile-from-start", "off", "--clock-control", "none", "--target-processes", "all",
           "--force-overwrite", "--export", report]  # fmt: skip
    for s in SECTIONS:
        cmd += ["--section", s]
    return [*cmd, "--metrics", ",".join(METRICS), *child]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read_raw_csv(text: str) -> list[dict[str, str]]:
    """``ncu --import R --csv --page raw`` output -> one dict per kernel (metric name -> value text). ncu puts a
    row of units under the header; it is skipped (so are lines before the header, e.g. ``==PROF==`` notes)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        return []
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if body and _number(body[0][0] if body[0] else "") is None:  # the units row ("", "", ...)
        body = body[1:]
    return [dict(zip(header, r, strict=False)) for r in body if r]


def kernel_row(raw: dict[str, str]) -> dict[str, Any]:
    """The summary's fields of one kernel from its raw metrics (a missing metric is None)."""

    def num(key: str) -> float | None:
        return _number(raw[key]) if key in raw else None

    t_ns, read = num(TIME), num(DRAM_READ)
    stalls = sorted(
        ((m.group(1), v) for k in raw if (m := STALL.match(k)) and (v := _number(raw[k])) is not None),
        key=lambda kv: -kv[1],
    )
    return {
        "kernel": raw.get("Kernel Name", "?"),
        "grid": raw.get(GRID) or raw.get("Grid Size", "?"),
        "block": raw.get(BLOCK) or raw.get("Block Size", "?"),
        "registers": num(REGISTERS),
        "us": None if t_ns is None else t_ns / 1e3,
        "dram_read_mb": None if read is None else read / 1e6,
        "dram_read_gbs": None if (read is None or not t_ns) else read / t_ns,
        "dram_pct": num(DRAM_PCT),
        "sm_pct": num(SM_PCT),
        "occupancy_pct": num(OCCUPANCY),
        "stalls": [[name, round(v, 2)] for name, v in stalls[:3]],
    }


def assign_phases(rows: list[dict[str, Any]], launched: dict[str, list[str]]) -> bool:
    """Label ``rows`` (in launch order) with their phase: the first ones must be the Triton kernels the child
    ``launched`` in the plan and sparse phases (by name, in order), the rest (at least one) are dense; False
    (every label ``?``) when they are not."""
    expected = [(p, name) for p in PHASES[:2] for name in launched.get(p, [])]
    ok = len(rows) > len(expected) and all(
        rows[i]["kernel"] == name for i, (_p, name) in enumerate(expected)
    )
    for i, r in enumerate(rows):
        r["phase"] = "?" if not ok else expected[i][0] if i < len(expected) else "dense"
    return ok


def summary_md(cases: list[dict[str, Any]]) -> str:
    f = lambda x, d=1: "-" if x is None else f"{x:.{d}f}"
    out = ["# Nsight Compute, one decode step per case (cold caches, clocks not locked)", ""]
    for c in cases:
        out.append(f"## {c['title']}")
        out.append("")
        if c.get("error"):
            out += [f"error: {c['error']}", ""]
            continue
        if not c["phases_ok"]:
            out += [f"(ncu's kernels {[r['kernel'] for r in c['kernels']]} do not start with the Triton kernels the "
                    f"child launched, {c['launched']}, then dense ones: phases unknown)", ""]
        out.append("| phase | kernel | grid | block | regs | us | DRAM read MB | GB/s | DRAM % | SM % | occupancy % | top stalls |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in c["kernels"]:
            stalls = ", ".join(f"{n} {v}" for n, v in r["stalls"]) or "-"
            out.append(
                f"| {r['phase']} | {r['kernel'][:48]} | {r['grid']} | {r['block']} | {f(r['registers'], 0)} | "
                f"{f(r['us'])} | {f(r['dram_read_mb'])} | {f(r['dram_read_gbs'], 0)} | {f(r['dram_pct'])} | "
                f"{f(r['sm_pct'])} | {f(r['occupancy_pct'])} | {stalls} |"
            )
        totals = {p: sum(r["us"] or 0 for r in c["kernels"] if r["phase"] == p) for p in PHASES}
        out += ["", "kernel time per phase (us): " + ", ".join(f"{p} {totals[p]:.1f}" for p in PHASES), ""]
    return "\n".join(out) + "\n"


# -- the child: one case, profiled ------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> int:
    import decode_step_bench as bench
    import torch
    from triton.runtime.jit import JITFunction

    ctx, batch = parse_case(args.child)
    cls = bench.MLACase if args.mla else bench.Case
    flow = (None, args.flow) if args.flow else bench.MLA_FLOW if args.mla else (bench.FLOW, "custom_sparse_attention")
    case = cls(ctx, batch, args.budget, 1, flow=flow, kv_dtype=bench.KV_DTYPES[args.kv_dtype])
    dense = case.dense_steps()
    phases = {"plan": [case.plan_step], "sparse": [lambda: case.layer(0)], "dense": dense}
    for fns in phases.values():  # JIT and warm every kernel first
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    launched: dict[str, list[str]] = {p: [] for p in PHASES}
    run = JITFunction.run

    def recording(self: Any, *a: Any, **kw: Any) -> Any:
        launched[phase].append(self.__name__)
        return run(self, *a, **kw)

    JITFunction.run = recording  # type: ignore[method-assign]
    torch.cuda.profiler.start()
    try:
        for phase in PHASES:
            for fn in phases[phase]:
                fn()
        torch.cuda.synchronize()
    finally:
        torch.cuda.profiler.stop()
        JITFunction.run = run  # type: ignore[method-assign]
    with open(args.counts, "w") as fh:
        json.dump(launched, fh)
    return 0


# -- the parent: a child per case under ncu, then the reports read back -------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line (also what tests/test_device_plan.py checks the GPU plan's arguments with)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["32768x32", "2048x1"], help="CTXxBATCH (default 32768x32 2048x1)")
    ap.add_argument("--budget", type=int, default=2048, help="tokens attended per row (default 2048)")
    ap.add_argument("--mla", action="store_true", help="DeepSeek-V2-Lite MLA geometry (decode_step_bench --mla)")
    ap.add_argument("--flow", default=None, help="an installed flow's registered name (default: the bench's)")
    ap.add_argument("--kv-dtype", choices=("bfloat16", "fp8_e4m3", "fp8_e5m2"), default="bfloat16")
    ap.add_argument("--out-dir", default=os.environ.get("VORTEX_OUT", "."))
    ap.add_argument("--timeout", type=int, default=240, help="seconds per case (default 240)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--counts", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        cases = [parse_case(s) for s in args.cases]
    except ValueError as exc:
        ap.error(str(exc))
    if args.budget < 64 or args.budget % 16:
        ap.error(f"--budget: {args.budget} is not a multiple of 16 of at least 64")
    if args.child:
        return child(args)
    ncu = find_ncu()
    if ncu is None:
        print("ncu_step: ncu (Nsight Compute) not found on PATH or under /usr/local/cuda*/", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ncu_step-")
    results: list[dict[str, Any]] = []
    raw_all: list[str] = []
    details: list[str] = []
    for ctx, batch in cases:
        geometry = "MLA" if args.mla else "GQA"
        title = f"{geometry} {ctx} x {batch}, budget {args.budget}, K/V {args.kv_dtype}"
        tag = f"{ctx}x{batch}"
        report, counts_path = os.path.join(tmp, f"{tag}.ncu-rep"), os.path.join(tmp, f"{tag}.json")
        argv_child = [sys.executable, os.path.abspath(__file__), "--child", tag, "--counts", counts_path,
                      "--budget", str(args.budget), "--kv-dtype", args.kv_dtype,
                      *(["--mla"] if args.mla else []), *(["--flow", args.flow] if args.flow else [])]  # fmt: skip
        print(f"ncu_step: {title}", flush=True)
        rec: dict[str, Any] = {"title": title, "ctx": ctx, "batch": batch, "budget": args.budget, "mla": args.mla,
                               "kv_dtype": args.kv_dtype}  # fmt: skip
        try:
            run = subprocess.run(ncu_command(ncu, report, argv_child), capture_output=True, text=True,
                                 timeout=args.timeout)  # fmt: skip
            if run.returncode or not os.path.exists(report):
                raise RuntimeError(f"ncu exited {run.returncode}: {(run.stderr or run.stdout)[-600:]}")
            raw = subprocess.run([ncu, "--import", report, "--csv", "--page", "raw", "--print-units", "base"],
                                 capture_output=True, text=True, timeout=120).stdout  # fmt: skip
            det = subprocess.run([ncu, "--import", report, "--page", "details", "--print-units", "base"],
                                 capture_output=True, text=True, timeout=120).stdout  # fmt: skip
            raw_all.append(f"# {title}\n{raw}")
            details.append(f"######## {title}\n{det}")
            rec["kernels"] = [kernel_row(r) for r in read_raw_csv(raw)]
            with open(counts_path) as fh:
                rec["launched"] = json.load(fh)
            rec["phases_ok"] = assign_phases(rec["kernels"], rec["launched"])
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"[:800]
        results.append(rec)
        print(summary_md([rec]), flush=True)
    with open(os.path.join(args.out_dir, "ncu.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(args.out_dir, "ncu-summary.md"), "w") as fh:
        fh.write(summary_md(results))
    with open(os.path.join(args.out_dir, "ncu-raw.csv"), "w") as fh:
        fh.write("\n".join(raw_all))
    with open(os.path.join(args.out_dir, "ncu-details.txt"), "w") as fh:
        fh.write("\n".join(details))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
