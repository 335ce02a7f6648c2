"""Every registered flow's indexer on the GPU: kernels per layer and time per decode step.

One layer of Qwen3-8B geometry (32 query heads, 8 KV heads, D 128, block = page = 16), 32k context, batch 32,
budget 2048 tokens; CUDA-graph replay of the compiled indexer (scoring + selection), plus Vortex's sparse
attention over the selection, against dense FlashInfer decode measured in the same run when FlashInfer imports.
Dense FlashInfer reads the same K/V pool as the sparse step (separate K and V tensors, viewed in FlashInfer's
``[pages, page_size, H_kv, D]`` layout): passing one tensor as both K and V, as this script once did, halves
the bytes read and gives a time below the HBM floor.

Next to every time it records the floor: the bytes that step must read at least, over the HBM bandwidth
measured in the same run, the best of torch's ``copy_`` and a streaming Triton read (``decode_step_bench``'s
probes: on the H200 ``copy_`` gives 2.7 TB/s and a plain read 4.45 TB/s, so a copy-only floor would call real
times impossible). A time well below its floor is flagged (``below_floor``, :data:`FLOOR_SLACK`): it cannot be
right. Writes a JSON that tools/gen_flow_index.py --gpu-results turns into the index's "GPU step
time" column.

usage: python tools/bench/flows_bench.py --out flows.json [--ctx 32768 --batch 32 --budget 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from decode_step_bench import copy_bandwidth_gbs, read_bandwidth_gbs  # noqa: E402
from indexer_bench import bench_graph, count_kernels  # noqa: E402

#: what the report says about the dense baseline's K and V (gen_flow_index.py shows the dense time only then)
DENSE_KV = "separate K and V tensors (the sparse step's pool)"


def dense_bytes(batch: int, ctx: int, num_kv_heads: int, head_dim: int, elt_bytes: int = 2) -> int:
    """Bytes dense decode attention must read: every token's K and V of every KV head."""
    return batch * ctx * num_kv_heads * head_dim * elt_bytes * 2


def sparse_step_bytes(
    dense_blocks: int, selected_blocks: int, aux_bytes_per_block: int, block_size: int, head_dim: int,
    elt_bytes: int = 2,
) -> int:
    """Bytes a sparse step must read at least: every cached block's aux fields (the indexer scores them all)
    and the K and V of the selected blocks (queries and scores are negligible)."""
    return dense_blocks * aux_bytes_per_block + selected_blocks * block_size * head_dim * elt_bytes * 2


def floor_us(num_bytes: int, bandwidth_gbs: float) -> float:
    """Microseconds to read ``num_bytes`` at ``bandwidth_gbs`` GB/s (the best bandwidth measured in the run)."""
    return num_bytes / (bandwidth_gbs * 1e9) * 1e6


#: The floor is at the best bandwidth the run's probes reached, which a tuned kernel can still beat by a few
#: percent (dense FlashInfer read at 4.55 TB/s against the probes' 4.45 on the H200), so only a time more than 15%
#: under the floor is flagged as impossible.
FLOOR_SLACK = 0.85


def below_floor(us: float, floor: float) -> bool:
    """Whether a measured time is impossibly fast for the bytes it must read (a measurement error)."""
    return us < FLOOR_SLACK * floor


