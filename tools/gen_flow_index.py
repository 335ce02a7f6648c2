"""Regenerate the flow index of vortex-flows-contrib from measurements.

For every flow in the ``vortex_flow.flows`` entry points of packages/vortex-flows-contrib/pyproject.toml this
runs what ``vortex check`` measures, on the CPU reference runtime:

* needle recall and attention error (``vortex_torch.flow.runtime.measure_flow``) at budgets 1/8, 1/16 and 1/32
  of one 32k-token context (8 KV heads x G=4, head_dim 128, block 16, bf16, 8 needles per KV head);
* the compiled flow at that geometry (``vortex_torch.flow.testing.compile_check``): indexer kernels per layer,
  cache-update kernels, and compiled == reference (Triton interpreted on a CPU);
* aux cache bytes per block (D=128, bf16, block 16).

It writes ``<flow>/RESULTS.md`` (with the numbers as JSON in a comment), the results line of each flow's
README (between ``<!-- results:start -->`` and ``<!-- results:end -->``) and the index table of the
package README (between ``<!-- flow-index:start -->`` and ``<!-- flow-index:end -->``), built from every
RESULTS.md. GPU step time is not measured here: it comes from tools/bench/flows_bench.py's JSON, the newest
``results/gpu/*flows-bench*.json`` when measuring (a CPU run never erases the committed GPU column; a flow the
JSON lacks keeps the value its RESULTS.md had), or the file given with ``--gpu-results``. The dense FlashInfer
time is shown only from a run that read separate K and V tensors and was not below the HBM floor.

usage: python tools/gen_flow_index.py [--flows NAME ...] [--context 32768]  (10-30 s a flow on 2 CPU cores)
       python tools/gen_flow_index.py --render   (rewrite the READMEs from the RESULTS.md files, no measuring)
       python tools/gen_flow_index.py --check    (exit 1 if the READMEs disagree with the RESULTS.md files)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():  # before any Triton kernel is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "packages" / "vortex-flows-contrib"
SRC = CONTRIB / "src" / "vortex_flows_contrib"
BUDGETS = (Fraction(1, 8), Fraction(1, 16), Fraction(1, 32))
RESULTS_JSON = re.compile(r"<!-- results-json: (\{.*?\}) -->", re.S)
INDEX_START, INDEX_END = "<!-- flow-index:start -->", "<!-- flow-index:end -->"
LINE_START, LINE_END = "<!-- results:start -->", "<!-- results:end -->"
NOT_MEASURED = "not measured yet"
#: MLA flows are measured at DeepSeek-V2-Lite's attention: (kv_lora_rank, qk_rope_head_dim, query heads)
MLA_SETUP = (512, 64, 16)
GPU_RESULTS = REPO / "results" / "gpu"


@dataclass(frozen=True)
class Setup:
    """The measurement geometry (the defaults are what the committed tables hold)."""

    context: int = 32768
    num_kv_heads: int = 8
    group_size: int = 4
    head_dim: int = 128
    block_size: int = 16
    num_needles: int = 8
    seed: int = 0


def entry_points() -> dict[str, str]:
    """``{flow name: module}`` of the ``vortex_flow.flows`` group in the contrib pyproject.toml."""
    with (CONTRIB / "pyproject.toml").open("rb") as fh:
        groups = tomllib.load(fh)["project"]["entry-points"]
    return dict(groups["vortex_flow.flows"])


def machine() -> str:
    """``CPU model, N cores; torch X`` of this machine."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} cores; torch {torch.__version__}"


