"""One layer of Qwen3-8B geometry: the sparse decode step (indexer + top-k + attention) against dense decode.

Measures, in one process on one GPU:
  * HBM bandwidth, as ``decode_step_bench`` measures it: torch's ``copy_`` and a streaming Triton read; the
    floor's denominator is the better of the two (``floor_us_*``), and ``floor_copy_us_*`` keeps the copy-only
    floor of earlier runs;
  * the quick-start flow's indexer lowered two ways — Vortex's own Triton codegen and torch.compile (Inductor)
    over the reference semantics — kernel launches per layer and time (the compiler decision, docs/design.md);
  * the sparse step with Vortex's Triton attention, which reads K/V in place from SGLang's native
    [num_slots, H_kv, D] buffers (docs/design.md §2);
  * dense FlashInfer decode (when flashinfer imports) and dense attention with Vortex's kernel.
Times are CUDA-graph replays (as in serving) and eager; ratios are against dense measured in the same run.

usage: python tools/bench/indexer_bench.py --out results.json [--ctx 32768 --batch 32 1 --budget 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def replay_us(graph: Any, iters: int, rounds: int = 5) -> float:
    """Microseconds per replay of a captured (and once replayed) CUDA graph: the median over ``rounds`` rounds of
    the mean of ``iters`` back-to-back replays. One round alone once gave a 118 us plan where the same plan took
    6-12 us in every other case (H100, 2026-12-05, results/gpu/2026-12-05-h100-session6.md). The one graph timer
    of every bench in tools/bench."""
    means = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        means.append(start.elapsed_time(end) * 1000 / iters)
    return statistics.median(means)


def bench_graph(fn: Callable[[], object], iters: int = 50) -> float:
    """Microseconds of ``fn`` replayed as a CUDA graph (:func:`replay_us`)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    return replay_us(g, iters)


def bench_eager(fn: Callable[[], object], iters: int = 30) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters


def count_kernels(fn: Callable[[], object]) -> int:
    """CUDA kernels launched by one call (torch profiler)."""
    fn()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA" and "Memcpy" not in e.name and "Memset" not in e.name)


