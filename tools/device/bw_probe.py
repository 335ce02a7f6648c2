"""What the HBM gives the access patterns of a sparse decode step (H200 questions of issue 8):

* torch's ``copy_`` (read + write counted) and a streaming Triton read, as ``decode_step_bench`` measures them
  for its floor (its functions, not copies of them);
* a gather of 256-byte rows (one bf16 summary of D = 128 per block) at random row ids against sorted ids, as
  the indexer reads summaries of shuffled pages against contiguous ones;
* the same gather of 2 KiB rows (the summaries of all 8 KV heads of a page together).

    VORTEX_MODELS=none bash tools/device/remote.sh py tools/device/bw_probe.py
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import decode_step_bench as bench  # tools/bench is not a package: found through sys.path


@triton.jit
def _gather_dot(x, ids, q, out, n, ROW: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, ROW)
    qv = tl.load(q + cols).to(tl.float32)
    for c in range(pid * BS, n, tl.num_programs(0) * BS):
        p = c + tl.arange(0, BS)
        r = tl.load(ids + p, mask=p < n, other=0).to(tl.int64)
        v = tl.load(x + r[:, None] * ROW + cols[None, :], mask=(p < n)[:, None], other=0).to(tl.float32)
        tl.store(out + p, tl.sum(v * qv[None, :], axis=1), mask=p < n)


def launch(kernel, grid: tuple[int], *args, **kw):
    """A zero-argument call of ``kernel[grid](*args, **kw)`` (binds the loop's values now)."""
    return lambda: kernel[grid](*args, **kw)


def main() -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"copy_ 1 GiB: {bench.copy_bandwidth_gbs():.0f} GB/s read + write ({bench.COPY_BANDWIDTH})")
    print(f"streaming read 1 GiB: {bench.read_bandwidth_gbs():.0f} GB/s")
    nbytes = 134 << 20  # the summaries of 32k x 32 at block 16 (256 rows x 2048 blocks x 256 B)
    x = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    for row in (128, 1024):  # 256 B and 2 KiB rows
        rows = nbytes // (2 * row)
        s = x[: rows * row].view(rows, row)
        q = torch.randn(row, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(rows, dtype=torch.float32, device="cuda")
        for order in ("sorted", "random"):
            ids = torch.arange(rows, device="cuda") if order == "sorted" else torch.randperm(rows, device="cuda")
            ids = ids.to(torch.int32)
            t = bench.graph_us([partial(torch.index_select, s, 0, ids)])
            print(f"index_select {2 * row} B rows {order}: {t:.1f} us, {nbytes / t / 1e3:.0f} GB/s read")
            for bs in (4096 // row, 8192 // row, 16384 // row):  # 8-32 KiB a tile: 32-128 rows of 256 B, 4-16 of 2 KiB
                for w in (2, 4, 8):
                    for progs in (sms * 8, sms * 16):
                        t = bench.graph_us([launch(_gather_dot, (progs,), s, ids, q, out, rows, ROW=row, BS=bs,
                                                   num_warps=w)])  # fmt: skip
                        print(f"gather_dot {2 * row} B rows {order} BS {bs} warps {w} progs {progs}: {t:.1f} us, "
                              f"{nbytes / t / 1e3:.0f} GB/s")  # fmt: skip


if __name__ == "__main__":
    main()
