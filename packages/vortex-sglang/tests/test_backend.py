"""The Vortex backend mixin's SGLang plumbing on the CPU, against the reference runtime.

``VortexBackendMixin`` is put on a stand-in parent with the same methods as SGLang's backends (dense
prefill/decode that write K/V with the real ``MHATokenToKVPool.set_kv_buffer``), then driven with SGLang's
real ``ForwardMode`` and ``ForwardBatch``-shaped batches: extend batches (``forward_extend`` -> dense parent +
``forward_cache`` of the completed blocks, a radix-cache hit included), and decode steps, eager
(``init_forward_metadata``) and through the CUDA-graph entry points (``init_cuda_graph_state`` +
``init_forward_metadata_out_graph`` into capture-stable buffers). Sparse layers must select exactly what the
reference runtime selects, ``layers_skip`` layers must go to the parent, and ``VORTEX_DEBUG_DUMP`` must write
records that replay clean.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vortex_sgl_testlib import CTX, DIM, GROUP, H_KV, LAYERS, PAGE, Scenario

from vortex_torch.engine.sgl.config import VortexConfig

pytestmark = pytest.mark.sglang


class StandInParent:
    """What the mixin needs from SGLang's FlashInfer/Triton backends, with dense attention left out."""

    def __init__(self, model_runner: Any, *args: Any, **kwargs: Any) -> None:
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.calls: list[tuple[str, Any]] = []

    def init_forward_metadata(self, forward_batch: Any) -> None:
        self.calls.append(("init_forward_metadata", forward_batch.forward_mode.name))

    def init_forward_metadata_out_graph(self, forward_batch: Any, in_capture: bool = False) -> None:
        self.calls.append(("out_graph", in_capture))

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.calls.append(("cuda_graph_state", max_bs))

    def forward_decode(self, q: Any, k: Any, v: Any, layer: Any, fb: Any, save_kv_cache: bool = True) -> Any:
        # as SGLang's backends: with the layer's scales (set_kv_buffer divides in place: copies keep test data)
        self.token_to_kv_pool.set_kv_buffer(layer, fb.out_cache_loc, k.clone(), v.clone(), layer.k_scale, layer.v_scale)
        self.calls.append(("dense_decode", layer.layer_id))
        return torch.zeros_like(q)

    def forward_extend(self, q: Any, k: Any, v: Any, layer: Any, fb: Any, save_kv_cache: bool = True) -> Any:
        self.token_to_kv_pool.set_kv_buffer(layer, fb.out_cache_loc, k.clone(), v.clone(), layer.k_scale, layer.v_scale)
        return torch.zeros_like(q)


def layer_stub(layer_id: int, kv_scales: tuple[float, float] | None = None) -> SimpleNamespace:
    """A RadixAttention's fields; ``kv_scales``: the checkpoint's fp8 KV scales (``k_scale`` tensor + float)."""
    ks, vs = kv_scales or (None, None)
    return SimpleNamespace(
        layer_id=layer_id, scaling=None, logit_cap=0.0, is_cross_attention=False, tp_q_head_num=H_KV * GROUP,
        tp_k_head_num=H_KV, k_scale=None if ks is None else torch.tensor(ks), k_scale_float=ks,
        v_scale=None if vs is None else torch.tensor(vs), v_scale_float=vs,
    )  # fmt: skip


class BackendScenario(Scenario):
    """The scenario of test_decode_core, with SGLang's side going through the backend's entry points."""

    backend: Any

    def extend_layer(
        self,
        layer: int,
        loc: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        prefix: list[int],
        extend: list[int],
    ) -> None:
        from sglang.srt.model_executor.forward_batch_info import ForwardMode

        fb = SimpleNamespace(forward_mode=ForwardMode.EXTEND, batch_size=len(extend), out_cache_loc=loc,
                             extend_prefix_lens_cpu=prefix, extend_seq_lens_cpu=extend)  # fmt: skip
        q = torch.zeros(loc.numel(), H_KV * GROUP * DIM, dtype=k.dtype)
        self.backend.forward_extend(q, k, v, layer_stub(layer, self.kv_scales), fb)


