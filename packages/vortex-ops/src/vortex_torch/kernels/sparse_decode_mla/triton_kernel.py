"""Triton sparse paged MLA decode attention (split-KV flash-decoding over latent blocks of a CSR selection).

Semantics: ``reference.sparse_mla_decode_reference``. The design follows ``vortex_torch.kernels.sparse_decode`` (blocks
read in place through design §2's addressing, online softmax in fp32, the split merge done in the same launch
by each row's last program) with MLA's two twists:

* the latent of a token is read ONCE per tile and used twice: its first ``DV = kv_lora_rank`` columns are both
  the NoPE key (``s = q_nope · kv_cᵀ``) and the value (``o += p · kv_c``); the ``DR = qk_rope_head_dim`` RoPE
  columns only add ``q_pe · k_peᵀ`` to the logits. ``DV`` and ``DR`` are padded to powers of two separately
  (512 + 64 for DeepSeek, no padding at all), instead of padding 576 to 1024;
* all ``H`` query heads of a request share the one latent head, so a program takes ``BLOCK_H`` heads of a row
  (grid ``(R * cdiv(H, BLOCK_H), S)``); every head block of a row is its own "virtual row" for the split merge.

An fp8 latent cache (``KV_FP8``, a constexpr branch: the 16-bit kernel is unchanged) is widened to ``q``'s dtype
right after the load (exact), ``k_scale`` folds into the softmax scale and ``v_scale`` into the output, both read
from ``[1]`` fp32 tensors.

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
from .reference import check_mla_inputs

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _mla_split_kernel(
    q_ptr,  # [R, H, D]
    lat_ptr,  # [num_slots, H_kv, D], last dim contiguous
    indptr_ptr,  # [R + 1]
    indices_ptr,  # [nnz]
    last_len_ptr,  # [R]
    o_ptr,  # [R, S, H, DV] fp32 partials (MERGE) or the final [R, H, DV] output (S == 1)
    lse_ptr,  # [R, S, H] fp32
    final_o_ptr,  # [R, H, DV] (MERGE)
    final_lse_ptr,  # [R, H] fp32 (STORE_FINAL_LSE)
    counter_ptr,  # [R * HB] int32, 0 between launches (MERGE)
    k_scale_ptr,  # [1] fp32 (KV_FP8 only): key = stored latent * k_scale
    v_scale_ptr,  # [1] fp32 (KV_FP8 only): value = stored kv_c * v_scale
    qk_scale,  # sm_scale * log2(e)
    num_splits,
    stride_qr, stride_qh,  # q's d stride is 1
    stride_ls, stride_lh,  # latent slot / head strides
    stride_or, stride_os, stride_oh,  # o's d stride is 1
    stride_lr, stride_lsp, stride_lhh,  # lse
    stride_fr, stride_fh,  # final_o, d stride 1
    stride_flr, stride_flh,  # final_lse
    H: tl.constexpr,
    DV: tl.constexpr,  # kv_lora_rank: value width, the NoPE part of the logit
    DR: tl.constexpr,  # qk_rope_head_dim: the RoPE part
    PAGE: tl.constexpr,
    BS: tl.constexpr,
    H_KV: tl.constexpr,
    BLOCK_H: tl.constexpr,  # heads per program (pow2, >= 16 for tl.dot)
    HB: tl.constexpr,  # head blocks per row: cdiv(H, BLOCK_H)
    DV_PAD: tl.constexpr,
    DR_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,  # tokens per loop step: a power of two >= 16 (several whole blocks or part of one)
    STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PV_PRECISION: tl.constexpr,
    P_FP32: tl.constexpr,
    MERGE: tl.constexpr,
    FENCE: tl.constexpr,  # a per-thread gpu fence before the hand-off (False in the interpreter)
    STORE_FINAL_LSE: tl.constexpr,
    KV_FP8: tl.constexpr,  # fp8 latents: widen each tile to q's dtype, apply k_scale / v_scale
    PDL: tl.constexpr = False,  # launched with programmatic dependent launch (wait for the previous kernel)
):
    dependent_launch_prologue(PDL)
    vrow = tl.program_id(0)  # virtual row: (row, head block)
    split = tl.program_id(1)
    row = vrow // HB
    hb = vrow % HB

    row_start = tl.load(indptr_ptr + row).to(tl.int32)
    num_blocks = tl.load(indptr_ptr + row + 1).to(tl.int32) - row_start
    last_len = tl.load(last_len_ptr + row).to(tl.int32)
    lo, hi = split_token_range(num_blocks, last_len, split, num_splits, BS, BLOCK_N)  # tokens of this split

    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] query heads of this program
    offs_v = tl.arange(0, DV_PAD)
    offs_r = tl.arange(0, DR_PAD)
    mask_h = offs_h < H
    mask_v = offs_v < DV
    mask_r = offs_r < DR

    q_rows = q_ptr + row.to(tl.int64) * stride_qr + offs_h[:, None] * stride_qh  # [BLOCK_H, 1]
    q_nope = tl.load(q_rows + offs_v[None, :], mask=mask_h[:, None] & mask_v[None, :], other=0.0)
    q_pe = tl.load(q_rows + DV + offs_r[None, :], mask=mask_h[:, None] & mask_r[None, :], other=0.0)
    if KV_FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, DV_PAD], dtype=tl.float32)

    for step in range(lo, hi, BLOCK_N):
        blk, tok_in_blk, valid = step_tokens(step, hi, BS, BLOCK_N)  # token step + i; the first is valid
        # masked per block, not per token: as launched on sm_90 the per-token mask costs 200 bytes of spill
        block_id = tl.load(indices_ptr + row_start + blk, mask=blk * BS < hi, other=0).to(tl.int64)
        head = block_head(block_id, PAGE, BS, H_KV)
        slot = block_first_slot(block_id, PAGE, BS, H_KV) + tok_in_blk
        rows = lat_ptr + (slot * stride_ls + head * stride_lh)  # [BLOCK_N] int64
        kv = tl.load(rows[:, None] + offs_v[None, :], mask=valid[:, None] & mask_v[None, :], other=0.0)
        pe = tl.load(rows[:, None] + DV + offs_r[None, :], mask=valid[:, None] & mask_r[None, :], other=0.0)
        if KV_FP8:
            kv = kv.to(q_nope.dtype)  # exact widening; the scales apply to the logits and the output
            pe = pe.to(q_nope.dtype)
        s = tl.dot(q_nope, tl.trans(kv), input_precision=DOT_PRECISION)  # [BLOCK_H, BLOCK_N]
        s += tl.dot(q_pe, tl.trans(pe), input_precision=DOT_PRECISION)
        s = s * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if P_FP32:
            pv = tl.dot(p, kv.to(tl.float32), input_precision=PV_PRECISION)  # values = kv_c, read once
        else:
            pv = tl.dot(p.to(kv.dtype), kv)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    empty = l_i == 0.0
    if KV_FP8:
        acc = acc * tl.load(v_scale_ptr)
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_rows = o_ptr + row.to(tl.int64) * stride_or + split * stride_os + offs_h[:, None] * stride_oh
    tl.store(o_rows + offs_v[None, :], o.to(o_ptr.dtype.element_ty), mask=mask_h[:, None] & mask_v[None, :])
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * LN2)
        tl.store(lse_ptr + row.to(tl.int64) * stride_lr + split * stride_lsp + offs_h * stride_lhh, lse, mask=mask_h)
    if MERGE:
        release_fence(FENCE)  # see vortex_torch.kernels._sync.release_fence
        tl.debug_barrier()
        done = tl.atomic_add(counter_ptr + vrow, 1, sem="acq_rel", scope="gpu")
        if done == num_splits - 1:
            _mla_merge(o_ptr, lse_ptr, final_o_ptr, final_lse_ptr, row.to(tl.int64), offs_h, mask_h, num_splits,
                       stride_or, stride_os, stride_oh, stride_lr, stride_lsp, stride_lhh,
                       stride_fr, stride_fh, stride_flr, stride_flh,
                       DV, BLOCK_H, DV_PAD, STORE_FINAL_LSE)  # fmt: skip
            tl.atomic_xchg(counter_ptr + vrow, 0, sem="relaxed", scope="gpu")


@triton.jit
def _mla_merge(
    mid_o_ptr, mid_lse_ptr, o_ptr, lse_ptr, row, offs_h, mask_h, num_splits,
    stride_mr, stride_ms, stride_mh, stride_nr, stride_ns, stride_nh,
    stride_or, stride_oh, stride_lr, stride_lh,
    DV: tl.constexpr, BLOCK_H: tl.constexpr, DV_PAD: tl.constexpr, STORE_LSE: tl.constexpr,
):  # fmt: skip
    """Merge one head block's ``num_splits`` partials by their log-sum-exps (online, one split at a time)."""
    offs_v = tl.arange(0, DV_PAD)
    mask = mask_h[:, None] & (offs_v < DV)[None, :]
    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    w_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, DV_PAD], dtype=tl.float32)
    for s in range(0, num_splits):
        lse_s = tl.load(mid_lse_ptr + row * stride_nr + s * stride_ns + offs_h * stride_nh, mask=mask_h,
                        other=float("-inf"), cache_modifier=".cg")  # fmt: skip
        o_s = tl.load(mid_o_ptr + row * stride_mr + s * stride_ms + offs_h[:, None] * stride_mh + offs_v[None, :],
                      mask=mask, other=0.0, cache_modifier=".cg")  # fmt: skip
        m_new = tl.maximum(m, lse_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        scale = tl.exp(m - m_safe)
        w = tl.exp(lse_s - m_safe)
        w_sum = w_sum * scale + w
        acc = acc * scale[:, None] + w[:, None] * o_s
        m = m_new
    empty = w_sum == 0.0
    o = acc / tl.where(empty, 1.0, w_sum)[:, None]
    tl.store(o_ptr + row * stride_or + offs_h[:, None] * stride_oh + offs_v[None, :], o.to(o_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, w_sum)))
        tl.store(lse_ptr + row * stride_lr + offs_h * stride_lh, lse, mask=mask_h)