def measure(name: str, module: str, setup: Setup) -> dict[str, Any]:
    """Every number of one flow's RESULTS.md."""
    from vortex_torch.abs.context import Geometry
    from vortex_torch.abs.mla import MLAGeometry
    from vortex_torch.flow import build_vflow, registry
    from vortex_torch.flow.runtime import RuntimeConfig, measure_flow
    from vortex_torch.flow.testing import compile_check
    from vortex_torch.flow.trace import trace_flow
    from vortex_torch.flow.user_code import is_mla_flow

    importlib.import_module(module)
    flow = build_vflow(name)
    cls = type(flow)
    setup_json: dict[str, Any] = dict(setup.__dict__)
    mla_kw: dict[str, int] = {}
    if is_mla_flow(flow):  # DeepSeek-V2-Lite's attention: one latent head of 512 + 64, 16 query heads
        rank, rope, heads = MLA_SETUP
        geometry: Geometry = MLAGeometry.of(
            block_size=setup.block_size, kv_lora_rank=rank, qk_rope_head_dim=rope, num_heads=heads
        )
        setup_json.update(num_kv_heads=1, group_size=heads, head_dim=rank + rope,
                          mla={"kv_lora_rank": rank, "qk_rope_head_dim": rope})  # fmt: skip
        mla_kw = {"qk_rope_head_dim": rope}
    else:
        geometry = Geometry(block_size=setup.block_size, head_dim=setup.head_dim, group_size=setup.group_size)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache_dir:
        compiled = compile_check(
            trace_flow(flow, geometry), cache_dir=cache_dir, num_kv_heads=setup_json["num_kv_heads"] if mla_kw else 2
        )
    flow.initialize_for(geometry)
    config = RuntimeConfig(block_size=setup.block_size, page_size=setup.block_size)
    per_budget = []
    for budget in BUDGETS:
        m = measure_flow(
            flow, [setup.context], float(budget), num_needles=setup.num_needles,
            num_kv_heads=setup_json["num_kv_heads"], head_dim=geometry.head_dim, group_size=geometry.group_size,
            config=config, seed=setup.seed, **mla_kw,
        )  # fmt: skip
        per_budget.append({
            "budget": str(budget),
            "blocks_kept": m["per_seq"][0]["budget"],
            "blocks": m["per_seq"][0]["blocks"],
            "needle_recall": round(m["needle_recall"], 4),
            "needle_recall_max": round(m["needle_recall_max"], 4),
            "needle_blocks": m["needle_blocks_total"],
            "attn_rel_error": round(m["attn_rel_error"], 4),
            "attn_rel_error_max": round(m["attn_rel_error_max"], 4),
        })  # fmt: skip
    info = registry.get_info(name)
    assert info is not None
    return {
        "flow": name,
        "aliases": sorted(alias for alias, target in registry.aliases().items() if target == name),
        "description": info.description,
        "paper": getattr(cls, "paper", ""),
        "arxiv": getattr(cls, "arxiv", ""),
        "requires_radix_cache_off": bool(getattr(cls, "requires_radix_cache_off", False)),
        "aux_bytes_per_block": flow.aux_bytes_per_block(),
        "aux_fields": {
            k: list(v[0]) for k, v in flow.get_cache_meta_info().items() if k not in flow.framework_fields
        },
        "kernels_per_layer": compiled.kernels_per_layer,
        "cache_kernels": compiled.cache_kernels,
        "compiled_matches_reference": compiled.ok,
        "budgets": per_budget,
        "gpu_step_time": NOT_MEASURED,
        "setup": setup_json,
        "date": date.today().isoformat(),
        "machine": machine(),
        "command": "python tools/gen_flow_index.py",
        "seconds": round(time.perf_counter() - t0, 1),
    }


# -- GPU column ----------------------------------------------------------------------------------------------
def latest_gpu_results() -> dict[str, Any] | None:
    """The newest committed flows_bench JSON (file names start with the date), or None."""
    files = sorted(GPU_RESULTS.glob("*flows-bench*.json"))
    if not files:
        return None
    with files[-1].open() as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _dense_text(gpu: dict[str, Any]) -> str:
    dense = gpu.get("dense_flashinfer_us")
    if not isinstance(dense, (int, float)):
        return "dense FlashInfer not measured"
    if not gpu.get("dense_kv"):  # flows_bench.py before the fix passed one tensor as both K and V
        return "dense FlashInfer: to be re-measured (that run read one tensor as both K and V)"
    if gpu.get("dense_flashinfer_below_floor"):
        return f"dense FlashInfer: to be re-measured (that run timed it below its HBM floor of {gpu['dense_floor_us']} µs)"
    return f"dense FlashInfer {dense} µs, HBM floor {gpu['dense_floor_us']} µs"


def gpu_step_text(gpu: dict[str, Any], flow: str) -> str | None:
    """The "GPU step time" of ``flow`` from a flows_bench JSON; None when the run did not include the flow."""
    e = gpu.get("flows", {}).get(flow)
    if e is None:
        return None
    if "step_us" not in e:
        return f"failed on the GPU: {e.get('error', 'no time recorded')}"
    setup = gpu.get("setup", {})
    where = f"{gpu['device']}, {gpu['date']}, {setup.get('ctx', 32768) // 1024}k x batch {setup.get('batch', 32)}"
    floor = f", HBM floor {e['step_floor_us']} µs" if "step_floor_us" in e else ""
    if e.get("below_floor"):
        return f"to be re-measured (the run timed it below its HBM floor of {e['step_floor_us']} µs; {where})"
    return f"{e['step_us']} µs/layer ({e['kernels_per_layer']} indexer kernels{floor}; {_dense_text(gpu)}; {where})"


