"""Triton sparse paged decode attention (split-KV flash-decoding over a CSR block selection).

Semantics: ``reference.sparse_decode_attention_reference``. Decode attention is memory bound, so the kernels are
built to stream exactly the selected KV bytes once, with every program busy:

* K/V are read in place from SGLang's ``[num_slots, H_kv, D]`` buffers: each block id is decomposed into
  (page, head, sub-block) (design §2; ``PAGE``, ``BS`` and ``H_KV`` are constexprs, so the divisions are
  shifts or multiply-highs) and every token of the tile is one contiguous row of ``D`` elements at
  ``slot * stride_slot + head * stride_head`` (``H_kv * D`` and ``D`` for a contiguous buffer; int64 math).

* ``_split_kernel``, grid ``(R, S)``: program ``(r, s)`` takes the ``s``-th contiguous chunk of row ``r``'s
  selected blocks (``.._split_kv.split_token_range``) and runs an fp32 online softmax over it in tiles of
  ``BLOCK_N`` tokens (several whole blocks or part of one: the tile never grows with the block size) for all
  ``G`` queries of the row at once, as one ``[G_PAD, D_PAD]`` tile (``G_PAD >= 16`` so both products are
  ``tl.dot``s on tensor cores; the padding is free because the kernel waits on memory, not on math).
  ``p @ v`` keeps ``p`` in fp32 (tf32x3), so the output is the exact attention rounded once (up to fp32
  summation order). Chunks are cut per row inside the kernel, so a short row in a ragged batch still spreads
  over all ``S`` programs and no host knowledge of the lengths is needed. With ``S == 1`` the program writes
  the final ``o``/``lse`` directly.
* split merge, same launch: each program writes its partial ``(o, lse)`` to the caller's workspace and counts
  itself in on a per-row counter; the row's last program merges the ``S`` partials by their log-sum-exps
  (``_merge_row``) and re-arms the counter. One launch per layer whatever ``S`` is.
* ``exact=True`` keeps ``p`` fp32 through ``p @ v``; ``exact=False`` rounds it to the KV dtype first (one
  16-bit MMA, FlashAttention's and FlashInfer's rounding).
* fp8 K/V (``KV_FP8``, a constexpr branch: the 16-bit kernel is unchanged): tiles are widened to ``q``'s dtype
  right after the load (exact: every e4m3/e5m2 value is a bf16/fp16 value), ``k_scale`` is folded into the
  softmax scale and ``v_scale`` into the output, both read from ``[1]`` fp32 tensors (CUDA-graph safe). With
  ``exact=False`` the softmax weights are rounded to ``q``'s dtype, not to fp8.

Nothing reads device memory on the host when ``max_blocks_per_row`` is given (CUDA-graph capturable).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, overload

import torch
import triton
import triton.language as tl

from vortex_torch.abs.layout import PoolLayout

from .._interpreter_compat import require_launchable
from .._layout import block_first_slot, block_head
from .._split_kv import (
    MIN_TILE_TOKENS,
    SplitWorkspace,
    check_tile_tokens,
    device_scales,
    fp8_scale_args,
    log2_scale,
    max_row_blocks,
    next_pow2,
    precision_meta,
    split_count,
    split_token_range,
    step_tokens,
)
from .._sync import dependent_launch_prologue, pdl_launch_options, release_fence
from ..fp8 import Scale
from .reference import check_inputs

LN2 = tl.constexpr(0.6931471805599453)  # a global a kernel reads must be a tl.constexpr on the GPU

_TILE_ELEMS = 16384  # K (and V) tile of one loop step: BLOCK_N x D_PAD elements, 128 x 128 at D = 128
_TILE_ELEMS_EXACT = 8192  # the same with fp32 p (tf32x3 p @ v): 64 x 128 at D = 128


@triton.jit
def attend_split(
    q_ptr, k_ptr, v_ptr, indices_ptr, row, row_start, num_blocks, last_len, split, num_splits, o_ptr, lse_ptr,
    k_scale_ptr, v_scale_ptr, qk_scale, stride_qr, stride_qg, stride_qd, stride_ks, stride_kh, stride_vs, stride_vh,
    stride_or, stride_os, stride_og, stride_od, stride_lr, stride_ls, stride_lg,
    G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BS: tl.constexpr, H_KV: tl.constexpr,
    G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, PV_PRECISION: tl.constexpr, P_FP32: tl.constexpr, KV_FP8: tl.constexpr,
):  # fmt: skip
    """Split ``split`` of ``num_splits`` of row ``row``: the online softmax over its chunk of the row's selected
    tokens (``num_blocks`` block ids at ``indices_ptr + row_start``, the last holding ``last_len`` tokens),
    written to ``o_ptr``/``lse_ptr`` at ``(row, split)`` (the strides and constexprs of :func:`_split_kernel`).
    A device function, so that a fused indexer's last program can attend its row after selecting it
    (``vortex_torch.flow.compiler``; there with one split, writing the final output)."""
    # This split's tokens [lo, hi) of the row's selection; an empty chunk writes (o = 0, lse = -inf).
    lo, hi = split_token_range(num_blocks, last_len, split, num_splits, BS, BLOCK_N)

    offs_g = tl.arange(0, G_PAD)  # [G_PAD]
    offs_d = tl.arange(0, D_PAD)  # [D_PAD]
    mask_g = offs_g < G
    mask_d = offs_d < D

    # Padded query rows / dims are zero, so they add nothing to the dot products.
    q_ptrs = q_ptr + row.to(tl.int64) * stride_qr + offs_g[:, None] * stride_qg + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=mask_g[:, None] & mask_d[None, :], other=0.0)  # [G_PAD, D_PAD]
    if KV_FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr)  # s = (q . stored_k) * sm_scale * k_scale

    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)  # running max, base-2 units
    l_i = tl.zeros([G_PAD], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)  # running sum of p @ v

    for step in range(lo, hi, BLOCK_N):
        # lane i reads token step + i of the row's selection: block blk, token tok_in_blk of it. A step's first
        # token is always valid (split_token_range), so m_new is finite.
        blk, tok_in_blk, valid = step_tokens(step, hi, BS, BLOCK_N)  # [BLOCK_N] each
        block_id = tl.load(indices_ptr + row_start + blk, mask=valid, other=0).to(tl.int64)  # [BLOCK_N]
        # design §2: block -> (page, head, sub-block) -> token slot of every lane; int64 throughout, as a
        # layer's buffer can exceed 2^31 elements (constexpr divisors: shifts / multiply-highs, no division)
        head = block_head(block_id, PAGE, BS, H_KV)  # [BLOCK_N]
        slot = block_first_slot(block_id, PAGE, BS, H_KV) + tok_in_blk  # [BLOCK_N]
        kv_mask = valid[:, None] & mask_d[None, :]  # [BLOCK_N, D_PAD]

        k_rows = k_ptr + (slot * stride_ks + head * stride_kh)  # [BLOCK_N] int64: each token's first element
        k = tl.load(k_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D_PAD]
        if KV_FP8:
            k = k.to(q.dtype)  # exact widening; the scale is in qk_scale
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [G_PAD, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [G_PAD]
        alpha = tl.exp2(m_i - m_new)  # [G_PAD], 0 on the first step (m_i = -inf)
        p = tl.exp2(s - m_new[:, None])  # [G_PAD, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)

        v_rows = v_ptr + (slot * stride_vs + head * stride_vh)  # [BLOCK_N]
        v = tl.load(v_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D_PAD]
        if KV_FP8:
            v = v.to(q.dtype)  # exact widening; v_scale is applied to the output
        if P_FP32:
            # p stays fp32 (v widens exactly): rounding p to bf16, as flash attention does, moves the fp32
            # result by ~2^-9 and flips the final bf16 rounding of some outputs away from the exact result.
            # tf32x3 keeps the product on tensor cores at ~fp32 accuracy.
            pv = tl.dot(p, v.to(tl.float32), input_precision=PV_PRECISION)
        else:
            pv = tl.dot(p.to(v.dtype), v)  # one 16-bit MMA, fp32 accumulate: FlashAttention/FlashInfer's rounding
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    empty = l_i == 0.0  # [G_PAD] empty chunk (or empty row)
    if KV_FP8:
        acc = acc * tl.load(v_scale_ptr)  # o = sum p * (stored_v * v_scale) / l
    o = acc / tl.where(empty, 1.0, l_i)[:, None]  # [G_PAD, D_PAD], 0 where empty
    o_row = o_ptr + row.to(tl.int64) * stride_or + split * stride_os
    o_ptrs = o_row + offs_g[:, None] * stride_og + offs_d[None, :] * stride_od  # [G_PAD, D_PAD]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * LN2)  # [G_PAD]
        lse_row = lse_ptr + row.to(tl.int64) * stride_lr + split * stride_ls
        tl.store(lse_row + offs_g * stride_lg, lse, mask=mask_g)


@triton.jit
def _split_kernel(
    q_ptr,  # [R, G, D]
    k_ptr,  # [num_slots, H_kv, D], last dim contiguous
    v_ptr,  # [num_slots, H_kv, D], last dim contiguous
    indptr_ptr,  # [R + 1]
    indices_ptr,  # [nnz]
    last_len_ptr,  # [R]
    o_ptr,  # [R, S, G, D]: partial outputs (S > 1, fp32) or the final output (S == 1, q.dtype)
    lse_ptr,  # [R, S, G] fp32, natural log
    final_o_ptr,  # [R, G, D] q.dtype: the merged output (MERGE only)
    final_lse_ptr,  # [R, G] fp32 (MERGE and STORE_FINAL_LSE only)
    counter_ptr,  # [R] int32, all 0 between launches: splits of a row done so far (MERGE only)
    k_scale_ptr,  # [1] fp32 (KV_FP8 only): key = stored * k_scale
    v_scale_ptr,  # [1] fp32 (KV_FP8 only): value = stored * v_scale
    qk_scale,  # sm_scale * log2(e)
    num_splits,
    stride_qr, stride_qg, stride_qd,
    stride_ks, stride_kh,  # slot and head strides of k (elements); d stride is 1
    stride_vs, stride_vh,
    stride_or, stride_os, stride_og, stride_od,
    stride_lr, stride_ls, stride_lg,
    stride_fr, stride_fg, stride_fd,  # final_o
    stride_flr, stride_flg,  # final_lse
    G: tl.constexpr,
    D: tl.constexpr,
    PAGE: tl.constexpr,  # page_size (token slots per page)
    BS: tl.constexpr,  # block_size, divides PAGE
    H_KV: tl.constexpr,  # KV heads of the pool
    G_PAD: tl.constexpr,  # next_pow2(G), at least 16 (tl.dot's minimum M)
    D_PAD: tl.constexpr,  # next_pow2(D), at least 16
    BLOCK_N: tl.constexpr,  # tokens per loop step: a power of two >= 16 (several whole blocks or part of one)
    STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no silent tf32), ignored for 16-bit
    PV_PRECISION: tl.constexpr,  # p @ v in fp32: "ieee" for fp32 inputs, else "tf32x3" (exact v, ~fp32 p)
    P_FP32: tl.constexpr,  # keep p fp32 through p @ v (exact); False: round p to v's dtype (flash attention)
    MERGE: tl.constexpr,  # the row's last split to finish merges all splits (one launch in all)
    FENCE: tl.constexpr,  # a per-thread gpu fence before the hand-off (False in the interpreter)
    STORE_FINAL_LSE: tl.constexpr,
    KV_FP8: tl.constexpr,  # K/V are fp8: widen each tile to q's dtype, apply k_scale / v_scale
    PDL: tl.constexpr = False,  # launched with programmatic dependent launch (wait for the previous kernel)
):
    dependent_launch_prologue(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)

    row_start = tl.load(indptr_ptr + row).to(tl.int32)
    num_blocks = tl.load(indptr_ptr + row + 1).to(tl.int32) - row_start
    last_len = tl.load(last_len_ptr + row).to(tl.int32)
    attend_split(
        q_ptr, k_ptr, v_ptr, indices_ptr, row, row_start, num_blocks, last_len, split, num_splits, o_ptr, lse_ptr,
        k_scale_ptr, v_scale_ptr, qk_scale, stride_qr, stride_qg, stride_qd, stride_ks, stride_kh, stride_vs,
        stride_vh, stride_or, stride_os, stride_og, stride_od, stride_lr, stride_ls, stride_lg,
        G, D, PAGE, BS, H_KV, G_PAD, D_PAD, BLOCK_N, STORE_LSE, DOT_PRECISION, PV_PRECISION, P_FP32, KV_FP8,
    )  # fmt: skip
    if MERGE:
        # Split-KV merge without a second launch: every program of the row counts itself in; the last one
        # (its acquire sees every earlier release, CUTLASS's semaphore pattern: barrier, then one gpu-scope
        # acq_rel atomic) merges the partials, read through L2 (.cg) since other SMs wrote them, and re-arms
        # the counter for the next launch (stream order makes the reset visible to it; CUDA graphs replay it).
        release_fence(FENCE)
        tl.debug_barrier()
        done = tl.atomic_add(counter_ptr + row, 1, sem="acq_rel", scope="gpu")
        if done == num_splits - 1:
            _merge_row(o_ptr, lse_ptr, final_o_ptr, final_lse_ptr, row.to(tl.int64), num_splits,
                       stride_or, stride_os, stride_og, stride_od, stride_lr, stride_ls, stride_lg,
                       stride_fr, stride_fg, stride_fd, stride_flr, stride_flg,
                       G, D, G_PAD, D_PAD, STORE_FINAL_LSE)  # fmt: skip
            tl.atomic_xchg(counter_ptr + row, 0, sem="relaxed", scope="gpu")


@triton.jit
def _merge_row(
    mid_o_ptr, mid_lse_ptr, o_ptr, lse_ptr, row, num_splits,
    stride_mr, stride_ms, stride_mg, stride_md, stride_nr, stride_ns, stride_ng,
    stride_or, stride_og, stride_od, stride_lr, stride_lg,
    G: tl.constexpr, D: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr, STORE_LSE: tl.constexpr,
):  # fmt: skip
    """Merge row ``row``'s ``num_splits`` partial results by their log-sum-exps (online, one split at a time,
    so registers hold one ``[G_PAD, D_PAD]`` tile whatever the split count)."""
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_g < G)[:, None] & (offs_d < D)[None, :]
    m = tl.full([G_PAD], float("-inf"), dtype=tl.float32)  # running max lse
    w_sum = tl.zeros([G_PAD], dtype=tl.float32)  # running sum of exp(lse_s - m)
    acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
    for s in range(0, num_splits):
        lse_s = tl.load(mid_lse_ptr + row * stride_nr + s * stride_ns + offs_g * stride_ng, mask=offs_g < G,
                        other=float("-inf"), cache_modifier=".cg")  # [G_PAD]
        o_s = tl.load(mid_o_ptr + row * stride_mr + s * stride_ms + offs_g[:, None] * stride_mg
                      + offs_d[None, :] * stride_md, mask=mask, other=0.0, cache_modifier=".cg")  # [G_PAD, D_PAD]
        m_new = tl.maximum(m, lse_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # every split so far empty: weights stay 0
        scale = tl.exp(m - m_safe)  # 0 while m = -inf
        w = tl.exp(lse_s - m_safe)  # 0 for an empty split
        w_sum = w_sum * scale + w
        acc = acc * scale[:, None] + w[:, None] * o_s
        m = m_new
    empty = w_sum == 0.0
    o = acc / tl.where(empty, 1.0, w_sum)[:, None]
    tl.store(o_ptr + row * stride_or + offs_g[:, None] * stride_og + offs_d[None, :] * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=mask)  # fmt: skip
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, w_sum)))
        tl.store(lse_ptr + row * stride_lr + offs_g * stride_lg, lse, mask=offs_g < G)


def default_tile_tokens(head_dim: int, exact: bool = False) -> int:
    """Tokens per loop step of a program (the ``BLOCK_N`` constexpr): 16 to 128 (>= 16 for tl.dot, fewer at
    large D to bound registers), whatever the block size. At D = 128 on an H200
    (results/gpu/2026-12-04-decode-step-bench.md, 32k x 32, budget 2048): 128 for the fast path (69.8 us
    against 79.6 us with 64), 64 for ``exact`` (fp32 p: 122.8 us with 64, 198.4 us with 128)."""
    elems = _TILE_ELEMS_EXACT if exact else _TILE_ELEMS
    return min(128, max(MIN_TILE_TOKENS, elems // next_pow2(head_dim, 16)))


def default_num_splits(
    num_rows: int,
    max_blocks_per_row: int,
    block_size: int,
    head_dim: int,
    device: torch.device,
    exact: bool = False,
) -> int:
    """Splits per row: enough ``(row, split)`` programs to fill the GPU, but chunks of >= 2 loop steps.

    Depends on shapes and the device only, so a fixed ``max_blocks_per_row`` gives a fixed launch config
    (:func:`.._split_kv.split_count` with one program per row and split).
    """
    return split_count(num_rows, max_blocks_per_row, block_size, default_tile_tokens(head_dim, exact), device)


class SparseDecodeWorkspace(SplitWorkspace):
    """Caller-owned split scratch (:class:`.._split_kv.SplitWorkspace`): ``mid_o [max_rows, max_splits, G, D]
    fp32``, ``mid_lse [max_rows, max_splits, G] fp32`` and ``counter [max_rows] int32`` (0 between launches)."""

    DIMS: ClassVar[str] = "(rows, splits, G, D)"

    @classmethod
    def allocate(
        cls, max_rows: int, max_splits: int, group: int, head_dim: int, device: torch.device | str
    ) -> SparseDecodeWorkspace:
        return cls._new(max_rows, max_splits, group, head_dim, device, counters_per_row=1)


#: the constexprs :func:`kernel_constexprs` sets: :func:`attend_split`'s besides ``STORE_LSE`` (the caller's).
#: A fused indexer (``vortex_torch.flow.compiler``) passes them through under these names.
ATTEND_CONSTEXPRS = (
    "G", "D", "PAGE", "BS", "H_KV", "G_PAD", "D_PAD", "BLOCK_N", "DOT_PRECISION", "PV_PRECISION", "P_FP32",
    "KV_FP8",
)  # fmt: skip


def check_kv_rows(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """The kernels address a token's head row as ``slot * stride(0) + head * stride(1)`` plus a contiguous D."""
    if k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError(
            "k_cache/v_cache need a contiguous last (D) dim, "
            f"got strides {k_cache.stride()} and {v_cache.stride()}"
        )


