"""Registers, spills and shared memory of Vortex's decode kernels on an H100/H200 (sm_90), without a GPU.

Triton's interpreter accepts a tile that the GPU cannot launch; this catches it on a CPU. A kernel that asks
for more shared memory than sm_90 gives a block fails every launch, and one that spills registers to stack
reads local memory in its inner loop.

Each kernel launch is captured from its public entry point (called on small CPU tensors of the geometry's
dtypes and strides; the launch is recorded instead of run) and compiled through Triton's own argument binder
for sm_90 (types, 16-byte alignment specialisation, constexprs, warps: what a launch on an H100/H200 compiles)
down to a cubin; ``cuobjdump`` reads the result. Compiling without the binder's alignment specialisation gives
other numbers (255 registers and spills instead of 128 registers for the GQA attention kernel).

usage: python tools/sm90_resources.py [--block-sizes 16 64 256] [--kinds gqa mla select] [--json PATH]
       python tools/sm90_resources.py --step gqa|mla [--ctx 32768] [--batch 16] [--budget 2048] [--flow NAME]
                                      [--json PATH]

``--step`` compiles what one decode step really launches instead: ``tools/bench/decode_step_bench.py``'s case
(Qwen3-8B or DeepSeek-V2-Lite geometry, the quick-start or contrib MLA flow) is built on the CPU with every
Triton launch captured instead of run (the per-step plan, then one sparse layer), and each captured launch is
compiled through Triton's own argument binder (types, alignment specialisation, constexprs, warps) for sm_90.
It also prints the layer's Triton launch count.

Prints one table row per kernel configuration and exits 1 when one needs more shared memory than sm_90 gives
a block (the row is marked); spills are reported, not judged (whether they cost time is a GPU measurement).
"""

from __future__ import annotations

import argparse
import contextlib
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


