# ruff: noqa
"""Diagnostic (GPU): one eager decode step of the decode-core test scenario; for every row whose selection
differs from the reference, print our stored scores, the reference's, and the naive selection of OUR scores."""

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "vortex_sgl_testlib", root / "packages/vortex-sglang/tests/_testlib.py"
)
t = importlib.util.module_from_spec(spec)
sys.modules["vortex_sgl_testlib"] = t
spec.loader.exec_module(t)
from vortex_torch.kernels.select import select_blocks_naive

for warps in (2, 4):
    for _chunk in (0, 4):
        sc = t.Scenario("torch", "triton", [9, 35, 70, 130], Path(tempfile.mkdtemp()), device="cuda")
        sc.core.executor.num_warps = warps
        sc.prefill()
        buffers = sc.core.allocate_buffers(len(sc.rows))
        loc, seq_lens, rows = sc.next_inputs()
        plan = sc.core.plan(sc.pool.req_to_token, rows, seq_lens, buffers=buffers)
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        bad = 0
        for layer, (q, k, v) in enumerate(inputs):
            q, k, v = q.cuda(), k.cuda(), v.cuda()
            sc.pool.k[layer][loc] = k
            sc.pool.v[layer][loc] = v
            if layer not in sc.sparse_layers:
                continue
            sc.core.update_cache(sc.fields(layer), loc)
            sc.core.decode_layer(q.reshape(-1, t.GROUP, t.DIM), sc.fields(layer), plan, None)
            torch.cuda.synchronize()
            ro, want, scores, rplan = ref[layer]
            got = t.positions_of(plan, plan.sel_indices)
            ws = sc.core.indexer_workspace
            (buf,) = ws.buffers.values()
            ptr = plan.dense_indptr.tolist()
            ours = [buf[ptr[r] : ptr[r + 1]].tolist() for r in range(len(ptr) - 1)]
            nnz = ptr[-1]
            naive = select_blocks_naive(
                buf[:nnz].cpu(),
                plan.dense_indptr.cpu(),
                plan.dense_indices[:nnz].cpu(),
                plan.sel_indptr.cpu(),
                1,
                1,
            )
            sp = plan.sel_indptr.tolist()
            for r, (g, w) in enumerate(zip(got, want, strict=False)):
                if g != w:
                    bad += 1
                    ids = plan.dense_indices[ptr[r] : ptr[r + 1]].tolist()
                    nv = [ids.index(b) for b in naive[sp[r] : sp[r + 1]].tolist()]
                    print(f"warps={warps} layer={layer} row={r} got={g} want={w} naive(our scores)={nv}")
                    print("  ours", [round(x, 4) for x in ours[r]])
                    print("  ref ", [round(x, 4) for x in scores[r]])
        print(f"warps={warps}: {bad} rows differ")
