"""The backend's SGLang-independent core, driven the way SGLang drives it, against the CPU reference runtime.

A small multi-layer model's prefill + decode steps are played on two sides with the same random q/K/V:

* "SGLang": a KV pool in SGLang's native layout (SGLang's real ``MHATokenToKVPool``, paged allocator and
  ``ReqToTokenPool`` when SGLang is installed, plain tensors otherwise), ``req_to_token`` rows, one
  ``forward_cache`` per forward from ``out_cache_loc`` (exact counts in prefill, masked candidates in
  decode), a prefix shared radix-cache style (its blocks are not summarised again), and
  :class:`VortexDecodeCore` for plan -> indexer -> selection -> attention;
* the oracle: :class:`vortex_torch.flow.runtime.ReferenceRuntime`, which owns its own pool and recomputes
  every block of every request.

Per (step, layer, request, head) the selected block positions must be equal (ties aside on the GPU, where the
indexer may accumulate in another order) and the outputs close; a debug dump of one step must replay clean
through the reference executor. On a GPU the decode steps also run as one captured CUDA graph, re-planned
into the same buffers before every replay, as SGLang's decode graph runner does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from vortex_sgl_testlib import (
    BOS,
    DIM,
    EOS,
    FLOW_FILE,
    FLOW_NAME,
    GROUP,
    Scenario,
    sglang_missing_reason,
)

from vortex_torch.engine.sgl.debug_dump import DecodeDumper, load_records, replay
from vortex_torch.engine.sgl.planner import DecodePlan


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pool_kinds() -> list[Any]:
    reason = sglang_missing_reason()
    sglang_marks = [pytest.mark.sglang, pytest.mark.skipif(reason is not None, reason=reason or "")]
    return ["torch", pytest.param("sglang", marks=sglang_marks)]


@pytest.mark.parametrize("kind", pool_kinds())
@pytest.mark.parametrize(
    ("impl", "prompts", "steps", "graph_buffers"),
    [
        ("reference", [5, 17, 30, 41], 5, False),
        # CPU tensors through the generated kernels: Triton's interpreter only. On a CUDA machine the conftest
        # leaves it off (the kernels compile), and the compiled path is checked against the same oracle by
        # test_core_decode_as_a_cuda_graph_matches_reference_runtime below (ties allowed, as on any GPU).
        pytest.param(
            "triton",
            [9, 35],
            2,
            True,
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(
                    torch.cuda.is_available(), reason="interpreter path; on CUDA see the graph test"
                ),
            ],
        ),
    ],
)
def test_core_matches_reference_runtime(
    kind: str, impl: str, prompts: list[int], steps: int, graph_buffers: bool, tmp_path: Path
) -> None:
    sc = Scenario(kind, impl, prompts, tmp_path)
    sc.prefill()
    buffers = sc.core.allocate_buffers(8) if graph_buffers else None
    dumper = DecodeDumper(str(tmp_path / "dump"), max_steps=1, meta={
        "module_name": FLOW_NAME, "module_path": str(FLOW_FILE), "flow_kwargs": {}, "aux_dtype": "float32",
        "bos": BOS, "eos": EOS})  # fmt: skip
    for step in range(steps):
        loc, seq_lens, rows = sc.next_inputs()
        plan = sc.core.plan(sc.pool.req_to_token, rows, seq_lens, buffers=buffers)
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        dumper.next_step()
        for layer, (q, k, v) in enumerate(inputs):
            sc.pool.write(layer, loc, k, v)
            if layer not in sc.sparse_layers:
                continue
            q_rows = q.reshape(-1, GROUP, DIM)
            # the cache update of the blocks this step completes: folded into scoring (triton), or apart
            o = sc.core.decode_layer(q_rows, sc.fields(layer), plan, None, new_locs=loc)
            sc.check(step, layer, plan, o, ref[layer], ties=False)
            dumper.dump(layer, sc.layout, plan, q_rows, sc.fields(layer), o, None, seq_lens)
    assert sc.sparse_rows > 0, "the test must exercise real sparsity"

    records = load_records(str(tmp_path / "dump"))
    assert len(records) == len(sc.sparse_layers)
    for record in records:
        report = replay(record)
        assert report.ok and report.rows_exact == report.rows, report
        assert report.rows_sparse > 0
        assert report.aux_max_err < 1e-5 and report.o_max_err < 1e-5, report
    check_replay_catches_bad_selections(records[0])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path (CPU tensors through Triton kernels)")
def test_core_with_attention_fused_into_the_indexer_matches_reference_runtime(tmp_path: Path) -> None:
    """An executor built with ``fuse_attention``: ``decode_layer`` is one launch (scoring with the folded cache
    update, selection, attention) and gives what the oracle gives, over several decode steps."""
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor

    sc = Scenario("torch", "triton", [9, 35], tmp_path)
    sc.core.executor = TritonExecutor(sc.core.prepared.traced, sc.layout, fuse_attention=True,
                                      cache_dir=str(tmp_path / "cache"))  # fmt: skip
    sc.prefill()
    buffers = sc.core.allocate_buffers(8)
    for step in range(2):
        loc, seq_lens, rows = sc.next_inputs()
        plan = sc.core.plan(sc.pool.req_to_token, rows, seq_lens, buffers=buffers)
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        for layer, (q, k, v) in enumerate(inputs):
            sc.pool.write(layer, loc, k, v)
            if layer in sc.sparse_layers:
                o = sc.core.decode_layer(q.reshape(-1, GROUP, DIM), sc.fields(layer), plan, None, new_locs=loc)
                sc.check(step, layer, plan, o, ref[layer], ties=False)
    assert sc.sparse_rows > 0, "the test must exercise real sparsity"


@pytest.mark.parametrize("kind", pool_kinds())
@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize(
    ("impl", "prompts", "steps"),
    [("reference", [5, 17, 30, 41], 4), pytest.param("triton", [9, 35], 2, marks=pytest.mark.slow)],
)
def test_core_fp8_kv_matches_reference_runtime_on_the_dequantised_cache(
    kind: str, kv_dtype: torch.dtype, impl: str, prompts: list[int], steps: int, tmp_path: Path
) -> None:
    """An fp8 KV cache (SGLang's real MHATokenToKVPool in fp8_e4m3 / fp8_e5m2, K/V written with per-layer scales
    by its set_kv_buffer) against the reference runtime fed the dequantised K/V: the cache update, the indexer
    and the attention read ``stored * scale``, so selections are equal and outputs close."""
    sc = Scenario(kind, impl, prompts, tmp_path, kv_dtype=kv_dtype)
    if kind == "sglang":
        assert sc.pool.pool.k_buffer[0].dtype == torch.uint8 and sc.pool.kv(0)[0].dtype == kv_dtype
    sc.prefill()
    for step in range(steps):
        loc, seq_lens, rows = sc.next_inputs()
        plan = sc.core.plan(sc.pool.req_to_token, rows, seq_lens)
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        for layer, (q, k, v) in enumerate(inputs):
            sc.pool.write(layer, loc, k, v)
            if layer not in sc.sparse_layers:
                continue
            sc.core.update_cache(sc.fields(layer), loc)
            o = sc.core.decode_layer(q.reshape(-1, GROUP, DIM), sc.fields(layer), plan, None)
            sc.check(step, layer, plan, o, ref[layer], ties=False)
    assert sc.sparse_rows > 0, "the test must exercise real sparsity"
    # the scales matter: without them the cache update stores other summaries
    fields = sc.fields(sc.sparse_layers[0])
    with pytest.raises(ValueError, match="k_scale"):
        sc.core.update_cache({n: t for n, t in fields.items() if not n.endswith("_scale")}, loc, count=None)


def test_pdl_is_refused_where_it_cannot_run(tmp_path: Path) -> None:
    """``enable_pdl`` on a core without PDL (a CPU, or the reference executor) fails when the core is set up,
    naming what to change, instead of inside the first CUDA-graph capture or as a silent plain launch."""
    sc = Scenario("torch", "reference", [9], tmp_path)
    with pytest.raises(ValueError, match="impl_backend='reference' launches no Triton kernels"):
        sc.core.enable_pdl = True
    sc = Scenario("torch", "triton", [9], tmp_path)
    with pytest.raises(ValueError, match="Vortex decode: enable_pdl=True needs a CUDA GPU of compute capability"):
        sc.core.enable_pdl = True
    assert not sc.core.enable_pdl and not sc.core.executor.enable_pdl


def check_replay_catches_bad_selections(rec: dict[str, Any]) -> None:
    """A repeated block, and a lower-scoring block swapped in (order kept valid), are both reported."""
    n_row = rec["dense_indptr"][1:] - rec["dense_indptr"][:-1]
    r = int(torch.nonzero(rec["budget"] < n_row)[0, 0])
    lo, hi = int(rec["dense_indptr"][r]), int(rec["dense_indptr"][r + 1])
    slo, shi = int(rec["sel_indptr"][r]), int(rec["sel_indptr"][r + 1])
    row_ids = rec["dense_indices"][lo:hi].tolist()
    chosen = rec["sel_indices"][slo:shi].tolist()
    repeated = rec["sel_indices"].clone()
    repeated[slo + BOS] = repeated[slo]
    assert not replay({**rec, "sel_indices": repeated}).ok
    unchosen = [b for b in row_ids[BOS : len(row_ids) - EOS] if b not in chosen]
    swapped = sorted([*chosen[:BOS], unchosen[0], *chosen[BOS + 1 :]], key=row_ids.index)
    tampered = rec["sel_indices"].clone()
    tampered[slo:shi] = torch.tensor(swapped, dtype=tampered.dtype)
    assert not replay({**rec, "sel_indices": tampered}, score_atol=0.0, score_rtol=0.0).ok


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pdl", [False, True], ids=["plain-launch", "pdl"])
def test_core_decode_as_a_cuda_graph_matches_reference_runtime(tmp_path: Path, pdl: bool) -> None:
    """The decode step of every sparse layer (K/V write, masked forward_cache, indexer, selection, attention)
    captured once, then replayed for later steps after re-planning into the same buffers outside the graph;
    with ``pdl`` every Vortex kernel is launched with programmatic dependent launch (Hopper), so each may start
    while the previous one (SGLang's K/V write, or the previous Vortex kernel) still runs."""
    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90+")
    sc = Scenario("torch", "triton", [9, 35, 70, 130], tmp_path, device="cuda")
    sc.core.enable_pdl = pdl
    sc.prefill()
    b = len(sc.rows)
    buffers = sc.core.allocate_buffers(b)
    static_loc = torch.zeros(b, dtype=torch.int64, device="cuda")
    static_in = [
        tuple(torch.zeros(t.shape, dtype=t.dtype, device="cuda") for t in x) for x in sc.layer_inputs()
    ]
    # each layer's output and selection, copied inside the graph (allocated by the eager step 0, before the
    # capture): the next layer reuses the plan's buffers
    static_o: dict[int, torch.Tensor] = {}
    static_sel: dict[int, torch.Tensor] = {}
    plan_box: list[DecodePlan] = []

    def decode_step() -> None:
        plan = plan_box[0]
        for layer, (q, k, v) in enumerate(static_in):
            sc.pool.k[layer][static_loc] = k
            sc.pool.v[layer][static_loc] = v
            if layer in sc.sparse_layers:
                o = sc.core.decode_layer(
                    q.reshape(-1, GROUP, DIM), sc.fields(layer), plan, None, new_locs=static_loc
                )
                for box, t in ((static_o, o), (static_sel, plan.sel_indices)):
                    if layer in box:
                        box[layer].copy_(t)
                    else:
                        box[layer] = t.clone()

    graph: torch.cuda.CUDAGraph | None = None
    for step in range(6):
        loc, seq_lens, rows = sc.next_inputs()
        plan = sc.core.plan(
            sc.pool.req_to_token, rows, seq_lens, buffers=buffers
        )  # out of graph, fixed addresses
        plan_box[:] = [plan]
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        static_loc.copy_(loc)
        for dst, src in zip(static_in, inputs, strict=True):
            for d, s in zip(dst, src, strict=True):
                d.copy_(s)
        if step == 0:
            decode_step()  # eager warm-up: compiles every Triton kernel before the capture
        else:
            if graph is None:  # capturing records the kernels without running them
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    decode_step()
            graph.replay()
        torch.cuda.synchronize()
        for layer in sc.sparse_layers:
            sc.check(step, layer, plan, static_o[layer], ref[layer], ties=True, sel=static_sel[layer])
    assert sc.sparse_rows > 0
