"""Vortex attention backends: SGLang's FlashInfer and Triton backends with sparse decode for the flow's layers.

Everything Vortex does not change stays the parent's: prefill/extend attention (dense, design §3), the layers
in ``layers_skip``, idle batches, the parent's own metadata and CUDA-graph state. On top (one shared mixin):

* per batch (``init_forward_metadata`` eager; ``init_forward_metadata_out_graph`` before every CUDA-graph
  capture and replay, into capture-stable buffers): the decode plan of design §3 (:mod:`.planner`), built on
  the GPU from ``req_to_token`` / ``req_pool_indices`` / ``seq_lens`` with no host sync;
* ``forward_decode`` of a sparse layer: write K/V (``set_kv_buffer``, as the parent does), ``forward_cache``
  for the blocks this token completes (a fixed-size masked candidate list), then ``q.view(R, G, D)`` ->
  compiled indexer -> top-k selection -> sparse attention over the pool's own K/V buffers;
* ``forward_extend``: the parent's dense prefill, then ``forward_cache`` for every block the prompt completed.

fp8 KV cache (``kv_cache_dtype="fp8_e4m3"`` / ``"fp8_e5m2"``): K/V are written as SGLang writes them (``value /
layer.k_scale``), and every Vortex kernel reads them as ``stored * scale`` with the layer's scales the parent's
attention uses (``k_scale_float`` / ``v_scale_float``, 1.0 without checkpoint scales): ``fields["k_scale"]`` /
``fields["v_scale"]``, ``[1]`` fp32 device tensors made once per layer before CUDA-graph capture.

This module imports SGLang's backends; it is imported only by the backend factory hook of :mod:`.plugin`,
inside SGLang's scheduler processes.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend
from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
from sglang.srt.runtime_context import get_parallel

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.kernels.fp8 import is_fp8

from .aux_store import AuxFieldStore
from .config import VortexConfig
from .debug_dump import DecodeDumper
from .decode_core import AttendFn, VortexDecodeCore, make_budget_fn
from .errors import VortexSGLangError
from .flashinfer_decode import FlashInferSparseDecode
from .flow_spec import PreparedFlow, prepare_flow
from .planner import DecodePlan, DecodePlanBuffers, count_completed_blocks
from .step_modes import DENSE_CACHE, GRAPH_LABELS, SPARSE, host_step_mode

log = logging.getLogger("vortex_torch.engine.sgl")


class VortexBackendMixin:
    """Sparse decode on top of an SGLang attention backend (put it first in the bases).

    Attributes: ``vortex_core`` (:class:`VortexDecodeCore`), ``vortex_aux`` (the pool's
    :class:`AuxFieldStore`), ``vortex_plan`` (the current decode batch's plan, None outside decode),
    ``vortex_backend = True`` (what the fused-set-kv hook checks).
    """

    vortex_backend: ClassVar[bool] = True
    #: the parent's per-batch-size CUDA-graph state kept apart per step mode (_vortex_use_graph_state)
    _vortex_graph_state_attrs: ClassVar[tuple[str, ...]] = ("decode_cuda_graph_metadata",)
    token_to_kv_pool: Any
    req_to_token_pool: Any

    def __init__(self, model_runner: Any, *args: Any, vortex_config: VortexConfig, **kwargs: Any) -> None:
        self._vortex_parent().__init__(model_runner, *args, **kwargs)
        self._vortex_setup(model_runner, vortex_config)

    def _vortex_parent(self) -> Any:
        """The SGLang backend this mixin extends (``super()`` seen from the mixin)."""
        return super()

    # -- setup -----------------------------------------------------------------------------------------------
    def _vortex_attach_layers(
        self, runner: Any, config: VortexConfig, prepared: PreparedFlow, num_kv_heads: int
    ) -> tuple[PoolLayout, list[int]]:
        """The pool layout and this rank's sparse layers; attaches the flow's aux fields to the pool."""
        pool = self.token_to_kv_pool
        layout = PoolLayout(page_size=int(runner.page_size), block_size=config.block_size, num_kv_heads=num_kv_heads)
        start = int(getattr(pool, "start_layer", 0) or 0)
        layers = prepared.sparse_layers(start, start + int(pool.layer_num))
        self.vortex_aux = AuxFieldStore.attach(pool, prepared, layout, layers)
        return layout, layers

    def _vortex_init_step_state(self, runner: Any, layers: list[int]) -> None:
        """Per-layer KV scales and the empty per-step state (once ``vortex_core`` exists)."""
        self._vortex_setup_kv_scales(runner, layers, self.token_to_kv_pool.dtype)
        self.vortex_plan: DecodePlan | None = None
        self.vortex_buffers: DecodePlanBuffers | None = None
        #: the step's plan is built by this layer's forward_decode (so it is captured in the decode CUDA graph)
        self._vortex_plan_layer = min(layers) if layers else -1
        #: set per decode batch: (forward batch, capture-stable buffers or None) the first sparse layer plans from
        self._vortex_pending: tuple[Any, DecodePlanBuffers | None] | None = None
        #: SGLang runs its overlap scheduler: the plan is launched before the graph replay (see
        #: _vortex_plan_before_replay)
        server_args = getattr(runner, "server_args", None)
        self._vortex_overlap = not bool(getattr(server_args, "disable_overlap_schedule", True))
        self._vortex_logit_cap_checked: set[int] = set()
        #: VortexConfig.sparse_decode_min_tokens: decode steps whose requests hold fewer tokens in all are dense
        self.vortex_sparse_min_tokens = int(self.vortex_core.config.sparse_decode_min_tokens)
        #: this step's mode (:mod:`.step_modes`): sparse, or dense (every layer the parent's) with or without
        #: the cache update of the blocks it completes
        self.vortex_step_mode = SPARSE
        #: the mode being captured into a CUDA graph, set by the graph runner hook (plugin hook 7); None outside
        #: capture
        self.vortex_capture_mode: str | None = None
        #: the dense modes' graphs were captured beside the sparse ones (a dense step may replay one)
        self.vortex_dense_graphs = False
        self._vortex_warned_no_host_lens = False
        #: attribute -> {step mode: the parent's per-batch-size graph state for that mode's graphs}
        self._vortex_graph_states: dict[str, dict[str, Any]] = {}

    def _vortex_setup(self, runner: Any, config: VortexConfig) -> None:
        pool = self.token_to_kv_pool
        if getattr(runner, "sliding_window_size", None) is not None:
            raise VortexSGLangError("sliding-window attention models are not supported by Vortex yet")
        if getattr(pool, "kv_cache_layout", "nhd") != "nhd" or not hasattr(pool, "k_buffer"):
            raise VortexSGLangError(
                f"Vortex reads SGLang's [slots, H_kv, D] K/V buffers; this pool ({type(pool).__name__}, layout "
                f"{getattr(pool, 'kv_cache_layout', '?')}) has another layout (unset SGLANG_USE_HND_KVCACHE)"
            )
        heads, dim = int(pool.head_num), int(pool.head_dim)
        if int(pool.v_head_dim) != dim:
            raise VortexSGLangError(
                f"Vortex needs equal K/V head dims, the pool has {dim} and {pool.v_head_dim}"
            )
        h_q = runner.model_config.num_attention_heads // get_parallel().attn_tp_size
        if h_q % heads:
            raise VortexSGLangError(f"{h_q} query heads per rank do not split over {heads} KV heads")
        prepared: PreparedFlow = prepare_flow(
            config, head_dim=dim, group_size=h_q // heads, kv_dtype=pool.dtype
        )
        layout, layers = self._vortex_attach_layers(runner, config, prepared, heads)
        self.vortex_core = VortexDecodeCore(
            prepared, layout, context_len=int(runner.model_config.context_len), device=runner.device
        )
        self._vortex_init_step_state(runner, layers)
        self._vortex_heads = (h_q, heads, h_q // heads, dim)
        self._vortex_dumper = DecodeDumper.from_env(
            rank=get_parallel().tp_rank,
            meta={
                "module_name": config.module_name,
                "module_path": config.module_path,
                "flow_kwargs": dict(config.flow_kwargs),
                "aux_dtype": config.dtype,
                "bos": config.block_reserved_bos,
                "eos": config.block_reserved_eos,
                "topk_val": config.topk_val,
                "topk_ratio": config.topk_ratio,
                "backend": type(self).__name__,
            },
        )
        log.info(
            "%s: flow %r, %d sparse layers of %d, G=%d, D=%d, H_kv=%d, page=%d, block=%d, <= %d blocks/row, "
            "impl=%s",
            type(self).__name__, config.module_name, len(layers), int(pool.layer_num), h_q // heads, dim, heads,
            layout.page_size, layout.block_size, self.vortex_core.max_blocks_per_row, config.impl_backend,
        )  # fmt: skip

    # -- fp8 KV scales -----------------------------------------------------------------------------------------
    def _vortex_setup_kv_scales(self, runner: Any, layers: list[int], kv_dtype: torch.dtype) -> None:
        """One ``[1]`` fp32 device tensor per sparse layer for each of K's and V's scales (fp8 pools only), filled
        from the model's attention layers now, before any CUDA graph is captured."""
        self._vortex_kv_fp8 = is_fp8(kv_dtype)
        self._vortex_scale_host: dict[int, tuple[float, float]] = {}
        self._vortex_scale_dev: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if not self._vortex_kv_fp8:
            return
        known: dict[int, tuple[float, float]] = {}
        model = getattr(runner, "model", None)
        if model is not None and hasattr(model, "modules"):
            for m in model.modules():
                if hasattr(m, "layer_id") and hasattr(m, "k_scale_float"):
                    known.setdefault(int(m.layer_id), self._vortex_layer_scales(m))
        table = torch.ones(max(1, len(layers)), 2, dtype=torch.float32)
        for i, lid in enumerate(layers):
            self._vortex_scale_host[lid] = known.get(lid, (1.0, 1.0))
            table[i] = torch.tensor(self._vortex_scale_host[lid])
        table = table.to(runner.device)
        self._vortex_scale_dev = {lid: (table[i, 0:1], table[i, 1:2]) for i, lid in enumerate(layers)}
        log.info("Vortex fp8 KV cache (%s): per-layer scales %s", kv_dtype, sorted(set(known.values())) or "1.0")

    def _vortex_layer_scales(self, layer: Any) -> tuple[float, float]:
        """``(k_scale, v_scale)`` the parent's attention reads this layer's fp8 K/V with (its Triton backend's
        rule: both of the layer's ``k_scale_float`` / ``v_scale_float`` when the checkpoint has scales, else 1.0)."""
        ks, vs = getattr(layer, "k_scale_float", None), getattr(layer, "v_scale_float", None)
        if getattr(layer, "k_scale", None) is None or getattr(layer, "v_scale", None) is None or ks is None or vs is None:
            return 1.0, 1.0
        return float(ks), float(vs)

    def _vortex_scale_fields(self, layer: Any) -> dict[str, torch.Tensor]:
        """``{"k_scale", "v_scale"}`` of a sparse layer of an fp8 pool (empty otherwise); re-filled eagerly if a
        layer's scales changed since setup (never inside a CUDA-graph capture)."""
        if not self._vortex_kv_fp8:
            return {}
        lid = int(layer.layer_id)
        want = self._vortex_layer_scales(layer)
        if self._vortex_scale_host.get(lid) != want:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise VortexSGLangError(
                    f"layer {lid}: its fp8 KV scales {want} differ from those read at setup "
                    f"{self._vortex_scale_host.get(lid)}, inside a CUDA-graph capture"
                )
            k_t, v_t = self._vortex_scale_dev[lid]
            k_t.fill_(want[0])
            v_t.fill_(want[1])
            self._vortex_scale_host[lid] = want
        k_t, v_t = self._vortex_scale_dev[lid]
        return {"k_scale": k_t, "v_scale": v_t}

    # -- per-batch metadata ------------------------------------------------------------------------------------
    def _vortex_fields(self, layer: Any) -> dict[str, torch.Tensor]:
        """K/V of the layer (SGLang's buffers, fp8 views for an fp8 pool), its aux fields, and for an fp8 pool
        its scales (``k_scale`` / ``v_scale``, what the compiled kernels and the attention read K/V with)."""
        pool = self.token_to_kv_pool
        layer_id = int(layer.layer_id)
        return {
            "k": pool.get_key_buffer(layer_id),
            "v": pool.get_value_buffer(layer_id),
            **self.vortex_aux.fields(layer_id),
            **self._vortex_scale_fields(layer),
        }

    def _vortex_plan_for(self, forward_batch: Any, buffers: DecodePlanBuffers | None) -> DecodePlan:
        bs = int(forward_batch.batch_size)
        plan = self.vortex_core.plan(
            self.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices[:bs],
            forward_batch.seq_lens[:bs],
            buffers=buffers,
            budget=self._vortex_host_budget(forward_batch, graph=buffers is not None),
        )
        return plan

    def _vortex_host_budget(self, forward_batch: Any, *, graph: bool) -> torch.Tensor | None:
        """Budgets computed on the host for this step (None: the device planner computes them)."""
        return None

    def _vortex_attend_fn(self, layer: Any) -> AttendFn | None:
        """The attention over the step's selection for ``layer``, or None: the decode core's own (Vortex's Triton
        kernel after the selection, or, for an executor built with ``fuse_attention``, inside the scoring launch
        itself). The FlashInfer backend's ``exact_attention`` mode returns FlashInfer's decode here."""
        return None

    def _vortex_begin_batch(self, forward_batch: Any, buffers: DecodePlanBuffers | None, mode: str) -> None:
        """Per batch, on the host: record the step's mode (:meth:`_vortex_mode_of`); for a sparse decode step
        only remember what the first sparse layer plans from, or launch the plan now, before the graph replay
        (:meth:`_vortex_plan_before_replay`)."""
        self.vortex_plan = None
        self._vortex_pending = None
        self.vortex_step_mode = mode
        if mode != SPARSE or not forward_batch.forward_mode.is_decode():
            return
        if self._vortex_plan_before_replay():
            self.vortex_plan = self._vortex_plan_for(forward_batch, buffers)
        else:
            self._vortex_pending = (forward_batch, buffers)

    def _vortex_mode_of(self, forward_batch: Any, *, graph: bool, in_capture: bool = False) -> str:
        """The batch's step mode: in a capture, the graph being captured (the capture hook's
        ``vortex_capture_mode``; None, no hook: the sparse graph only); at a graph replay, when the dense graphs
        were captured, and eager, :func:`.step_modes.host_step_mode` of the host copy of the lengths SGLang
        keeps (``seq_lens_cpu``: no sync). Without that copy a step stays sparse, with one warning."""
        if not forward_batch.forward_mode.is_decode() or self.vortex_sparse_min_tokens <= 0:
            return SPARSE
        if in_capture:
            return self.vortex_capture_mode or SPARSE
        if graph and not self.vortex_dense_graphs:
            return SPARSE
        seq_cpu = getattr(forward_batch, "seq_lens_cpu", None)
        if seq_cpu is None:
            if not self._vortex_warned_no_host_lens:
                self._vortex_warned_no_host_lens = True
                log.warning(
                    "sparse_decode_min_tokens=%d is not applied: SGLang gave this decode batch no host copy of its "
                    "lengths (seq_lens_cpu), and reading them from the GPU would stall every step; such steps "
                    "decode sparsely", self.vortex_sparse_min_tokens,
                )  # fmt: skip
            return SPARSE
        # the batch's own requests: a CUDA-graph replay pads the batch with ``num_padding`` rows of length 1
        rows = int(forward_batch.batch_size) - int(getattr(forward_batch, "num_padding", 0) or 0)
        return host_step_mode(seq_cpu, rows, self.vortex_sparse_min_tokens, self.vortex_core.layout.block_size)

    def _vortex_use_graph_state(self, mode: str) -> None:
        """Point the parent's per-batch-size CUDA-graph state (``_vortex_graph_state_attrs``) at the step mode's
        own copy. SGLang's FlashInfer backends build new decode wrappers for a batch size at every capture and
        plan, at replay, the ones stored for that size: a dense graph captured after the sparse one of the same
        size would otherwise leave the sparse graph's wrappers (its dense ``layers_skip`` layers) never planned
        again."""
        for attr in self._vortex_graph_state_attrs:
            if not hasattr(self, attr):
                continue
            copies = self._vortex_graph_states.setdefault(attr, {SPARSE: getattr(self, attr)})
            setattr(self, attr, copies.setdefault(mode, {}))

    def vortex_graph_label(self) -> str | None:
        """The ``ShapeKey.variant_label`` of the CUDA graphs of this step's mode (None: the sparse graphs,
        SGLang's key unchanged). Read by the graph runner hook after replay-prep."""
        return GRAPH_LABELS[self.vortex_step_mode]

    def _vortex_plan_before_replay(self) -> bool:
        """Whether the step's plan is made here, in the replay-prep hook, rather than by the first sparse layer
        inside the decode CUDA graph (the default: no launch outside the graph).

        Yes under SGLang's overlap scheduler: there the scheduler may write ``req_to_token`` for the next batch
        as soon as the graph runner records its read-done event, after replay-prep and before the replay
        (decode_cuda_graph_runner.execute, the WAR fast path), so everything read from it must be read by then.
        The plan is the only Vortex kernel that reads it; launched here, on the forward stream, it is one eager
        launch per step, hidden by the overlap. (Read inside the graph, the rows of the running requests would
        still be intact, as the next batch writes only past their lengths, but a finished request still
        riding in the batch could have its row reused.)"""
        return self._vortex_overlap

    def init_forward_metadata(self, forward_batch: Any) -> None:
        self._vortex_parent().init_forward_metadata(forward_batch)
        self._vortex_begin_batch(forward_batch, None, self._vortex_mode_of(forward_batch, graph=False))
        if forward_batch.forward_mode.is_decode() and self._vortex_dumper is not None:
            self._vortex_dumper.next_step()  # eager decode steps only: graph replays cannot be dumped

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int, *args: Any, **kwargs: Any) -> None:
        self._vortex_parent().init_cuda_graph_state(max_bs, max_num_tokens, *args, **kwargs)
        self._vortex_allocate_graph_state(max(max_bs, max_num_tokens))

    def _vortex_allocate_graph_state(self, max_batch: int) -> None:
        """Capture-stable buffers for decode batches of up to ``max_batch`` requests."""
        self.vortex_buffers = self.vortex_core.allocate_buffers(max_batch)
        log.info("Vortex CUDA-graph plan buffers: %.1f MiB", self.vortex_buffers.nbytes / 2**20)

    def init_forward_metadata_out_graph(self, forward_batch: Any, in_capture: bool = False) -> None:
        if self.vortex_buffers is None:
            self._vortex_parent().init_forward_metadata_out_graph(forward_batch, in_capture)
            self.vortex_plan, self._vortex_pending, self.vortex_step_mode = None, None, SPARSE
            return
        mode = self._vortex_mode_of(forward_batch, graph=True, in_capture=in_capture)
        self._vortex_use_graph_state(mode)  # before the parent captures or plans into it
        self._vortex_parent().init_forward_metadata_out_graph(forward_batch, in_capture)
        self._vortex_begin_batch(forward_batch, self.vortex_buffers, mode)

    # -- forward -----------------------------------------------------------------------------------------------
    def _vortex_sparse(self, layer: Any) -> bool:
        return self.vortex_core.prepared.is_sparse(int(layer.layer_id)) and not getattr(
            layer, "is_cross_attention", False
        )

    def _vortex_dense_decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
        save_kv_cache: bool, **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        """The parent's decode; in a dense step in which a request completes a block (``DENSE_CACHE``) a flow
        layer then summarises the completed blocks (one launch, which finds them on the GPU), so that the
        summaries are whole when a later step decodes sparsely."""
        o = self._vortex_parent().forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
        if self.vortex_step_mode == DENSE_CACHE and k is not None and self._vortex_sparse(layer):
            self.vortex_core.update_cache(self._vortex_fields(layer), forward_batch.out_cache_loc)
        return o

    def _vortex_step_plan(self, layer: Any) -> DecodePlan | None:
        """The step's plan when ``layer`` decodes sparsely (None: the parent backend decodes it). The plan is
        made at the first sparse layer: one launch on the stream, inside the decode CUDA graph (no host work
        per step). Refuses logit soft-capping, once per layer."""
        if self._vortex_pending is not None and layer.layer_id == self._vortex_plan_layer:
            batch, buffers = self._vortex_pending
            self.vortex_plan = self._vortex_plan_for(batch, buffers)
        plan = self.vortex_plan
        if plan is None or not self._vortex_sparse(layer):
            return None
        if layer.layer_id not in self._vortex_logit_cap_checked:
            if getattr(layer, "logit_cap", 0) and layer.logit_cap > 0:
                raise VortexSGLangError(
                    f"layer {layer.layer_id}: logit soft-capping is not supported by Vortex's sparse decode"
                )
            self._vortex_logit_cap_checked.add(layer.layer_id)
        return plan

    def forward_decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
        save_kv_cache: bool = True, **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        plan = self._vortex_step_plan(layer)
        if plan is None:
            return self._vortex_dense_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        loc = forward_batch.out_cache_loc
        if k is not None and save_kv_cache:
            self.token_to_kv_pool.set_kv_buffer(layer, loc, k, v, layer.k_scale, layer.v_scale)
        fields = self._vortex_fields(layer)
        h_q, _heads, group, dim = self._vortex_heads
        # [tokens, H_q * D] -> [R, G, D]: row b * H_kv + h holds query heads h*G .. h*G+G-1 (GQA order)
        q_rows = q.reshape(-1, h_q, dim).reshape(-1, group, dim)
        o = self.vortex_core.decode_layer(
            q_rows,
            fields,
            plan,
            layer.scaling,
            attend=self._vortex_attend_fn(layer),
            new_locs=loc,  # the cache update of the blocks this step completes (folded into scoring)
        )
        if self._vortex_dumper is not None:
            self._vortex_dumper.dump(
                int(layer.layer_id), self.vortex_core.layout, plan, q_rows, fields, o, layer.scaling,
                seq_lens=forward_batch.seq_lens,
            )  # fmt: skip
        return o.reshape(-1, h_q * dim)

    def forward_extend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
        save_kv_cache: bool = True, **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        o = self._vortex_parent().forward_extend(
            q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs
        )
        if k is not None and self._vortex_sparse(layer):
            prefix, extend = forward_batch.extend_prefix_lens_cpu, forward_batch.extend_seq_lens_cpu
            count = (
                count_completed_blocks(self.vortex_core.layout.block_size, list(prefix), list(extend))
                if prefix is not None and extend is not None
                else None
            )
            self.vortex_core.update_cache(self._vortex_fields(layer), forward_batch.out_cache_loc, count)
        return o


