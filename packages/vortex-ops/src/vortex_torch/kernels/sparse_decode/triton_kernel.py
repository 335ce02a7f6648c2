"""Triton sparse paged decode attention (split-KV flash-decoding over a CSR block selection).

Semantics: ``naive.sparse_decode_attention_naive``. Decode attention is memory bound, so the kernels are
built to stream exactly the selected KV bytes once, with every program busy:

* K/V are read in place from SGLang's ``[num_slots, H_kv, D]`` buffers: each block id is decomposed into
  (page, head, sub-block) (design §2; ``PAGE``, ``BS`` and ``H_KV`` are constexprs, so the divisions are
  shifts or multiply-highs) and every token of the tile is one contiguous row of ``D`` elements at
  ``slot * stride_slot + head * stride_head`` (``H_kv * D`` and ``D`` for a contiguous buffer; int64 math).

* ``_split_kernel``, grid ``(R, S)``: program ``(r, s)`` takes the ``s``-th contiguous chunk of row ``r``'s
  selected blocks and runs an fp32 online softmax for all ``G`` queries of the row at once, as one
  ``[G_PAD, D_PAD]`` tile (``G_PAD >= 16`` so both products are ``tl.dot``s on tensor cores; the padding is
  free because the kernel waits on memory, not on math). ``p @ v`` keeps ``p`` in fp32 (tf32x3), so the
  output is the exact attention rounded once (up to fp32 summation order). Chunks are cut per row inside the kernel, so a
  short row in a ragged batch still spreads over all ``S`` programs and no host knowledge of the lengths is
  needed. With ``S == 1`` the program writes the final ``o``/``lse`` directly: one launch in total.
* ``_combine_kernel``, grid ``(R, G)``: merges the ``S`` partial results of a row by their log-sum-exps.

No launch reads device memory on the host when ``max_blocks_per_row`` is given (CUDA-graph capturable).
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import triton
import triton.language as tl

from vortex_torch.abs.layout import PoolLayout

from .._interpreter_compat import require_launchable
from .naive import check_inputs

LN2 = tl.constexpr(0.6931471805599453)  # a global a kernel reads must be a tl.constexpr on the GPU

_TILE_ELEMS = 8192  # K (and V) tile of one loop step: BLOCK_N x D_PAD elements, 64 x 128 at D = 128
_MIN_ITERS_PER_SPLIT = 2  # a split shorter than this costs more in launch/combine than it gains
_MAX_SPLITS = 64
_PROGRAMS_PER_SM = 4  # enough resident programs per SM to keep HBM busy


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
    qk_scale,  # sm_scale * log2(e)
    num_splits,
    stride_qr, stride_qg, stride_qd,
    stride_ks, stride_kh,  # slot and head strides of k (elements); d stride is 1
    stride_vs, stride_vh,
    stride_or, stride_os, stride_og, stride_od,
    stride_lr, stride_ls, stride_lg,
    G: tl.constexpr,
    D: tl.constexpr,
    PAGE: tl.constexpr,  # page_size (token slots per page)
    BS: tl.constexpr,  # block_size, divides PAGE
    H_KV: tl.constexpr,  # KV heads of the pool
    G_PAD: tl.constexpr,  # next_pow2(G), at least 16 (tl.dot's minimum M)
    D_PAD: tl.constexpr,  # next_pow2(D), at least 16
    BLOCKS_PER_ITER: tl.constexpr,  # whole blocks per loop step
    STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no silent tf32), ignored for 16-bit
    PV_PRECISION: tl.constexpr,  # p @ v in fp32: "ieee" for fp32 inputs, else "tf32x3" (exact v, ~fp32 p)
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    BLOCK_N: tl.constexpr = BLOCKS_PER_ITER * BS
    BPP: tl.constexpr = PAGE // BS  # blocks of one head per page

    row_start = tl.load(indptr_ptr + row).to(tl.int32)
    num_blocks = tl.load(indptr_ptr + row + 1).to(tl.int32) - row_start
    last_len = tl.load(last_len_ptr + row).to(tl.int32)

    # This split's chunk [lo, hi) of the row's blocks, rounded to whole loop steps so only the row's final
    # step is ragged. Trailing splits of a short row get an empty chunk and write (o = 0, lse = -inf).
    per_split = tl.cdiv(tl.cdiv(num_blocks, num_splits), BLOCKS_PER_ITER) * BLOCKS_PER_ITER
    lo = tl.minimum(split * per_split, num_blocks)
    hi = tl.minimum(lo + per_split, num_blocks)

    offs_g = tl.arange(0, G_PAD)  # [G_PAD]
    offs_d = tl.arange(0, D_PAD)  # [D_PAD]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N] token slot within a loop step
    mask_g = offs_g < G
    mask_d = offs_d < D
    blk_in_step = offs_n // BS  # [BLOCK_N] which block of the step the token belongs to
    tok_in_blk = offs_n % BS  # [BLOCK_N] token position inside that block

    # Padded query rows / dims are zero, so they add nothing to the dot products.
    q_ptrs = q_ptr + row.to(tl.int64) * stride_qr + offs_g[:, None] * stride_qg + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=mask_g[:, None] & mask_d[None, :], other=0.0)  # [G_PAD, D_PAD]

    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)  # running max, base-2 units
    l_i = tl.zeros([G_PAD], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)  # running sum of p @ v

    for step in range(lo, hi, BLOCKS_PER_ITER):
        blk = step + blk_in_step  # [BLOCK_N] row-local block index of every token slot
        in_chunk = blk < hi
        block_id = tl.load(indices_ptr + row_start + blk, mask=in_chunk, other=0).to(tl.int64)  # [BLOCK_N]
        # design §2: block -> (page, head, sub-block) -> token slot of every lane; int64 throughout, as a
        # layer's buffer can exceed 2^31 elements (constexpr divisors: shifts / multiply-highs, no division)
        head = (block_id // BPP) % H_KV  # [BLOCK_N]
        slot = (block_id // (H_KV * BPP)) * PAGE + (block_id % BPP) * BS + tok_in_blk  # [BLOCK_N]
        # Only the row's final block is partial. A step's first token is always valid, so m_new is finite.
        valid = in_chunk & ((blk < num_blocks - 1) | (tok_in_blk < last_len))  # [BLOCK_N]
        kv_mask = valid[:, None] & mask_d[None, :]  # [BLOCK_N, D_PAD]

        k_rows = k_ptr + (slot * stride_ks + head * stride_kh)  # [BLOCK_N] int64: each token's first element
        k = tl.load(k_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D_PAD]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [G_PAD, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [G_PAD]
        alpha = tl.exp2(m_i - m_new)  # [G_PAD], 0 on the first step (m_i = -inf)
        p = tl.exp2(s - m_new[:, None])  # [G_PAD, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)

        v_rows = v_ptr + (slot * stride_vs + head * stride_vh)  # [BLOCK_N]
        v = tl.load(v_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D_PAD]
        # p stays fp32 (v widens exactly): rounding p to bf16, as flash attention does, would move the fp32
        # result by ~2^-9 and flip the final bf16 rounding of many outputs away from the exact result.
        # tf32x3 keeps the product on tensor cores at ~fp32 accuracy.
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision=PV_PRECISION)
        m_i = m_new

    empty = l_i == 0.0  # [G_PAD] empty chunk (or empty row)
    o = acc / tl.where(empty, 1.0, l_i)[:, None]  # [G_PAD, D_PAD], 0 where empty
    o_row = o_ptr + row.to(tl.int64) * stride_or + split * stride_os
    o_ptrs = o_row + offs_g[:, None] * stride_og + offs_d[None, :] * stride_od  # [G_PAD, D_PAD]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * LN2)  # [G_PAD]
        lse_row = lse_ptr + row.to(tl.int64) * stride_lr + split * stride_ls
        tl.store(lse_row + offs_g * stride_lg, lse, mask=mask_g)


@triton.jit
def _combine_kernel(
    mid_o_ptr,  # [R, S, G, D] fp32, each split's normalised output
    mid_lse_ptr,  # [R, S, G] fp32, each split's lse (natural log; -inf for an empty split)
    o_ptr,  # [R, G, D] q.dtype
    lse_ptr,  # [R, G] fp32
    num_splits,
    stride_mr, stride_ms, stride_mg, stride_md,
    stride_nr, stride_ns, stride_ng,
    stride_or, stride_og, stride_od,
    stride_lr, stride_lg,
    D: tl.constexpr,
    S_PAD: tl.constexpr,  # next_pow2(S)
    D_PAD: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    offs_s = tl.arange(0, S_PAD)  # [S_PAD]
    offs_d = tl.arange(0, D_PAD)  # [D_PAD]
    mask_s = offs_s < num_splits
    mask_d = offs_d < D

    lse_ptrs = mid_lse_ptr + row * stride_nr + g * stride_ng + offs_s * stride_ns  # [S_PAD]
    lse_s = tl.load(lse_ptrs, mask=mask_s, other=float("-inf"))
    m = tl.max(lse_s, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # all splits empty: keep exp() finite, the weights are all 0
    w = tl.exp(lse_s - m)  # [S_PAD], 0 for empty splits
    denom = tl.sum(w, axis=0)
    o_row = mid_o_ptr + row * stride_mr + g * stride_mg
    o_ptrs = o_row + offs_s[:, None] * stride_ms + offs_d[None, :] * stride_md  # [S_PAD, D_PAD]
    o_s = tl.load(o_ptrs, mask=mask_s[:, None] & mask_d[None, :], other=0.0)  # [S_PAD, D_PAD]
    o = tl.sum(w[:, None] * o_s, axis=0) / tl.where(denom == 0.0, 1.0, denom)  # [D_PAD]
    out_row = o_ptr + row * stride_or + g * stride_og
    tl.store(out_row + offs_d * stride_od, o.to(o_ptr.dtype.element_ty), mask=mask_d)
    if STORE_LSE:
        lse = tl.where(denom == 0.0, float("-inf"), m + tl.log(tl.where(denom == 0.0, 1.0, denom)))
        tl.store(lse_ptr + row * stride_lr + g * stride_lg, lse)


def _next_pow2(x: int, at_least: int = 1) -> int:
    return max(at_least, 1 << max(0, x - 1).bit_length())


def blocks_per_iter(block_size: int, head_dim: int) -> int:
    """Whole blocks per loop step of a program: ``BLOCKS_PER_ITER * BS`` tokens, 16 to 64 of them
    (>= 16 for tl.dot, fewer at large D to bound registers), or one block when ``BS > 64``."""
    tokens = min(64, max(16, _TILE_ELEMS // _next_pow2(head_dim, 16)))
    return max(1, tokens // block_size)


def default_num_splits(
    num_rows: int, max_blocks_per_row: int, block_size: int, head_dim: int, device: torch.device
) -> int:
    """Splits per row: enough ``(row, split)`` programs to fill the GPU, but chunks of >= 2 loop steps.

    Depends on shapes and the device only, so a fixed ``max_blocks_per_row`` gives a fixed launch config.
    """
    if device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        num_sms = 2  # Triton interpreter: small, so that tests exercise the split + combine path
    want = triton.cdiv(_PROGRAMS_PER_SM * num_sms, max(num_rows, 1))
    cap = triton.cdiv(max_blocks_per_row, _MIN_ITERS_PER_SPLIT * blocks_per_iter(block_size, head_dim))
    return int(max(1, min(want, cap, _MAX_SPLITS)))


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
) -> None:
    """Run the kernels with an explicit split count (``num_splits >= 1``); writes ``out`` and ``lse``.

    Shapes: ``q, out [R, G, D]``; ``k_cache, v_cache [num_slots, H_kv, D]`` (last dim contiguous);
    ``indptr [R + 1]``; ``indices [nnz]``; ``last_block_len [R]``; ``lse [R, G]`` fp32 or None. Correct for
    any ``num_splits``, the split count only trades parallelism against combine work.
    """
    num_rows, group, head_dim = q.shape
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=k_cache.shape[1])
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError(
            "k_cache/v_cache need a contiguous last (D) dim, "
            f"got strides {k_cache.stride()} and {v_cache.stride()}"
        )
    g_pad = _next_pow2(group, 16)
    d_pad = _next_pow2(head_dim, 16)
    meta = dict(
        G=group, D=head_dim, PAGE=layout.page_size, BS=layout.block_size, H_KV=layout.num_kv_heads,
        G_PAD=g_pad, D_PAD=d_pad, BLOCKS_PER_ITER=blocks_per_iter(block_size, head_dim),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        PV_PRECISION="ieee" if q.dtype == torch.float32 else "tf32x3",
    )
    qk_scale = sm_scale * math.log2(math.e)
    kv_strides = (k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1))
    if num_splits == 1:
        # Single pass: the split kernel writes the final output ([R, 1, G, D] view of out) itself.
        lse_out = lse if lse is not None else out  # dummy pointer when STORE_LSE is False
        lse_strides = (lse.stride(0), 0, lse.stride(1)) if lse is not None else (0, 0, 0)
        _split_kernel[(num_rows, 1)](
            q, k_cache, v_cache, indptr, indices, last_block_len, out, lse_out, qk_scale, 1,
            *q.stride(), *kv_strides, out.stride(0), 0, out.stride(1), out.stride(2), *lse_strides,
            STORE_LSE=lse is not None, num_warps=4, num_stages=2, **meta,
        )
        return

    mid_o = torch.empty(num_rows, num_splits, group, head_dim, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(num_rows, num_splits, group, dtype=torch.float32, device=q.device)
    _split_kernel[(num_rows, num_splits)](
        q, k_cache, v_cache, indptr, indices, last_block_len, mid_o, mid_lse, qk_scale, num_splits,
        *q.stride(), *kv_strides, *mid_o.stride(), *mid_lse.stride(),
        STORE_LSE=True, num_warps=4, num_stages=2, **meta,
    )
    lse_out = lse if lse is not None else mid_lse
    _combine_kernel[(num_rows, group)](
        mid_o, mid_lse, out, lse_out, num_splits,
        *mid_o.stride(), *mid_lse.stride(), *out.stride(),
        lse_out.stride(0) if lse is not None else 0, lse_out.stride(1) if lse is not None else 0,
        D=head_dim, S_PAD=_next_pow2(num_splits), D_PAD=d_pad, STORE_LSE=lse is not None, num_warps=4,
    )


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse paged decode attention (Triton); same contract as ``sparse_decode_attention_naive``.

    Args:
        q: ``[R, G, D]`` queries (bf16/fp16/fp32), ``G <= 16`` recommended (any G works, padded to pow2).
        k_cache: ``[num_slots, H_kv, D]`` keys of one layer (SGLang's buffer, read in place; the D dim must
            be contiguous), same dtype as ``q``.
        v_cache: ``[num_slots, H_kv, D]`` values.
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

    Returns:
        ``o [R, G, D]`` in ``q.dtype``; with ``return_lse`` also ``lse [R, G]`` fp32 (natural log).
        Rows with no blocks get ``o = 0`` and ``lse = -inf``.
    """
    check_inputs(q, k_cache, v_cache, indptr, indices, last_block_len, out, page_size, block_size)
    require_launchable(_split_kernel, q, "sparse_decode_attention", "sparse_decode_attention_naive")
    num_rows, group, head_dim = q.shape
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty(num_rows, group, dtype=torch.float32, device=q.device) if return_lse else None
    if num_rows > 0 and group > 0:
        if max_blocks_per_row is None:
            max_blocks_per_row = int((indptr[1:] - indptr[:-1]).max().item())  # host sync
        num_splits = default_num_splits(num_rows, max_blocks_per_row, block_size, head_dim, q.device)
        scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
        launch(
            q, k_cache, v_cache, indptr, indices, last_block_len, scale, out, lse, num_splits,
            page_size=page_size, block_size=block_size,
        )  # fmt: skip
    if lse is not None:
        return out, lse
    return out