def kernel_constexprs(
    group: int,
    head_dim: int,
    layout: PoolLayout,
    q_dtype: torch.dtype,
    kv_fp8: bool,
    exact: bool,
    tile_tokens: int | None = None,
) -> dict[str, object]:
    """``_split_kernel``'s constexprs that follow from the shapes, dtypes and tiling (the others, ``STORE_LSE``,
    ``MERGE``, ``STORE_FINAL_LSE``, ``FENCE`` and ``PDL``, are the launch's)."""
    return dict(
        G=group, D=head_dim, PAGE=layout.page_size, BS=layout.block_size, H_KV=layout.num_kv_heads, KV_FP8=kv_fp8,
        G_PAD=next_pow2(group, 16), D_PAD=next_pow2(head_dim, 16),
        BLOCK_N=check_tile_tokens(tile_tokens) if tile_tokens is not None else default_tile_tokens(head_dim, exact),
        **precision_meta(q_dtype, exact),
    )  # fmt: skip


def launch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    sm_scale: float,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    num_splits: int,
    *,
    page_size: int,
    block_size: int,
    workspace: SparseDecodeWorkspace | None = None,
    exact: bool = True,
    tile_tokens: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    enable_pdl: bool = False,
) -> None:
    """One launch of the split kernel with an explicit split count (``num_splits >= 1``); writes ``out``/``lse``.

    Shapes: ``q, out [R, G, D]``; ``k_cache, v_cache [num_slots, H_kv, D]`` (last dim contiguous);
    ``indptr [R + 1]``; ``indices [nnz]``; ``last_block_len [R]``; ``lse [R, G]`` fp32 or None. Correct for
    any ``num_splits``: the count trades parallelism against merge work. With ``num_splits > 1`` the partials go
    through ``workspace`` (allocated here when None) and the row's last split merges them in the same launch.
    ``exact``: keep softmax weights fp32 in ``p @ v`` (tf32x3); False rounds them to the KV dtype (one MMA).
    ``tile_tokens``/``num_warps``/``num_stages``: tokens per loop step (a power of two >= 16, default
    :func:`default_tile_tokens`), warps and pipeline stages of a program.
    ``k_scale``/``v_scale``: ``[1]`` fp32 device tensors, required for fp8 K/V (:func:`..fp8.scale_tensor`).
    ``enable_pdl``: launch with Hopper programmatic dependent launch (:func:`.._sync.pdl_launch_options`).
    """
    num_rows, group, head_dim = q.shape
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=k_cache.shape[1])
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    check_kv_rows(k_cache, v_cache)
    kv_fp8, k_scale_arg, v_scale_arg = fp8_scale_args(k_cache.dtype, k_scale, v_scale, indptr, "fp8 K/V")
    meta = dict(
        **kernel_constexprs(group, head_dim, layout, q.dtype, kv_fp8, exact, tile_tokens), FENCE=q.is_cuda,
        PDL=enable_pdl, **pdl_launch_options(enable_pdl, q.device, "sparse_decode_attention"),
    )
    qk_scale = log2_scale(sm_scale)
    kv_strides = (k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1))
    lse_strides = (lse.stride(0), lse.stride(1)) if lse is not None else (0, 0)
    if num_splits == 1:
        # Single pass: the split kernel writes the final output ([R, 1, G, D] view of out) itself.
        lse_out = lse if lse is not None else out  # dummy pointer when STORE_LSE is False
        _split_kernel[(num_rows, 1)](
            q, k_cache, v_cache, indptr, indices, last_block_len, out, lse_out, out, lse_out, indptr,
            k_scale_arg, v_scale_arg, qk_scale, 1, *q.stride(), *kv_strides, out.stride(0), 0, out.stride(1), out.stride(2),
            lse_strides[0], 0, lse_strides[1], 0, 0, 0, 0, 0,
            STORE_LSE=lse is not None, MERGE=False, STORE_FINAL_LSE=False, num_warps=num_warps,
            num_stages=num_stages, **meta,
        )  # fmt: skip
        return
    ws = workspace if workspace is not None else SparseDecodeWorkspace.allocate(
        num_rows, num_splits, group, head_dim, q.device
    )
    ws.require(num_rows, num_splits, group, head_dim)
    mid_o, mid_lse = ws.mid_o, ws.mid_lse
    lse_out = lse if lse is not None else mid_lse  # dummy pointer when STORE_FINAL_LSE is False
    _split_kernel[(num_rows, num_splits)](
        q, k_cache, v_cache, indptr, indices, last_block_len, mid_o, mid_lse, out, lse_out, ws.counter,
        k_scale_arg, v_scale_arg, qk_scale, num_splits, *q.stride(), *kv_strides, *mid_o.stride(), *mid_lse.stride(), *out.stride(),
        *lse_strides,
        STORE_LSE=True, MERGE=True, STORE_FINAL_LSE=lse is not None, num_warps=num_warps,
        num_stages=num_stages, **meta,
    )  # fmt: skip


