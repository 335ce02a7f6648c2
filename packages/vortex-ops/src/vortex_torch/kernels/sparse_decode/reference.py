"""Plain-PyTorch reference of sparse paged decode attention: this file DEFINES the semantics.

Every row ``r`` (one (request, kv-head) pair, see ``docs/design.md`` §1) attends with its ``G`` query heads
to the tokens of the blocks ``indices[indptr[r]:indptr[r + 1]]`` of the KV pool. K/V are SGLang's native
``[num_slots, H_kv, D]`` buffers; a block id names its page, KV head and place in the page (design §2,
``PoolLayout``), so the head of a row is implied by its blocks. The last listed block is the row's final
block: only its first ``last_block_len[r]`` tokens are valid, every other block is full.

K/V may be fp8 (``torch.float8_e4m3fn`` / ``torch.float8_e5m2``, SGLang's ``--kv-cache-dtype fp8_*``) with one
scalar scale each per layer: a token's key is ``k_cache.float() * k_scale``, its value ``v_cache.float() *
v_scale`` (SGLang stores ``value / scale``; :mod:`vortex_torch.kernels.fp8`). Scales are ignored for 16/32-bit K/V.
The Triton kernel in ``triton_kernel.py`` must match this function up to floating-point rounding.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch

from vortex_torch.abs.layout import PoolLayout

from .._decode_inputs import check_out, check_query_dtype, check_selection
from ..fp8 import FP8_DTYPES, Scale, dequantize


def check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    out: torch.Tensor | None,
    page_size: int,
    block_size: int,
) -> PoolLayout:
    """Validate shapes and dtypes (metadata only: never reads device memory, so never synchronises).

    Returns the pool layout ``(page_size, block_size, H_kv = k_cache.shape[1])``.
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [R, G, D], got shape {tuple(q.shape)}")
    num_rows, group, head_dim = q.shape
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache/v_cache must both be [num_slots, H_kv, D], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.shape[1] == 0:
        raise ValueError(f"k_cache/v_cache have no KV head: {tuple(k_cache.shape)}")
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=k_cache.shape[1])
    if k_cache.shape[2] != head_dim:
        raise ValueError(f"head dim mismatch: q has D={head_dim}, cache has D={k_cache.shape[2]}")
    check_kv_dtypes(q, k_cache, v_cache)
    check_selection(indptr, indices, last_block_len, num_rows)
    check_out(out, (num_rows, group, head_dim), q)
    return layout


def check_kv_dtypes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """K/V in ``q``'s dtype, or both in one fp8 dtype with ``q`` bf16/fp16/fp32."""
    check_query_dtype(q)
    if k_cache.dtype in FP8_DTYPES and v_cache.dtype == k_cache.dtype:
        return
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"dtype mismatch: q {q.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype}: K/V must be in q's "
            "dtype, or both float8_e4m3fn / both float8_e5m2 (an fp8 KV cache, with k_scale / v_scale)"
        )


@overload
def sparse_decode_attention_reference(
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
    k_scale: Scale = ...,
    v_scale: Scale = ...,
) -> torch.Tensor: ...


@overload
def sparse_decode_attention_reference(
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
    k_scale: Scale = ...,
    v_scale: Scale = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sparse_decode_attention_reference(
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
    k_scale: Scale = None,
    v_scale: Scale = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse paged decode attention, one row at a time, in fp32.

    Args:
        q: ``[R, G, D]`` queries (bf16/fp16/fp32): the ``G`` query heads that share row ``r``'s kv head.
        k_cache: ``[num_slots, H_kv, D]`` keys of one layer (SGLang's buffer): ``q``'s dtype, or fp8
            (``float8_e4m3fn`` / ``float8_e5m2``) holding ``key / k_scale``.
        v_cache: ``[num_slots, H_kv, D]`` values, ``k_cache``'s dtype.
        indptr: ``[R + 1]`` int32 CSR offsets into ``indices``.
        indices: ``[nnz]`` int32 block ids (design §2); row ``r`` reads ``indices[indptr[r]:indptr[r + 1]]``.
        last_block_len: ``[R]`` int32 in ``[1, block_size]``: valid tokens of each row's last listed block.
        page_size: token slots per page (SGLang's allocation unit), a multiple of ``block_size``.
        block_size: tokens per block, a power of two.
        sm_scale: softmax scale, default ``1 / sqrt(D)``.
        out: optional ``[R, G, D]`` output buffer in ``q.dtype``.
        max_blocks_per_row: accepted for signature parity with the Triton kernel; unused here.
        return_lse: also return the log-sum-exp of the scaled scores.
        k_scale, v_scale: fp8 dequantisation scales of this layer (float, 1-element tensor, or None = 1.0):
            keys are ``k_cache.float() * k_scale``, values ``v_cache.float() * v_scale``. Ignored for
            16/32-bit K/V (SGLang stores those unscaled).

    Returns:
        ``o [R, G, D]`` in ``q.dtype``; with ``return_lse`` also ``lse [R, G]`` fp32 (natural log).
        Rows with no blocks get ``o = 0`` and ``lse = -inf``.
    """
    layout = check_inputs(q, k_cache, v_cache, indptr, indices, last_block_len, out, page_size, block_size)
    del max_blocks_per_row
    num_rows, group, head_dim = q.shape
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)

    o = torch.zeros(num_rows, group, head_dim, dtype=torch.float32, device=q.device)  # [R, G, D]
    lse = torch.full((num_rows, group), float("-inf"), dtype=torch.float32, device=q.device)  # [R, G]
    bounds = indptr.tolist()
    last_lens = last_block_len.tolist()
    for r in range(num_rows):
        lo, hi = bounds[r], bounds[r + 1]
        if hi == lo:
            continue
        blocks = indices[lo:hi].long()  # [n]
        num_tokens = (hi - lo - 1) * block_size + last_lens[r]  # full blocks + the partial last one
        k = dequantize(layout.gather_blocks(k_cache, blocks).reshape(-1, head_dim)[:num_tokens], k_scale)  # [T, D]
        v = dequantize(layout.gather_blocks(v_cache, blocks).reshape(-1, head_dim)[:num_tokens], v_scale)  # [T, D]
        scores = (q[r].float() @ k.T) * scale  # [G, T]
        lse[r] = torch.logsumexp(scores, dim=-1)
        o[r] = torch.softmax(scores, dim=-1) @ v  # [G, D]

    if out is None:
        out = torch.empty_like(q)
    out.copy_(o)
    return (out, lse) if return_lse else out
