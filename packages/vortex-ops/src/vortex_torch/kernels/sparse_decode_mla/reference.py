"""Plain-PyTorch reference of sparse paged MLA decode attention: this file DEFINES the semantics.

An MLA layer (DeepSeek-V2/V3, GLM) caches one latent row ``[kv_c | k_pe]`` per token in SGLang's
``[num_slots, 1, D]`` buffer (``D = kv_lora_rank + qk_rope_head_dim``, 576 on DeepSeek). Decode is absorbed: the
``H`` query heads of a request arrive as ``q [R, H, D]`` (``[q_nope · W_UK | q_pe]``), the logit of a token is
``<q, latent>`` and the value of a token is the first ``v_head_dim = kv_lora_rank`` columns of its latent. So
every row ``r`` (one request; MLA has one latent head) attends with its ``H`` heads to the tokens of the blocks
``indices[indptr[r]:indptr[r + 1]]`` (block ids of ``docs/design.md`` §2 with ``H_kv = 1``) and returns
``o [R, H, v_head_dim]``. The last listed block is the row's final block: only its first ``last_block_len[r]``
tokens are valid.

The latent cache may be fp8 (``torch.float8_e4m3fn`` / ``torch.float8_e5m2``, SGLang's ``--kv-cache-dtype fp8_*``)
with scalar per-layer scales: a token's key is ``latent.float() * k_scale`` and its value
``latent[:, :v_head_dim].float() * v_scale`` (:mod:`vortex_torch.kernels.fp8`). SGLang writes ``latent /
k_scale``, so ``v_scale = k_scale`` is the consistent choice; its Triton MLA decode reads values with
``layer.v_scale_float``, which a caller reproducing it passes. Scales are ignored for a 16/32-bit cache.

The Triton kernel in ``triton_kernel.py`` must match this function up to floating-point rounding.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch

from vortex_torch.abs.layout import PoolLayout

from .._decode_inputs import check_out, check_query_dtype, check_selection
from ..fp8 import FP8_DTYPES, Scale, dequantize


def check_mla_inputs(
    q: torch.Tensor,
    latent_cache: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_block_len: torch.Tensor,
    out: torch.Tensor | None,
    page_size: int,
    block_size: int,
    v_head_dim: int,
) -> PoolLayout:
    """Validate shapes and dtypes (metadata only: never reads device memory, so never synchronises).

    Returns the pool layout ``(page_size, block_size, H_kv = latent_cache.shape[1])``.
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [R, H, D] (absorbed queries), got shape {tuple(q.shape)}")
    num_rows, heads, width = q.shape
    if latent_cache.dim() != 3 or latent_cache.shape[1] == 0:
        raise ValueError(f"latent_cache must be [num_slots, 1, D], got {tuple(latent_cache.shape)}")
    if latent_cache.shape[2] != width:
        raise ValueError(f"latent width mismatch: q has D={width}, latent_cache has D={latent_cache.shape[2]}")
    if not 0 < v_head_dim <= width:
        raise ValueError(f"v_head_dim (kv_lora_rank) must be in (0, D={width}], got {v_head_dim}")
    check_query_dtype(q)
    if latent_cache.dtype != q.dtype and latent_cache.dtype not in FP8_DTYPES:
        raise ValueError(
            f"dtype mismatch: q {q.dtype}, latent_cache {latent_cache.dtype}: the latents must be in q's dtype, or "
            "float8_e4m3fn / float8_e5m2 (an fp8 KV cache, with k_scale / v_scale)"
        )
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=latent_cache.shape[1])
    check_selection(indptr, indices, last_block_len, num_rows)
    check_out(out, (num_rows, heads, v_head_dim), q)
    return layout


@overload
def sparse_mla_decode_reference(
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
    k_scale: Scale = ...,
    v_scale: Scale = ...,
) -> torch.Tensor: ...


@overload
def sparse_mla_decode_reference(
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
    k_scale: Scale = ...,
    v_scale: Scale = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sparse_mla_decode_reference(
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
    k_scale: Scale = None,
    v_scale: Scale = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse paged MLA decode attention over latent blocks, one row at a time, in fp32.

    Args:
        q: ``[R, H, D]`` absorbed queries ``[q_nope · W_UK | q_pe]`` (bf16/fp16/fp32), ``D = kv_lora_rank +
            qk_rope_head_dim``; row ``r`` is one request's ``H`` query heads.
        latent_cache: ``[num_slots, 1, D]`` latents ``[kv_c | k_pe]`` of one layer (SGLang's MLA buffer), in
            ``q``'s dtype or fp8 (``float8_e4m3fn`` / ``float8_e5m2``).
        indptr: ``[R + 1]`` int32 CSR offsets into ``indices``.
        indices: ``[nnz]`` int32 block ids (design §2 with ``H_kv = 1``).
        last_block_len: ``[R]`` int32 in ``[1, block_size]``: valid tokens of each row's last listed block.
        page_size, block_size: the pool layout (``page_size % block_size == 0``, block_size a power of two).
        v_head_dim: ``kv_lora_rank``: the value of a token is its latent's first ``v_head_dim`` columns.
        sm_scale: softmax scale; MLA models use ``1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)`` (SGLang's
            ``layer.scaling``), the default ``1 / sqrt(D)`` only suits synthetic tests.
        out: optional ``[R, H, v_head_dim]`` output buffer in ``q.dtype``.
        max_blocks_per_row: accepted for signature parity with the Triton kernel; unused here.
        return_lse: also return the log-sum-exp of the scaled scores.
        k_scale, v_scale: fp8 dequantisation scales of this layer (float, 1-element tensor, or None = 1.0):
            keys are ``latent.float() * k_scale``, values ``latent[:, :v_head_dim].float() * v_scale``.
            Ignored for a 16/32-bit cache.

    Returns:
        ``o [R, H, v_head_dim]`` in ``q.dtype``; with ``return_lse`` also ``lse [R, H]`` fp32 (natural log).
        Rows with no blocks get ``o = 0`` and ``lse = -inf``.
    """
    layout = check_mla_inputs(
        q, latent_cache, indptr, indices, last_block_len, out, page_size, block_size, v_head_dim
    )
    del max_blocks_per_row
    num_rows, heads, width = q.shape
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(width)

    o = torch.zeros(num_rows, heads, v_head_dim, dtype=torch.float32, device=q.device)  # [R, H, Dv]
    lse = torch.full((num_rows, heads), float("-inf"), dtype=torch.float32, device=q.device)  # [R, H]
    bounds = indptr.tolist()
    last_lens = last_block_len.tolist()
    for r in range(num_rows):
        lo, hi = bounds[r], bounds[r + 1]
        if hi == lo:
            continue
        blocks = indices[lo:hi].long()  # [n]
        num_tokens = (hi - lo - 1) * block_size + last_lens[r]  # full blocks + the partial last one
        lat = layout.gather_blocks(latent_cache, blocks).reshape(-1, width)[:num_tokens]  # [T, D], stored dtype
        scores = (q[r].float() @ dequantize(lat, k_scale).T) * scale  # [H, T]: the full logit, NoPE + RoPE parts
        lse[r] = torch.logsumexp(scores, dim=-1)
        o[r] = torch.softmax(scores, dim=-1) @ dequantize(lat[:, :v_head_dim], v_scale)  # [H, Dv]: values are kv_c

    if out is None:
        out = torch.empty(num_rows, heads, v_head_dim, dtype=q.dtype, device=q.device)
    out.copy_(o)
    return (out, lse) if return_lse else out