def gpu_column(flow: str, gpu: dict[str, Any] | None, previous: dict[str, Any] | None) -> str:
    """What a regenerated RESULTS.md shows as GPU step time: the GPU JSON's number, else what it showed."""
    text = gpu_step_text(gpu, flow) if gpu is not None else None
    if text is not None:
        return text
    return str(previous["gpu_step_time"]) if previous and "gpu_step_time" in previous else NOT_MEASURED


# -- rendering -----------------------------------------------------------------------------------------------
def _setup_text(r: dict[str, Any]) -> str:
    s = r["setup"]
    if "mla" in s:
        m = s["mla"]
        return (
            f"one {s['context']}-token context, MLA: one latent head of {m['kv_lora_rank']} + "
            f"{m['qk_rope_head_dim']} x {s['group_size']} absorbed query heads, block {s['block_size']} (= page), "
            f"bf16 latents and aux fields, {s['num_needles']} planted needles (content direction: kv_c columns), "
            "budget rule topk_val=0 / topk_ratio=budget / bos=1 / eos=1, one decode step"
        )
    return (
        f"one {s['context']}-token context, {s['num_kv_heads']} KV heads x G={s['group_size']} query heads, "
        f"head_dim {s['head_dim']}, block {s['block_size']} (= page), bf16 K/V and aux fields, "
        f"{s['num_needles']} planted needles per KV head, budget rule topk_val=0 / topk_ratio=budget / "
        "bos=1 / eos=1, one decode step"
    )


def _provenance(r: dict[str, Any]) -> str:
    return f"Generated by `{r['command']}` on {r['date']} ({r['machine']}) with the CPU reference runtime."


def render_results(r: dict[str, Any]) -> str:
    rows = [
        f"| {b['budget']} | {b['blocks_kept']} / {b['blocks']} | {b['needle_recall']:.3f} | "
        f"{b['needle_recall_max']:.3f} | {b['attn_rel_error']:.3f} / {b['attn_rel_error_max']:.3f} |"
        for b in r["budgets"]
    ]
    fields = ", ".join(f"`{k}` {tuple(v)}" for k, v in r["aux_fields"].items()) or "none"
    match = "yes" if r["compiled_matches_reference"] else "**NO**"
    radix = "must be off (the flow Saves per-block state)" if r["requires_radix_cache_off"] else "compatible"
    geo = f"D={r['setup']['head_dim']}, G={r['setup']['group_size']}, block {r['setup']['block_size']}"
    return "\n".join([
        f"# Results: `{r['flow']}`",
        "",
        "<!-- Generated by tools/gen_flow_index.py; do not edit by hand. -->",
        "",
        _provenance(r),
        "",
        f"Setup (`vortex check`'s measurement, `measure_flow`): {_setup_text(r)}.",
        "",
        "| budget | blocks kept per row | needle recall | best reachable "
        "| attention rel. error (mean / max) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"* Compiled ({geo}): "
        f"{r['kernels_per_layer']} indexer kernel(s) per layer + {r['cache_kernels']} cache-update kernel; "
        f"compiled == reference: {match} (Triton, interpreted on the CPU).",
        f"* Aux cache per block: {r['aux_bytes_per_block']} bytes ({fields}, bf16), on top of "
        f"{(1 if 'mla' in r['setup'] else 2) * r['setup']['block_size'] * r['setup']['head_dim'] * 2} bytes of "
        f"{'latents' if 'mla' in r['setup'] else 'K and V'}.",
        f"* Radix cache: {radix}.",
        f"* GPU step time: {r['gpu_step_time']}.",
        "",
        "Attention error is `||o_sparse - o_dense|| / ||o_dense||` per KV head. At 32k tokens the dense "
        "output mixes the needles with tens of thousands of random-value tokens whose average is small, so "
        "errors near 1 mean the sparse output kept the needles and dropped the hay's share: compare flows "
        "with it, do not read it as an absolute accuracy.",
        "",
        f"<!-- results-json: {json.dumps(r, sort_keys=True)} -->",
        "",
    ])  # fmt: skip


def _triple(r: dict[str, Any], key: str) -> str:
    return " · ".join(f"{b[key]:.2f}" for b in r["budgets"])


def results_line(r: dict[str, Any]) -> str:
    budgets = " / ".join(b["budget"] for b in r["budgets"])
    return (
        f"Needle recall {_triple(r, 'needle_recall')} and attention error {_triple(r, 'attn_rel_error')} at "
        f"budgets {budgets} of a {r['setup']['context'] // 1024}k context; {r['kernels_per_layer']} indexer "
        f"kernel(s) per layer; GPU step time {r['gpu_step_time']} (CPU reference runtime, {r['date']}; "
        "[RESULTS.md](RESULTS.md))."
    )


