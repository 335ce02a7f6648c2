"""``vortex``: check a flow file, list the installed flows.

    vortex check FLOW.py [--name NAME] [--json]    load, validate, compile, and measure a flow on the CPU
    vortex list [--json]                           every registered flow, its package and description
    vortex eval FLOW --model M | --server-url URL  accuracy vs budget on synthetic long-context tasks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from typing import Any

from vortex_torch.abs.errors import VortexError


def _fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (use e.g. 1/16 or 0.0625)") from exc
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"budget must be in (0, 1], got {text}")
    return value


def _names_in_file(path: str) -> list[str]:
    from . import registry

    real = os.path.realpath(path)
    return [info.name for info in registry.list_flows() if os.path.realpath(info.source) == real]


def cmd_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vortex_torch.abs.context import Geometry

    from .loader import build_vflow, load_module_file
    from .runtime.synthetic import measure_flow
    from .testing import compile_check
    from .trace import trace_flow

    t0 = time.perf_counter()
    report: dict[str, Any] = {"ok": False, "file": args.flow}
    try:
        load_module_file(args.flow)
        names = _names_in_file(args.flow)
        name = args.name
        if name is None:
            if len(names) != 1:
                raise VortexError(
                    f"{args.flow} registers {len(names)} flows ({', '.join(names) or 'none'}): pick one with --name"
                )
            name = names[0]
        report["flow"] = name
        flow = build_vflow(name, args.flow)
        geometry = Geometry(block_size=args.block_size, head_dim=args.head_dim, group_size=args.group_size)
        traced = trace_flow(flow, geometry)
        report["compile"] = compile_check(traced, seed=args.seed).as_dict()
        report["kernels_per_layer"] = report["compile"]["kernels_per_layer"]
        per_ctx = []
        for n in tqdm(args.contexts, desc="needle contexts", unit="ctx", disable=args.json or not sys.stderr.isatty()):
            per_ctx.append(
                measure_flow(
                    flow,
                    seq_lens=[n],
                    budget_fraction=args.budget,
                    num_needles=args.needles,
                    num_kv_heads=args.kv_heads,
                    head_dim=args.head_dim,
                    group_size=args.group_size,
                    seed=args.seed,
                )
            )
        hits = sum(m["needle_blocks_hit"] for m in per_ctx)
        total = sum(m["needle_blocks_total"] for m in per_ctx)
        report.update(
            needle_recall=hits / total,
            attn_rel_error=sum(m["attn_rel_error"] for m in per_ctx) / len(per_ctx),
            pages_selected=sum(m["pages_selected"] for m in per_ctx),
            pages_total=sum(m["pages_total"] for m in per_ctx),
            budget_fraction=args.budget,
            per_context=[
                {k: m[k] for k in ("needle_recall", "attn_rel_error", "pages_selected", "pages_total")}
                | {"context": n}
                for n, m in zip(args.contexts, per_ctx, strict=True)
            ],
        )
        report["ok"] = report["compile"]["compiled_matches_reference"]
    except VortexError as exc:
        report["error"] = str(exc)
    report["time_s"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0 if report["ok"] else 1


def _print_report(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"vortex check: {r['file']}: FAILED\n  {r['error']}")
        return
    c = r["compile"]
    print(f"vortex check: {r['flow']} ({r['file']})")
    match = "yes" if c["compiled_matches_reference"] else "NO"
    print(f"  compile            ok; {c['kernels_per_layer']} indexer kernel(s) per layer (+ {c['cache_kernels']} cache-update kernel)")
    print(f"  compiled == ref    {match} (Triton on {c['device']}, small ragged batch)")
    print(f"  budget             {r['budget_fraction']:.4g} of each row's blocks")
    print(f"  {'context':>8}  {'needle recall':>13}  {'attn rel err':>12}  {'pages sel/total':>16}")
    for row in r["per_context"]:
        sel = f"{row['pages_selected']}/{row['pages_total']}"
        print(f"  {row['context']:>8}  {row['needle_recall']:>13.3f}  {row['attn_rel_error']:>12.4f}  {sel:>16}")
    print(f"  {'all':>8}  {r['needle_recall']:>13.3f}  {r['attn_rel_error']:>12.4f}  {r['pages_selected']}/{r['pages_total']}")
    print(f"  time               {r['time_s']} s")


def cmd_list(args: argparse.Namespace) -> int:
    from . import registry

    flows = registry.list_flows()
    broken = registry.broken_packages()
    if args.json:
        print(json.dumps({
            "flows": [{"name": f.name, "package": f.package, "description": f.description} for f in flows],
            "aliases": registry.aliases(),
            "broken": broken,
        }))  # fmt: skip
        return 0
    width = max((len(f.name) for f in flows), default=4)
    pw = max((len(f.package) for f in flows), default=7)
    for f in flows:
        print(f"{f.name:<{width}}  {f.package:<{pw}}  {f.description}")
    for name, err in broken.items():
        print(f"warning: flow package {name} failed to load: {err}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vortex", description="Vortex: programmable sparse attention")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="load, validate, compile and measure a flow on planted-needle contexts")
    c.add_argument("flow", help="path to the flow's .py file")
    c.add_argument("--name", help="the @register name (needed when the file registers several flows)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192, 16384, 32768], help="context lengths")
    c.add_argument("--budget", type=_fraction, default=1 / 16, help="fraction of each row's blocks kept (1/16)")
    c.add_argument("--needles", type=int, default=4, help="needles hidden per (context, kv-head)")
    c.add_argument("--block-size", type=int, default=16)
    c.add_argument("--head-dim", type=int, default=128)
    c.add_argument("--group-size", type=int, default=4, help="query heads per KV head")
    c.add_argument("--kv-heads", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_check)
    ls = sub.add_parser("list", help="list registered flows")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    from .eval.command import add_parser as add_eval_parser  # `vortex eval`: all of it lives in flow/eval/

    add_eval_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    import torch

    # The program's entry decides how kernels run (the library reads no switch of its own): without CUDA,
    # Triton's interpreter, which must be on before any Triton kernel is defined (nothing imported yet has one).
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
