"""Every registered flow's indexer on the GPU: kernels per layer and time per decode step.

One layer of Qwen3-8B geometry (32 query heads, 8 KV heads, D 128, block = page = 16), 32k context, batch 32,
budget 2048 tokens; CUDA-graph replay of the compiled indexer (scoring + selection), plus Vortex's sparse
attention over the selection, against dense FlashInfer decode measured in the same run when FlashInfer imports.
Writes a JSON that tools/gen_flow_index.py --gpu-results turns into the index's "GPU step time" column.

usage: python tools/bench/flows_bench.py --out flows.json [--ctx 32768 --batch 32 --budget 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from indexer_bench import bench_graph, copy_bandwidth_gbs, count_kernels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--out", default="flows_bench.json")
    args = ap.parse_args()

    from vortex_torch.abs import Geometry, PoolLayout
    from vortex_torch.abs.layout import DenseBlocks
    from vortex_torch.flow import build_vflow, list_flows
    from vortex_torch.flow.compiler.base import SelectionSpec
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor
    from vortex_torch.flow.trace import trace_flow
    from vortex_torch.kernels.select import default_budget, selection_indptr
    from vortex_torch.kernels.sparse_decode import sparse_decode_attention

    torch.manual_seed(0)
    dev = torch.device("cuda")
    hq, hkv, d, bs = 32, 8, 128, 16
    g = hq // hkv
    layout = PoolLayout(page_size=bs, block_size=bs, num_kv_heads=hkv)
    pages = args.batch * (args.ctx // bs) + 1
    k = torch.randn(pages * bs, hkv, d, dtype=torch.bfloat16, device=dev)
    v = torch.randn_like(k)
    slots = [torch.arange(b * args.ctx, (b + 1) * args.ctx, device=dev) + bs for b in range(args.batch)]
    dense = DenseBlocks.from_token_slots(layout, slots)
    max_n = args.ctx // bs
    topk_val = args.budget // bs - 2
    sel = SelectionSpec(selection_indptr(default_budget(dense.lengths().int(), topk_val, 0.0, 1, 1)), 1, 1)
    out_sel = torch.empty(int(sel.sel_indptr[-1]), dtype=torch.int32, device=dev)
    q = torch.randn(dense.num_rows, g, d, dtype=torch.bfloat16, device=dev)
    nb = layout.num_blocks(pages)
    all_blocks = torch.arange(bs, nb, device=dev)  # page 0 is never handed out
    report: dict[str, object] = {
        "command": " ".join(["python", *sys.argv]),
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "setup": {"ctx": args.ctx, "batch": args.batch, "budget_tokens": args.budget, "H_q": hq, "H_kv": hkv, "D": d,
                  "block_size": bs},
        "copy_bandwidth_gbs": round(copy_bandwidth_gbs(), 1),
    }
    attn = lambda: sparse_decode_attention(
        q, k, v, sel.sel_indptr, out_sel, dense.last_block_len, page_size=bs, block_size=bs, max_blocks_per_row=max_n
    )
    try:
        import flashinfer

        kd = torch.randn(pages, bs, hkv, d, dtype=torch.bfloat16, device=dev)
        ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
        wd = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
        indptr = torch.arange(args.batch + 1, dtype=torch.int32, device=dev) * max_n
        wd.plan(indptr, torch.arange(args.batch * max_n, dtype=torch.int32, device=dev) + 1,
                torch.full((args.batch,), bs, dtype=torch.int32, device=dev), hq, hkv, d, bs,
                q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
        qd = torch.randn(args.batch, hq, d, dtype=torch.bfloat16, device=dev)
        report["dense_flashinfer_us"] = round(bench_graph(lambda: wd.run(qd, (kd, kd))), 1)
    except ImportError as exc:
        report["dense_flashinfer_us"] = f"flashinfer not importable: {exc}"
    flows = {}
    for info in list_flows():
        t0 = time.time()
        entry: dict[str, object] = {"package": info.package}
        try:
            flow = build_vflow(info.name)
            traced = trace_flow(flow, Geometry(block_size=bs, head_dim=d, group_size=g))
            ex = TritonExecutor(traced, layout)
            fields = {"k": k, "v": v}
            for name, (r, c) in traced.fields.items():
                fields[name] = torch.zeros(nb, r, c, dtype=torch.bfloat16, device=dev)
            ex.run_cache(fields, all_blocks)
            indexer = lambda ex=ex, fields=fields: ex.run_indexer(q, fields, dense, sel, out_sel, max_blocks_per_row=max_n)

            def step(indexer=indexer) -> object:  # type: ignore[no-untyped-def]
                indexer()
                return attn()

            entry.update(
                kernels_per_layer=ex.indexer_launches,
                indexer_us=round(bench_graph(indexer), 1),
                step_us=round(bench_graph(step), 1),
                step_kernels=count_kernels(step),
            )
        except Exception as exc:  # one broken flow must not hide the others' numbers
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
        entry["wall_s"] = round(time.time() - t0, 1)
        flows[info.name] = entry
        print(info.name, json.dumps(entry), flush=True)
    report["flows"] = flows
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