def render_index(results: list[dict[str, Any]]) -> str:
    if not results:
        return "(no results yet: run `python tools/gen_flow_index.py`)"
    first = results[0]
    budgets = " · ".join(b["budget"] for b in first["budgets"])
    lines = [
        f"{_provenance(first)} Setup: {_setup_text(first)}. Per-flow details: `<flow>/RESULTS.md`.",
        "",
        f"| flow | aliases | what it scores | paper | aux bytes / block | radix cache | kernels / layer | "
        f"needle recall ({budgets}) | attention error ({budgets}) | GPU step time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = f"[arXiv:{r['arxiv']}](https://arxiv.org/abs/{r['arxiv']})" if r["arxiv"] else "—"
        aliases = ", ".join(f"`{a}`" for a in r["aliases"]) or "—"
        desc = r["description"].replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        radix = "off" if r["requires_radix_cache_off"] else "ok"
        lines.append(
            f"| [`{r['flow']}`](src/vortex_flows_contrib/{r['flow']}/README.md) | {aliases} | {desc} | "
            f"{paper} | "
            f"{r['aux_bytes_per_block']} | {radix} | {r['kernels_per_layer']} + {r['cache_kernels']} | "
            f"{_triple(r, 'needle_recall')} | {_triple(r, 'attn_rel_error')} | {r['gpu_step_time']} |"
        )
    lines += [
        "",
        "Kernels / layer: indexer launches per decode step + cache-update launches per completed-block "
        'batch. Aux bytes: D=128, bf16, block 16 (K and V add 8192); MLA flows (`vFlowMLA`, measured on an MLA '
        "layer of one latent head 512 + 64 and 16 query heads): latent 576, bf16, block 16 (the latents add "
        '18432). Radix cache "off": the flow keeps per-block state across steps (Load/Save) and needs '
        "SGLang's radix cache disabled.",
    ]
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, body: str, where: Path) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{where}: markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def load_results(names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        path = SRC / name / "RESULTS.md"
        if not path.exists():
            continue
        match = RESULTS_JSON.search(path.read_text())
        if match:
            out.append(json.loads(match.group(1)))
    return out


def rendered_readmes(names: list[str]) -> dict[Path, str]:
    """Every README as the RESULTS.md files say it should read."""
    results = load_results(names)
    out: dict[Path, str] = {}
    index = CONTRIB / "README.md"
    out[index] = replace_between(index.read_text(), INDEX_START, INDEX_END, render_index(results), index)
    for r in results:
        readme = SRC / r["flow"] / "README.md"
        out[readme] = replace_between(readme.read_text(), LINE_START, LINE_END, results_line(r), readme)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", nargs="+", help="measure only these flows (the index still lists every flow)")
    ap.add_argument("--context", type=int, default=Setup.context, help="context length in tokens (32768)")
    ap.add_argument("--check", action="store_true", help="only check that the READMEs match RESULTS.md")
    ap.add_argument("--render", action="store_true", help="only rewrite the READMEs from RESULTS.md")
    ap.add_argument(
        "--gpu-results", help="JSON from tools/bench/flows_bench.py: fill the GPU step time of every flow, no measuring"
    )
    args = ap.parse_args(argv)
    eps = entry_points()
    names = list(eps)
    if args.gpu_results:
        with open(args.gpu_results) as fh:
            gpu = json.load(fh)
        for r in load_results(names):
            r["gpu_step_time"] = gpu_step_text(gpu, r["flow"]) or "not in the GPU results"
            (SRC / r["flow"] / "RESULTS.md").write_text(render_results(r))
        for path, text in rendered_readmes(names).items():
            path.write_text(text)
        return 0
    if args.render:
        for path, text in rendered_readmes(names).items():
            path.write_text(text)
        return 0
    if args.check:
        stale = [
            str(p.relative_to(REPO)) for p, text in rendered_readmes(names).items() if p.read_text() != text
        ]
        print("up to date" if not stale else "stale: " + ", ".join(stale))
        return 1 if stale else 0
    unknown = sorted(set(args.flows or ()) - set(names))
    if unknown:
        raise SystemExit(f"unknown flow(s) {unknown}; known: {', '.join(names)}")
    setup = Setup(context=args.context)
    gpu = latest_gpu_results()
    previous = {r["flow"]: r for r in load_results(names)}
    for name in args.flows or names:
        r = measure(name, eps[name], setup)
        r["gpu_step_time"] = gpu_column(name, gpu, previous.get(name))  # a CPU run measures no GPU time
        (SRC / name / "RESULTS.md").write_text(render_results(r))
        print(f"{name}: recall {_triple(r, 'needle_recall')}, error {_triple(r, 'attn_rel_error')}, "
              f"{r['kernels_per_layer']} kernels/layer, {r['seconds']} s", file=sys.stderr)  # fmt: skip
    for path, text in rendered_readmes(names).items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
