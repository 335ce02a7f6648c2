"""Registers, spills and shared memory of Vortex's decode kernels on an H100/H200 (sm_90), without a GPU.

Each kernel is compiled through Triton's NVIDIA backend down to a cubin (ptxas) with the constexprs and warps
its launcher picks for a geometry (``kernel_constexprs`` / ``default_tile_tokens`` / ``select_tiling``), and
``cuobjdump`` reads the result. Triton's interpreter accepts a tile that the GPU cannot launch; this is what
catches it on a CPU: a kernel that asks for more shared memory than an SM has fails every launch, and a
kernel that spills registers to stack reads local memory in its inner loop.

usage: python tools/sm90_resources.py [--block-sizes 16 64 256] [--kinds gqa mla select] [--json PATH]

Prints one table row per kernel configuration and exits 1 when one needs more shared memory than sm_90 gives
a block (the row is marked); spills are reported, not judged (whether they cost time is a GPU measurement).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packages" / "vortex-ops" / "tests"))

#: (group size, head dim) of GQA models: Qwen3-8B / Llama-3-8B, Llama-3-70B, Gemma-2, a small-head model
GQA_GEOMETRIES = ((4, 128), (8, 128), (2, 256), (8, 64))
#: (query heads per rank, kv_lora_rank, qk_rope_head_dim): DeepSeek-V2-Lite (16 heads), V3 (128 heads)
MLA_GEOMETRIES = ((16, 512, 64), (128, 512, 64))
#: longest selected rows of the standalone top-k search, in blocks: 32k, 128k and 1M tokens at block 16
SELECT_ROWS = (2048, 8192, 65536)


def configs(kinds: list[str], block_sizes: list[int]) -> Iterator[dict[str, Any]]:
    """Every (kernel, geometry) to compile: name, kernel function, constexprs, warps, kv dtype."""
    import torch

    from vortex_torch.abs.layout import PoolLayout
    from vortex_torch.kernels.select import triton_kernel as sel
    from vortex_torch.kernels.sparse_decode import triton_kernel as gqa
    from vortex_torch.kernels.sparse_decode_mla import triton_kernel as mla

    launch = dict(STORE_LSE=True, MERGE=True, STORE_FINAL_LSE=False, FENCE=True, PDL=False)
    kvs = (("bf16", False), ("fp8e4nv", True))
    if "gqa" in kinds:
        for (g, d), bs, exact, (kv, fp8) in itertools.product(GQA_GEOMETRIES, block_sizes, (False, True), kvs):
            layout = PoolLayout(page_size=bs, block_size=bs, num_kv_heads=8)
            cx = gqa.kernel_constexprs(g, d, layout, torch.bfloat16, fp8, exact)
            yield dict(kernel="sparse_decode", geometry=f"G={g} D={d} BS={bs} {kv}{' exact' if exact else ''}",
                       fn=gqa._split_kernel, constexprs={**cx, **launch}, warps=4, kv=kv)  # fmt: skip
    if "mla" in kinds:
        for (h, rank, rope), bs, exact, (kv, fp8) in itertools.product(MLA_GEOMETRIES, block_sizes, (False, True), kvs):
            layout = PoolLayout(page_size=bs, block_size=bs, num_kv_heads=1)
            cx = mla.kernel_constexprs(h, rank, rope, layout, torch.bfloat16, fp8, exact)
            yield dict(kernel="sparse_mla_decode", geometry=f"H={h} BS={bs} {kv}{' exact' if exact else ''}",
                       fn=mla._mla_split_kernel, constexprs={**cx, **launch}, warps=mla.DEFAULT_NUM_WARPS, kv=kv)  # fmt: skip
    if "select" in kinds:
        for blocks, approx in itertools.product(SELECT_ROWS, (False, True)):
            block_n, single = sel.select_tiling(blocks)
            cx = dict(BLOCK_N=block_n, SINGLE_TILE=single, APPROX=approx, GATHER=False, PDL=False)
            yield dict(kernel="select_blocks", geometry=f"{blocks} blocks{' approx' if approx else ''}",
                       fn=sel._select_blocks_kernel, constexprs=cx, warps=sel._num_warps(block_n), kv="bf16")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[16, 64, 256], metavar="N",
                    help="Vortex block sizes (powers of two); default 16 64 256")  # fmt: skip
    ap.add_argument("--kinds", nargs="+", choices=("gqa", "mla", "select"), default=["gqa", "mla", "select"])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    bad = [b for b in args.block_sizes if b < 1 or b & (b - 1)]
    if bad:
        ap.error(f"--block-sizes: {bad[0]} is not a power of two")
    if os.environ.get("TRITON_INTERPRET"):
        ap.error("unset TRITON_INTERPRET: this compiles for the GPU, which the interpreter never does")

    from sm90_compile import SM90_MAX_SHARED, compile_sm90, resources

    rows: list[dict[str, Any]] = []
    print("| kernel | geometry | tile tokens | warps | registers | spill stack B | shared B | launches |")
    print("|---|---|---|---|---|---|---|---|")
    for c in configs(args.kinds, args.block_sizes):
        compiled = compile_sm90(c["fn"], kv=c["kv"], num_warps=c["warps"], **c["constexprs"])
        r = resources(compiled)
        row = {"kernel": c["kernel"], "geometry": c["geometry"], "tile_tokens": c["constexprs"]["BLOCK_N"],
               "warps": c["warps"], **r, "fits": r["shared"] <= SM90_MAX_SHARED}  # fmt: skip
        rows.append(row)
        print(f"| {row['kernel']} | {row['geometry']} | {row['tile_tokens']} | {row['warps']} | {r['registers']} | "
              f"{r['spill_stack']} | {r['shared']} | {'yes' if row['fits'] else 'NO: over ' + str(SM90_MAX_SHARED)} |",
              flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    over = [r for r in rows if not r["fits"]]
    for r in over:
        print(f"error: {r['kernel']} ({r['geometry']}) needs {r['shared']} bytes of shared memory, sm_90 gives a "
              f"block {SM90_MAX_SHARED}", file=sys.stderr)  # fmt: skip
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