def matrix_launches(kinds: list[str], block_sizes: list[int]) -> Iterator[tuple[str, str, Any, tuple[Any, ...], dict[str, Any]]]:
    """``(kernel, geometry, fn, args, kwargs)``: the launch each public entry point makes for a geometry,
    captured from a call on small CPU tensors of the real dtypes and strides (so alignment and stride
    specialisation match a GPU launch): attention with a 2-way split (the in-launch merge compiled in)."""
    import torch

    from vortex_torch.kernels.select import triton_kernel as sel
    from vortex_torch.kernels.sparse_decode import triton_kernel as gqa
    from vortex_torch.kernels.sparse_decode_mla import triton_kernel as mla

    fp8 = torch.float8_e4m3fn
    one = torch.ones(1)
    ind = torch.zeros(4, dtype=torch.int32)
    indptr, last = torch.tensor([0, 4], dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    for kind in kinds:
        grid = (
            itertools.product(GQA_GEOMETRIES, block_sizes, (False, True), (torch.bfloat16, fp8)) if kind == "gqa"
            else itertools.product(MLA_GEOMETRIES, block_sizes, (False, True), (torch.bfloat16, fp8)) if kind == "mla"
            else itertools.product(SELECT_ROWS, (0.0, 0.1))
        )  # fmt: skip
        for item in grid:
            with captured_launches() as launches:
                if kind == "gqa":
                    (g, d), bs, exact, kv = item  # type: ignore[misc]
                    q = torch.empty(1, g, d, dtype=torch.bfloat16)
                    cache = torch.empty(4 * bs, 8, d, dtype=torch.bfloat16).to(kv)
                    scales = {"k_scale": one, "v_scale": one} if kv == fp8 else {}
                    gqa.launch(q, cache, cache, indptr, ind, last, 0.1, torch.empty_like(q), None, 2, page_size=bs,
                               block_size=bs, exact=exact, **scales)  # fmt: skip
                    label = f"G={g} D={d} BS={bs}"
                elif kind == "mla":
                    (h, rank, rope), bs, exact, kv = item  # type: ignore[misc]
                    q = torch.empty(1, h, rank + rope, dtype=torch.bfloat16)
                    latent = torch.empty(4 * bs, 1, rank + rope, dtype=torch.bfloat16).to(kv)
                    scales = {"k_scale": one, "v_scale": one} if kv == fp8 else {}
                    out = torch.empty(1, h, rank, dtype=torch.bfloat16)
                    mla.launch(q, latent, indptr, ind, last, 0.1, out, None, 2, page_size=bs, block_size=bs,
                               v_head_dim=rank, exact=exact, **scales)  # fmt: skip
                    label = f"H={h} BS={bs}"
                else:
                    blocks, ratio = item  # type: ignore[misc]
                    sel.select_blocks_triton(torch.empty(4), indptr, ind, torch.tensor([0, 2], dtype=torch.int32), 1,
                                             1, tolerate_ratio=ratio, out=torch.empty(2, dtype=torch.int32),
                                             max_blocks_per_row=blocks)  # fmt: skip
                    label, exact, kv = f"{blocks} blocks{' approx' if ratio else ''}", False, torch.bfloat16
            name = {"gqa": "sparse_decode", "mla": "sparse_mla_decode", "select": "select_blocks"}[kind]
            if kind != "select":
                label += f" {'fp8' if kv == fp8 else 'bf16'}{' exact' if exact else ''}"
            (fn, args, kwargs), = launches
            yield name, label, fn, args, kwargs


@contextlib.contextmanager
def captured_launches() -> Iterator[list[tuple[Any, tuple[Any, ...], dict[str, Any]]]]:
    """Every ``kernel[grid](*args, **kwargs)`` inside the block is recorded as ``(kernel, args, kwargs)``, not
    run; Vortex's entry points take their Triton path for CPU tensors (their "can this run" checks are
    switched off), so the launches are those a GPU step makes (grids aside: the split counts follow the CPU's)."""
    from triton.runtime.jit import JITFunction

    launches: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def record(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        launches.append((self, args, kwargs))

    saved_run = JITFunction.run
    patched: list[tuple[Any, str, Any]] = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("vortex_torch") or name == "decode_step_bench":
            for attr, stub in (("require_launchable", lambda *a, **k: None), ("use_triton", lambda t: True)):
                if hasattr(mod, attr):
                    patched.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, stub)
    JITFunction.run = record  # type: ignore[method-assign]
    try:
        yield launches
    finally:
        JITFunction.run = saved_run  # type: ignore[method-assign]
        for mod, attr, old in patched:
            setattr(mod, attr, old)


def compile_launch(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A captured launch compiled for sm_90 as Triton's launcher would compile it on an H100/H200 (its binder:
    argument types, 16-byte alignment specialisation, constexprs, options); ``FENCE`` (a CPU launch passes
    False, no GPU fence) is set True as on the GPU. Returns the kernel and its constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    kwargs = {**kwargs, **({"FENCE": True} if "FENCE" in fn.arg_names else {})}
    kwargs.pop("launch_pdl", None)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    names = {p.num: p.name for p in fn.params}
    return compiled, {names[path[0]]: v for path, v in constexprs.items() if len(path) == 1}


def step_launches(kind: str, ctx: int, batch: int, budget: int, flow: str | None) -> tuple[list[Any], list[Any]]:
    """The captured launches of ``decode_step_bench``'s ``kind`` case (``flow``: an installed flow's name, None
    for the bench's default): (the per-step plan's, one layer's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("decode_step_bench", REPO / "tools" / "bench" / "decode_step_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["decode_step_bench"] = bench
    spec.loader.exec_module(bench)
    # imported before the capture starts, so that their entry points' "can this run here" checks get switched
    import vortex_torch.engine.sgl.decode_core
    import vortex_torch.engine.sgl.mla_core  # noqa: F401

    with captured_launches() as launches:
        cls = bench.MLACase if kind == "mla" else bench.Case
        kw = {} if flow is None else {"flow": (None, flow)}
        case = cls(ctx, batch, budget, 1, device="cpu", **kw)
        n0 = len(launches)
        case.plan_step()
        n1 = len(launches)
        case.layer(0)
    return launches[n0:n1], launches[n1:]


#: constexprs shown for a captured launch (``--step``): the tiling and the geometry
SHOWN = ("G", "D", "H", "DV", "BS", "BS0", "BLOCK_N", "BLOCK_H", "SINGLE_TILE", "CACHE", "MERGE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[16, 64, 256], metavar="N",
                    help="Vortex block sizes (powers of two); default 16 64 256")  # fmt: skip
    ap.add_argument("--kinds", nargs="+", choices=("gqa", "mla", "select"), default=["gqa", "mla", "select"])
    ap.add_argument("--step", choices=("gqa", "mla"), help="compile one decode step's real launches instead")
    ap.add_argument("--ctx", type=int, default=32768, help="--step: tokens per request (default 32768)")
    ap.add_argument("--batch", type=int, default=16, help="--step: requests (default 16)")
    ap.add_argument("--budget", type=int, default=2048, help="--step: tokens attended per row (default 2048)")
    ap.add_argument("--flow", help="--step: an installed flow's registered name (default: the quick-start flow; "
                    "mla: rope_aware_block_sparse_mla)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    bad = [b for b in args.block_sizes if b < 1 or b & (b - 1)]
    if bad:
        ap.error(f"--block-sizes: {bad[0]} is not a power of two")
    for flag, value, least in (("--ctx", args.ctx, 256), ("--batch", args.batch, 1), ("--budget", args.budget, 64)):
        if value < least:
            ap.error(f"{flag}: {value} is below {least}")
    if os.environ.get("TRITON_INTERPRET"):
        ap.error("unset TRITON_INTERPRET: this compiles for the GPU, which the interpreter never does")

    from sm90_compile import SM90_MAX_SHARED, resources

    rows: list[dict[str, Any]] = []

    def report(kernel: str, geometry: str, compiled: Any, block_n: Any) -> None:
        r = resources(compiled)
        row = {"kernel": kernel, "geometry": geometry, "block_n": block_n, "warps": compiled.metadata.num_warps,
               **r, "fits": r["shared"] <= SM90_MAX_SHARED}  # fmt: skip
        rows.append(row)
        fits = "yes" if row["fits"] else f"NO: over {SM90_MAX_SHARED}"
        print(f"| {kernel} | {geometry} | {block_n} | {row['warps']} | {r['registers']} | {r['spill_stack']} | "
              f"{r['shared']} | {fits} |", flush=True)  # fmt: skip

    header = "| kernel | geometry | BLOCK_N | warps | registers | spill stack B | shared B | launches |\n|" + "---|" * 8
    if args.step:
        plan, layer = step_launches(args.step, args.ctx, args.batch, args.budget, args.flow)
        print(f"{args.step} decode step ({args.flow or 'default flow'}), {args.ctx} x {args.batch}, budget "
              f"{args.budget}: {len(plan)} Triton "
              f"launch(es) per step (the plan), {len(layer)} per sparse layer\n")  # fmt: skip
        print(header)
        for stage, launches in (("plan", plan), ("layer", layer)):
            for fn, a, kw in launches:
                compiled, cx = compile_launch(fn, a, kw)
                shown = " ".join(f"{k}={cx[k]}" for k in SHOWN if k in cx)
                report(f"{stage}: {fn.__name__}", shown, compiled, cx.get("BLOCK_N", "-"))
    else:
        print(header)
        for kernel, geometry, fn, a, kw in matrix_launches(args.kinds, args.block_sizes):
            compiled, cx = compile_launch(fn, a, kw)
            report(kernel, geometry, compiled, cx.get("BLOCK_N", "-"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    over = [r for r in rows if not r["fits"]]
    for r in over:
        print(f"error: {r['kernel']} ({r['geometry']}) needs {r['shared']} bytes of shared memory, sm_90 gives a "
              f"block {SM90_MAX_SHARED}", file=sys.stderr)  # fmt: skip
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
