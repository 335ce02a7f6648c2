"""The GPU decode planner, run on CPU tensors: equal to ``DenseBlocks.from_token_slots`` + the budget rule on
ragged batches, into fresh tensors and into capture-stable buffers; and the completed-block lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from vortex_sgl_testlib import FLOW_FILE, FLOW_NAME, scattered_requests

from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.engine.sgl.config import VortexConfig
from vortex_torch.engine.sgl.decode_core import VortexDecodeCore
from vortex_torch.engine.sgl.flow_spec import prepare_flow
from vortex_torch.engine.sgl.planner import (
    DecodePlanBuffers,
    completed_block_ids,
    count_completed_blocks,
    default_budget_fn,
    dummy_block_ids,
    max_budget_bound,
    plan_decode,
)
from vortex_torch.engine.sgl.policy import apply_policy
from vortex_torch.flow.runtime import RuntimeConfig
from vortex_torch.kernels.select.budget import default_budget, selection_indptr

LAYOUTS = [PoolLayout(16, 16, 2), PoolLayout(32, 8, 4), PoolLayout(4, 1, 1), PoolLayout(64, 16, 8)]
BATCHES = [[1], [1, 15, 16, 17, 33, 70], [64, 3, 200, 129], [16] * 5]


@pytest.mark.parametrize(
    "layout", LAYOUTS, ids=lambda lay: f"p{lay.page_size}b{lay.block_size}h{lay.num_kv_heads}"
)
@pytest.mark.parametrize("seq_lens", BATCHES, ids=lambda s: f"B{len(s)}")
@pytest.mark.parametrize("rule", [(3, 0.0, 1, 1), (0, 0.25, 2, 1), (100, 0.0, 1, 2)])
def test_plan_equals_dense_blocks_and_budget_rule(
    layout: PoolLayout, seq_lens: list[int], rule: tuple[int, float, int, int]
) -> None:
    max_ctx = 256
    m = -(-max_ctx // layout.block_size)
    req_to_token, rpi, slots = scattered_requests(
        layout, seq_lens, max_ctx, num_pages=600, seed=len(seq_lens)
    )
    plan = plan_decode(
        layout,
        req_to_token,
        rpi,
        torch.tensor(seq_lens),
        max_blocks_per_row=m,
        budget_fn=default_budget_fn(*rule),
    )
    ref = DenseBlocks.from_token_slots(layout, slots)
    budget = default_budget(ref.lengths(), *rule)
    nnz = ref.nnz
    assert torch.equal(plan.dense_indptr, ref.indptr)
    assert torch.equal(plan.dense_indices[:nnz], ref.indices)
    assert torch.equal(plan.last_block_len, ref.last_block_len)
    assert torch.equal(plan.budget, budget)
    assert torch.equal(plan.sel_indptr, selection_indptr(budget))
    assert plan.dense_indices.numel() == plan.sel_indices.numel() == len(seq_lens) * layout.num_kv_heads * m
    exact = plan.dense_blocks_with_row_index()
    assert torch.equal(exact.row_of, ref.row_of) and torch.equal(exact.pos, ref.pos)
    assert plan.max_selected_per_row == m


def test_plan_into_buffers_keeps_addresses() -> None:
    layout = PoolLayout(32, 8, 2)
    max_ctx, m = 512, 64
    bufs = DecodePlanBuffers.allocate(max_rows=8 * layout.num_kv_heads, max_blocks_per_row=m, device="cpu")
    addresses = None
    for seed, lens in enumerate([[5, 300, 64], [1, 2, 3], [511, 100, 8]]):
        req_to_token, rpi, _ = scattered_requests(layout, lens, max_ctx, num_pages=200, seed=seed)
        fresh = plan_decode(layout, req_to_token, rpi, torch.tensor(lens), max_blocks_per_row=m,
                            budget_fn=default_budget_fn(4, 0.0, 1, 1))  # fmt: skip
        into = plan_decode(layout, req_to_token, rpi, torch.tensor(lens), max_blocks_per_row=m,
                           budget_fn=default_budget_fn(4, 0.0, 1, 1), buffers=bufs)  # fmt: skip
        for name in ("dense_indptr", "last_block_len", "budget", "sel_indptr"):
            assert torch.equal(getattr(into, name), getattr(fresh, name)), name
        nnz = int(fresh.dense_indptr[-1])  # past nnz the list is scratch (a reused buffer keeps old entries)
        assert torch.equal(into.dense_indices[:nnz], fresh.dense_indices[:nnz])
        now = [
            t.data_ptr()
            for t in (into.dense_indptr, into.dense_indices, into.sel_indices, into.last_block_len)
        ]
        assert addresses is None or now == addresses  # same batch size -> same addresses (CUDA graphs)
        addresses = now
    with pytest.raises(ValueError, match="does not fit"):
        plan_decode(layout, req_to_token, torch.arange(9), torch.ones(9, dtype=torch.int64), max_blocks_per_row=m,
                    budget_fn=default_budget_fn(4, 0.0, 1, 1), buffers=bufs)  # fmt: skip


def test_schedule_policy_budget_is_clamped() -> None:
    def policy(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
        return torch.clamp(topk_val + bos + eos + n // 8, max=12)

    layout = PoolLayout(16, 16, 2)
    lens = [1, 20, 200, 1000, 4000]
    req_to_token, rpi, slots = scattered_requests(layout, lens, 4096, num_pages=700, seed=3)
    fn = lambda n: apply_policy(policy, n.to(torch.int32), 2, 0.0, 1, 1)
    plan = plan_decode(layout, req_to_token, rpi, torch.tensor(lens), max_blocks_per_row=256, budget_fn=fn)
    n = DenseBlocks.from_token_slots(layout, slots).lengths()
    want = torch.minimum(torch.maximum(policy(n, 2, 0.0, 1, 1), torch.clamp(n, max=2)), n).to(torch.int32)
    assert torch.equal(plan.budget, want)


def too_large(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    return n + 100


def too_small(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    return n * 0 - 5


def mixed(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    return torch.where(n % 2 == 0, n + 7, torch.ones_like(n))  # above n on even rows, below bos + eos on odd


@pytest.mark.parametrize("policy", [None, too_large, too_small, mixed], ids=lambda p: getattr(p, "__name__", "rule"))
def test_reference_runtime_and_planner_agree_on_budgets(
    policy: Callable[..., torch.Tensor] | None, tmp_path: Path
) -> None:
    """One budget rule: rows of n below, at and above bos + eos = 3 blocks get the same clamped budget from the
    reference runtime (RuntimeConfig.budget) and from SGLang's planner (the decode core's plan kernel)."""
    topk, bos, eos, layout = 1, 2, 1, PoolLayout(page_size=8, block_size=4, num_kv_heads=2)
    lens = [1, 4, 5, 8, 9, 12, 13, 40, 200]  # n = 1, 1, 2, 2, 3, 3, 4, 10, 50 blocks
    cfg = VortexConfig(module_path=str(FLOW_FILE), module_name=FLOW_NAME, block_size=4, topk_val=topk,
                       block_reserved_bos=bos, block_reserved_eos=eos, schedule_policy=policy, dtype="float32",
                       impl_backend="reference", compilation_cache_dir=str(tmp_path))  # fmt: skip
    core = VortexDecodeCore(prepare_flow(cfg, head_dim=32, group_size=2, kv_dtype=torch.float32), layout,
                            context_len=256, device="cpu")  # fmt: skip
    req_to_token, rpi, slots = scattered_requests(layout, lens, 256, num_pages=60, seed=5)
    planned = core.plan(req_to_token, rpi, torch.tensor(lens)).budget
    n = DenseBlocks.from_token_slots(layout, slots).lengths()
    reference = RuntimeConfig(topk_val=topk, block_reserved_bos=bos, block_reserved_eos=eos, block_size=4,
                              page_size=8, budget_fn=policy).budget(n)  # fmt: skip
    raw = default_budget(n, topk, 0.0, bos, eos) if policy is None else policy(n, topk, 0.0, bos, eos)
    want = torch.minimum(torch.maximum(raw, torch.clamp(n, max=bos + eos)), n).to(torch.int32)
    assert sorted(set(n.tolist())) == [1, 2, 3, 4, 10, 50]
    assert torch.equal(reference, want) and torch.equal(planned, want)


def test_max_budget_bound() -> None:
    assert max_budget_bound(100, 30, 0.0, 1, 1) == 32
    assert max_budget_bound(100, 30, 0.5, 1, 1) == 50
    assert max_budget_bound(10, 30, 0.0, 1, 1) == 10


@pytest.mark.parametrize("layout", [PoolLayout(16, 16, 2), PoolLayout(32, 8, 3), PoolLayout(8, 2, 1)])
def test_completed_block_ids(layout: PoolLayout) -> None:
    g = torch.Generator().manual_seed(0)
    # an extend of three requests (prefix, new tokens) on scattered pages, in SGLang's out_cache_loc order
    prefix, extend = [0, 13, 32], [40, 7, 1]
    _, _, slots = scattered_requests(
        layout, [p + e for p, e in zip(prefix, extend, strict=True)], 128, 200, 1
    )
    loc = torch.cat([s[p:] for s, p in zip(slots, prefix, strict=True)])
    heads = torch.arange(layout.num_kv_heads)
    want = [int(layout.block_id(torch.tensor(s), h)) for s in loc.tolist() if (s + 1) % layout.block_size == 0
            for h in heads.tolist()]  # fmt: skip
    count = count_completed_blocks(layout.block_size, prefix, extend)
    assert count * layout.num_kv_heads == len(want)
    assert completed_block_ids(layout, loc, count=count).tolist() == want

    masked = completed_block_ids(layout, loc)  # decode style: one candidate per slot and head
    assert masked.numel() == loc.numel() * layout.num_kv_heads
    dummies = set(dummy_block_ids(layout, "cpu").tolist())
    assert [b for b in masked.tolist() if b not in dummies] == want
    assert all(int(layout.block_page(torch.tensor(d))) == 0 for d in dummies)  # the padding page
    del g