def run_case(ctx_len: int, batch: int, budget_tokens: int, args: argparse.Namespace) -> dict[str, object]:
    from vortex_torch.abs import Geometry, PoolLayout
    from vortex_torch.abs.layout import DenseBlocks
    from vortex_torch.flow import build_vflow
    from vortex_torch.flow.compiler.base import SelectionSpec
    from vortex_torch.flow.compiler.reference import ReferenceExecutor
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor
    from vortex_torch.flow.trace import trace_flow
    from vortex_torch.kernels.select import default_budget, select_blocks, selection_indptr
    from vortex_torch.kernels.sparse_decode import sparse_decode_attention

    torch.manual_seed(0)
    hq, hkv, d, bs = 32, 8, 128, 16
    g = hq // hkv
    dev = torch.device("cuda")
    page_size = bs
    layout = PoolLayout(page_size=page_size, block_size=bs, num_kv_heads=hkv)
    pages_per_req = ctx_len // page_size
    num_pages = batch * pages_per_req + 1
    num_slots = num_pages * page_size
    # K/V in SGLang's native per-layer layout: [num_slots, H_kv, D]
    k = torch.randn(num_slots, hkv, d, dtype=torch.bfloat16, device=dev)
    v = torch.randn(num_slots, hkv, d, dtype=torch.bfloat16, device=dev)
    # page 0 unused
    slots = [torch.arange(b * ctx_len, (b + 1) * ctx_len, device=dev) + page_size for b in range(batch)]
    dense = DenseBlocks.from_token_slots(layout, slots)
    rows = dense.num_rows
    max_n = ctx_len // bs  # blocks per row
    topk_val = budget_tokens // bs - 2
    budget = default_budget(dense.lengths().int(), topk_val, 0.0, 1, 1)
    sel = SelectionSpec(selection_indptr(budget), 1, 1)
    total_sel = int(sel.sel_indptr[-1])
    out_sel = torch.empty(total_sel, dtype=torch.int32, device=dev)
    q = torch.randn(rows, g, d, dtype=torch.bfloat16, device=dev)
    flow = build_vflow("custom_sparse_attention", os.path.join(REPO, "examples", "custom_sparse_attention.py"))
    traced = trace_flow(flow, Geometry(block_size=bs, head_dim=d, group_size=g))
    # the quick-start flow's aux field: mean key of every block, [num_blocks, 1, D] in block-id order
    bpp = layout.blocks_per_page
    centroids = k.view(num_pages, bpp, bs, hkv, d).float().mean(2)  # [pages, bpp, H_kv, D]
    centroids = centroids.transpose(1, 2).reshape(-1, 1, d).to(torch.bfloat16)
    fields = {"k": k, "v": v, "centroids": centroids}
    last = dense.last_block_len
    res: dict[str, object] = {"ctx": ctx_len, "batch": batch, "budget_tokens": budget_tokens, "rows": rows}

    tri = TritonExecutor(traced, layout=layout)
    ref = ReferenceExecutor(traced, layout)

    def vortex_indexer() -> None:
        tri.run(q, fields, dense, sel, out_sel, plan=tri.plan(dense.num_rows, max_n, q.device))

    def inductor_scores(qq: torch.Tensor, cent: torch.Tensor, indices: torch.Tensor, row_of: torch.Tensor) -> torch.Tensor:
        qm = qq.float().mean(1)  # the quick-start graph, reference semantics
        return (cent[indices.long(), 0].float() * qm[row_of]).sum(-1)

    compiled = torch.compile(inductor_scores, dynamic=False)

    def inductor_indexer() -> None:
        score = compiled(q, centroids, dense.indices, dense.row_of)
        select_blocks(score, dense.indptr, dense.indices, sel.sel_indptr, 1, 1, out=out_sel, max_blocks_per_row=max_n)

    def eager_indexer() -> None:
        score, _ = ref.evaluate(q, fields, dense)
        select_blocks(score, dense.indptr, dense.indices, sel.sel_indptr, 1, 1, out=out_sel, max_blocks_per_row=max_n)

    # correctness on the GPU: compiled selection == reference selection
    ref_sel = torch.empty_like(out_sel)
    ref.run(q, fields, dense, sel, ref_sel)
    vortex_indexer()
    res["vortex_equals_reference"] = bool(torch.equal(ref_sel, out_sel))

    def sparse_attn() -> torch.Tensor:
        return sparse_decode_attention(
            q, k, v, sel.sel_indptr, out_sel, last, page_size=page_size, block_size=bs,
            max_blocks_per_row=max_n,
        )  # fmt: skip

    def dense_attn() -> torch.Tensor:
        return sparse_decode_attention(
            q, k, v, dense.indptr, dense.indices, last, page_size=page_size, block_size=bs,
            max_blocks_per_row=max_n,
        )  # fmt: skip

    def sparse_step() -> torch.Tensor:
        vortex_indexer()
        return sparse_attn()

    def measure(fn: Callable[[], object]) -> dict[str, object]:
        entry: dict[str, object] = {"kernels": count_kernels(fn), "eager_us": round(bench_eager(fn), 1)}
        try:
            entry["graph_us"] = round(bench_graph(fn), 1)
        except Exception as exc:  # report, don't hide: some paths may not be capturable
            entry["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return entry

    # where the indexer's time goes, and how the generated scoring kernel's tiling moves it
    score_buf = torch.empty(dense.nnz, dtype=torch.float32, device=dev)

    def select_only() -> None:
        select_blocks(score_buf, dense.indptr, dense.indices, sel.sel_indptr, 1, 1, out=out_sel, max_blocks_per_row=max_n)

    res["select_only"] = measure(select_only)
    sweep = {}
    for chunk in (16, 32, 64, 128):
        for warps in (2, 4, 8):
            try:
                ex = TritonExecutor(traced, layout, block_chunk=chunk, num_warps=warps)
                ip = ex.plan(dense.num_rows, max_n, q.device)
                fn = lambda ex=ex, ip=ip: ex.run(q, fields, dense, sel, out_sel, plan=ip)
                sweep[f"chunk{chunk}_warps{warps}"] = round(bench_graph(fn), 1)
            except Exception as exc:
                sweep[f"chunk{chunk}_warps{warps}"] = f"{type(exc).__name__}: {exc}"[:200]
    res["indexer_vortex_sweep_graph_us"] = sweep
    generic = torch.compile(lambda qq: ref.evaluate(qq, fields, dense)[0], dynamic=False)

    def inductor_generic_indexer() -> None:
        score = generic(q)
        select_blocks(score, dense.indptr, dense.indices, sel.sel_indptr, 1, 1, out=out_sel, max_blocks_per_row=max_n)

    for name, fn in [
        ("indexer_inductor_generic", inductor_generic_indexer),
        ("indexer_vortex", vortex_indexer),
        ("indexer_inductor", inductor_indexer),
        ("indexer_torch_eager", eager_indexer),
        ("attn_sparse_vortex", sparse_attn),
        ("attn_dense_vortex", dense_attn),
        ("step_sparse_vortex", sparse_step),
    ]:
        res[name] = measure(fn)

    try:
        import flashinfer

        ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
        # dense baseline in FlashInfer's own layout: [pages, page, H_kv, D]
        kd = torch.randn(num_pages, bs, hkv, d, dtype=torch.bfloat16, device=dev)
        vd = torch.randn_like(kd)
        qd = torch.randn(batch, hq, d, dtype=torch.bfloat16, device=dev)
        indptr = torch.arange(batch + 1, dtype=torch.int32, device=dev) * pages_per_req
        indices = torch.arange(batch * pages_per_req, dtype=torch.int32, device=dev) + 1
        lastp = torch.full((batch,), bs, dtype=torch.int32, device=dev)
        wd = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
        wd.plan(indptr, indices, lastp, hq, hkv, d, bs, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
        dense_fi = lambda: wd.run(qd, (kd, vd))
        res["attn_dense_flashinfer"] = measure(dense_fi)
    except ImportError as exc:
        res["flashinfer"] = f"not importable: {exc}"

    # bytes each step must read (the floor): centroids + selected K/V (+ q, scores are negligible)
    sel_blocks = total_sel
    res["bytes_sparse_step"] = int(dense.nnz * d * 2 + sel_blocks * bs * d * 2 * 2 + dense.nnz * 4 * 2)
    res["bytes_dense"] = int(batch * ctx_len * hkv * d * 2 * 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--out", default="indexer_bench.json")
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    t0 = time.time()
    report: dict[str, object] = {
        "command": " ".join(["python", *sys.argv]),
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    import triton

    report["triton"] = triton.__version__
    from decode_step_bench import copy_bandwidth_gbs, read_bandwidth_gbs  # tools/bench is on sys.path

    copy_bw, read_bw = copy_bandwidth_gbs(), read_bandwidth_gbs()
    bw = max(copy_bw, read_bw)
    report["copy_bandwidth_gbs"] = round(copy_bw, 1)
    report["read_bandwidth_gbs"] = round(read_bw, 1)
    report["floor_bandwidth_gbs"] = round(bw, 1)
    cases = []
    for b in args.batch:
        case = run_case(args.ctx, b, args.budget, args)
        for key in ("bytes_sparse_step", "bytes_dense"):
            case[key.replace("bytes", "floor_us")] = round(case[key] / (bw * 1e9) * 1e6, 1)  # type: ignore[operator]
            case[key.replace("bytes", "floor_copy_us")] = round(case[key] / (copy_bw * 1e9) * 1e6, 1)  # type: ignore[operator]
        cases.append(case)
        print(json.dumps(case), flush=True)
        torch.cuda.empty_cache()
    report["cases"] = cases
    report["wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
