"""What the HBM gives the access patterns of a sparse decode step (H200 questions of issue 8):

* a plain streaming read (Triton, one pass over 1 GiB), torch's ``copy_`` (read + write counted);
* a gather of 256-byte rows (one bf16 summary of D = 128 per block) at random row ids against sorted ids, as
  the indexer reads summaries of shuffled pages against contiguous ones;
* the same gather of 2 KiB rows (the summaries of all 8 KV heads of a page together).

    VORTEX_MODELS=none bash tools/device/remote.sh py tools/device/bw_probe.py
"""

from __future__ import annotations

from functools import partial

import torch
import triton
import triton.language as tl


@triton.jit
def _read_sum(x, out, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        acc += tl.load(x + i + tl.arange(0, BLOCK), mask=i + tl.arange(0, BLOCK) < n, other=0).to(tl.float32)
    tl.store(out + pid, tl.sum(acc))


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


def graph_us(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e3 / iters


def main() -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n = 1 << 29  # bf16 elements: 1 GiB
    x = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    t = graph_us(lambda: y.copy_(x))
    print(f"copy_ 1 GiB: {t:.0f} us, {2 * 2 * n / t / 1e6:.0f} GB/s read+write")
    for progs in (sms * 4, sms * 8, sms * 16):
        out = torch.empty(progs, dtype=torch.float32, device="cuda")
        for blk in (2048, 4096):
            for w in (4, 8):
                t = graph_us(launch(_read_sum, (progs,), x, out, n, BLOCK=blk, num_warps=w))
                print(
                    f"read 1 GiB: progs {progs} block {blk} warps {w}: {t:.0f} us, {2 * n / t / 1e6:.0f} GB/s"
                )
    nbytes = 134 << 20  # the summaries of 32k x 32 at block 16 (256 rows x 2048 blocks x 256 B)
    for row in (128, 1024):  # 256 B and 2 KiB rows
        rows = nbytes // (2 * row)
        s = x[: rows * row].view(rows, row)
        q = torch.randn(row, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(rows, dtype=torch.float32, device="cuda")
        for order in ("sorted", "random"):
            ids = (
                torch.arange(rows, device="cuda")
                if order == "sorted"
                else torch.randperm(rows, device="cuda")
            )
            ids = ids.to(torch.int32)
            t = graph_us(partial(torch.index_select, s, 0, ids))
            print(f"index_select {2 * row} B rows {order}: {t:.1f} us, {nbytes / t / 1e6:.0f} GB/s read")
            for bs in (32, 64, 128):
                for w in (2, 4, 8):
                    for progs in (sms * 8, sms * 16):
                        if bs * row > 16384:
                            continue
                        t = graph_us(
                            launch(_gather_dot, (progs,), s, ids, q, out, rows, ROW=row, BS=bs, num_warps=w)
                        )
                        print(f"gather_dot {2 * row} B rows {order} BS {bs} warps {w} progs {progs}: {t:.1f} us, "
                              f"{nbytes / t / 1e6:.0f} GB/s")  # fmt: skip


if __name__ == "__main__":
    main()