def head_block(num_heads: int) -> int:
    """Query heads per program: all of them up to 16, else 16 (a ``[16, 512]`` fp32 accumulator per program)."""
    return min(next_pow2(num_heads, 16), 16)


def default_tile_tokens(kv_lora_rank: int, exact: bool = False) -> int:
    """Tokens per loop step (the ``BLOCK_N`` constexpr), whatever the block size: 64 at kv_lora_rank = 512 (a
    ``[64, 576]`` bf16 latent tile), 16 with ``exact`` (fp32 ``p`` through a tf32x3 ``p @ kv_c``: at 64 tokens
    ptxas spills ~4.7 KB per thread, at 16 about 120 bytes; sm_90, ``tools/sm90_resources.py``; not timed), at
    least 16 (tl.dot)."""
    elems = 8192 if exact else 32768
    return min(64, max(MIN_TILE_TOKENS, elems // next_pow2(kv_lora_rank, 16)))


#: warps per program. At the default 64-token tile (kv_lora_rank 512, 16 heads per program) ptxas gives 124
#: registers and no spill at 8 warps; at 4, bf16 latents take 200-236 and fp8 ones spill (488 bytes per thread)
#: (sm_90, Triton 3.6, ``tools/sm90_resources.py``). Timed on the H200 (``decode_step_bench --mla --sweep
#: attention``, 16 heads, budget 2048, 64-token tiles, 2 stages, best split count): bf16 32k x 16 30.9 us at 8
#: warps, 31.1 at 4; 32k x 1 20.4 vs 21.9; fp8 32k x 16 34.9 vs 47.9 (results/gpu/2026-12-05-decode-step-bench-mla*.json).
DEFAULT_NUM_WARPS = 8

#: resident ``(row, head block, split)`` programs per SM the split rule aims for. An MLA program reads a whole
#: ``[tile, 576]`` latent tile for 16 heads, so one per SM already keeps HBM busy, and more splits only add
#: merge traffic: H200, 32k x 16, budget 2048, 8 warps, 64-token tiles: 30.9 us with 8 splits (~1 program per
#: SM), 39.4 with 16 (the 4-per-SM rule's, capped), 54.9 with 32; fp8 34.9 / 43.6 / 61.4 (same files).
PROGRAMS_PER_SM = 1


def default_num_splits(
    num_rows: int,
    num_heads: int,
    max_blocks_per_row: int,
    block_size: int,
    kv_lora_rank: int,
    device: torch.device,
    exact: bool = False,
) -> int:
    """Splits per row: enough ``(row, head block, split)`` programs to fill the GPU, chunks of >= 2 loop steps.

    Depends on shapes and the device only, so a fixed ``max_blocks_per_row`` gives a fixed launch config
    (:func:`.._split_kv.split_count` with one program per row, head block and split, :data:`PROGRAMS_PER_SM`).
    """
    programs = max(num_rows, 1) * triton.cdiv(num_heads, head_block(num_heads))
    tile = default_tile_tokens(kv_lora_rank, exact)
    return split_count(programs, max_blocks_per_row, block_size, tile, device, programs_per_sm=PROGRAMS_PER_SM)


class SparseMLADecodeWorkspace(SplitWorkspace):
    """Caller-owned split scratch (:class:`.._split_kv.SplitWorkspace`): ``mid_o [max_rows, max_splits, H, DV]
    fp32``, ``mid_lse [max_rows, max_splits, H] fp32`` and ``counter [max_rows * head blocks] int32`` (0 between
    launches)."""

    DIMS: ClassVar[str] = "(rows, splits, H, DV)"

    @classmethod
    def allocate(
        cls, max_rows: int, max_splits: int, num_heads: int, v_head_dim: int, device: torch.device | str
    ) -> SparseMLADecodeWorkspace:
        hb = triton.cdiv(num_heads, head_block(num_heads))
        return cls._new(max_rows, max_splits, num_heads, v_head_dim, device, counters_per_row=hb)


def kernel_constexprs(
    num_heads: int,
    kv_lora_rank: int,
    qk_rope_head_dim: int,
    layout: PoolLayout,
    q_dtype: torch.dtype,
    kv_fp8: bool,
    exact: bool,
    tile_tokens: int | None = None,
) -> dict[str, object]:
    """``_mla_split_kernel``'s constexprs that follow from the shapes, dtypes and tiling (the others,
    ``STORE_LSE``, ``MERGE``, ``STORE_FINAL_LSE``, ``FENCE`` and ``PDL``, are the launch's)."""
    block_h = head_block(num_heads)
    return dict(
        KV_FP8=kv_fp8, H=num_heads, DV=kv_lora_rank, DR=qk_rope_head_dim, PAGE=layout.page_size,
        BS=layout.block_size, H_KV=layout.num_kv_heads, BLOCK_H=block_h, HB=triton.cdiv(num_heads, block_h),
        DV_PAD=next_pow2(kv_lora_rank, 16), DR_PAD=next_pow2(qk_rope_head_dim, 16),
        BLOCK_N=check_tile_tokens(tile_tokens) if tile_tokens is not None else default_tile_tokens(kv_lora_rank, exact),
        **precision_meta(q_dtype, exact),
    )  # fmt: skip


def launch(
    q: torch.Tensor,
    latent_cache: torch.Tensor,
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
    v_head_dim: int,
    workspace: SparseMLADecodeWorkspace | None = None,
    exact: bool = True,
    tile_tokens: int | None = None,
    num_warps: int = DEFAULT_NUM_WARPS,
    num_stages: int = 2,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    enable_pdl: bool = False,
) -> None:
    """One launch with an explicit split count: ``q [R, H, D]``, ``latent_cache [num_slots, H_kv, D]`` (last
    dims contiguous), ``out [R, H, v_head_dim]``, ``lse [R, H]`` fp32 or None; ``k_scale``/``v_scale`` ``[1]``
    fp32 tensors, required for an fp8 latent cache; ``enable_pdl``: Hopper programmatic dependent launch
    (:func:`.._sync.pdl_launch_options`); ``tile_tokens``/``num_warps``/``num_stages``: tokens per loop step (a
    power of two >= 16, default :func:`default_tile_tokens`), warps (:data:`DEFAULT_NUM_WARPS`) and pipeline
    stages of a program."""
    num_rows, heads, width = q.shape
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=latent_cache.shape[1])
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if latent_cache.stride(2) != 1 or q.stride(2) != 1 or out.stride(2) != 1:
        raise ValueError("q, latent_cache and out need a contiguous last dim")
    hb = triton.cdiv(heads, head_block(heads))
    dr = width - v_head_dim
    kv_fp8, k_scale_arg, v_scale_arg = fp8_scale_args(latent_cache.dtype, k_scale, v_scale, indptr, "fp8 latents")
    meta = dict(
        **kernel_constexprs(heads, v_head_dim, dr, layout, q.dtype, kv_fp8, exact, tile_tokens),
        PDL=enable_pdl, **pdl_launch_options(enable_pdl, q.device, "sparse_mla_decode"),
    )
    qk_scale = log2_scale(sm_scale)
    q_strides = (q.stride(0), q.stride(1))
    lat_strides = (latent_cache.stride(0), latent_cache.stride(1))
    lse_strides = (lse.stride(0), lse.stride(1)) if lse is not None else (0, 0)
    if num_splits == 1:
        lse_out = lse if lse is not None else out
        _mla_split_kernel[(num_rows * hb, 1)](
            q, latent_cache, indptr, indices, last_block_len, out, lse_out, out, lse_out, indptr,
            k_scale_arg, v_scale_arg, qk_scale, 1, *q_strides, *lat_strides, out.stride(0), 0, out.stride(1),
            lse_strides[0], 0, lse_strides[1], 0, 0, 0, 0,
            STORE_LSE=lse is not None, MERGE=False, STORE_FINAL_LSE=False, FENCE=q.is_cuda, num_warps=num_warps,
            num_stages=num_stages, **meta,
        )  # fmt: skip
        return
    ws = workspace if workspace is not None else SparseMLADecodeWorkspace.allocate(
        num_rows, num_splits, heads, v_head_dim, q.device
    )
    ws.require(num_rows, num_splits, heads, v_head_dim)
    mid_o, mid_lse = ws.mid_o, ws.mid_lse
    lse_out = lse if lse is not None else mid_lse
    _mla_split_kernel[(num_rows * hb, num_splits)](
        q, latent_cache, indptr, indices, last_block_len, mid_o, mid_lse, out, lse_out, ws.counter,
        k_scale_arg, v_scale_arg, qk_scale, num_splits, *q_strides, *lat_strides, mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        *mid_lse.stride(), out.stride(0), out.stride(1), *lse_strides,
        STORE_LSE=True, MERGE=True, STORE_FINAL_LSE=lse is not None, FENCE=q.is_cuda, num_warps=num_warps,
        num_stages=num_stages, **meta,
    )  # fmt: skip


@overload
def sparse_mla_decode(
    q: torch.Tensor,
    latent_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    v_head_dim: int,
    sm_scale: float | None = ...,
    out: torch.Tensor | None = ...,
    max_blocks_per_row: int | None = ...,
    return_lse: Literal[False] = ...,
    workspace: SparseMLADecodeWorkspace | None = ...,
    exact: bool = ...,
    k_scale: Scale = ...,
    v_scale: Scale = ...,
    enable_pdl: bool = ...,
) -> torch.Tensor: ...


@overload
def sparse_mla_decode(
    q: torch.Tensor,
    latent_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    v_head_dim: int,
    sm_scale: float | None = ...,
    out: torch.Tensor | None = ...,
    max_blocks_per_row: int | None = ...,
    return_lse: Literal[True],
    workspace: SparseMLADecodeWorkspace | None = ...,
    exact: bool = ...,
    k_scale: Scale = ...,
    v_scale: Scale = ...,
    enable_pdl: bool = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sparse_mla_decode(
    q: torch.Tensor,
    latent_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    *,
    page_size: int,
    block_size: int,
    v_head_dim: int,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    max_blocks_per_row: int | None = None,
    return_lse: bool = False,
    workspace: SparseMLADecodeWorkspace | None = None,
    exact: bool = True,
    k_scale: Scale = None,
    v_scale: Scale = None,
    enable_pdl: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse paged MLA decode attention (Triton, one launch); same contract as ``sparse_mla_decode_reference``.

    Args:
        q: ``[R, H, D]`` absorbed queries ``[q_nope · W_UK | q_pe]``, ``D = kv_lora_rank + qk_rope_head_dim``.
        latent_cache: ``[num_slots, 1, D]`` latents ``[kv_c | k_pe]`` (SGLang's MLA buffer, read in place), in
            ``q``'s dtype or fp8 (``float8_e4m3fn`` / ``float8_e5m2``).
        indptr, indices, last_block_len: the selection's CSR (block ids of design §2) and each row's valid
            tokens in its final block.
        page_size, block_size: the pool layout (kernel constexprs).
        v_head_dim: ``kv_lora_rank`` (the output width; values are the latents' first columns).
        sm_scale: softmax scale (``layer.scaling`` of the model), default ``1 / sqrt(D)``.
        out: optional ``[R, H, v_head_dim]`` output in ``q.dtype``.
        max_blocks_per_row: bound on a row's selected blocks (picks the split count); give it for CUDA graphs
            (None reads ``indptr``: a host sync).
        return_lse: also return ``lse [R, H]`` fp32.
        workspace: caller-owned split scratch (:class:`SparseMLADecodeWorkspace`), allocated per call when None.
        exact: keep the softmax weights fp32 through ``p @ v`` (True) or round them to the KV dtype (False).
        k_scale, v_scale: fp8 dequantisation scales (key = latent * k_scale, value = kv_c * v_scale): a float,
            a 1-element tensor (read in-kernel; what a CUDA graph should be given) or None (1.0). Ignored for a
            16/32-bit cache.
        enable_pdl: launch with Hopper programmatic dependent launch (sm_90+ only; an error elsewhere).

    Returns:
        ``o [R, H, v_head_dim]`` in ``q.dtype`` (and ``lse``); rows with no blocks get 0 and ``-inf``.
    """
    check_mla_inputs(q, latent_cache, indptr, indices, last_block_len, out, page_size, block_size, v_head_dim)
    require_launchable(_mla_split_kernel, q, "sparse_mla_decode", "sparse_mla_decode_reference")
    num_rows, heads, width = q.shape
    if out is None:
        out = torch.empty(num_rows, heads, v_head_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(num_rows, heads, dtype=torch.float32, device=q.device) if return_lse else None
    if num_rows > 0 and heads > 0:
        if max_blocks_per_row is None:
            max_blocks_per_row = max_row_blocks(indptr)  # host sync
        splits = default_num_splits(num_rows, heads, max_blocks_per_row, block_size, v_head_dim, q.device, exact)
        scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(width)
        ks, vs = device_scales(latent_cache.dtype, k_scale, v_scale, q.device)
        launch(
            q.contiguous(), latent_cache, indptr, indices, last_block_len, scale, out, lse, splits,
            page_size=page_size, block_size=block_size, v_head_dim=v_head_dim, workspace=workspace, exact=exact,
            k_scale=ks, v_scale=vs, enable_pdl=enable_pdl,
        )  # fmt: skip
    if lse is not None:
        return out, lse
    return out
