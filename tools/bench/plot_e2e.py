"""Plot end-to-end decode speedup (Vortex / plain SGLang) against context length, from the e2e JSON rows.

    python tools/bench/plot_e2e.py results/gpu/2026-12-04-e2e-decode.json --out docs/e2e-decode-speedup.png
    python tools/bench/plot_e2e.py a.json b.json --merged-out results/gpu/<date>-e2e-decode.json --out ...

Input: one or more JSON files, each a list of rows ``{ctx, batch, budget_tokens, overlap, plain_tok_s,
vortex_tok_s}`` and optionally ``pdl``, ``tp_size`` and ``sparse_decode_min_tokens`` (what ``tools/bench/sglang_decode_bench.py --e2e-out``
writes; a row without them is a plain-launch, tp 1, always-sparse one; other keys are ignored, ``gpu`` and ``date`` are used for the title when
present). Several files are concatenated (the e2e matrix runs as two
GPU calls); ``--merged-out`` writes the concatenation. A row whose throughputs are missing (a case skipped for
time, an engine that failed) is left out of the plot and counted on stdout.

Output: a PNG with one line per (batch, budget, overlap, pdl, tp_size, sparse_decode_min_tokens), context on a log2 axis, a dashed line at 1.0 (parity),
each point labelled with its ratio; title with the date (``--date``, else the rows' ``date``, else the first
file name's ``YYYY-MM-DD``) and the device (``--device``, else the rows' ``gpu``).

Bad input (unreadable file, not a list of objects, a row missing a key or with a non-numeric value, the same
case twice) exits 2 with one line naming the file, the row and the key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

REQUIRED = ("ctx", "batch", "budget_tokens", "overlap", "plain_tok_s", "vortex_tok_s")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                           "e2e-decode-speedup.png")  # fmt: skip


class InputError(ValueError):
    """A one-line description of what is wrong with the input."""


def load_rows(paths: list[str]) -> list[dict[str, Any]]:
    """The rows of every file, checked against the contract; raises :class:`InputError`."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], str] = {}
    for path in paths:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read JSON: {exc}") from exc
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of row objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            where = f"{path}: row {i}"
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected an object, got {type(row).__name__}")
            for key in REQUIRED:
                if key not in row:
                    raise InputError(f"{where}: missing key '{key}'")
            for key in ("ctx", "batch", "budget_tokens"):
                if not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] <= 0:
                    raise InputError(f"{where}: key '{key}' must be a positive integer, got {row[key]!r}")
            for key in ("overlap", "pdl"):
                if not isinstance(row.get(key, False), bool):
                    raise InputError(f"{where}: key '{key}' must be true or false, got {row[key]!r}")
            tp = row.get("tp_size", 1)
            if not isinstance(tp, int) or isinstance(tp, bool) or tp <= 0:
                raise InputError(f"{where}: key 'tp_size' must be a positive integer, got {tp!r}")
            for key in ("plain_tok_s", "vortex_tok_s"):
                v = row[key]
                if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v <= 0):
                    raise InputError(f"{where}: key '{key}' must be a positive number or null, got {v!r}")
            dense = row.get("sparse_decode_min_tokens", 0)
            if not isinstance(dense, int) or isinstance(dense, bool) or dense < 0:
                raise InputError(f"{where}: key 'sparse_decode_min_tokens' must be an integer >= 0, got {dense!r}")
            case = (*(row[k] for k in ("ctx", "batch", "budget_tokens", "overlap")), row.get("pdl", False), tp, dense)
            if case in seen:
                raise InputError(
                    f"{where}: the same case (ctx, batch, budget_tokens, overlap, pdl, tp_size, "
                    f"sparse_decode_min_tokens) = {case} as "
                    f"{seen[case]}"
                )
            seen[case] = where
            rows.append(row)
    return rows


def ctx_label(ctx: int) -> str:
    return f"{ctx // 1024}k" if ctx % 1024 == 0 else str(ctx)


