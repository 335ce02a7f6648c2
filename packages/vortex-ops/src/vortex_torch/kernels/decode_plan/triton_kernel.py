"""Triton decode plan: one launch per decode step, on the device, inside the CUDA graph.

Computes exactly what :mod:`.reference` defines. Grid ``(B, ceil(max_blocks_per_row / CHUNK))``: program
``(b, c)`` fills blocks ``[c * CHUNK, (c + 1) * CHUNK)`` of request ``b`` for all its ``H_kv`` rows; the
programs of column 0 also write the request's per-row entries. The CSR offsets need prefix sums over the
requests before ``b``: every program recomputes them from ``seq_lens`` (``B`` is at most a few thousand, so
this is a few kB of L2 reads) instead of a second launch or a grid-wide scan.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from vortex_torch.abs.layout import PoolLayout

from .._layout import block_id
from ..budget_rule import BudgetRule
from .reference import PlanOut

CHUNK = 1024  # blocks of one request per program


@triton.jit
def _budget(n, budget_ptr, offs_b, mask_b, ratio_bits: tl.int64, topk_val, bos, eos, max_sel,
            HAS_BUDGET: tl.constexpr, H_KV: tl.constexpr):  # fmt: skip
    """Budgets of requests ``offs_b`` with ``n`` blocks (int64): the rule or the given per-row tensor, clamped."""
    if HAS_BUDGET:
        b = tl.load(budget_ptr + offs_b * H_KV, mask=mask_b, other=0).to(tl.int64)
    else:
        ratio = ratio_bits.to(tl.int64).to(tl.float64, bitcast=True)  # fp64, as the reference's floor(n * ratio)
        by_ratio = tl.floor(n.to(tl.float64) * ratio).to(tl.int64)
        b = tl.minimum(n, tl.maximum(by_ratio, topk_val + bos + eos))
    lo = tl.minimum(n, bos + eos)
    hi = tl.minimum(n, max_sel)
    return tl.minimum(tl.maximum(b, lo), hi)


@triton.jit
def _plan_kernel(
    seq_lens_ptr,  # [B]
    req_pool_ptr,  # [B]
    req_to_token_ptr,  # [num_reqs, max_context] int32
    stride_req,
    budget_ptr,  # [R] policy budgets (HAS_BUDGET) or a dummy
    dense_indptr_ptr, dense_indices_ptr, last_len_ptr, budget_out_ptr, sel_indptr_ptr,  # PlanOut
    batch,
    max_blocks,
    ratio_bits: tl.int64,
    topk_val, bos, eos, max_sel,
    PAGE: tl.constexpr, BS: tl.constexpr, H_KV: tl.constexpr, H_PAD: tl.constexpr,
    B_PAD: tl.constexpr, CHUNK_: tl.constexpr, HAS_BUDGET: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    c = tl.program_id(1)
    offs_b = tl.arange(0, B_PAD)
    mask_b = offs_b < batch
    seq = tl.load(seq_lens_ptr + offs_b, mask=mask_b, other=1).to(tl.int64)  # [B_PAD]
    n_all = tl.minimum(tl.maximum((seq + BS - 1) // BS, 1), max_blocks)  # [B_PAD]
    bud_all = _budget(n_all, budget_ptr, offs_b, mask_b, ratio_bits, topk_val, bos, eos, max_sel,
                      HAS_BUDGET, H_KV)  # fmt: skip
    n_all = tl.where(mask_b, n_all, 0)
    bud_all = tl.where(mask_b, bud_all, 0)
    before = offs_b < b
    dense0 = tl.sum(tl.where(before, n_all, 0), axis=0) * H_KV  # first dense entry of request b
    sel0 = tl.sum(tl.where(before, bud_all, 0), axis=0) * H_KV
    mine = offs_b == b
    n_b = tl.sum(tl.where(mine, n_all, 0), axis=0)
    bud_b = tl.sum(tl.where(mine, bud_all, 0), axis=0)
    seq_b = tl.sum(tl.where(mine, seq, 0), axis=0)
    heads = tl.arange(0, H_PAD)
    mask_h = heads < H_KV
    if c == 0:
        rows = b * H_KV + heads  # [H_PAD]
        tl.store(dense_indptr_ptr + rows, (dense0 + heads * n_b).to(tl.int32), mask=mask_h)
        tl.store(sel_indptr_ptr + rows, (sel0 + heads * bud_b).to(tl.int32), mask=mask_h)
        last = tl.minimum(tl.maximum(seq_b - (n_b - 1) * BS, 1), BS)
        tl.store(last_len_ptr + rows, tl.zeros([H_PAD], tl.int32) + last.to(tl.int32), mask=mask_h)
        tl.store(budget_out_ptr + rows, tl.zeros([H_PAD], tl.int32) + bud_b.to(tl.int32), mask=mask_h)
        if b == batch - 1:
            tl.store(dense_indptr_ptr + batch * H_KV, (tl.sum(n_all, axis=0) * H_KV).to(tl.int32))
            tl.store(sel_indptr_ptr + batch * H_KV, (tl.sum(bud_all, axis=0) * H_KV).to(tl.int32))
    j = c * CHUNK_ + tl.arange(0, CHUNK_)  # [CHUNK] block positions of the request
    valid = j < n_b
    req = tl.load(req_pool_ptr + b).to(tl.int64)
    slot = tl.load(req_to_token_ptr + req * stride_req + j.to(tl.int64) * BS, mask=valid, other=0).to(tl.int64)
    ids = block_id(slot[:, None], heads[None, :].to(tl.int64), PAGE, BS, H_KV)  # [CHUNK, H_PAD]
    dst = dense0 + heads[None, :] * n_b + j[:, None]  # [CHUNK, H_PAD]
    tl.store(dense_indices_ptr + dst, ids.to(tl.int32), mask=valid[:, None] & mask_h[None, :])


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def plan_decode(
    layout: PoolLayout,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    max_blocks_per_row: int,
    rule: BudgetRule,
    budget: torch.Tensor | None = None,
    out: PlanOut | None = None,
) -> PlanOut:
    """The Triton plan (one launch, no host sync); same arguments and result as :func:`.reference.plan_decode_reference`."""
    batch, heads = int(req_pool_indices.shape[0]), layout.num_kv_heads
    rows, m = batch * heads, int(max_blocks_per_row)
    if out is None:
        out = PlanOut.allocate(rows, m, seq_lens.device)
    if out.last_block_len.numel() < rows or out.dense_indices.numel() < rows * m:
        raise ValueError(
            f"plan buffers hold {out.last_block_len.numel()} rows x "
            f"{out.dense_indices.numel() // max(1, out.last_block_len.numel())} blocks; need {rows} x {m}"
        )
    if req_to_token.stride(1) != 1:
        raise ValueError("req_to_token must have a contiguous last dim")
    if batch == 0:
        out.dense_indptr[:1].zero_()
        out.sel_indptr[:1].zero_()
        return out
    ratio_bits = struct.unpack("<q", struct.pack("<d", float(rule.topk_ratio)))[0]
    grid = (batch, triton.cdiv(m, CHUNK))
    _plan_kernel[grid](
        seq_lens, req_pool_indices, req_to_token, req_to_token.stride(0),
        budget if budget is not None else seq_lens,
        out.dense_indptr, out.dense_indices, out.last_block_len, out.budget, out.sel_indptr,
        batch, m, ratio_bits, rule.topk_val, rule.bos, rule.eos, rule.max_selected_per_row,
        PAGE=layout.page_size, BS=layout.block_size, H_KV=heads, H_PAD=_next_pow2(heads),
        B_PAD=max(16, _next_pow2(batch)), CHUNK_=CHUNK, HAS_BUDGET=budget is not None,
        num_warps=4,
    )  # fmt: skip
    return out