@overload
def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    sm_scale: float | None = ...,
    out: torch.Tensor | None = ...,
    max_blocks_per_row: int | None = ...,
    return_lse: Literal[False] = ...,
    workspace: SparseDecodeWorkspace | None = ...,
    exact: bool = ...,
    num_splits: int | None = ...,
    k_scale: Scale = ...,
    v_scale: Scale = ...,
    enable_pdl: bool = ...,
) -> torch.Tensor: ...


@overload
def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    sm_scale: float | None = ...,
    out: torch.Tensor | None = ...,
    max_blocks_per_row: int | None = ...,
    return_lse: Literal[True],
    workspace: SparseDecodeWorkspace | None = ...,
    exact: bool = ...,
    num_splits: int | None = ...,
    k_scale: Scale = ...,
    v_scale: Scale = ...,
    enable_pdl: bool = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    max_blocks_per_row: int | None = None,
    return_lse: bool = False,
    workspace: SparseDecodeWorkspace | None = None,
    exact: bool = True,
    num_splits: int | None = None,
    k_scale: Scale = None,
    v_scale: Scale = None,
    enable_pdl: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse paged decode attention (Triton, one launch); same contract as ``sparse_decode_attention_reference``.

    Args:
        q: ``[R, G, D]`` queries (bf16/fp16/fp32), ``G <= 16`` recommended (any G works, padded to pow2).
        k_cache: ``[num_slots, H_kv, D]`` keys of one layer (SGLang's buffer, read in place; the D dim must
            be contiguous): ``q``'s dtype, or fp8 (``float8_e4m3fn`` / ``float8_e5m2``) holding ``key / k_scale``.
        v_cache: ``[num_slots, H_kv, D]`` values, ``k_cache``'s dtype.
        indptr: ``[R + 1]`` int32 CSR offsets into ``indices``.
        indices: ``[nnz]`` int32 block ids (design §2); row ``r`` reads ``indices[indptr[r]:indptr[r + 1]]``.
        last_block_len: ``[R]`` int32 in ``[1, block_size]``: valid tokens of each row's last listed block.
        page_size: token slots per page, a multiple of ``block_size`` (a kernel constexpr).
        block_size: tokens per block, a power of two (a kernel constexpr).
        sm_scale: softmax scale, default ``1 / sqrt(D)``.
        out: optional ``[R, G, D]`` output buffer in ``q.dtype``.
        max_blocks_per_row: upper bound of ``indptr[r + 1] - indptr[r]``; only picks the split count (any
            value is correct). Give it for CUDA graphs: when None it is read from ``indptr`` (host sync).
        return_lse: also return the log-sum-exp of the scaled scores.
        workspace: caller-owned split scratch (:class:`SparseDecodeWorkspace`); allocated per call when None.
        exact: True keeps the softmax weights fp32 through ``p @ v`` (the exact attention rounded once);
            False rounds them to the KV dtype first, as FlashAttention and FlashInfer do (one MMA, faster).
        num_splits: programs per row; default :func:`default_num_splits` of ``max_blocks_per_row``.
        k_scale, v_scale: fp8 dequantisation scales of this layer (key = stored * k_scale): a float, a
            1-element tensor (read in-kernel: what a CUDA graph should be given) or None (1.0). Ignored for
            16/32-bit K/V.
        enable_pdl: launch with Hopper programmatic dependent launch, so that this launch is scheduled while
            the previous kernel in the stream finishes (sm_90+ only; an error elsewhere).

    Returns:
        ``o [R, G, D]`` in ``q.dtype``; with ``return_lse`` also ``lse [R, G]`` fp32 (natural log).
        Rows with no blocks get ``o = 0`` and ``lse = -inf``.
    """
    check_inputs(q, k_cache, v_cache, indptr, indices, last_block_len, out, page_size, block_size)
    require_launchable(_split_kernel, q, "sparse_decode_attention", "sparse_decode_attention_reference")
    num_rows, group, head_dim = q.shape
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty(num_rows, group, dtype=torch.float32, device=q.device) if return_lse else None
    if num_rows > 0 and group > 0:
        if num_splits is None:
            if max_blocks_per_row is None:
                max_blocks_per_row = max_row_blocks(indptr)  # host sync
            num_splits = default_num_splits(num_rows, max_blocks_per_row, block_size, head_dim, q.device, exact)
        scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
        ks, vs = device_scales(k_cache.dtype, k_scale, v_scale, q.device)
        launch(
            q, k_cache, v_cache, indptr, indices, last_block_len, scale, out, lse, num_splits,
            page_size=page_size, block_size=block_size, workspace=workspace, exact=exact, k_scale=ks, v_scale=vs,
            enable_pdl=enable_pdl,
        )  # fmt: skip
    if lse is not None:
        return out, lse
    return out
