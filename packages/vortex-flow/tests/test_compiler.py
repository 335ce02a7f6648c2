"""The flow compiler: generated Triton kernels (TritonExecutor) == the graph interpreter (ReferenceExecutor).

Every indexer and cache op is exercised by one of the small flows of ``flows_for_tests`` on two pools with
odd shapes (head_dim 24, group size 3, block 4 in page 8; head_dim 16, group 2, block 8 in page 16 with bf16
fields and K/V), K/V as strided views of SGLang-style ``[num_slots, H_kv, D]`` buffers, ragged batches (rows of
one block, rows shorter than the budget, partial last blocks) and a block chunk smaller than the longest rows,
so a row spans several programs. Compared: every field after ``run_cache``, then the selection, the score
itself (Saved into a ``probe`` field) and every field after a decode step (two steps for flows with state).
On CPU the kernels run in Triton's interpreter (the repository conftest sets ``TRITON_INTERPRET=1``); one
test also lowers every generated kernel for an H100 (sm_90) with Triton's NVIDIA backend, which needs no GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, Geometry, PoolLayout, vTensor
from vortex_torch.abs.layout import DenseBlocks
from vortex_torch.flow import build_vflow
from vortex_torch.flow.compiler.base import SelectionSpec
from vortex_torch.flow.compiler.reference import ReferenceExecutor
from vortex_torch.flow.compiler.schedule import CompileError
from vortex_torch.flow.compiler.triton_executor import FusedAttention, TritonExecutor
from vortex_torch.flow.trace import TracedFlow, trace_flow
from vortex_torch.kernels.select import default_budget, selection_indptr
from vortex_torch.kernels.sparse_decode import sparse_decode_attention_reference

_spec = importlib.util.spec_from_file_location(
    "flows_for_tests", Path(__file__).with_name("flows_for_tests.py")
)
assert _spec is not None and _spec.loader is not None
flows_for_tests = importlib.util.module_from_spec(_spec)
sys.modules["flows_for_tests"] = flows_for_tests
_spec.loader.exec_module(flows_for_tests)
FLOWS = flows_for_tests.FLOWS
SpecFlow = flows_for_tests.SpecFlow

# padded lanes of a tile hold don't-care values (0 / 0 in a padded Normalize lane): numpy warns about them
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

REPO = Path(__file__).resolve().parents[3]
BLOCK_CHUNK = 8  # blocks per program: the longest rows (13 blocks) span two programs
BOS, EOS, TOPK, RATIO = 1, 1, 2, 0.25


@dataclass(frozen=True)
class Config:
    name: str
    block_size: int
    page_size: int
    head_dim: int
    group_size: int
    heads: int
    dtype: torch.dtype
    seq_lens: tuple[int, ...]


CONFIGS = {
    # the last request's last block is full: a decode step whose newest token completes it (folded cache update)
    "d24g3b4": Config("d24g3b4", 4, 8, 24, 3, 2, torch.float32, (1, 6, 23, 50, 32)),
    "d16g2b8bf16": Config("d16g2b8bf16", 8, 16, 16, 2, 2, torch.bfloat16, (1, 9, 60, 100, 64)),
}


@dataclass
class Pool:
    cfg: Config
    geometry: Geometry
    layout: PoolLayout
    num_blocks: int
    kv: dict[str, torch.Tensor]
    dense: DenseBlocks
    selection: SelectionSpec
    qs: list[torch.Tensor]
    block_ids: torch.Tensor  # the blocks run_cache summarises: most of the pool, shuffled
    seed: int

    def fields(self, spec: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
        """k, v and every aux field, the latter filled with distinct random values (what is not overwritten
        must stay as it was)."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        out = dict(self.kv)  # read-only: shared
        for name, (r, c) in sorted(spec.items()):
            out[name] = (
                torch.randn(self.num_blocks, r, c, generator=gen)
                .to(self.geometry.dtype)
                .to(self.qs[0].device)
            )
        return out


# The same comparisons on a real GPU (compiled kernels, not the interpreter), when one is present.
_POOL_PARAMS = [pytest.param((name, "cpu"), id=name) for name in sorted(CONFIGS)] + [
    pytest.param((name, "cuda"), id=f"{name}-cuda", marks=[pytest.mark.gpu]) for name in sorted(CONFIGS)
]


