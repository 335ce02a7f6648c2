"""SGLang decode throughput with and without Vortex, and where one sparse decode layer spends its time.

    VORTEX_MODELS=qwen3-8b-l4 bash tools/device/remote.sh bench sglang_decode_bench     (one call, < 9 min)
    python tools/bench/sglang_decode_bench.py --model /tmp/models/qwen3-8b-l4 [--quick]

Model: random weights with Qwen3-8B's attention geometry (32 query heads, 8 KV heads, head dim 128, hidden 4096)
and few layers (``tools/device/mk_tiny.py --preset qwen3-8b --layers 4``), bf16, page 16.

1. **Kernels, one layer** (no engine): at 8k and 32k context, batch 1 and 16, the per-step pieces of a Vortex
   sparse layer (quick-start flow, budget 32 blocks of 16 tokens) timed as CUDA-graph replays, as in serving:
   ``plan`` (once per step for all layers, eager), ``cache`` (forward_cache over the step's masked
   candidates), ``indexer`` (scores + top-k), of which ``select`` alone, ``attention`` (sparse), ``layer``
   (cache + indexer + attention) -- against FlashInfer's dense decode as SGLang plans it (page size 1).
2. **Engines**: ``sgl.Engine`` with flashinfer, plain and with Vortex (the quick start's VortexConfig), the same
   prompts (random ids), greedy, ``ignore_eos``: decode tokens/s = ``batch * steps / (t(steps + 1) - t(1))``,
   the radix cache off so both calls prefill.

Writes ``$VORTEX_OUT/sglang_decode_bench.json`` (or ``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from indexer_bench import bench_eager  # noqa: E402 - one eager timer for every bench

REPO = os.path.dirname(os.path.dirname(HERE))
FLOW_FILE = os.path.join(REPO, "examples", "custom_sparse_attention.py")
VORTEX = {
    "module_path": FLOW_FILE,
    "module_name": "custom_sparse_attention",
    "topk_val": 30,
    "layers_skip": [0],
    "block_reserved_bos": 1,
    "block_reserved_eos": 1,
}
T0 = time.time()


def log(msg: str) -> None:
    print(f"[bench {time.time() - T0:6.1f}s] {msg}", flush=True)


# -- timing --------------------------------------------------------------------------------------------------------
def bench_graph(fn: Callable[[], object], iters: int = 50) -> float:
    """Mean microseconds of ``fn`` replayed as a CUDA graph (eager timing if it cannot be captured)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
    except Exception as exc:  # not capturable: report eager time, marked
        log(f"  (not capturable: {type(exc).__name__}: {str(exc)[:120]}; eager timing)")
        return -bench_eager(fn, iters)
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters


