"""The CPU reference runtime (vortex_torch.flow.runtime): pool layout, forward_cache firing, budgets,
selection invariants, dense equivalence and needle finding. Sizes are small so the file runs in seconds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.flow import build_vflow, vFlow
from vortex_torch.flow.compiler.base import FlowExecutor, SelectionSpec
from vortex_torch.flow.compiler.reference import ReferenceExecutor
from vortex_torch.flow.runtime import (
    OutOfPagesError,
    PagedKVPool,
    ReferenceRuntime,
    RuntimeConfig,
    make_needle_context,
    measure_flow,
    run_synthetic,
)
from vortex_torch.flow.trace import TracedFlow

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "custom_sparse_attention.py"
MIXED = [1, 15, 16, 17, 33, 70]  # single token, partial block, exact block, one past, ..., several pages


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The runtime issues thousands of tiny ops; intra-op threads only add overhead (8x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quickstart() -> vFlow:
    """A fresh instance of the quick-start flow (centroid per block, mean query, topK)."""
    return build_vflow("custom_sparse_attention", module_path=str(EXAMPLE))


class CountingExecutor(ReferenceExecutor):
    """Reference executor that records every block id forward_cache is run on, and checks the block's K/V are
    complete at that moment (equal to what the test wrote)."""

    def __init__(self, traced: TracedFlow, layout: PoolLayout) -> None:
        super().__init__(traced, layout)
        self.cache_ids: list[int] = []

    def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
        self.cache_ids += block_ids.tolist()
        super().run_cache(fields, block_ids)


def dense_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int) -> torch.Tensor:
    """Plain attention of one request from its raw stream: ``q [H_q, D]``, ``k/v [L, H_kv, D]`` -> ``[H_q, D]``."""
    k = k.double().transpose(0, 1).repeat_interleave(group, 0)  # [H_q, L, D]
    v = v.double().transpose(0, 1).repeat_interleave(group, 0)
    p = torch.softmax(
        (q.double()[:, None, :] @ k.transpose(1, 2))[:, 0] / math.sqrt(q.shape[-1]), -1
    )  # [H_q, L]
    return (p[:, None, :] @ v)[:, 0]


# -- config ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"block_size": 12}, "block_size"),
        ({"page_size": 24}, "page_size"),
        ({"block_reserved_eos": 0}, "block_reserved_eos"),
        ({"block_reserved_bos": -1}, "block_reserved_bos"),
        ({"topk_val": -1}, "topk_val"),
        ({"topk_ratio": 1.5}, "topk_ratio"),
        ({"layers_skip": [0]}, "layers_skip"),
        ({"executor": "fast"}, "executor"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RuntimeConfig.{field}"):
        RuntimeConfig(**kwargs)


def test_runtime_rejects_skip_layer_out_of_range() -> None:
    with pytest.raises(ValueError, match="layers_skip"):
        ReferenceRuntime(quickstart(), 2, 1, 16, 1, RuntimeConfig(layers_skip=(2,)), 8)


# -- pool -----------------------------------------------------------------------------------------------------------
def test_pool_slots_layout_and_completed_blocks() -> None:
    layout = PoolLayout(page_size=32, block_size=16, num_kv_heads=2)
    pool = PagedKVPool(layout, 6, 1, 4, {"c": (1, 4)}, kv_dtype=torch.float32, aux_dtype=torch.float32)
    pool.add_request("a")
    pool.add_request("b")
    sa = pool.extend("a", 20)  # page 1, then a second page for tokens 32..
    sb = pool.extend("b", 3)
    sa2 = pool.extend("a", 20)
    assert pool.pages("a") == [1, 3] and pool.pages("b") == [2]  # page 0 reserved, new page only when full
    assert sa.tolist() == list(range(32, 52)) and sb.tolist() == [64, 65, 66]
    assert sa2.tolist() == list(range(52, 64)) + list(range(96, 104))
    slots = pool.token_slots("a")
    k = torch.randn(40, 2, 4)
    done = pool.write(0, slots, k, -k)
    # blocks whose last token was written: positions 15 and 31 (page 1), none on page 3 yet (8 tokens)
    assert done.tolist() == [layout.block_id(torch.tensor(s), h).item() for s in (47, 63) for h in (0, 1)]
    # K/V stay in SGLang's native layout: [num_slots, H_kv, D], token slot s of head h at [s, h]
    assert pool.k_cache(0).shape == pool.v_cache(0).shape == (6 * 32, 2, 4)
    assert torch.equal(pool.k_cache(0)[slots], k) and torch.equal(pool.v_cache(0)[slots], -k)
    flat = pool.k_cache(0).reshape(-1)
    for pos in (0, 17, 39):
        for h in (0, 1):
            s = int(slots[pos])
            b = int(layout.block_id(torch.tensor(s), h))
            page, head, sub = b // (2 * 2), (b // 2) % 2, b % 2  # design §2: block -> page, head, sub-block
            t = s % 16
            off = page * (32 * 2 * 4) + head * 4 + (sub * 16 + t) * (2 * 4)  # element d = 0 of token t
            assert torch.equal(flat[off : off + 4], k[pos, h])
            assert torch.equal(layout.gather_blocks(pool.k_cache(0), torch.tensor([b]))[0, t], k[pos, h])
    read_k, read_v = pool.read(0, slots[5:9])
    assert torch.equal(read_k, k[5:9]) and torch.equal(read_v, -k[5:9])
    pool.release("a")
    assert pool.allocator.num_free == 4
    pool.add_request("c")
    with pytest.raises(OutOfPagesError, match="num_pages"):
        pool.extend("c", 5 * 32)


# -- forward_cache ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("page_size", "block_size"), [(16, 16), (32, 16), (32, 8)])
def test_forward_cache_fires_once_per_completed_block(page_size: int, block_size: int) -> None:
    executors: list[CountingExecutor] = []

    def factory(traced: TracedFlow, layout: PoolLayout) -> FlowExecutor:
        executors.append(CountingExecutor(traced, layout))
        return executors[-1]

    cfg = RuntimeConfig(
        topk_val=1, page_size=page_size, block_size=block_size, layers_skip=(1,), executor=factory
    )
    steps = block_size + 1  # every request completes at least one block while decoding
    run = run_synthetic(quickstart(), MIXED, steps, num_layers=3, config=cfg, shuffle_pages_seed=3)
    rt, (ex,) = run.runtime, executors
    # expected: every full block of every row of every non-skipped layer, once (layers share pages)
    expected = []
    for rid, n0 in zip(run.rids, MIXED, strict=True):
        slots = rt.pool.token_slots(rid)
        assert slots.numel() == n0 + steps
        last_slots = slots[block_size - 1 :: block_size]  # the last token of every full block
        expected += [int(rt.layout.block_id(s, h)) for s in last_slots for h in range(rt.num_kv_heads)]
    assert sorted(ex.cache_ids) == sorted(expected * 2)  # layers 0 and 2
    assert len(set(ex.cache_ids)) == len(expected)
    # the aux field is the mean key of the block, so forward_cache ran after the block's last token was written
    for layer in (0, 2):
        fields = rt.pool.fields(layer)
        ids = torch.tensor(expected)
        torch.testing.assert_close(
            fields["centroids"][ids].float(),
            rt.layout.gather_blocks(fields["k"], ids).float().mean(1, keepdim=True),
            atol=1e-2,
            rtol=1e-2,
        )
    assert set(rt.pool.fields(1)) == {"k", "v"}  # a skipped layer keeps no aux fields


def test_chunked_prefill_fires_each_block_once() -> None:
    executors: list[CountingExecutor] = []

    def factory(traced: TracedFlow, layout: PoolLayout) -> FlowExecutor:
        executors.append(CountingExecutor(traced, layout))
        return executors[-1]

    cfg = RuntimeConfig(page_size=32, executor=factory)
    rt = ReferenceRuntime(quickstart(), 1, 2, 16, 2, cfg, 16, torch.float32)
    rt.add_request(0)
    k = torch.randn(70, 2, 16)
    for lo, hi in ((0, 5), (5, 31), (31, 33), (33, 70)):  # chunk edges inside and on block boundaries
        rt.append_kv(0, [0], k[lo:hi], k[lo:hi], [hi - lo])
    slots = rt.pool.token_slots(0)
    want = sorted(int(rt.layout.block_id(slots[p], h)) for p in (15, 31, 47, 63) for h in (0, 1))
    assert sorted(executors[0].cache_ids) == want
    got_k, _ = rt.gather_kv(0, 0)
    assert torch.equal(got_k, k)


# -- attention ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("page_size", "block_size", "heads"), [(16, 16, 2), (32, 16, 2), (32, 8, 3)])
def test_full_budget_equals_dense(page_size: int, block_size: int, heads: int) -> None:
    cfg = RuntimeConfig(topk_val=1000, page_size=page_size, block_size=block_size)
    run = run_synthetic(
        quickstart(), MIXED, 3, config=cfg, shuffle_pages_seed=1, group_size=3, num_kv_heads=heads
    )
    g = run.runtime.group_size
    for step, plan in enumerate(run.plans):
        for layer in range(run.runtime.num_layers):
            sel = run.selections[step][layer]
            for r, n in enumerate(plan.dense.lengths().tolist()):
                assert sel.positions[r] == list(range(n))
            out = run.outputs[step][layer]
            torch.testing.assert_close(out, run.dense_outputs[step][layer], atol=1e-6, rtol=1e-6)
            # and against attention computed from the raw stream, independent of the pool layout
            for b, n in enumerate(plan.seq_lens):
                k, v = run.keys[layer][b][:n], run.values[layer][b][:n]
                want = dense_ref(run.queries[step][layer][b], k, v, g)
                torch.testing.assert_close(out[b].double(), want, atol=1e-5, rtol=1e-5)


def test_skip_layers_are_dense_and_sparse_layers_are_not() -> None:
    cfg = RuntimeConfig(topk_val=1, layers_skip=(0,))
    run = run_synthetic(quickstart(), [70, 130], 2, config=cfg)
    for step in range(2):
        dense_sel, sparse_sel = run.selections[step]
        assert dense_sel.dense and not sparse_sel.dense
        lengths = run.plans[step].dense.lengths().tolist()
        assert dense_sel.positions == [list(range(n)) for n in lengths]
        assert all(len(p) == 3 for p in sparse_sel.positions)  # bos + eos + topk_val
        torch.testing.assert_close(run.outputs[step][0], run.dense_outputs[step][0], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(run.outputs[step][1], run.dense_outputs[step][1], atol=1e-3)


def test_bos_eos_kept_and_short_rows_select_everything() -> None:
    cfg = RuntimeConfig(topk_val=2, block_reserved_bos=2, block_reserved_eos=2, block_size=8, page_size=16)
    lens = [1, 8, 40, 48, 49, 200]  # n_r = 1, 1, 5, 6, 7, 25 blocks; budget = min(n, 6)
    run = run_synthetic(quickstart(), lens, 2, config=cfg, head_dim=16)
    for step, plan in enumerate(run.plans):
        lengths = plan.dense.lengths().tolist()
        for sel in run.selections[step]:
            for r, n in enumerate(lengths):
                pos = sel.positions[r]
                assert pos == sorted(set(pos))
                if n <= 6:
                    assert pos == list(range(n))
                else:
                    assert len(pos) == 6
                    assert pos[:2] == [0, 1] and pos[-2:] == [n - 2, n - 1]
                b, h = divmod(r, run.runtime.num_kv_heads)
                assert sel.row(b, h) == pos
                assert plan.positions(torch.tensor(sel.row_block_ids(b, h))).tolist() == pos


def test_budget_fn_replaces_the_rule_and_is_clamped() -> None:
    def quarter(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
        return torch.minimum(n, torch.clamp(n // 4, min=bos + eos))

    run = run_synthetic(quickstart(), [70, 400], 1, config=RuntimeConfig(budget_fn=quarter), num_layers=1)
    assert run.plans[0].budget.tolist() == [2, 2, 6, 6]  # n = 5, 26 blocks per row, two heads each
    assert [len(p) for p in run.selections[0][0].positions] == [2, 2, 6, 6]

    def too_big(n: torch.Tensor, *_: object) -> torch.Tensor:
        return n + 1

    def too_small(n: torch.Tensor, *_: object) -> torch.Tensor:
        return n * 0 - 3

    # clamped to [min(n, bos + eos), n] as SGLang clamps a schedule_policy: whole rows, then bos + eos blocks
    for fn, want in ((too_big, [5, 5, 26, 26]), (too_small, [2, 2, 2, 2])):
        run = run_synthetic(quickstart(), [70, 400], 1, config=RuntimeConfig(budget_fn=fn), num_layers=1)
        assert run.plans[0].budget.tolist() == want
        assert [len(p) for p in run.selections[0][0].positions] == want

    def not_a_count(n: torch.Tensor, *_: object) -> torch.Tensor:
        return n / 2

    with pytest.raises(ValueError, match="must return an integer tensor shaped like n"):
        run_synthetic(quickstart(), [70], 1, config=RuntimeConfig(budget_fn=not_a_count), num_layers=1)


def test_broken_executor_is_caught() -> None:
    class Reversed(ReferenceExecutor):
        def run(self, q, fields, dense, selection: SelectionSpec, out: torch.Tensor, **kw) -> None:  # type: ignore[no-untyped-def]
            super().run(q, fields, dense, selection, out, **kw)
            out.copy_(out.flip(0))  # rows swapped and descending

    with pytest.raises(RuntimeError, match="selection of row 0"):
        run_synthetic(quickstart(), [100, 90], 1, config=RuntimeConfig(topk_val=1, executor=Reversed))


def test_decode_needs_the_layer_written() -> None:
    rt = ReferenceRuntime(quickstart(), 2, 1, 16, 1, RuntimeConfig(), 8, torch.float32)
    rt.add_request("x")
    rt.append_kv(0, ["x"], torch.randn(5, 1, 16), torch.randn(5, 1, 16), [5])
    rt.append_kv(1, ["x"], torch.randn(5, 1, 16), torch.randn(5, 1, 16), [5])
    rt.reserve(["x"], [1])
    plan = rt.plan(["x"])
    assert plan.seq_lens == [6]
    with pytest.raises(RuntimeError, match="append_kv this step's tokens"):
        rt.decode_attention(0, torch.randn(1, 1, 16), plan)
    rt.append_kv(0, ["x"], torch.randn(1, 1, 16), torch.randn(1, 1, 16), [1])
    assert rt.decode_attention(0, torch.randn(1, 1, 16), plan).shape == (1, 1, 16)
    rt.release("x")
    assert rt.pool.allocator.num_free == 7


@pytest.mark.parametrize(("page_size", "block_size", "heads"), [(16, 16, 2), (32, 8, 3)])
def test_triton_attention_matches_reference(page_size: int, block_size: int, heads: int) -> None:
    # On a CUDA machine the runtime must live on the GPU: CPU tensors would reach the compiled kernel without
    # Triton's interpreter (which the conftest switches on only where CUDA is absent) and raise.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = RuntimeConfig(topk_val=2, page_size=page_size, block_size=block_size)
    seq_lens = [20, 70]
    pages = 1 + sum(-(-(n + 1) // page_size) + 1 for n in seq_lens)  # as run_synthetic sizes its own pool

    def runtime(attention: Literal["reference", "triton"]) -> ReferenceRuntime:
        return ReferenceRuntime(quickstart(), 1, heads, 32, 2, cfg, pages, torch.float32, device,
                                attention=attention, shuffle_pages_seed=2)  # fmt: skip

    ref = run_synthetic(quickstart(), seq_lens, 1, seed=5, runtime=runtime("reference"))
    triton = run_synthetic(quickstart(), seq_lens, 1, seed=5, runtime=runtime("triton"))
    assert triton.outputs[0][0].device.type == device
    assert ref.selections[0][0].positions == triton.selections[0][0].positions
    torch.testing.assert_close(triton.outputs[0][0], ref.outputs[0][0], atol=1e-4, rtol=1e-4)


# -- needles -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quickstart_flow_finds_planted_needles(seed: int) -> None:
    ctx = make_needle_context(512, 64, 2, 4, seed)
    assert len(ctx.needle_positions) == 2 and all(16 <= p < 496 for p in ctx.needle_positions)
    rt = ReferenceRuntime(quickstart(), 1, 1, 64, 4, RuntimeConfig(topk_val=2), 40, torch.bfloat16)
    rt.add_request(0)
    rt.append_kv(0, [0], ctx.k[:, None], ctx.v[:, None], [512])
    plan = rt.plan([0])
    rt.decode_attention(0, ctx.q[None].to(torch.bfloat16), plan)
    chosen = rt.last_selection[0].row(0, 0)
    assert len(chosen) == 4  # 32 blocks, budget bos + eos + 2
    assert set(ctx.needle_blocks) <= set(chosen)


def test_measure_flow_reports_recall_and_error() -> None:
    res = measure_flow(quickstart(), seq_lens=[256, 512], budget_fraction=1 / 4, num_needles=2, head_dim=64)
    assert res["needle_recall"] == 1.0 == res["needle_recall_max"]
    assert res["pages_total"] == 2 * (16 + 32) and res["pages_selected"] == 2 * (4 + 8)
    assert 0.0 <= res["attn_rel_error"] <= res["attn_rel_error_max"] < 0.5
    assert [s["seq_len"] for s in res["per_seq"]] == [256, 512]