@pytest.fixture(scope="module", params=_POOL_PARAMS)
def pool(request: pytest.FixtureRequest) -> Pool:
    name, device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("the CPU variants run in Triton's interpreter, on machines without CUDA")
    cfg = CONFIGS[name]
    seed = 1234 + len(cfg.name)
    gen = torch.Generator().manual_seed(seed)
    layout = PoolLayout(page_size=cfg.page_size, block_size=cfg.block_size, num_kv_heads=cfg.heads)
    pages_per_req = [-(-n // cfg.page_size) for n in cfg.seq_lens]
    num_pages = sum(pages_per_req) + 3
    order = torch.randperm(num_pages, generator=gen).tolist()  # requests get scattered pages
    slots = []
    for n, n_pages in zip(cfg.seq_lens, pages_per_req, strict=True):
        pages, order = order[:n_pages], order[n_pages:]
        per_page = [torch.arange(p * cfg.page_size, (p + 1) * cfg.page_size) for p in pages]
        slots.append(torch.cat(per_page)[:n])
    dense = DenseBlocks.from_token_slots(layout, slots)
    nb = layout.num_blocks(num_pages)
    # SGLang's native per-layer K/V [num_slots, H_kv, D], here as views of one [num_slots, 2, H_kv, D] buffer:
    # the kernels must follow the buffers' strides, not assume contiguous K and V
    both = torch.randn(num_pages * cfg.page_size, 2, cfg.heads, cfg.head_dim, generator=gen).to(cfg.dtype)
    kv = {"k": both[:, 0], "v": both[:, 1]}
    budget = default_budget(dense.lengths(), TOPK, RATIO, BOS, EOS)
    selection = SelectionSpec(selection_indptr(budget), BOS, EOS)
    g, d = cfg.group_size, cfg.head_dim
    qs = [torch.randn(dense.num_rows, g, d, generator=gen).to(cfg.dtype) for _ in range(2)]
    ids = torch.randperm(nb, generator=gen)[: nb - 5].to(torch.int32)
    geometry = Geometry(
        block_size=cfg.block_size, head_dim=d, group_size=g, dtype=cfg.dtype, kv_dtype=cfg.dtype
    )
    lengths = dense.lengths()
    assert (
        int(lengths.min()) == 1
        and bool((budget.long() == lengths).any())
        and bool((budget.long() < lengths).any())
    )
    dev = torch.device(device)
    dense = DenseBlocks(
        *(getattr(dense, f).to(dev) for f in ("indptr", "indices", "last_block_len", "row_of", "pos"))
    )
    selection = SelectionSpec(selection.sel_indptr.to(dev), BOS, EOS)
    kv = {k: v.to(dev) for k, v in kv.items()}
    return Pool(cfg, geometry, layout, nb, kv, dense, selection, [q.to(dev) for q in qs], ids.to(dev), seed)


@pytest.fixture(scope="module", autouse=True)
def _interpreter_rounds_bf16_to_nearest_even() -> Iterator[None]:
    """Triton's interpreter truncates fp32 -> bf16 (``create_fp_trunc`` drops the low bits) where a GPU rounds
    to nearest even, as torch does. Make it round like the GPU so that bf16 fields can be compared tightly."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    truncate = builder.create_fp_trunc

    def fp_trunc(self: Any, src: Any, dst_type: Any) -> Any:
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return truncate(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
        out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        out = np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), out)  # stay NaN (quiet)
        return interpreter.TensorHandle(out, tl.bfloat16)

    builder.create_fp_trunc = fp_trunc
    try:
        yield
    finally:
        builder.create_fp_trunc = truncate


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("vortex_cache"))


def _tol(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol): both sides compute in fp32 in different orders; a bf16 value may round the other way."""
    return (1e-4, 1e-5) if dtype == torch.float32 else (1.6e-2, 1e-3)


def _assert_fields(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == want.keys()
    for name in want:
        where = f"{what}: field {name!r}"
        rtol, atol = _tol(want[name].dtype)

        def msg(m: str, w: str = where) -> str:
            return f"{w}: {m}"

        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=msg)
        if want[name].dtype != torch.float32:
            # both round to nearest even: only an fp32 difference at a rounding boundary may flip an element
            flipped = (got[name] != want[name]).float().mean().item()
            assert flipped <= 0.02, f"{where}: {flipped:.1%} of the elements differ (rounding mode?)"


def _clone(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v if k in ("k", "v") else v.clone() for k, v in fields.items()}


def _select(ex: Any, pool: Pool, q: torch.Tensor, fields: dict[str, torch.Tensor]) -> list[int]:
    out = torch.full((pool.selection.total,), -1, dtype=torch.int32, device=q.device)
    ex.run(q, fields, pool.dense, pool.selection, out)
    return out.tolist()


def compare(
    traced: TracedFlow, pool: Pool, cache_dir: str, *, fuse_selection: bool = False, prefetch_indices: bool = False,
    block_chunk: int = BLOCK_CHUNK,
) -> TritonExecutor:  # fmt: skip
    """Run both executors on the same inputs and assert the compiled one reproduces the reference."""
    ref = ReferenceExecutor(traced, pool.layout)
    tri = TritonExecutor(
        traced, pool.layout, block_chunk=block_chunk, cache_dir=cache_dir, fuse_selection=fuse_selection,
        prefetch_indices=prefetch_indices,
    )  # fmt: skip
    want = pool.fields(traced.fields)
    got = _clone(want)
    ref.run_cache(want, pool.block_ids)
    tri.run_cache(got, pool.block_ids)
    _assert_fields(got, want, "after run_cache")
    state = want
    stateful = bool(traced.saved_fields - {"probe"})  # a second step reads what the first one Saved
    for step, q in enumerate(pool.qs[: 2 if stateful else 1]):
        want, got = _clone(state), _clone(state)  # same inputs each step: a rounding flip must not compound
        sel_ref = _select(ref, pool, q, want)
        sel_tri = _select(tri, pool, q, got)
        _assert_fields(got, want, f"decode step {step}")  # Saved state and the score probe included
        assert sel_tri == sel_ref, f"decode step {step}: selections differ\n{tri.source}"
        state = want
    if tri.folds_cache_update:
        check_folded_cache_update(ref, tri, pool, state)
    return tri


def _decode_slots(pool: Pool) -> torch.Tensor:
    """One new token slot per request, as a decode step has: the slot of the request's newest token, the last
    of its last block. It completes that block when the block is full, else nothing (a decode step's completed
    block is always its row's last: the scoring launch folds the update into the program of the row's last
    chunk)."""
    heads = pool.layout.num_kv_heads
    ptr, ids = pool.dense.indptr.tolist(), pool.dense.indices.cpu()
    last_len = pool.dense.last_block_len.cpu()
    slots = []
    for r in range(0, pool.dense.num_rows, heads):
        blk = ids[ptr[r + 1] - 1].reshape(1)
        slots.append(int(pool.layout.block_token_slots(blk)[0, 0]) + int(last_len[r]) - 1)
    return torch.tensor(slots, dtype=torch.int64, device=pool.dense.indptr.device)


def check_folded_cache_update(
    ref: ReferenceExecutor, tri: TritonExecutor, pool: Pool, state: dict[str, torch.Tensor]
) -> None:
    """A decode step with the cache update folded into the scoring launch (``new_locs``) equals the update
    apart, then the indexer: the completed blocks' summaries first spoiled, so a missed or late update shows in
    the fields and (through the scores) in the selection."""
    locs = _decode_slots(pool)
    heads = torch.arange(pool.layout.num_kv_heads, device=locs.device)
    done = locs[pool.layout.completes_block(locs)]
    assert 0 < done.numel() < locs.numel(), "the test needs slots that complete a block and slots that do not"
    blocks = pool.layout.block_id(done[:, None], heads[None, :]).reshape(-1).long()
    spoiled = _clone(state)
    for name in set(spoiled) - {"k", "v"}:
        spoiled[name][blocks] = 1e3
    want, got = _clone(spoiled), _clone(spoiled)
    ref.run_cache(want, blocks.to(torch.int32))
    sel_ref = _select(ref, pool, pool.qs[0], want)
    out = torch.full((pool.selection.total,), -1, dtype=torch.int32, device=locs.device)
    tri.run(pool.qs[0], got, pool.dense, pool.selection, out, new_locs=locs)
    _assert_fields(got, want, "folded decode cache update")
    assert out.tolist() == sel_ref, f"folded decode cache update: selections differ\n{tri.source}"


@pytest.mark.parametrize("prefetch", [False, True], ids=["ids-in-loop", "ids-prefetched"])
@pytest.mark.parametrize("flow_name", sorted(FLOWS))
def test_compiled_equals_reference(flow_name: str, pool: Pool, cache_dir: str, prefetch: bool) -> None:
    """Every test flow, compiled, does what the reference runtime does; with ``prefetch_indices`` too, at a
    chunk of 2 blocks (so that a program's chunk loop runs several iterations and carries the look-ahead)."""
    traced = trace_flow(FLOWS[flow_name](), pool.geometry)
    if prefetch:
        compare(traced, pool, cache_dir, prefetch_indices=True, block_chunk=2)
    else:
        compare(traced, pool, cache_dir)


def test_prefetched_ids_leave_one_load_per_iteration(pool: Pool, cache_dir: str) -> None:
    """With ``prefetch_indices`` the chunk loop loads the NEXT chunk's block ids (carried into the next
    iteration), not this chunk's: the first chunk's ids are loaded before the loop."""
    flow = build_vflow("custom_sparse_attention", str(REPO / "examples" / "custom_sparse_attention.py"))
    fn = compare(trace_flow(flow, pool.geometry), pool, cache_dir, prefetch_indices=True, block_chunk=2).kernels[0].lines
    loop = next(i for i, line in enumerate(fn) if line.strip().startswith("for chunk in range("))
    before, inside = "\n".join(fn[:loop]), "\n".join(fn[loop:])
    assert "blk_next = tl.load(indices + (start + p_next)" in before
    assert "blk = blk_next.to(tl.int64)" in inside and "tl.load(indices + rag" not in inside
    assert inside.index("blk_next = tl.load(") < inside.index("BLK3 * ")  # issued before the summaries' load


# every shape of indexer kernel: a parallel stage handing off, scoring copied rows too (centroid, approx and
# state save a probe or state) or not (dead: no Save, copied rows only selected), a standalone first group
# (dim0), topK of a cache field with no scoring (field_score)
@pytest.mark.parametrize("flow_name", ["centroid", "approx", "state", "dead", "dim0", "field_score"])
@pytest.mark.parametrize("block_chunk", [2, 0], ids=["chunk2", "chunk-default"])
def test_fused_attention_is_selection_then_sparse_attention(
    flow_name: str, block_chunk: int, pool: Pool, cache_dir: str
) -> None:
    """``fuse_attention``: one launch selects what the reference selects and attends every row over that
    selection as the sparse attention reference does (rows copied whole, one-block rows, partial last blocks
    and rows past the budget in the pool), into ``attention.out``."""
    traced = trace_flow(FLOWS[flow_name](), pool.geometry)
    ref = ReferenceExecutor(traced, pool.layout)
    tri = TritonExecutor(traced, pool.layout, block_chunk=block_chunk, cache_dir=cache_dir, fuse_attention=True)
    assert tri.indexer_launches == 1 and "_vx_attend_split(" in tri.source
    fields = pool.fields(traced.fields)
    ref.run_cache(fields, pool.block_ids)
    q = pool.qs[0]
    want_sel = _select(ref, pool, q, _clone(fields))
    o = torch.full_like(q, float("nan"))  # every row must be written
    sel = torch.full((pool.selection.total,), -1, dtype=torch.int32, device=q.device)
    att = FusedAttention(k=fields["k"], v=fields["v"], last_block_len=pool.dense.last_block_len, out=o, sm_scale=0.3)
    tri.run(q, _clone(fields), pool.dense, pool.selection, sel, attention=att)
    assert sel.tolist() == want_sel
    want_o = sparse_decode_attention_reference(
        q, fields["k"], fields["v"], pool.selection.sel_indptr, sel, pool.dense.last_block_len,
        page_size=pool.layout.page_size, block_size=pool.layout.block_size, sm_scale=0.3,
    )  # fmt: skip
    tol = 1e-4 if q.dtype == torch.float32 else 2e-2  # bf16: p rounded to bf16 before p @ v, as FlashInfer does
    torch.testing.assert_close(o.float(), want_o.float(), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="fuse_attention"):  # the launch needs its attention arguments
        tri.run(q, _clone(fields), pool.dense, pool.selection, sel)


def test_every_op_is_exercised(pool: Pool) -> None:
    """The flows above call every op of both op sets (so a new op without a test is noticed)."""
    seen: set[type] = set()
    for make in FLOWS.values():
        traced = trace_flow(make(), pool.geometry)
        seen.update(type(n.op) for g in (traced.indexer, traced.cache) for n in g.nodes)
    want = {getattr(ix, n) for n in ix.__all__ if n not in ("Context", "MASKED")}
    want |= {getattr(cx, n) for n in cx.__all__ if n != "Context"}
    missing = sorted(c.__module__ + "." + c.__name__ for c in want - seen)
    assert not missing, f"ops no test flow calls: {missing}"


class Cube(ix.elementwise._Unary):  # the docs/contributing-an-op.md example, kept here so the doc stays true
    """``(beta * x + alpha) ** 3``."""

    triton_expr = "({beta} * {x} + {alpha}) * ({beta} * {x} + {alpha}) * ({beta} * {x} + {alpha})"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        return (self.beta * xs[0] + self.alpha) ** 3


def _cube_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    return Cube(alpha=0.5)(ix.GeMV()(flows_for_tests.qmean(q, ctx), cache["c"], ctx=ctx), ctx=ctx)


def test_a_fused_elementwise_op_is_one_class(pool: Pool, cache_dir: str) -> None:
    """An op class with a ``reference`` and a ``triton_expr`` compiles and matches its reference: nothing else
    (no compiler change) is needed to add one."""
    flow = SpecFlow("cube", flows_for_tests.one_d, flows_for_tests.centroid, _cube_indexer)
    tri = compare(trace_flow(flow, pool.geometry), pool, cache_dir)
    assert [g.kind for g in tri.groups] == ["fused", "select"]


# -- schedule: fusion, dead ops, launches ----------------------------------------------------------------------


@pytest.mark.parametrize("fuse", [False, True], ids=["select-apart", "select-fused"])
def test_quickstart_indexer_launches(pool: Pool, cache_dir: str, fuse: bool) -> None:
    """Scoring is one kernel, the selection another (or, fused, the same one); rows copied whole are not scored
    (the flow keeps no state)."""
    flow = build_vflow("custom_sparse_attention", str(REPO / "examples" / "custom_sparse_attention.py"))
    tri = compare(trace_flow(flow, pool.geometry), pool, cache_dir, fuse_selection=fuse)
    assert tri.indexer_launches == (1 if fuse else 2) and not tri.stateful
    assert "if (budget < n) & (split < nchunks):" in tri.source
    assert [g.kind for g in tri.groups] == ["fused", "select"]


def test_per_row_values_are_computed_before_the_chunk_loop(pool: Pool, cache_dir: str) -> None:
    """The quick-start flow's query mean is the same for every chunk of a row: the scoring function loads and
    reduces it once, before its chunk loop (inside, every chunk re-read the queries), and still selects what the
    reference selects (``compare``); the centroid load and the dot product stay in the loop."""
    flow = build_vflow("custom_sparse_attention", str(REPO / "examples" / "custom_sparse_attention.py"))
    tri = compare(trace_flow(flow, pool.geometry), pool, cache_dir)
    fn = tri.kernels[0].lines
    loop = next(i for i, line in enumerate(fn) if line.strip().startswith("for chunk in range("))
    before, inside = "\n".join(fn[:loop]), "\n".join(fn[loop:])
    assert "tl.load(in" in before and "tl.sum(" in before  # the query load and its mean over heads
    assert "BLK3" not in before and "BLK3" in inside  # the centroids, read at the chunk's block ids


def test_a_line_reading_the_chunk_stays_in_the_loop() -> None:
    """``_hoist`` moves a node's lines only when none reads a chunk-loop name or a value computed in the loop."""
    from vortex_torch.flow.compiler.codegen import _hoist
    from vortex_torch.flow.compiler.emitter import Emitter

    for lines, moved in [
        (["t1 = tl.load(in0 + row * 4)", "t2 = t1 * 2.0"], True),
        (["t1 = tl.load(in0 + row * 4)", "t2 = t1 + p"], False),  # reads the chunk's positions
        (["t2 = t9 * 2.0"], False),  # t9 was computed in the loop
        (["tl.store(out + row, t1)"], False),  # not an assignment
    ]:
        e = Emitter("ragged")
        e.body = ["t9 = tl.load(in1 + BLK3)", *lines]
        _hoist(e, 1, set())
        assert (e.hoisted == lines and e.body == ["t9 = tl.load(in1 + BLK3)"]) if moved else not e.hoisted, lines


@pytest.mark.parametrize("fuse", [False, True], ids=["select-apart", "select-fused"])
@pytest.mark.parametrize("num_warps", [1, 2, 4])
@pytest.mark.parametrize("block_chunk", [2, 0], ids=["chunk2", "chunk-default"])
@pytest.mark.parametrize("prefetch", [False, True], ids=["ids-in-loop", "ids-prefetched"])
def test_indexer_with_static_bounds_and_a_shared_workspace(
    pool: Pool, cache_dir: str, num_warps: int, fuse: bool, block_chunk: int, prefetch: bool
) -> None:
    """As the decode path calls it: a static ``max_blocks_per_row`` above every row's length (a wider selection
    tile than the rows need), one caller-owned workspace reused by successive launches (its counters must be
    re-armed), several warps per program, a chunk of 2 blocks (many programs per row) or the default (one program
    per row scores and then selects: the H200 case of results/gpu/2026-12-04-decode-step-bench-fused.md);
    every call selects what the reference selects."""
    flow = build_vflow("custom_sparse_attention", str(REPO / "examples" / "custom_sparse_attention.py"))
    traced = trace_flow(flow, pool.geometry)
    ref = ReferenceExecutor(traced, pool.layout)
    tri = TritonExecutor(
        traced, pool.layout, block_chunk=block_chunk, num_warps=num_warps, cache_dir=cache_dir,
        fuse_selection=fuse, prefetch_indices=prefetch,
    )  # fmt: skip
    fields = pool.fields(traced.fields)
    ref.run_cache(fields, pool.block_ids)
    rows = pool.dense.num_rows
    ws = tri.plan(rows, 64, pool.qs[0].device)
    for q in pool.qs:
        want = _select(ref, pool, q, fields)
        got = torch.full((pool.selection.total,), -1, dtype=torch.int32, device=q.device)
        tri.run(q, fields, pool.dense, pool.selection, got, plan=ws)
        assert got.tolist() == want
        assert int(ws.counter.abs().sum()) == 0  # re-armed for the next launch


def test_dead_ops_are_removed(pool: Pool, cache_dir: str) -> None:
    traced = trace_flow(FLOWS["dead"](), pool.geometry)
    tri = TritonExecutor(traced, pool.layout, block_chunk=BLOCK_CHUNK, cache_dir=cache_dir)
    assert len(traced.indexer.nodes) == 7  # Mean, GeMV, Softmax, Max, Exp, Sum (dead ones included), topK ...
    assert tri.indexer_launches == 2  # ... but only the scoring kernel and the selection run
    assert [g.kind for g in tri.groups] == ["fused", "select"]
    live = [type(n.op).__name__ for g in tri.groups for n in g.nodes]
    assert live == ["Mean", "GeMV", "topK"]
    assert "tl.exp" not in tri.source and "standalone" not in tri.source


def test_state_flow_kernels(pool: Pool, cache_dir: str) -> None:
    """Load/Save fuse into the scoring kernel, a standalone op splits it; the Load output another kernel reads
    goes through memory."""
    traced = trace_flow(FLOWS["state"](), pool.geometry)
    tri = TritonExecutor(traced, pool.layout, block_chunk=BLOCK_CHUNK, cache_dir=cache_dir)
    assert [g.kind for g in tri.groups] == ["fused", "standalone", "fused", "select"]
    load = next(n for n in tri.groups[0].nodes if isinstance(n.op, ix.Load))
    assert load.output is not None and load.output.tensor_id in tri.stored


# -- the on-disk source cache ------------------------------------------------------------------------------------


def test_generated_source_is_cached_on_disk(pool: Pool, tmp_path: Path) -> None:
    first = TritonExecutor(trace_flow(FLOWS["dim0"](), pool.geometry), pool.layout, cache_dir=str(tmp_path))
    path = Path(first.source_path)
    assert path.parent == tmp_path and path.read_text() == first.source
    stamp = path.stat().st_mtime_ns
    again = TritonExecutor(trace_flow(FLOWS["dim0"](), pool.geometry), pool.layout, cache_dir=str(tmp_path))
    assert again.source_path == first.source_path  # same flow and geometry: same file ...
    assert path.stat().st_mtime_ns == stamp  # ... not rewritten ...
    assert again.module is first.module  # ... and not re-imported
    other = Geometry(block_size=16, head_dim=32, group_size=4, dtype=torch.float32, kv_dtype=torch.float32)
    layout = PoolLayout(page_size=32, block_size=16, num_kv_heads=2)
    third = TritonExecutor(trace_flow(FLOWS["dim0"](), other), layout, cache_dir=str(tmp_path))
    assert third.source_path != first.source_path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({path.name, Path(third.source_path).name})


# -- what the backend cannot lower -------------------------------------------------------------------------------

G24 = Geometry(block_size=4, head_dim=24, group_size=3, dtype=torch.float32, kv_dtype=torch.float32)
L24 = PoolLayout(page_size=8, block_size=4, num_kv_heads=2)


def _reshape_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    row = ix.Mean(dim=1)(cache["k"], ctx=ctx)  # [S, 1, 24]
    col = ix.Reshape(-1, ctx.head_dim, 1)(row, ctx=ctx)  # [S, 24, 1]: not a power of two
    return ix.GeMV()(ix.Mean(dim=1)(q, ctx=ctx), ix.Transpose()(col, ctx=ctx), ctx=ctx)


def _reshape_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    col = cx.Reshape(-1, ctx.head_dim, 1)(cx.Mean(dim=1)(cache["k"], loc=loc, ctx=ctx), loc=loc, ctx=ctx)
    cx.Mean(dim=1)(col, cache["r"], loc=loc, ctx=ctx)


def test_reshape_of_non_power_of_two_block_is_a_compile_error(tmp_path: Path) -> None:
    flow = SpecFlow("reshape", flows_for_tests.no_fields, flows_for_tests.no_cache, _reshape_indexer)
    traced = trace_flow(flow, G24)
    with pytest.raises(
        CompileError, match=r"Reshape\(-1, 24, 1\) of a \[\*, 1, 24\] block at .*test_compiler"
    ):
        TritonExecutor(traced, L24, cache_dir=str(tmp_path))
    ReferenceExecutor(traced, L24)  # the reference runs it; only this backend refuses
    flow = SpecFlow("reshape_cache", lambda _b, _d: {"r": (1, 1)}, _reshape_cache, lambda q, c, ctx: c["r"])
    with pytest.raises(CompileError, match="powers of two"):
        TritonExecutor(trace_flow(flow, G24), L24, cache_dir=str(tmp_path))


def _late_load_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    s = ix.GeMV()(ix.Mean(dim=1)(q, ctx=ctx), cache["c"], ctx=ctx)
    ix.Save()(s, cache["acc"], ctx=ctx)
    sm = ix.Softmax(dim=0)(s, ctx=ctx)  # a standalone kernel between the Save and the Load
    return ix.Add()(sm, ix.Load()(cache["acc"], ctx=ctx), ctx=ctx)


def _late_load_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    flows_for_tests.centroid(cache, loc, ctx)
    cx.Fill(0.0)(cache["acc"], loc=loc, ctx=ctx)


def test_load_after_save_in_a_later_kernel_is_a_compile_error(tmp_path: Path) -> None:
    fields = lambda _b, d: {"c": (1, d), "acc": (1, 1)}
    flow = SpecFlow("late_load", fields, _late_load_cache, _late_load_indexer, probe=False)
    with pytest.raises(CompileError, match=r"'acc' is read by Load .* after the one that Saves it"):
        TritonExecutor(trace_flow(flow, G24), L24, cache_dir=str(tmp_path))


def test_tile_sizes_are_powers_of_two(tmp_path: Path) -> None:
    traced = trace_flow(FLOWS["centroid"](), G24)
    with pytest.raises(ValueError, match="block_chunk must be a power of two"):
        TritonExecutor(traced, L24, block_chunk=3, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="cache_chunk must be a power of two"):
        TritonExecutor(traced, L24, cache_chunk=6, cache_dir=str(tmp_path))
    # head_dim 80 with 16-token blocks: 4096 // (16 * 80) = 3 blocks per program would not be a power of two
    g80 = Geometry(block_size=16, head_dim=80, group_size=1, dtype=torch.float32, kv_dtype=torch.float32)
    layout = PoolLayout(page_size=32, block_size=16, num_kv_heads=1)  # 2 pages: 4 blocks
    traced = trace_flow(FLOWS["centroid"](), g80)
    tri = TritonExecutor(traced, layout, cache_dir=str(tmp_path))
    assert tri.cache_chunk == 2 and tri.chunks == [64, 64]
    # CUDA when present: there the conftest leaves Triton's interpreter off, so CPU tensors could not run
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    want = {f: torch.randn(64, 1, 80, generator=gen).to(dev) for f in ("k", "v")}
    want |= {name: torch.zeros(4, r, c, device=dev) for name, (r, c) in traced.fields.items()}
    got = _clone(want)
    ids = torch.tensor([3, 0, 2], dtype=torch.int32, device=dev)
    ReferenceExecutor(traced, layout).run_cache(want, ids)
    tri.run_cache(got, ids)
    _assert_fields(got, want, "head_dim 80")
    # per-kernel chunks: GeMM(q, k) at block 16, G 8, D 128 holds a [16, 8, 128] product per block
    g128 = Geometry(block_size=16, head_dim=128, group_size=8)
    tri = TritonExecutor(trace_flow(FLOWS["heads"](), g128), PoolLayout(32, 16, 2), cache_dir=str(tmp_path))
    kinds = [(g.kind, g.nodes[0].op.name, c) for g, c in zip(tri.groups, tri.chunks, strict=True)]
    assert kinds[0] == ("fused", "GeMM", 1)  # a [16, 8, 128] product per block
    assert ("standalone", "Max", 4) in kinds and kinds[-1] == ("select", "topK", 64)  # a [16, 128] K tile
    _assert_fields(got, want, "head_dim 80")


# -- the generated source compiles for a GPU (sm_90) -------------------------------------------------------------

_COMPILE_FOR_SM90 = textwrap.dedent(
    """
    import importlib.util, re, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for path in sys.argv[1:]:
        spec = importlib.util.spec_from_file_location("generated", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for name, fn in vars(mod).items():
            if not isinstance(fn, triton.runtime.jit.JITFunction) or name.startswith("_"):
                continue  # device functions (groups, helpers from vortex_torch.kernels) compile inside kernels
            consts = {"BS": 16, "BS0": 64, "FENCE": True, "APPROX": True, "LOW_BIT": 0, "SINGLE_TILE": True, "BLOCK_N": 64,
                      "GATHER": False, "CACHE": True, "PDL": True}
            def kind(a):  # pointers to fields in bf16, intermediates in fp32; K/V strides are ints
                if a in consts:
                    return "constexpr"
                if a in ("num_blocks", "num_locs", "bos", "eos") or a.startswith("stride"):
                    return "i32"
                if a == "tol_bits":
                    return "i64"
                if a in ("indptr", "indices", "block_ids", "sel_indptr", "counter", "sel_out"):
                    return "*i32"
                if a == "locs":
                    return "*i64"
                return "*bf16" if a.startswith(("save_", "f_")) or a in ("x_ptr",) else "*fp32"
            sig = {a: kind(a) for a in fn.arg_names}
            cx = {a: v for a, v in consts.items() if a in sig}
            # both top-k searches: the bitwise loop (approxTopK) and the byte-wise radix (exact topK)
            for approx in ((True, False) if "APPROX" in cx else (None,)):
                if approx is not None:
                    cx["APPROX"] = approx
                ptx = triton.compile(ASTSource(fn, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32)).asm["ptx"]
                if "PDL" in cx:  # programmatic dependent launch: the wait comes before any global memory access
                    lines = ptx.splitlines()
                    wait = next(i for i, x in enumerate(lines) if "griddepcontrol.wait" in x)
                    first = next((i for i, x in enumerate(lines) if re.search(r"\\b(ld|st|atom|red)\\.global", x)),
                                 len(lines))  # a kernel never launched (topK of a cache field) reads nothing
                    assert wait < first, (name, lines[first])
            print("compiled", name)
    """
)


@pytest.mark.parametrize("shard", [0, 1])
def test_generated_kernels_compile_for_sm90(shard: int, tmp_path: Path) -> None:
    """Lower every kernel of every test flow (odd geometry) through Triton's NVIDIA backend down to a cubin for
    an H100, without a GPU: the interpreter accepts code that the real compiler rejects. Two shards (every
    other flow source each), so that pytest-xdist's workers share the minute it takes."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    paths = sorted(
        {
            TritonExecutor(trace_flow(make(), G24), L24, cache_dir=str(tmp_path / "src")).source_path
            for make in FLOWS.values()
        }
    )[shard::2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90, *paths], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("compiled ") >= 2 * len(paths)


def test_conv_weights_are_copied_to_the_device_once(pool: Pool, cache_dir: str) -> None:
    """Conv1d taps reach the kernel from a per-executor cache: no copy per call (CUDA-graph capture would
    otherwise see a host-to-device transfer), but an in-place change of the weight is picked up."""
    tri = compare(trace_flow(FLOWS["conv"](), pool.geometry), pool, cache_dir)
    weights = [n.op.weight for g in tri.groups for n in g.nodes if hasattr(n.op, "weight")]
    assert weights and tri._weight_cache
    first = {k: v[1] for k, v in tri._weight_cache.items()}
    fields = pool.fields(tri.traced.fields)
    tri.run_cache(fields, pool.block_ids)
    _select(tri, pool, pool.qs[0], fields)
    assert all(tri._weight_cache[k][1] is t for k, t in first.items()), "weights were copied again"
    weights[0].mul_(2.0)
    _select(tri, pool, pool.qs[0], fields)
    fresh = tri._weight_cache[(id(weights[0]), pool.qs[0].device)][1]
    assert torch.equal(fresh.cpu(), weights[0].detach().cpu().contiguous())
    weights[0].div_(2.0)
