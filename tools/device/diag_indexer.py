"""GPU repro of the open fused-selection problem (results/gpu/2026-12-04-decode-step-bench-fused.md):
one eager decode step of the decode-core test scenario (``packages/vortex-sglang/tests/_testlib.py``) with the
selection apart (the default) and fused into the scoring kernel, at 2 and 4 warps. For every row whose selection
differs from the reference runtime's it prints our stored scores, the reference's, and what the plain-PyTorch
selection makes of OUR scores, which tells a scoring error from a selection error.

    VORTEX_MODELS=none bash tools/device/remote.sh py tools/device/diag_indexer.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def load_testlib():
    spec = importlib.util.spec_from_file_location("vortex_sgl_testlib", ROOT / "packages/vortex-sglang/tests/_testlib.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vortex_sgl_testlib"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor
    from vortex_torch.kernels.select import select_blocks_reference

    t = load_testlib()
    for fuse in (False, True):
        for warps in (2, 4):
            tmp = Path(tempfile.mkdtemp())
            sc = t.Scenario("torch", "triton", [9, 35, 70, 130], tmp, device="cuda")
            sc.core.executor = TritonExecutor(sc.prepared.traced, sc.layout, num_warps=warps, fuse_selection=fuse,
                                              cache_dir=str(tmp / "jit"))  # fmt: skip
            sc.prefill()
            buffers = sc.core.allocate_buffers(len(sc.rows))
            loc, seq_lens, rows = sc.next_inputs()
            plan = sc.core.plan(sc.pool.req_to_token, rows, seq_lens, buffers=buffers)
            inputs = sc.layer_inputs()
            ref = sc.reference_step(inputs)
            bad = 0
            for layer, (q, k, v) in enumerate(inputs):
                sc.pool.k[layer][loc] = k.cuda()
                sc.pool.v[layer][loc] = v.cuda()
                if layer not in sc.sparse_layers:
                    continue
                sc.core.update_cache(sc.fields(layer), loc)
                sc.core.decode_layer(q.cuda().reshape(-1, t.GROUP, t.DIM), sc.fields(layer), plan, None)
                torch.cuda.synchronize()
                _, want, scores, _ = ref[layer]
                got = t.positions_of(plan, plan.sel_indices)
                (buf,) = sc.core.indexer_plan.buffers.values()
                ptr, sp = plan.dense_indptr.tolist(), plan.sel_indptr.tolist()
                nnz = ptr[-1]
                ref_sel = select_blocks_reference(buf[:nnz].cpu(), plan.dense_indptr.cpu(), plan.dense_indices[:nnz].cpu(),
                                            plan.sel_indptr.cpu(), t.BOS, t.EOS)  # fmt: skip
                for r, (g, w) in enumerate(zip(got, want, strict=True)):
                    if g == w:
                        continue
                    bad += 1
                    ids = plan.dense_indices[ptr[r] : ptr[r + 1]].tolist()
                    mine = [ids.index(b) for b in ref_sel[sp[r] : sp[r + 1]].tolist()]
                    print(f"fuse={fuse} warps={warps} layer={layer} row={r}: got {g}, reference {w}, "
                          f"plain selection of our scores {mine}")  # fmt: skip
                    print("  our scores      ", [round(x, 4) for x in buf[ptr[r] : ptr[r + 1]].tolist()])
                    print("  reference scores", [round(x, 4) for x in scores[r]])
            print(f"fuse={fuse} warps={warps}: {bad} rows differ from the reference")


if __name__ == "__main__":
    main()