def title_date(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    if args.date:
        return str(args.date)
    dates = sorted({str(r["date"]) for r in rows if r.get("date")})
    if dates:
        return ", ".join(dates)
    m = re.search(r"\d{4}-\d{2}-\d{2}", os.path.basename(args.json[0]))
    return m.group(0) if m else "date unknown"


def title_device(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    if args.device:
        return str(args.device)
    gpus = sorted({str(r["gpu"]) for r in rows if r.get("gpu")})
    return ", ".join(gpus) if gpus else "device unknown"


def plot(rows: list[dict[str, Any]], out: str, title: str) -> int:
    """Write the PNG; returns the number of points drawn."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the machines this runs on
    import matplotlib.pyplot as plt

    lines: dict[tuple[int, int, bool, bool, int, int], list[tuple[int, float]]] = {}
    for r in rows:
        if r["plain_tok_s"] and r["vortex_tok_s"]:
            key = (r["batch"], r["budget_tokens"], r["overlap"], r.get("pdl", False), r.get("tp_size", 1),
                   r.get("sparse_decode_min_tokens", 0))  # fmt: skip
            lines.setdefault(key, []).append((r["ctx"], r["vortex_tok_s"] / r["plain_tok_s"]))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="parity (1.0)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pairs = sorted({(b, bud) for b, bud, *_ in lines})
    labels: list[tuple[int, float, str]] = []  # (ctx, ratio, color) of every point, labelled after the lines
    for batch, budget, overlap, pdl, tp, dense in sorted(lines):
        pts = sorted(lines[(batch, budget, overlap, pdl, tp, dense)])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        color = colors[pairs.index((batch, budget)) % len(colors)]
        label = f"batch {batch}, budget {budget}, overlap {'on' if overlap else 'off'}" + (", PDL" if pdl else "") + (
            f", tp {tp}" if tp > 1 else ""
        ) + (f", dense below {dense} tokens" if dense else "")
        ax.plot(xs, ys, marker="^" if pdl else ("D" if dense else ("s" if overlap else "o")),
                linestyle=":" if overlap else ("-." if dense else "-"),
                color=color, alpha=0.6 if pdl else 1.0, label=label)  # fmt: skip
        labels += [(x, y, color) for x, y in pts]
    y_max = 1.15 * max([y for pts in lines.values() for _, y in pts] + [1.0])  # room above the highest label
    gap = 0.045 * y_max  # a label's height in data units
    for x in sorted({x for x, _, _ in labels}):
        at_x = sorted((lab for lab in labels if lab[0] == x), key=lambda lab: lab[1])
        floor = -gap
        for _, y, color in at_x:  # bottom up, each label at least one label height above the one below
            text_y = max(y, floor + gap)
            floor = text_y
            ax.annotate(f"{y:.2f}x", (x, y), xytext=(x * 1.06, text_y), fontsize=7, color=color, va="center")
    ctxs = sorted({r["ctx"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ctxs)
    ax.set_xticklabels([ctx_label(c) for c in ctxs])
    ax.minorticks_off()
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode tokens/s, Vortex / plain SGLang")
    ax.set_ylim(0, y_max)
    ax.margins(x=0.1)  # and beside the first and last context
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return sum(len(v) for v in lines.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="e2e row files (results/gpu/<date>-e2e-decode.json)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="PNG to write (default docs/e2e-decode-speedup.png)")
    ap.add_argument("--merged-out", help="also write the rows of all inputs, concatenated, to this JSON file")
    ap.add_argument("--date", help="for the title (default: the rows' date, else the first file name's)")
    ap.add_argument("--device", help="for the title (default: the rows' gpu)")
    ap.add_argument("--what", default="Vortex decode speedup over plain SGLang", help="title prefix")
    args = ap.parse_args(argv)
    try:
        rows = load_rows(args.json)
    except InputError as exc:
        print(f"plot_e2e: {exc}", file=sys.stderr)
        return 2
    if args.merged_out:
        with open(args.merged_out, "w") as fh:
            json.dump(rows, fh, indent=1)
    if not any(r["plain_tok_s"] and r["vortex_tok_s"] for r in rows):
        print("plot_e2e: no row has both plain_tok_s and vortex_tok_s: nothing to plot", file=sys.stderr)
        return 2
    drawn = plot(rows, args.out, f"{args.what}\n{title_device(args, rows)}, {title_date(args, rows)}")
    print(
        f"plot_e2e: {drawn} points, {len(rows) - drawn} rows without both throughputs left out -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