def glue_backend(
    sc: BackendScenario, monkeypatch: pytest.MonkeyPatch, *, overlap: bool = False, parent: type = StandInParent,
    sliding_window_size: int | None = None, **config: Any,
) -> Any:
    """``VortexBackendMixin`` on :class:`StandInParent`, set up by its own constructor for ``sc``'s pool and flow
    (a model runner stand-in with RadixAttention-like layers: what the setup scans for the fp8 scales);
    ``config``: VortexConfig fields changed from the scenario's; ``parent``: a StandInParent subclass;
    ``sliding_window_size``: the model runner's (a model Vortex refuses)."""
    from vortex_torch.engine.sgl import backend as backend_mod

    monkeypatch.setattr(backend_mod, "get_parallel", lambda: SimpleNamespace(attn_tp_size=1, tp_rank=0))

    class GlueBackend(backend_mod.VortexBackendMixin, parent):  # type: ignore[valid-type,misc]
        pass

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for i in range(LAYERS):
        attn = torch.nn.Module()
        attn.__dict__.update(vars(layer_stub(i, sc.kv_scales)))
        model.layers.append(attn)
    runner = SimpleNamespace(
        token_to_kv_pool=sc.pool.pool, req_to_token_pool=SimpleNamespace(req_to_token=sc.pool.req_to_token),
        model_config=SimpleNamespace(num_attention_heads=H_KV * GROUP, context_len=CTX), page_size=PAGE,
        device="cpu", sliding_window_size=sliding_window_size, model=model,
        server_args=SimpleNamespace(disable_overlap_schedule=not overlap),
    )  # fmt: skip
    backend = GlueBackend(runner, vortex_config=VortexConfig(**{**sc.prepared.config.__dict__, **config}))
    assert backend.vortex_backend and sc.pool.pool.vortex_aux is backend.vortex_aux
    sc.backend = backend
    return backend


@pytest.mark.parametrize(
    ("kv_dtype", "overlap"),
    [(torch.float32, False), (torch.float8_e4m3fn, False), (torch.float32, True)],
    ids=["fp32-kv", "fp8-kv", "fp32-kv-overlap-scheduler"],
)
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cuda-graph-entry-points"])
def test_backend_mixin_matches_reference_runtime(
    sgl: Any, graph: bool, kv_dtype: torch.dtype, overlap: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp8-kv: SGLang's fp8 MHATokenToKVPool written with the layers' checkpoint scales; the backend reads the
    scales off the model's attention layers at setup and every kernel dequantises with them (the oracle gets
    the dequantised cache). overlap-on: SGLang's overlap scheduler, under which the plan (the one reader of
    ``req_to_token``) is launched by the metadata hook, before the graph replay, instead of inside it."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from vortex_torch.engine.sgl.debug_dump import DUMP_ENV, load_records, replay

    monkeypatch.setenv(DUMP_ENV, str(tmp_path / "dump"))
    sc = BackendScenario("sglang", "reference", [5, 17, 30, 41], tmp_path, kv_dtype=kv_dtype)
    backend = glue_backend(sc, monkeypatch, overlap=overlap)
    assert backend.vortex_core.max_blocks_per_row == CTX // sc.layout.block_size
    sc.prefill()
    if graph:
        backend.init_cuda_graph_state(8, 8)
        assert backend.vortex_buffers is not None and backend.vortex_buffers.max_rows == 8 * H_KV

    for step in range(4):
        loc, seq_lens, rows = sc.next_inputs()
        fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=len(rows), req_pool_indices=rows,
                             seq_lens=seq_lens, out_cache_loc=loc)  # fmt: skip
        if graph:
            backend.init_forward_metadata_out_graph(fb, in_capture=step == 0)
        else:
            backend.init_forward_metadata(fb)
        # overlap off: built by the first sparse layer, inside the graph, not here; on: here, before the replay
        assert (backend.vortex_plan is not None) == overlap
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        for layer, (q, k, v) in enumerate(inputs):
            o = backend.forward_decode(q.reshape(len(rows), -1), k, v, layer_stub(layer, sc.kv_scales), fb)
            assert o.shape == (len(rows), H_KV * GROUP * DIM)
            if layer in sc.sparse_layers:
                sc.check(step, layer, backend.vortex_plan, o, ref[layer], ties=False)
                if graph:  # the plan lives in the capture-stable buffers
                    assert backend.vortex_plan.dense_indptr.data_ptr() == (
                        backend.vortex_buffers.out.dense_indptr.data_ptr()
                    )
            else:
                assert backend.calls[-1] == ("dense_decode", layer)
    assert sc.sparse_rows > 0
    if sc.kv_scales is not None:
        assert backend._vortex_scale_host == {i: sc.kv_scales for i in sc.sparse_layers}
    assert {name for name, _ in backend.calls} >= ({"out_graph"} if graph else {"init_forward_metadata"})

    records = load_records(str(tmp_path / "dump"))
    if graph:
        assert not records  # graph replays are never dumped
    else:
        assert {r["layer"] for r in records} == set(sc.sparse_layers) and len(
            {r["step"] for r in records}
        ) == 4
        for rec in records:
            report = replay(rec)
            assert report.ok and report.rows_exact == report.rows, report


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path (CPU tensors through Triton kernels)")
def test_backend_takes_the_fused_layer_of_an_executor_built_for_it(
    sgl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode core whose executor attends inside its scoring launch (``TritonExecutor(fuse_attention=True)``)
    is driven by the backend as that one launch: ``forward_decode`` hands the core no attention of its own
    (it did, and the executor refused the call), and the output is the oracle's."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from vortex_torch.flow.compiler.triton_executor import TritonExecutor

    sc = BackendScenario("sglang", "triton", [9, 35], tmp_path)
    backend = glue_backend(sc, monkeypatch)
    core = backend.vortex_core
    core.executor = TritonExecutor(core.prepared.traced, core.layout, fuse_attention=True,
                                   cache_dir=str(tmp_path / "fused"))  # fmt: skip
    sc.prefill()
    for step in range(2):
        loc, seq_lens, rows = sc.next_inputs()
        fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=len(rows), req_pool_indices=rows,
                             seq_lens=seq_lens, out_cache_loc=loc)  # fmt: skip
        backend.init_forward_metadata(fb)
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        for layer, (q, k, v) in enumerate(inputs):
            o = backend.forward_decode(q.reshape(len(rows), -1), k, v, layer_stub(layer), fb)
            if layer in sc.sparse_layers:
                sc.check(step, layer, backend.vortex_plan, o, ref[layer], ties=False)
    assert sc.sparse_rows > 0


