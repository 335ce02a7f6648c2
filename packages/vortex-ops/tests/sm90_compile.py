"""Compile vortex-ops' hand-written kernels for an H100/H200 (sm_90) on a CPU, through Triton's NVIDIA backend.

The tests run this in a subprocess without ``TRITON_INTERPRET`` (the interpreter accepts code the real
compiler rejects): ``python -c "import sys; sys.path.insert(0, TESTS_DIR); import sm90_compile; ..."``.
One geometry (:data:`CONSTEXPRS`) and one argument-typing rule (:func:`signature`) for every kernel;
:func:`resources` reads a compiled kernel's registers, spill stack and shared memory (``tools/sm90_resources.py``
reports them for launches as the entry points make them).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

#: the constexprs of the select, sparse-decode and sparse-MLA-decode kernels (those a kernel lacks are dropped)
CONSTEXPRS: dict[str, Any] = dict(
    G=4, D=128, PAGE=16, BS=16, H_KV=8, G_PAD=16, D_PAD=128, H=16, DV=512, DR=64, BLOCK_H=16, HB=1, DV_PAD=512,
    DR_PAD=64, STORE_LSE=True, DOT_PRECISION="tf32", PV_PRECISION="tf32", P_FP32=False,
    MERGE=True, STORE_FINAL_LSE=False, KV_FP8=False, FENCE=True, PDL=False, APPROX=False, LOW_BIT=16,
    SINGLE_TILE=True, BLOCK_N=128, GATHER=False,
)
#: K/V (latent) buffers: bf16, or the fp8 type given to :func:`signature`
KV_ARGS = ("k_ptr", "v_ptr", "lat_ptr")
#: other 16-bit tensors: queries, outputs, scores
BF16_ARGS = ("q_ptr", "o_ptr", "final_o_ptr", "score_ptr")


def signature(fn: Any, constexprs: dict[str, Any], kv: str = "bf16") -> dict[str, str]:
    """Triton types of ``fn``'s arguments: constexprs, bf16 (or ``kv``) tensors, int32 index tensors
    (indptr/indices/lengths/counters/selection output), fp32 other tensors and scales, int32 scalars."""
    sig: dict[str, str] = {}
    for a in fn.arg_names:
        if a in constexprs:
            sig[a] = "constexpr"
        elif a in KV_ARGS:
            sig[a] = "*" + kv
        elif a in BF16_ARGS:
            sig[a] = "*bf16"
        elif a.endswith("_ptr"):
            sig[a] = "*i32" if ("ind" in a or "len" in a or "counter" in a or a == "out_ptr") else "*fp32"
        elif a == "qk_scale":
            sig[a] = "fp32"
        elif a == "tol_bits":
            sig[a] = "i64"
        else:
            sig[a] = "i32"
    return sig


def compile_sm90(fn: Any, kv: str = "bf16", num_warps: int = 4, num_stages: int = 2, **overrides: Any) -> Any:
    """``fn`` compiled for sm_90 with :data:`CONSTEXPRS` updated by ``overrides``; its ``.asm["ptx"]`` is the PTX
    and ``.asm["cubin"]`` the ptxas output."""
    consts = {**CONSTEXPRS, **overrides}
    sig = signature(fn, consts, kv)
    cx = {a: v for a, v in consts.items() if a in sig}
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(ASTSource(fn, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32), options=options)


#: bytes of shared memory one block may use on sm_90 (227 KiB, the opt-in maximum Triton launches with)
SM90_MAX_SHARED = 232448


def resources(compiled: Any) -> dict[str, int]:
    """``{"registers", "spill_stack", "shared"}`` of a kernel compiled for sm_90 (``triton.compile``'s result,
    e.g. :func:`compile_sm90`'s): registers per thread and stack bytes per thread (spills) from ``cuobjdump
    --dump-resource-usage`` of its cubin, and the dynamic shared memory Triton launches it with (a launch fails
    above :data:`SM90_MAX_SHARED`)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True)
    m = re.search(r"REG:(\d+) STACK:(\d+)", out.stdout)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out.stdout[-500:]}")
    return {"registers": int(m.group(1)), "spill_stack": int(m.group(2)), "shared": int(compiled.metadata.shared)}
