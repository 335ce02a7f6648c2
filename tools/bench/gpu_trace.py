"""Where a decode step's GPU time goes: the kernels of a torch-profiler chrome trace, summed by name.

SGLang's own profiler (``Engine.start_profile(output_dir=..., activities=["GPU"])`` / ``stop_profile()``,
torch.profiler underneath) writes ``*.trace.json.gz`` chrome traces; kernels launched by a CUDA-graph replay are
in them too (CUPTI records graph kernels). :func:`kernel_summary` reads one and gives, per kernel name, how many
launches and how many microseconds, also per decode step: so plain SGLang's step and Vortex's can be compared
kernel by kernel (``sglang_decode_bench.py --profile-steps``).

    python tools/bench/gpu_trace.py TRACE.trace.json.gz --steps 8 [--top 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from typing import Any

#: kernel names are C++ templates hundreds of characters long; the head names them well enough
NAME_CHARS = 90


def short_name(name: str) -> str:
    """A kernel's name cut to :data:`NAME_CHARS` (template arguments dropped first, when there are any)."""
    head = name.split("<", 1)[0] if "<" in name else name
    return head if len(head) <= NAME_CHARS else head[: NAME_CHARS - 3] + "..."


def load_trace(path: str) -> list[dict[str, Any]]:
    """The ``traceEvents`` of a chrome trace (``.json`` or ``.json.gz``); ``ValueError`` naming the file when it
    is not one."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable chrome trace ({type(exc).__name__}: {exc})") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path}: no traceEvents list")
    return [e for e in events if isinstance(e, dict)]


def kernel_summary(events: list[dict[str, Any]], steps: int, top: int = 20) -> dict[str, Any]:
    """GPU kernels (complete events of category ``kernel``) summed by :func:`short_name`: ``{"steps",
    "kernel_us_per_step", "launches_per_step", "kernels": [{"name", "launches", "us", "us_per_step"}, ...]}``,
    the ``top`` costliest kernels first (the rest summed as one ``(others)`` row)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    by_name: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") == "X" and str(e.get("cat", "")).lower() == "kernel":
            acc = by_name.setdefault(short_name(str(e.get("name", "?"))), [0, 0.0])
            acc[0] += 1
            acc[1] += float(e.get("dur", 0.0))
    rows = sorted(
        ({"name": n, "launches": int(c), "us": round(us, 1), "us_per_step": round(us / steps, 2)}
         for n, (c, us) in by_name.items()),
        key=lambda r: -float(r["us"]),
    )  # fmt: skip
    if len(rows) > top:
        rest = rows[top:]
        rest_us = sum(float(r["us"]) for r in rest)
        others = {"name": f"(others: {len(rest)} kernels)", "launches": sum(int(r["launches"]) for r in rest),
                  "us": round(rest_us, 1), "us_per_step": round(rest_us / steps, 2)}  # fmt: skip
        rows = [*rows[:top], others]
    total_us = sum(us for _, us in by_name.values())
    launches = sum(c for c, _ in by_name.values())
    return {"steps": steps, "kernel_us_per_step": round(total_us / steps, 1),
            "launches_per_step": round(launches / steps, 1), "kernels": rows}  # fmt: skip


def newest_trace(directory: str, since: float) -> str | None:
    """The newest ``*.trace.json.gz`` / ``*.trace.json`` under ``directory`` written at or after ``since``."""
    found: list[tuple[float, str]] = []
    for root, _dirs, files in os.walk(directory):
        for f in files:
            if f.endswith((".trace.json.gz", ".trace.json")):
                p = os.path.join(root, f)
                if (mtime := os.path.getmtime(p)) >= since:
                    found.append((mtime, p))
    return max(found)[1] if found else None


def table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    lines = [f"GPU kernels, {summary['kernel_us_per_step']} us and {summary['launches_per_step']} launches per "
             f"step over {summary['steps']} steps:", "", "| kernel | launches | us | us per step |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| `{r['name']}` | {r['launches']} | {r['us']} | {r['us_per_step']} |" for r in summary["kernels"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="a torch-profiler chrome trace (.trace.json or .trace.json.gz)")
    ap.add_argument("--steps", type=int, default=1, help="decode steps the trace covers (for the per-step columns)")
    ap.add_argument("--top", type=int, default=20, help="kernels listed (the rest summed in one row)")
    args = ap.parse_args(argv)
    try:
        summary = kernel_summary(load_trace(args.trace), args.steps, args.top)
    except ValueError as exc:
        print(f"gpu_trace: error: {exc}", file=sys.stderr)
        return 2
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
