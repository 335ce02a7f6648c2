"""The FlashInfer path's host side, on CPU: the host token plan agrees with the device planner row by row,
budgets computed on the host drive the device plan, the one-token-page view addresses SGLang's buffer, and
attention over the token table (FlashInfer's page-size-1 decode, written out in torch) equals Vortex's sparse
attention over the same selection. The FlashInfer kernel itself runs in the GPU suite."""

from __future__ import annotations

import pytest
import torch
from vortex_sgl_testlib import scattered_requests

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.engine.sgl.flashinfer_decode import host_token_plan, one_token_pages
from vortex_torch.engine.sgl.planner import default_budget_fn, plan_decode
from vortex_torch.engine.sgl.policy import apply_policy
from vortex_torch.kernels.select import select_blocks
from vortex_torch.kernels.sparse_decode import sparse_decode_attention_reference
from vortex_torch.kernels.token_table import block_token_table, token_counts

pytestmark = pytest.mark.sglang


def policy(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    return torch.clamp(topk_val + bos + eos + n // 8, max=12)


RULES = {
    "default": default_budget_fn(3, 0.0, 1, 1),
    "ratio": default_budget_fn(0, 0.5, 2, 1),
    "policy": lambda n: apply_policy(policy, n.to(torch.int32), 2, 0.0, 1, 1),
    "full": default_budget_fn(1 << 20, 0.0, 1, 1),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("layout", [PoolLayout(16, 16, 2), PoolLayout(32, 8, 3)], ids=["p16b16h2", "p32b8h3"])
def test_host_plan_matches_device_plan(rule: str, layout: PoolLayout) -> None:
    lens = [1, 15, 16, 17, 100, 333, 48]
    req_to_token, rpi, _ = scattered_requests(layout, lens, 512, num_pages=300, seed=1)
    m = 512 // layout.block_size
    budget, tok_indptr = host_token_plan(
        torch.tensor(lens), block_size=layout.block_size, num_kv_heads=layout.num_kv_heads,
        max_blocks_per_row=m, budget_fn=RULES[rule],
    )  # fmt: skip
    device_plan = plan_decode(layout, req_to_token, rpi, torch.tensor(lens), max_blocks_per_row=m,
                              budget_fn=RULES[rule])  # fmt: skip
    assert torch.equal(budget, device_plan.budget)
    counts = token_counts(device_plan.budget, device_plan.last_block_len, layout.block_size)
    assert torch.equal(tok_indptr[1:].long(), counts.cumsum(0))
    if rule == "full":
        assert tok_indptr[1:].diff().tolist() == [n for n in lens for _ in range(layout.num_kv_heads)][1:]
    # budgets from the host replace the device rule
    forced = plan_decode(layout, req_to_token, rpi, torch.tensor(lens), max_blocks_per_row=m,
                         budget_fn=lambda n: n * 0 + 999, budget=budget)  # fmt: skip
    assert torch.equal(forced.budget, budget) and torch.equal(forced.sel_indptr, device_plan.sel_indptr)


def test_one_token_pages_view() -> None:
    buf = torch.randn(40, 3, 8)
    view = one_token_pages(buf)
    assert view.shape == (120, 1, 8) and view.data_ptr() == buf.data_ptr()
    for slot, head in [(0, 0), (5, 2), (39, 1)]:
        assert torch.equal(view[slot * 3 + head, 0], buf[slot, head])
    with pytest.raises(ValueError, match="contiguous"):
        one_token_pages(buf.transpose(0, 1).contiguous().transpose(0, 1))


@pytest.mark.parametrize("rule", ["default", "full"])
def test_attention_over_the_token_table_equals_sparse_attention(rule: str) -> None:
    """Selection -> token table -> softmax over those tokens (what FlashInfer's page-size-1 decode computes)
    equals Vortex's sparse attention over the block selection, partial last blocks included."""
    layout, group, dim = PoolLayout(16, 8, 2), 2, 16
    lens = [1, 9, 40, 77, 130]
    req_to_token, rpi, _ = scattered_requests(layout, lens, 256, num_pages=80, seed=4)
    m = 256 // layout.block_size
    budget, tok_indptr = host_token_plan(
        torch.tensor(lens), block_size=8, num_kv_heads=2, max_blocks_per_row=m, budget_fn=RULES[rule]
    )
    plan = plan_decode(layout, req_to_token, rpi, torch.tensor(lens), max_blocks_per_row=m,
                       budget_fn=RULES[rule], budget=budget)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(80 * 16, 2, dim, generator=gen), torch.randn(80 * 16, 2, dim, generator=gen)
    q = torch.randn(plan.num_rows, group, dim, generator=gen)
    nnz = int(plan.dense_indptr[-1])
    score = torch.randn(nnz, generator=gen)
    select_blocks(score, plan.dense_indptr, plan.dense_indices[:nnz], plan.sel_indptr, 1, 1, out=plan.sel_indices,
                  max_blocks_per_row=m)  # fmt: skip
    table = block_token_table(
        plan.sel_indptr, plan.sel_indices, plan.last_block_len, tok_indptr, torch.zeros(int(tok_indptr[-1]),
        dtype=torch.int32), page_size=16, block_size=8, num_kv_heads=2, max_selected_per_row=m,
    )  # fmt: skip
    kp, vp = one_token_pages(k), one_token_pages(v)
    out = torch.empty_like(q)
    for r in range(plan.num_rows):
        pages = table[tok_indptr[r] : tok_indptr[r + 1]].long()
        p = torch.softmax(q[r] @ kp[pages, 0].T * dim**-0.5, dim=-1)  # [G, T]
        out[r] = p @ vp[pages, 0]
    ref = sparse_decode_attention_reference(
        q, k, v, plan.sel_indptr, plan.sel_indices, plan.last_block_len, page_size=16, block_size=8
    )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
