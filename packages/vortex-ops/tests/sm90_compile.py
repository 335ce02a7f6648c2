"""Compile vortex-ops' hand-written kernels for an H100/H200 (sm_90) on a CPU, through Triton's NVIDIA backend.

The tests run this in a subprocess without ``TRITON_INTERPRET`` (the interpreter accepts code the real
compiler rejects): ``python -c "import sys; sys.path.insert(0, TESTS_DIR); import sm90_compile; ..."``.
One geometry (:data:`CONSTEXPRS`) and one argument-typing rule (:func:`signature`) for every kernel.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

#: the constexprs of the select, sparse-decode and sparse-MLA-decode kernels (those a kernel lacks are dropped)
CONSTEXPRS: dict[str, Any] = dict(
    G=4, D=128, PAGE=16, BS=16, H_KV=8, G_PAD=16, D_PAD=128, H=16, DV=512, DR=64, BLOCK_H=16, HB=1, DV_PAD=512,
    DR_PAD=64, BLOCKS_PER_ITER=4, STORE_LSE=True, DOT_PRECISION="tf32", PV_PRECISION="tf32", P_FP32=False,
    MERGE=True, STORE_FINAL_LSE=False, KV_FP8=False, FENCE=True, PDL=False, APPROX=False, LOW_BIT=16,
    SINGLE_TILE=True, BLOCK_N=256, GATHER=False, RADIX_BITS=4,
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


def compile_sm90(fn: Any, kv: str = "bf16", **overrides: Any) -> Any:
    """``fn`` compiled for sm_90 with :data:`CONSTEXPRS` updated by ``overrides``; its ``.asm["ptx"]`` is the PTX."""
    consts = {**CONSTEXPRS, **overrides}
    sig = signature(fn, consts, kv)
    cx = {a: v for a, v in consts.items() if a in sig}
    return triton.compile(ASTSource(fn, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32))