def dense_flashinfer_step(
    flashinfer: Any, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, *, batch: int, pages_per_request: int,
    block_size: int, num_q_heads: int,
) -> Callable[[], object]:
    """Dense FlashInfer batch decode over the pool ``k``/``v`` ``[num_slots, H_kv, D]``, seen as FlashInfer's
    NHD pages ``[num_slots // page, page, H_kv, D]`` (views: the same bytes the sparse step reads). Request
    ``b`` owns pages ``1 + b * pages_per_request ...`` (page 0 is never handed out, as in SGLang).
    ``q`` is ``[batch, H_q, D]``; returns the call to time."""
    num_slots, hkv, d = k.shape
    k_pages = k.view(num_slots // block_size, block_size, hkv, d)
    v_pages = v.view(num_slots // block_size, block_size, hkv, d)
    dev = k.device
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=dev) * pages_per_request
    indices = torch.arange(batch * pages_per_request, dtype=torch.int32, device=dev) + 1
    last = torch.full((batch,), block_size, dtype=torch.int32, device=dev)
    wrapper.plan(indptr, indices, last, num_q_heads, hkv, d, block_size, q_data_type=q.dtype, kv_data_type=k.dtype)
    return lambda: wrapper.run(q, (k_pages, v_pages))


def build_parser() -> argparse.ArgumentParser:
    """The command line (also what tests/test_device_plan.py checks the GPU plan's arguments with)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--out", default="flows_bench.json")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

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
    selected_blocks = int(sel.sel_indptr[-1])
    out_sel = torch.empty(selected_blocks, dtype=torch.int32, device=dev)
    q = torch.randn(dense.num_rows, g, d, dtype=torch.bfloat16, device=dev)
    nb = layout.num_blocks(pages)
    all_blocks = torch.arange(bs, nb, device=dev)  # page 0 is never handed out
    copy_bw, read_bw = copy_bandwidth_gbs(), read_bandwidth_gbs()
    bw = max(copy_bw, read_bw)
    d_bytes = dense_bytes(args.batch, args.ctx, hkv, d)
    report: dict[str, object] = {
        "command": " ".join(["python", *sys.argv]),
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "setup": {"ctx": args.ctx, "batch": args.batch, "budget_tokens": args.budget, "H_q": hq, "H_kv": hkv, "D": d,
                  "block_size": bs},
        "copy_bandwidth_gbs": round(copy_bw, 1),
        "read_bandwidth_gbs": round(read_bw, 1),
        "floor_bandwidth_gbs": round(bw, 1),
        "dense_kv": DENSE_KV,
        "dense_bytes": d_bytes,
        "dense_floor_us": round(floor_us(d_bytes, bw), 1),
    }
    attn = lambda: sparse_decode_attention(
        q, k, v, sel.sel_indptr, out_sel, dense.last_block_len, page_size=bs, block_size=bs, max_blocks_per_row=max_n
    )
    try:
        import flashinfer

        qd = torch.randn(args.batch, hq, d, dtype=torch.bfloat16, device=dev)
        dense_fi = dense_flashinfer_step(flashinfer, k, v, qd, batch=args.batch, pages_per_request=max_n,
                                         block_size=bs, num_q_heads=hq)  # fmt: skip
        us = bench_graph(dense_fi)
        report["dense_flashinfer_us"] = round(us, 1)
        report["dense_flashinfer_below_floor"] = below_floor(us, floor_us(d_bytes, bw))
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
            iplan = ex.plan(dense.num_rows, max_n, q.device)
            indexer = lambda ex=ex, fields=fields, iplan=iplan: ex.run(q, fields, dense, sel, out_sel, plan=iplan)

            def step(indexer=indexer) -> object:  # type: ignore[no-untyped-def]
                indexer()
                return attn()

            aux = sum(r * c for r, c in traced.fields.values()) * 2  # bf16 aux fields
            step_bytes = sparse_step_bytes(dense.nnz, selected_blocks, aux, bs, d)
            step_us = bench_graph(step)
            entry.update(
                kernels_per_layer=ex.indexer_launches,
                indexer_us=round(bench_graph(indexer), 1),
                step_us=round(step_us, 1),
                step_kernels=count_kernels(step),
                step_bytes=step_bytes,
                step_floor_us=round(floor_us(step_bytes, bw), 1),
                below_floor=below_floor(step_us, floor_us(step_bytes, bw)),
            )
        except Exception as exc:  # one broken flow must not hide the others' numbers
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
        entry["wall_s"] = round(time.time() - t0, 1)
        flows[info.name] = entry
        print(info.name, json.dumps(entry), flush=True)
    report["flows"] = flows
    suspect = [n for n, e in flows.items() if e.get("below_floor")]
    if report.get("dense_flashinfer_below_floor"):
        suspect.append("dense FlashInfer")
    if suspect:
        print(f"WARNING: below the HBM floor (a measurement error): {', '.join(suspect)}", file=sys.stderr)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