def test_backend_refuses_what_it_cannot_run(
    sgl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vortex_torch.engine.sgl.plugin import VortexSGLangError

    sc = BackendScenario("sglang", "reference", [5], tmp_path)
    with pytest.raises(VortexSGLangError, match="sliding-window"):
        glue_backend(sc, monkeypatch, sliding_window_size=4096)
    assert LAYERS == 3


DENSE_STEPS = 6  # decode steps below sparse_decode_min_tokens: every request completes a block in them


@pytest.mark.parametrize(
    ("impl", "graph"),
    [
        ("reference", False),
        ("reference", True),
        pytest.param("triton", True, marks=[pytest.mark.slow, pytest.mark.skipif(
            torch.cuda.is_available(), reason="interpreter path (CPU tensors through Triton kernels)")]),
    ],
    ids=["eager", "cuda-graph-entry-points", "triton-cuda-graph-entry-points"],
)  # fmt: skip
def test_steps_below_the_sparse_decode_min_tokens_are_dense_and_keep_the_summaries_whole(
    sgl: Any, impl: str, graph: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sparse_decode_min_tokens``: while the requests hold fewer tokens in all, every layer decodes with the
    parent (SGLang's dense kernels), and Vortex only summarises the blocks the step completes, on the steps where
    a request completes one (``DENSE_CACHE``; ``DENSE`` steps launch nothing of Vortex's); the first step past
    it decodes sparsely and selects exactly what the reference runtime selects, so no block completed during
    the dense steps is missing its summary. Through the CUDA-graph entry points the step's graph variant
    is a dense one only when dense graphs were captured (``vortex_dense_graphs``, set by the capture hook).
    ``triton``: the generated kernels (Triton's interpreter), whose decode cache update finds the completed
    blocks itself, as on the GPU."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from vortex_torch.engine.sgl.step_modes import DENSE, DENSE_CACHE, GRAPH_LABELS, SPARSE

    prompts = [5, 17, 30]
    sc = BackendScenario("sglang", impl, prompts, tmp_path)
    # prefill adds a request of 2 pages + 11 tokens; each step adds one token to each of the 4 requests
    min_tokens = sum(prompts) + 2 * PAGE + 11 + 4 * DENSE_STEPS + 1
    backend = glue_backend(sc, monkeypatch, sparse_decode_min_tokens=min_tokens)
    sc.prefill()
    if graph:
        backend.init_cuda_graph_state(8, 8)
        backend.vortex_dense_graphs = True
    updates: list[int] = []
    update_cache = backend.vortex_core.update_cache
    monkeypatch.setattr(backend.vortex_core, "update_cache",
                        lambda fields, loc, count=None: (updates.append(count), update_cache(fields, loc, count)))  # fmt: skip
    completed, modes = 0, []
    for step in range(DENSE_STEPS + 3):
        loc, seq_lens, rows = sc.next_inputs()
        completes = int((seq_lens % sc.layout.block_size == 0).sum())
        completed += completes
        fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=len(rows), req_pool_indices=rows,
                             seq_lens=seq_lens, seq_lens_cpu=seq_lens.cpu(), out_cache_loc=loc)  # fmt: skip
        if graph:
            backend.init_forward_metadata_out_graph(fb)
        else:
            backend.init_forward_metadata(fb)
        dense = step < DENSE_STEPS
        assert int(seq_lens.sum()) < min_tokens if dense else int(seq_lens.sum()) >= min_tokens
        mode = (DENSE_CACHE if completes else DENSE) if dense else SPARSE
        assert backend.vortex_step_mode == mode and backend.vortex_plan is None
        assert backend.vortex_graph_label() == GRAPH_LABELS[mode]
        modes.append(mode)
        inputs = sc.layer_inputs()
        ref = sc.reference_step(inputs)
        backend.calls.clear()
        updates.clear()
        for layer, (q, k, v) in enumerate(inputs):
            o = backend.forward_decode(q.reshape(len(rows), -1), k, v, layer_stub(layer), fb)
            if dense or layer not in sc.sparse_layers:
                assert backend.calls[-1] == ("dense_decode", layer)
            else:
                sc.check(step, layer, backend.vortex_plan, o, ref[layer], ties=False)
        if dense:
            assert backend.vortex_plan is None  # no plan was built
            # one decode cache update per flow layer when a request completes a block, else none
            assert updates == ([None] * len(sc.sparse_layers) if mode == DENSE_CACHE else [])
    assert completed >= len(sc.rows) and sc.sparse_rows > 0
    assert {DENSE, DENSE_CACHE} <= set(modes)

    if graph:  # graphs captured without the dense variant (no capture hook): every replay stays sparse
        backend.vortex_dense_graphs = False
        fb.seq_lens_cpu = torch.ones_like(fb.seq_lens_cpu)
        backend.init_forward_metadata_out_graph(fb)
        assert backend.vortex_step_mode == SPARSE and backend.vortex_graph_label() is None


def test_sparse_decode_min_tokens_without_host_lengths_decodes_sparsely_and_says_so(
    sgl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A decode batch without ``seq_lens_cpu`` cannot be judged without a GPU read: the step stays sparse and the
    backend warns once that ``sparse_decode_min_tokens`` is not applied."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from vortex_torch.engine.sgl.step_modes import SPARSE

    sc = BackendScenario("sglang", "reference", [5, 17], tmp_path)
    backend = glue_backend(sc, monkeypatch, sparse_decode_min_tokens=10_000)
    sc.prefill()
    for _ in range(2):
        loc, seq_lens, rows = sc.next_inputs()
        fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=len(rows), req_pool_indices=rows,
                             seq_lens=seq_lens, seq_lens_cpu=None, out_cache_loc=loc)  # fmt: skip
        with caplog.at_level("WARNING", logger="vortex_torch.engine.sgl"):
            backend.init_forward_metadata(fb)
        assert backend.vortex_step_mode == SPARSE
    warnings = [r for r in caplog.records if "sparse_decode_min_tokens=10000 is not applied" in r.getMessage()]
    assert len(warnings) == 1


class WrapperParent(StandInParent):
    """As SGLang's FlashInfer backends: every capture of a batch size builds new decode wrappers, stored per
    size, and replay-prep plans the wrappers stored for the batch's size."""

    def __init__(self, model_runner: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model_runner, *args, **kwargs)
        self.decode_cuda_graph_metadata: dict[int, object] = {}
        self.planned: object = None

    def init_forward_metadata_out_graph(self, forward_batch: Any, in_capture: bool = False) -> None:
        if in_capture:
            self.decode_cuda_graph_metadata[forward_batch.batch_size] = object()
        self.planned = self.decode_cuda_graph_metadata[forward_batch.batch_size]


def test_graph_hooks_capture_a_dense_variant_and_key_each_step_by_its_mode(
    sgl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plugin hooks 7 and 8 on a stand-in runner with SGLang's real ``ShapeKey``: with a minimum every batch
    size is captured once per step mode, the dense modes' graphs under their ``variant_label`` (kept apart from
    a LoRA label); replay-prep then makes the key name the step's mode's graph, and plans the wrappers that
    graph was captured with (a parent that, like SGLang's FlashInfer backends, builds new ones per capture).
    Without one the hooks change nothing."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.model_executor.runner.shape_key import ShapeKey

    from vortex_torch.engine.sgl import plugin
    from vortex_torch.engine.sgl.step_modes import DENSE, DENSE_CACHE, GRAPH_LABELS, SPARSE, STEP_MODES

    def make_key(runner: Any, size: int, label: str | None = None) -> Any:
        key = ShapeKey(size=size, variant_label=label)
        return plugin._after_make_graph_key(key, runner, size, None, label) or key

    def batch(bs: int, lengths: list[int]) -> Any:  # as SGLang's replay view: bs - len(lengths) padding rows of 1
        padding = bs - len(lengths)
        lens = torch.tensor(lengths + [1] * padding)
        return SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=bs, req_pool_indices=torch.ones(bs, dtype=torch.long),
                               seq_lens=lens, seq_lens_cpu=lens, out_cache_loc=torch.zeros(bs, dtype=torch.long),
                               num_padding=padding)  # fmt: skip

    def capture_one_stream(runner: Any) -> None:  # SGLang's loop: replay-prep, then the key, per batch size
        for bs in (2, 1):
            backend = runner.attn_backend
            backend.init_forward_metadata_out_graph(batch(bs, [1] * bs), in_capture=True)
            runner.graphs[make_key(runner, bs)] = backend.vortex_step_mode
            runner.wrappers[make_key(runner, bs)] = backend.planned  # what the graph's kernels were captured with

    for min_tokens in (0, 64):
        sc = BackendScenario("sglang", "reference", [5], tmp_path / str(min_tokens))
        backend = glue_backend(sc, monkeypatch, parent=WrapperParent, sparse_decode_min_tokens=min_tokens)
        backend.init_cuda_graph_state(4, 4)
        runner = SimpleNamespace(attn_backend=backend, graphs={}, wrappers={})
        plugin._around_capture_one_stream(capture_one_stream, runner)
        assert backend.vortex_capture_mode is None
        if min_tokens == 0:
            assert runner.graphs == {ShapeKey(size=2): SPARSE, ShapeKey(size=1): SPARSE}
            assert not backend.vortex_dense_graphs
            continue
        assert backend.vortex_dense_graphs
        assert runner.graphs == {
            ShapeKey(size=bs, variant_label=GRAPH_LABELS[mode]): mode for mode in STEP_MODES for bs in (1, 2)
        }
        assert len({id(w) for w in runner.wrappers.values()}) == 6  # each graph its own wrappers
        assert backend.vortex_core.layout.block_size == 4
        # 64 tokens in all: 58 (no block completes), 57 (28: the new token ends block 7), 64 (not below), and 63
        # with a padding row (64 if the padding counted)
        for lengths, mode in (([29, 29], DENSE), ([28, 29], DENSE_CACHE), ([64], SPARSE), ([63], DENSE)):
            backend.init_forward_metadata_out_graph(batch(2, lengths))
            assert runner.graphs[make_key(runner, 2)] == mode
            assert backend.planned is runner.wrappers[make_key(runner, 2)]  # the replayed graph's own, re-planned
            label = GRAPH_LABELS[mode]
            assert make_key(runner, 2, "lora").variant_label == ("lora" if label is None else f"lora+{label}")


def test_host_step_mode() -> None:
    """A step is dense when the batch's requests (not its padding rows) hold fewer tokens in all than
    ``min_tokens``, and updates the cache when one of them just completed a block (a length that is a multiple
    of the block size)."""
    from vortex_torch.engine.sgl.step_modes import DENSE, DENSE_CACHE, SPARSE, host_step_mode

    lens = torch.tensor([5, 17, 30, 1, 1])  # 3 requests (52 tokens), 2 padding rows
    assert host_step_mode(lens, 3, 53, 4) == DENSE
    assert host_step_mode(lens, 3, 52, 4) == SPARSE  # 52 is not below 52
    assert host_step_mode(lens, 3, 0, 4) == SPARSE  # no minimum: always sparse
    assert host_step_mode(torch.tensor([5, 16, 30]), 3, 53, 4) == DENSE_CACHE  # token 16 ends block 3
    assert host_step_mode(torch.tensor([5, 16, 30]), 1, 53, 4) == DENSE  # the batch is row 0 only
    assert host_step_mode(torch.tensor([40, 40]), 2, 53, 4) == SPARSE  # each short, together not
    assert host_step_mode(lens, 5, 60, 1) == DENSE_CACHE  # block size 1: every token completes a block