class VortexFlashInferBackend(VortexBackendMixin, FlashInferAttnBackend):
    """FlashInfer for prefill and dense layers; for the flow's layers, Vortex's indexer and selection, then
    FlashInfer's own decode kernel over the selected tokens (:mod:`.flashinfer_decode`)."""

    def _vortex_setup(self, runner: Any, config: VortexConfig) -> None:
        super()._vortex_setup(runner, config)
        core = self.vortex_core
        self.vortex_fi: FlashInferSparseDecode | None = None
        if core.reference_kernels or not core.exact_attention:
            # impl_backend="reference": plain-PyTorch attention as well; default: Vortex's Triton attention,
            # planned on the device inside the CUDA graph. exact_attention=True: FlashInfer's own decode kernel
            # over the selected tokens (bit-identical to plain SGLang at full budget; host plan per step).
            return
        _h_q, heads, group, dim = self._vortex_heads
        self.vortex_fi = FlashInferSparseDecode(
            self, group=group, head_dim=dim, num_kv_heads=heads, block_size=core.layout.block_size,
            page_size=core.layout.page_size, kv_dtype=self.token_to_kv_pool.dtype,
            q_dtype=getattr(runner, "dtype", None) or runner.model_config.dtype,
            max_blocks_per_row=core.max_blocks_per_row, max_selected_per_row=core.max_selected_per_row,
            budget_fn=make_budget_fn(core.prepared, torch.device("cpu"), core.max_selected_per_row),
            device=torch.device(runner.device),
        )  # fmt: skip

    def _vortex_allocate_graph_state(self, max_batch: int) -> None:
        super()._vortex_allocate_graph_state(max_batch)
        if self.vortex_fi is not None:
            nbytes = self.vortex_fi.allocate_graph_buffers(max_batch)
            log.info("Vortex CUDA-graph FlashInfer page tables: %.1f MiB", nbytes / 2**20)

    def _vortex_plan_before_replay(self) -> bool:
        # FlashInfer's own decode (exact_attention) plans on the host anyway
        return self.vortex_fi is not None or super()._vortex_plan_before_replay()

    def _vortex_host_budget(self, forward_batch: Any, *, graph: bool) -> torch.Tensor | None:
        if self.vortex_fi is None:
            return None
        bs = int(forward_batch.batch_size)
        seq_cpu = forward_batch.seq_lens_cpu
        seq_cpu = seq_cpu[:bs] if seq_cpu is not None else forward_batch.seq_lens[:bs].cpu()
        return self.vortex_fi.begin_step(seq_cpu, graph=graph)

    def _vortex_attend_fn(self, layer: Any) -> AttendFn | None:
        fi = self.vortex_fi
        if fi is None:
            return super()._vortex_attend_fn(layer)
        return lambda q_rows, fields, plan: fi.attend(q_rows, fields["k"], fields["v"], plan, layer)


class VortexTritonBackend(VortexBackendMixin, TritonAttnBackend):
    """SGLang's Triton kernels for prefill and dense layers, Vortex sparse decode for the flow's layers."""