# -- 1. one layer's kernels ----------------------------------------------------------------------------------------
def kernel_case(ctx: int, batch: int, context_len: int) -> dict[str, Any]:
    import torch

    from vortex_torch.abs.layout import PoolLayout
    from vortex_torch.engine.sgl.aux_store import AuxFieldStore
    from vortex_torch.engine.sgl.config import VortexConfig
    from vortex_torch.engine.sgl.decode_core import VortexDecodeCore
    from vortex_torch.engine.sgl.flow_spec import prepare_flow
    from vortex_torch.kernels.select import select_blocks
    from vortex_torch.kernels.sparse_decode import sparse_decode_attention

    dev = "cuda"
    hq, hkv, d, page, blk = 32, 8, 128, 16, 16
    group = hq // hkv
    cfg = VortexConfig(**{k: v for k, v in VORTEX.items() if k != "layers_skip"})
    prepared = prepare_flow(cfg, head_dim=d, group_size=group, kv_dtype=torch.bfloat16)
    layout = PoolLayout(page_size=page, block_size=blk, num_kv_heads=hkv)
    pages_per_req = math.ceil(ctx / page)
    num_pages = batch * pages_per_req + 1
    slots = num_pages * page
    k_buf = torch.randn(slots, hkv, d, dtype=torch.bfloat16, device=dev)
    v_buf = torch.randn_like(k_buf)
    # requests own shuffled pages (as after a while in a server)
    perm = torch.randperm(num_pages - 1, device=dev) + 1
    req_to_token = torch.zeros(batch + 1, context_len, dtype=torch.int32, device=dev)
    t = torch.arange(ctx, device=dev)
    for b in range(batch):
        own = perm[b * pages_per_req : (b + 1) * pages_per_req]
        req_to_token[b + 1, :ctx] = (own[t // page] * page + t % page).to(torch.int32)
    rpi = torch.arange(1, batch + 1, device=dev)
    seq_lens = torch.full((batch,), ctx, device=dev)
    aux = AuxFieldStore(prepared, layout, slots, [0], dev)
    core = VortexDecodeCore(prepared, layout, context_len=context_len, device=dev)
    buffers = core.allocate_buffers(batch)
    fields = {"k": k_buf, "v": v_buf, **aux.fields(0)}
    core.executor.run_cache(
        fields, torch.arange(layout.num_blocks(num_pages), device=dev)
    )  # summaries of all blocks
    plan = core.plan(req_to_token, rpi, seq_lens, buffers=buffers)
    q = torch.randn(batch * hkv, group, d, dtype=torch.bfloat16, device=dev)
    loc = req_to_token[rpi, ctx - 1].long()  # this step's token slots
    score = torch.randn(plan.dense_indices.numel(), dtype=torch.float32, device=dev)
    nnz = batch * hkv * math.ceil(ctx / blk)
    sel = int(plan.sel_indptr[-1])

    res: dict[str, Any] = {"ctx": ctx, "batch": batch, "dense_blocks": nnz, "selected_blocks": sel}
    res["plan_eager_us"] = bench_eager(lambda: core.plan(req_to_token, rpi, seq_lens, buffers=buffers))
    res["cache_us"] = bench_graph(lambda: core.update_cache(fields, loc))
    res["indexer_us"] = bench_graph(lambda: core.select(q, fields, plan))
    res["select_us"] = bench_graph(
        lambda: select_blocks(
            score,
            plan.dense_indptr,
            plan.dense_indices,
            plan.sel_indptr,
            1,
            1,
            out=plan.sel_indices,
            max_blocks_per_row=plan.max_blocks_per_row,
        )
    )
    core.select(q, fields, plan)
    res["attention_us"] = bench_graph(lambda: core.attend(q, fields, plan, None))
    res["layer_us"] = bench_graph(
        lambda: (core.update_cache(fields, loc), core.decode_layer(q, fields, plan, None))
    )
    # The flashinfer base backend's path: token table + FlashInfer's decode over the selected tokens.
    from types import SimpleNamespace

    from vortex_torch.engine.sgl.decode_core import make_budget_fn
    from vortex_torch.engine.sgl.flashinfer_decode import FlashInferSparseDecode

    fi = FlashInferSparseDecode(
        SimpleNamespace(decode_use_tensor_cores=group >= 4, decode_backend="auto"), group=group, head_dim=d,
        num_kv_heads=hkv, block_size=blk, page_size=page, kv_dtype=torch.bfloat16, q_dtype=torch.bfloat16,
        max_blocks_per_row=core.max_blocks_per_row, max_selected_per_row=core.max_selected_per_row,
        budget_fn=make_budget_fn(prepared, torch.device("cpu"), core.max_selected_per_row), device=torch.device(dev),
    )  # fmt: skip
    fi.allocate_graph_buffers(batch)
    fi_plan = core.plan(
        req_to_token, rpi, seq_lens, buffers=buffers, budget=fi.begin_step(seq_lens.cpu(), graph=True)
    )
    core.select(q, fields, fi_plan)
    layer = SimpleNamespace(scaling=d**-0.5, logit_cap=0.0, k_scale_float=None, v_scale_float=None)
    res["plan_host_fi_us"] = bench_eager(lambda: fi.begin_step(seq_lens.cpu(), graph=True))
    res["attention_fi_us"] = bench_graph(lambda: fi.attend(q, k_buf, v_buf, fi_plan, layer))
    res["layer_fi_us"] = bench_graph(
        lambda: (
            core.update_cache(fields, loc),
            core.decode_layer(
                q, fields, fi_plan, None, attend=lambda q_, f_, p_: fi.attend(q_, k_buf, v_buf, p_, layer)
            ),
        )
    )
    res["dense_vortex_kernel_us"] = bench_graph(
        lambda: sparse_decode_attention(q, k_buf, v_buf, plan.dense_indptr, plan.dense_indices, plan.last_block_len,
                                        page_size=page, block_size=blk, max_blocks_per_row=plan.max_blocks_per_row)
    )  # fmt: skip
    try:
        import flashinfer

        ws = torch.empty(512 << 20, dtype=torch.uint8, device=dev)
        lens = seq_lens.to(torch.int32)
        indptr = torch.zeros(batch + 1, dtype=torch.int32, device=dev)
        indptr[1:] = torch.cumsum(lens, 0)
        indices = torch.cat([req_to_token[b + 1, :ctx] for b in range(batch)])
        last = torch.ones(batch, dtype=torch.int32, device=dev)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
        wrapper.plan(
            indptr, indices, last, hq, hkv, d, 1, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16
        )
        qd = q.reshape(batch, hq, d)
        kv4 = (
            k_buf.unsqueeze(1),
            v_buf.unsqueeze(1),
        )  # NHD [pages, page_size=1, H_kv, D], as SGLang plans it
        res["dense_flashinfer_us"] = bench_graph(lambda: wrapper.run(qd, kv4))
    except Exception as exc:
        res["dense_flashinfer_us"] = None
        res["flashinfer_error"] = f"{type(exc).__name__}: {exc}"[:300]
    res["bytes_dense_kv"] = batch * ctx * hkv * d * 2 * 2
    res["bytes_sparse_kv"] = sel * blk * d * 2 * 2 + nnz * d * 2  # selected K/V + every centroid
    return res


# -- 2. engines ----------------------------------------------------------------------------------------------------
def engine_case(
    model: str, vortex: dict[str, Any] | None, cases: list[tuple[int, int]], steps: int, deadline: float,
    *, overlap: bool = False, dummy: bool = False,
) -> list[dict]:
    """Decode tokens/s of one engine (plain when ``vortex`` is None) for each ``(ctx, batch)``.

    The radix cache is on: each case prefills its prompts once (warm-up), then ``generate`` with 1 and with
    ``steps + 1`` new tokens re-uses the cached prompt, so ``batch * steps / (t(steps + 1) - t(1))`` is decode
    time without prefill. ``dummy``: SGLang's ``load_format="dummy"`` (random weights, no checkpoint read).
    """
    import sglang as sgl

    import vortex_torch  # noqa: F401

    kwargs: dict[str, Any] = dict(
        model_path=model, attention_backend="flashinfer", page_size=16, disable_overlap_schedule=not overlap,
        disable_prefill_cuda_graph=True, cuda_graph_max_bs_decode=16,
        mem_fraction_static=0.8, skip_tokenizer_init=True, log_level="warning",
        chunked_prefill_size=16384,
    )  # fmt: skip
    if dummy:
        kwargs["load_format"] = "dummy"
    if vortex is not None:
        kwargs["vortex"] = vortex
    name = "plain" if vortex is None else f"vortex{vortex['topk_val']}"
    t = time.time()
    engine = sgl.Engine(**kwargs)
    start_s = time.time() - t
    log(f"engine {name} (overlap {overlap}) up in {start_s:.0f}s")
    out = []
    rng = random.Random(0)
    try:
        for ctx, batch in cases:
            if time.time() > deadline:
                out.append({"ctx": ctx, "batch": batch, "skipped": "time budget"})
                continue
            prompts = [[rng.randint(3, 31000) for _ in range(ctx - steps - 8)] for _ in range(batch)]

            def run(new: int, batch_ids: list[list[int]] = prompts) -> float:
                sp = {"temperature": 0.0, "max_new_tokens": new, "ignore_eos": True}
                t0 = time.time()
                engine.generate(input_ids=batch_ids, sampling_params=sp)
                return time.time() - t0

            tp = run(2)  # prefill (cached from now on), JIT and allocator warm-up at this shape
            run(steps + 1)  # CUDA graphs for this batch size warmed
            t1 = run(1)
            tn = run(steps + 1)
            rec = {"ctx": ctx, "batch": batch, "steps": steps, "prefill_s": round(tp, 3), "one_s": round(t1, 3),
                   "decode_s": round(tn - t1, 3), "tok_per_s": round(batch * steps / max(tn - t1, 1e-9), 1)}  # fmt: skip
            log(f"  {name} ctx={ctx} bs={batch}: {rec['tok_per_s']} tok/s")
            out.append(rec)
            try:
                engine.flush_cache()  # the next case's prompts start from an empty KV pool
            except Exception as exc:
                log(f"  flush_cache failed: {exc}")
    finally:
        engine.shutdown()
    for r in out:
        r["engine_start_s"] = round(start_s, 1)
    return out


def e2e_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The e2e table as rows ``{ctx, batch, budget_tokens, overlap, plain_tok_s, vortex_tok_s}``."""
    rows = []
    eng = result["engines"]
    for key, recs in eng.items():
        if not key.startswith("vortex"):
            continue
        budget = int(key.split(":")[0][len("vortex"):])
        overlap = key.endswith(":overlap")
        plain = {(r.get("ctx"), r.get("batch")): r for r in eng.get("plain" + (":overlap" if overlap else ""), [])}
        plain_off = {(r.get("ctx"), r.get("batch")): r for r in eng.get("plain", [])}
        for r in recs:
            base = plain.get((r.get("ctx"), r.get("batch"))) or {}
            rows.append({"ctx": r.get("ctx"), "batch": r.get("batch"), "budget_tokens": budget, "overlap": overlap,
                         "plain_tok_s": base.get("tok_per_s"), "vortex_tok_s": r.get("tok_per_s"),
                         "plain_overlap_off_tok_s": plain_off.get((r.get("ctx"), r.get("batch")), {}).get("tok_per_s")})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models_dir = os.environ.get("VORTEX_MODELS_DIR", "/tmp/models")
    p.add_argument("--model", default=os.path.join(models_dir, "qwen3-8b-l4"))
    p.add_argument(
        "--out", default=os.path.join(os.environ.get("VORTEX_OUT", "."), "sglang_decode_bench.json")
    )
    p.add_argument("--ctx", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per case")
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("VORTEX_BENCH_BUDGET_S", 430)))
    p.add_argument("--skip-engines", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--quick", action="store_true", help="8k only, 16 steps")
    p.add_argument("--cases", nargs="+", help="CTXxBATCH engine cases (replaces --ctx/--batch for engines)")
    p.add_argument("--budgets", type=int, nargs="+", default=[512], help="Vortex budgets in tokens (topk_val = b/16 - 2)")
    p.add_argument("--engines", nargs="+", default=["plain", "vortex"],
                   help="plain, plain:overlap, vortex, vortex:overlap (overlap: SGLang's overlap scheduler on)")
    p.add_argument("--dummy-layers", type=int, default=0,
                   help="serve --model's config with this many layers and random weights (load_format=dummy)")
    p.add_argument("--e2e-out", help="also write the e2e rows here (list of {ctx, batch, budget_tokens, ...})")
    args = p.parse_args()
    if args.quick:
        args.ctx, args.steps = [8192], 16
    deadline = T0 + args.budget_s

    import torch

    cfg = json.load(open(os.path.join(args.model, "config.json")))
    context_len = int(cfg.get("max_position_embeddings", 40960))
    cases = [(c, b) for c in args.ctx for b in args.batch]
    result: dict[str, Any] = {
        "date": str(date.today()),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": {
            k: cfg.get(k)
            for k in (
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "hidden_size",
                "max_position_embeddings",
            )
        },
        "vortex": {k: v for k, v in VORTEX.items() if k != "module_path"},
        "kernels": [],
        "engines": {},
    }
    if not args.skip_kernels:
        log("kernels, one layer")
        for ctx, batch in cases:
            try:
                rec = kernel_case(ctx, batch, context_len)
            except Exception as exc:
                rec = {"ctx": ctx, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"  {rec}")
            result["kernels"].append(rec)
            torch.cuda.empty_cache()
    model = args.model
    if args.dummy_layers:
        import shutil
        import tempfile

        model = tempfile.mkdtemp(prefix="vortex-dummy-")
        for f in os.listdir(args.model):
            if not f.endswith(".safetensors") and f != "model.safetensors.index.json":
                shutil.copy(os.path.join(args.model, f), model)
        cfg["num_hidden_layers"] = args.dummy_layers
        if isinstance(cfg.get("layer_types"), list) and cfg["layer_types"]:
            cfg["layer_types"] = [cfg["layer_types"][0]] * args.dummy_layers
        json.dump(cfg, open(os.path.join(model, "config.json"), "w"))
        result["model"]["num_hidden_layers"] = args.dummy_layers
        result["model"]["weights"] = "random (SGLang load_format=dummy)"
    engine_cases = cases
    if args.cases:
        engine_cases = [tuple(int(x) for x in c.lower().split("x")) for c in args.cases]  # type: ignore[misc]
    if not args.skip_engines and os.path.isdir(model):
        for spec in args.engines:
            kind, _, mode = spec.partition(":")
            overlap = mode == "overlap"
            if overlap and kind == "vortex":
                os.environ["VORTEX_ALLOW_OVERLAP_SCHEDULE"] = "1"  # server_rules.ALLOW_OVERLAP_ENV
            for budget in args.budgets if kind == "vortex" else [0]:
                vcfg = None if kind == "plain" else {**VORTEX, "topk_val": budget // 16 - 2}
                name = ("plain" if vcfg is None else f"vortex{budget}") + (":overlap" if overlap else "")
                try:
                    result["engines"][name] = engine_case(model, vcfg, engine_cases, args.steps, deadline,
                                                          overlap=overlap, dummy=bool(args.dummy_layers))  # fmt: skip
                except Exception as exc:
                    result["engines"][name] = [{"error": f"{type(exc).__name__}: {exc}"[:800]}]
                    log(f"engine {name} failed: {exc}")
    result["e2e"] = e2e_rows(result)
    if args.e2e_out:
        with open(args.e2e_out, "w") as fh:
            json.dump(result["e2e"], fh, indent=1)
    result["wall_s"] = round(time.time() - T0, 1)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(report(result))


def report(res: dict[str, Any]) -> str:
    lines = [f"## SGLang decode bench ({res['gpu']}, {res['date']})", ""]
    if res["kernels"]:
        lines += [
            "One layer, per decode step, us (CUDA-graph replays; plan is eager, once per step for all layers):",
            "",
            "Triton path (triton base backend) and FlashInfer path (flashinfer base backend: token table +",
            "FlashInfer decode over the selected tokens; its plan is host-side, per step).",
            "",
            "| ctx | batch | plan (device) | plan (host, fi) | cache | indexer | (select) | attention triton | "
            "attention fi | sparse layer triton | sparse layer fi | dense flashinfer | dense vortex kernel |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["kernels"]:
            if "error" in r:
                lines.append(f"| {r['ctx']} | {r['batch']} | error: {r['error'][:80]} |")
                continue
            f = lambda x: "-" if x is None else (f"{x:.1f}" if x >= 0 else f"{-x:.1f} (eager)")
            lines.append(
                f"| {r['ctx']} | {r['batch']} | {f(r['plan_eager_us'])} | {f(r.get('plan_host_fi_us'))} | "
                f"{f(r['cache_us'])} | {f(r['indexer_us'])} | {f(r['select_us'])} | {f(r['attention_us'])} | "
                f"{f(r.get('attention_fi_us'))} | {f(r['layer_us'])} | {f(r.get('layer_fi_us'))} | "
                f"{f(r['dense_flashinfer_us'])} | {f(r['dense_vortex_kernel_us'])} |"
            )
    if res.get("e2e"):
        lines += ["", "End to end decode throughput, tokens/s (flashinfer base; Vortex = the quick-start flow):", "",
                  "| ctx | batch | budget | overlap | plain | vortex | speedup |", "|---|---|---|---|---|---|---|"]
        for r in res["e2e"]:
            a, b = r.get("plain_tok_s"), r.get("vortex_tok_s")
            speed = f"{b / a:.2f}x" if a and b else "-"
            lines.append(f"| {r['ctx']} | {r['batch']} | {r['budget_tokens']} | {r['overlap']} | {a or '-'} | "
                         f"{b or '-'} | {speed} |")
    elif res["engines"]:
        lines += ["", "engines: " + json.dumps(res["engines"])[:2000]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
