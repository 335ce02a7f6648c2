"""One decode step of one layer, Qwen3-8B geometry (``--mla``: DeepSeek-V2-Lite's MLA): Vortex's sparse step
against dense FlashInfer decode.

    VORTEX_MODELS=none bash tools/device/remote.sh bench decode_step_bench --out $OUT/decode_step.json
    python tools/bench/decode_step_bench.py --cases 32768x32 32768x1 --budget 2048 [--sweep [attention indexer]] [--kv-dtype fp8_e4m3]
    python tools/bench/decode_step_bench.py --mla --cases 32768x16 8192x16 32768x1 [--flow quest_mla] [--sweep attention]

Measured in one process on one GPU, all as CUDA-graph replays (as in serving):

* HBM bandwidth, three ways: ``b.copy_(a)`` of 1 GiB (read + write counted), a streaming Triton read of 1 GiB,
  and dense FlashInfer's own bytes/µs in each case; the floor's denominator is the best of the three (on the
  H200 of 2026-12-04 ``copy_`` gave 2.77 TB/s while a plain read gave 4.45 TB/s: a copy-only floor flatters);
* **dense**: FlashInfer's ``BatchDecodeWithPagedKVCacheWrapper`` (tensor cores, page 16, separate K and V
  buffers), planned once, as plain SGLang decodes;
* **sparse**: the step the vortex-sglang backend runs per layer: the compiled quick-start indexer (scoring, with
  the decode cache update of the block the new token completes folded into the same launch; then the top-k
  selection), Vortex's sparse attention (split merge in the same launch); the per-step plan (one launch for
  all layers) is timed apart and amortised over 36 layers in ``step_us``;
* kernel launches of one sparse layer (torch profiler) and of the per-step plan;
* on sm_90+, the same layer with every Vortex kernel launched with programmatic dependent launch
  (``VortexConfig.enable_pdl``: ``layer_pdl_us``, ``step_pdl_us``, ``speedup_vs_dense_pdl``);
* the floor: bytes the sparse step must read (selected K/V + every block summary) / that best bandwidth.

``--kv-dtype fp8_e4m3`` / ``fp8_e5m2`` stores K/V in fp8 (SGLang's ``--kv-cache-dtype``, scale 1.0 read from a
``[1]`` tensor as in serving): the sparse step reads half the K/V bytes, and dense FlashInfer decodes the same fp8
cache. The default (``bfloat16``) is the measurement recorded so far.

``--mla``: the same measurements for an MLA model (:class:`MLACase`): 16 query heads on one latent "KV head"
(SGLang's ``MLATokenToKVPool``, one bf16 ``[num_slots, 1, 512 + 64]`` buffer per layer; a row per request),
the absorbed queries ``[B, 16, 576]``, a ``vFlowMLA`` (default vortex-flows-contrib's
``rope_aware_block_sparse_mla``; ``--flow NAME`` picks another installed vFlowMLA) through
``VortexMLADecodeCore`` (MLA attention over the selected latent blocks, ``o [B, 16, 512]``), the plan
amortised over 27 layers. Dense: FlashInfer's ``flashinfer.mla.BatchMLAPagedAttentionWrapper`` over the same
latent buffers, planned and run as SGLang 0.5.17's ``FlashInferMLAAttnBackend`` does (token-level indices,
``ckv``/``kpe`` views of the latent); its failure is recorded in the row (``flashinfer_error``), the sparse
numbers stay. Bytes: a latent row (576 elements) per token is K and V at once. Every JSON row carries
``geometry`` (``"gqa"`` / ``"mla"``) and ``flow``. ``--mla --kv-dtype fp8_e4m3`` stores the latents in fp8
(scales from ``[1]`` tensors, as in serving; what Vortex's MLA attention reads with fp8 latents) and asks
FlashInfer's MLA decode for the same fp8 cache; SGLang 0.5.17's FlashInfer MLA backend decodes bf16, so a
refusal is the row's ``flashinfer_error``, with the sparse numbers kept.

Every timed call rotates over ``--layers`` copies of the pool (different K/V/summary buffers, as successive
layers are), so no layer finds its data in L2. ``--sweep`` also times attention and/or indexer tile variants
(both when none is named; with ``--mla`` the attention variants are MLA attention's tiles, warps and splits).
Writes JSON (``--out``, rewritten after every case) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:  # vortex-sglang is imported when a case is built (flows_bench imports this file's probes)
    from vortex_torch.engine.sgl.config import VortexConfig
    from vortex_torch.engine.sgl.decode_core import VortexDecodeCore
    from vortex_torch.engine.sgl.flow_spec import PreparedFlow

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from indexer_bench import replay_us  # noqa: E402 - one graph timer for every bench

FLOW = os.path.join(REPO, "examples", "custom_sparse_attention.py")
HQ, HKV, D, PAGE, BS = 32, 8, 128, 16, 16
KV_DTYPES = {"bfloat16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
E2E_LAYERS = 36  # Qwen3-8B: the plan's cost is shared by this many layers
#: DeepSeek-V2-Lite's MLA (``--mla``): query heads, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim; its
#: layers and context length (max_position_embeddings: sizes the per-row block lists, as in serving)
MLA_HEADS, MLA_RANK, MLA_ROPE, MLA_NOPE = 16, 512, 64, 128
MLA_E2E_LAYERS, MLA_CONTEXT_LEN = 27, 163840
MLA_FLOW: tuple[str | None, str] = (None, "rope_aware_block_sparse_mla")  # vortex-flows-contrib's, by name


def log(msg: str) -> None:
    print(f"[decode_step_bench] {msg}", flush=True)


def graph_us(fns: list[Callable[[], object]], iters: int = 20, rounds: int = 5) -> float:
    """Microseconds of one call of ``fns[i]``, the list captured as one CUDA graph (one call each), timed by
    :func:`indexer_bench.replay_us` (median of ``rounds`` rounds of ``iters`` replays)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    return replay_us(g, iters, rounds) / len(fns)


def launch_events(fn: Callable[[], object]) -> list[str]:
    """Names of the GPU activities of one call of ``fn`` (kernels, and ``Memcpy ...``/``Memset ...`` entries),
    in order, from the torch profiler; a first call outside the profiler compiles and warms everything up."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"]


def is_kernel(name: str) -> bool:
    """A profiler GPU activity that is a kernel launch (not a copy or a memset)."""
    return "Memcpy" not in name and "Memset" not in name


def launches(fn: Callable[[], object]) -> int:
    """Kernel launches of one call of ``fn`` (copies and memsets not counted)."""
    return sum(1 for name in launch_events(fn) if is_kernel(name))


COPY_BANDWIDTH: dict[str, float] = {}  # the last measurement of each kind, GB/s


def copy_bandwidth_gbs() -> float:
    """Copy bandwidth, read + write counted, of 1 GiB ``b.copy_(a)`` as uint8, bf16 and int64 tensors (torch's
    copy kernel vectorises differently per dtype); the best of them is the floor's denominator, the others are
    kept in ``COPY_BANDWIDTH``. The GPU is kept busy ~1 s first so its clocks are up."""
    n = 1 << 30
    raw = torch.empty(n, dtype=torch.uint8, device="cuda")
    out = torch.empty_like(raw)
    t = time.time()
    while time.time() - t < 1.0:
        out.copy_(raw)
        torch.cuda.synchronize()
    for dtype in (torch.uint8, torch.bfloat16, torch.int64):
        a, b = raw.view(dtype), out.view(dtype)
        us = graph_us([lambda a=a, b=b: b.copy_(a)], iters=50)
        COPY_BANDWIDTH[str(dtype).replace("torch.", "")] = 2 * n / (us * 1e-6) / 1e9
    return max(COPY_BANDWIDTH.values())


@triton.jit
def _read_all(x, out, n, BLOCK: tl.constexpr):
    """Sum of ``x[:n]`` by ``num_programs`` programs striding over ``BLOCK``-element tiles (a pure HBM read)."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        acc += tl.load(x + i + tl.arange(0, BLOCK), mask=i + tl.arange(0, BLOCK) < n, other=0).to(tl.float32)
    tl.store(out + tl.program_id(0), tl.sum(acc))


def read_bandwidth_gbs() -> float:
    """Streaming read bandwidth of 1 GiB (bf16, 16-byte loads), best of a few grid shapes: what a
    bandwidth-bound kernel can get from HBM, which torch's ``copy_`` (read + write) may not show."""
    n = 1 << 29
    x = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    best = 0.0
    for progs in (sms * 8, sms * 16):
        out = torch.empty(progs, dtype=torch.float32, device="cuda")
        for warps in (4, 8):
            us = graph_us([lambda p=progs, o=out, w=warps: _read_all[(p,)](x, o, n, BLOCK=2048, num_warps=w)])
            best = max(best, 2 * n / (us * 1e-6) / 1e9)
    return best


class PoolCase:
    """What :class:`Case` (GQA) and :class:`MLACase` share: ``batch`` requests of ``ctx`` tokens on shuffled
    pages of one pool (page 0 never used, as in SGLang), ``layers`` copies of the flow's aux fields summarised
    over every block (as after prefill), one step's plan, and the sparse layer the vortex-sglang backend runs.

    The step decodes the token at position ``ctx - 1`` (already written; with ``ctx`` a multiple of 16 it
    completes its block, so the cache update runs, folded into scoring). A subclass sets the geometry below
    and builds its K/V buffers, ``fields``, ``q`` and ``core`` between :meth:`_build_pool` and
    :meth:`_build_step`."""

    #: the ``geometry`` of the bench's JSON rows
    geometry: str
    #: layers of the model the geometry is taken from: the per-step plan is shared by that many
    e2e_layers: int
    num_q_heads: int
    num_kv_heads: int
    #: width of a query row and of a cached K row; of an output row (V)
    head_dim: int
    out_dim: int
    #: the softmax scale handed to attention (None: ``head_dim ** -0.5``)
    sm_scale: float | None = None
    core: VortexDecodeCore
    fields: list[dict[str, torch.Tensor]]
    q: list[torch.Tensor]

    def _build_pool(
        self, ctx: int, batch: int, layers: int, prepared: PreparedFlow, context_len: int, device: str,
        kv_dtype: torch.dtype,
    ) -> int:  # fmt: skip
        """Request table, step inputs and aux store; returns the pool's slot count."""
        from vortex_torch.abs.layout import PoolLayout
        from vortex_torch.engine.sgl.aux_store import AuxFieldStore

        dev = device
        self.ctx, self.batch, self.layers, self.kv_dtype, self.device = ctx, batch, layers, kv_dtype, device
        self.kv_elt = torch.empty((), dtype=kv_dtype).element_size()
        self.prepared = prepared
        self.layout = PoolLayout(page_size=PAGE, block_size=BS, num_kv_heads=self.num_kv_heads)
        pages_per_req = math.ceil(ctx / PAGE)
        self.num_pages = batch * pages_per_req + 1
        slots = self.num_pages * PAGE
        self.context_len = context_len
        perm = torch.randperm(self.num_pages - 1, device=dev) + 1
        self.req_to_token = torch.zeros(batch + 1, context_len, dtype=torch.int32, device=dev)
        t = torch.arange(ctx, device=dev)
        for b in range(batch):
            own = perm[b * pages_per_req : (b + 1) * pages_per_req]
            self.req_to_token[b + 1, :ctx] = (own[t // PAGE] * PAGE + t % PAGE).to(torch.int32)
        self.rpi = torch.arange(1, batch + 1, device=dev)
        self.seq_lens = torch.full((batch,), ctx, device=dev, dtype=torch.int64)
        self.loc = self.req_to_token[self.rpi, ctx - 1].long()
        self.aux = AuxFieldStore(self.prepared, self.layout, slots, list(range(layers)), dev)
        one = torch.ones(1, dtype=torch.float32, device=dev)
        #: the fp8 cache's ``[1]`` scale tensors, as served (none for bf16): every layer copy's fields carry them
        self.kv_scales = {"k_scale": one, "v_scale": one} if kv_dtype != torch.bfloat16 else {}
        return slots

    def _build_step(self) -> None:
        """Plan buffers, every block summarised in every layer copy, the step's plan."""
        self.buffers = self.core.allocate_buffers(self.batch)
        all_blocks = torch.arange(self.layout.num_blocks(self.num_pages), device=self.device)
        for f in self.fields:
            self.core.executor.run_cache(f, all_blocks)  # every block summarised, as after prefill
        self.plan = self.core.plan(self.req_to_token, self.rpi, self.seq_lens, buffers=self.buffers)
        self.selected_blocks = int(self.plan.sel_indptr[-1])
        self.dense_blocks = int(self.plan.dense_indptr[-1])

    def plan_step(self) -> None:
        self.core.plan(self.req_to_token, self.rpi, self.seq_lens, buffers=self.buffers)

    def layer(self, i: int) -> torch.Tensor:
        # the new token completes its block (ctx is a multiple of 16): the cache update runs, folded into scoring
        return self.core.decode_layer(self.q[i], self.fields[i], self.plan, self.sm_scale, new_locs=self.loc)

    def attend(self, i: int) -> torch.Tensor:
        return self.core.attend(self.q[i], self.fields[i], self.plan, self.sm_scale)

    @classmethod
    def token_kv_bytes(cls, kv_elt: int) -> int:
        """Bytes attention reads per token of one KV head (K and V)."""
        raise NotImplementedError

    @classmethod
    def pool_bytes_per_layer(cls, ctx: int, batch: int) -> float:
        """Device bytes of one layer copy's K/V, staged in bf16 whatever the KV dtype, + 10% (sizes
        ``--layers``)."""
        return batch * math.ceil(ctx / PAGE) * PAGE * cls.num_kv_heads * cls.token_kv_bytes(2) * 1.1

    def bytes_attention(self) -> int:
        """K/V bytes of the selected blocks."""
        return self.selected_blocks * BS * self.token_kv_bytes(self.kv_elt)

    def bytes_sparse(self) -> int:
        # selected K/V + every block's summaries (the indexer scores them all) + q/o (bf16)
        qo = self.batch * self.num_q_heads * (self.head_dim + self.out_dim) * 2
        return self.bytes_attention() + self.dense_blocks * self.prepared.aux_bytes_per_block() + qo

    def bytes_dense(self) -> int:
        return self.batch * self.ctx * self.num_kv_heads * self.token_kv_bytes(self.kv_elt)

    def dense_steps(self) -> list[Callable[[], object]]:
        """Dense FlashInfer decode of each layer copy, as plain SGLang runs it."""
        raise NotImplementedError


class Case(PoolCase):
    """``layers`` copies of one layer's pool for ``batch`` requests of ``ctx`` tokens (pages shuffled),
    Qwen3-8B geometry (32 query heads, 8 KV heads, D 128), separate K and V buffers, served by ``flow``:
    ``(module_path, module_name)`` as in ``VortexConfig`` (default: the quick-start flow; a ``None`` path
    finds an installed flow, e.g. one of vortex-flows-contrib, by name). ``tests/gpu/test_launch_count.py``
    counts the launches of this same step for every GQA flow."""

    geometry = "gqa"
    e2e_layers = E2E_LAYERS
    num_q_heads, num_kv_heads, head_dim, out_dim = HQ, HKV, D, D

    def __init__(self, ctx: int, batch: int, budget_tokens: int, layers: int,
                 flow: tuple[str | None, str] = (FLOW, "custom_sparse_attention"), device: str = "cuda",
                 kv_dtype: torch.dtype = torch.bfloat16) -> None:  # fmt: skip
        from vortex_torch.engine.sgl.decode_core import VortexDecodeCore
        from vortex_torch.engine.sgl.flow_spec import prepare_flow

        dev = device
        cfg = flow_config(flow, budget_tokens)
        prepared = prepare_flow(cfg, head_dim=D, group_size=HQ // HKV, kv_dtype=kv_dtype)
        context_len = max(ctx, 40960)  # Qwen3-8B's
        slots = self._build_pool(ctx, batch, layers, prepared, context_len, dev, kv_dtype)
        self.k = [torch.randn(slots, HKV, D, dtype=torch.bfloat16, device=dev).to(kv_dtype) for _ in range(layers)]
        self.v = [torch.randn(slots, HKV, D, dtype=torch.bfloat16, device=dev).to(kv_dtype) for _ in range(layers)]
        self.core = VortexDecodeCore(self.prepared, self.layout, context_len=context_len, device=dev)
        self.fields = [{"k": self.k[i], "v": self.v[i], **self.aux.fields(i), **self.kv_scales} for i in range(layers)]
        self.q = [torch.randn(batch * HKV, HQ // HKV, D, dtype=torch.bfloat16, device=dev) for _ in range(layers)]
        self._build_step()

    @classmethod
    def token_kv_bytes(cls, kv_elt: int) -> int:
        return cls.head_dim * kv_elt * 2  # K and V

    def dense_steps(self) -> list[Callable[[], object]]:
        return dense_flashinfer(self)


class MLACase(PoolCase):
    """:class:`Case` for an MLA model, DeepSeek-V2-Lite geometry: 16 query heads on one latent "KV head" of
    ``kv_lora_rank + qk_rope_head_dim = 512 + 64`` (SGLang's ``MLATokenToKVPool``: one ``[num_slots, 1, 576]``
    latent buffer per layer, bf16 or ``kv_dtype``'s fp8 with ``[1]`` scales, the whole K and, in its first 512
    columns, V), absorbed queries ``[batch, 16, 576]``, served by a ``vFlowMLA`` through :class:`VortexMLADecodeCore` (rows = requests; attention
    returns ``[batch, 16, 512]``), as the vortex-sglang MLA backend drives it. ``flow`` as :class:`Case`
    (default: vortex-flows-contrib's ``rope_aware_block_sparse_mla``). ``tests/gpu/test_launch_count.py``
    counts the launches of this step for every MLA flow."""

    geometry = "mla"
    e2e_layers = MLA_E2E_LAYERS
    num_q_heads, num_kv_heads, head_dim, out_dim = MLA_HEADS, 1, MLA_RANK + MLA_ROPE, MLA_RANK
    #: DeepSeek's softmax scale, ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5`` (YaRN's mscale left out)
    sm_scale = (MLA_NOPE + MLA_ROPE) ** -0.5

    def __init__(self, ctx: int, batch: int, budget_tokens: int, layers: int,
                 flow: tuple[str | None, str] = MLA_FLOW, device: str = "cuda",
                 kv_dtype: torch.dtype = torch.bfloat16) -> None:  # fmt: skip
        from vortex_torch.engine.sgl.flow_spec import prepare_flow
        from vortex_torch.engine.sgl.mla_core import VortexMLADecodeCore

        dev, width = device, self.head_dim
        prepared = prepare_flow(flow_config(flow, budget_tokens), head_dim=width, group_size=MLA_HEADS,
                                kv_dtype=kv_dtype, qk_rope_head_dim=MLA_ROPE)  # fmt: skip
        context_len = max(ctx, MLA_CONTEXT_LEN)
        slots = self._build_pool(ctx, batch, layers, prepared, context_len, dev, kv_dtype)
        self.latent = [torch.randn(slots, 1, width, dtype=torch.bfloat16, device=dev).to(kv_dtype)
                       for _ in range(layers)]  # fmt: skip
        self.core = VortexMLADecodeCore(self.prepared, self.layout, context_len=context_len, device=dev,
                                        kv_lora_rank=MLA_RANK)  # fmt: skip
        self.fields = [{"k": self.latent[i], **self.aux.fields(i), **self.kv_scales} for i in range(layers)]
        shape = (batch, MLA_HEADS, width)
        self.q = [torch.randn(shape, dtype=torch.bfloat16, device=dev) for _ in range(layers)]
        self._build_step()

    @classmethod
    def token_kv_bytes(cls, kv_elt: int) -> int:
        return cls.head_dim * kv_elt  # one latent row is K, and V in its first kv_lora_rank columns

    def dense_steps(self) -> list[Callable[[], object]]:
        return dense_flashinfer_mla(self)


def flow_config(flow: tuple[str | None, str], budget_tokens: int) -> VortexConfig:
    """The bench's ``VortexConfig``: ``budget_tokens`` per row = ``topk_val`` blocks + one bos and one eos
    block."""
    from vortex_torch.engine.sgl.config import VortexConfig

    return VortexConfig(module_path=flow[0], module_name=flow[1], topk_val=budget_tokens // BS - 2,
                        block_reserved_bos=1, block_reserved_eos=1)  # fmt: skip


def dense_flashinfer(case: Case) -> list[Callable[[], object]]:
    import flashinfer

    dev = "cuda"
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    pages = math.ceil(case.ctx / PAGE)
    page_ids = torch.cat([case.req_to_token[b + 1, : case.ctx : PAGE] // PAGE for b in range(case.batch)])
    indptr = torch.arange(case.batch + 1, dtype=torch.int32, device=dev) * pages
    last = torch.full((case.batch,), case.ctx - (pages - 1) * PAGE, dtype=torch.int32, device=dev)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    wrapper.plan(indptr, page_ids.int(), last, HQ, HKV, D, PAGE, q_data_type=torch.bfloat16,
                 kv_data_type=case.kv_dtype)  # fmt: skip
    qd = [q.reshape(case.batch, HQ, D) for q in case.q]
    kv = [(case.k[i].view(-1, PAGE, HKV, D), case.v[i].view(-1, PAGE, HKV, D)) for i in range(case.layers)]
    return [lambda i=i: wrapper.run(qd[i], kv[i]) for i in range(case.layers)]


def dense_flashinfer_mla(case: MLACase, fi_mla: Any = None) -> list[Callable[[], object]]:
    """Dense MLA decode over the same latent buffers, as SGLang 0.5.17's ``FlashInferMLAAttnBackend`` runs it:
    ``flashinfer.mla.BatchMLAPagedAttentionWrapper`` (``backend="auto"``: fa3 on sm_90a), planned once (SGLang
    plans per step, before the layers) with token-level indices (page size 1: ``kv_indptr`` the cumulated
    ``seq_lens``, ``kv_indices`` each request's ``req_to_token`` slots), run per layer on ``q_nope = q[...,
    :512]``, ``q_pe = q[..., 512:]`` and the latent buffer's two column ranges as ``ckv [num_slots, 1, 512]``
    and ``kpe [num_slots, 1, 64]`` (views, no copy). ``fi_mla``: the ``flashinfer.mla`` module (a stand-in in
    CPU tests)."""
    if fi_mla is None:
        import flashinfer.mla

        fi_mla = flashinfer.mla

    dev, b, rank = case.device, case.batch, MLA_RANK
    ws = torch.empty(384 << 20, dtype=torch.uint8, device=dev)  # SGLANG_FLASHINFER_WORKSPACE_SIZE
    wrapper = fi_mla.BatchMLAPagedAttentionWrapper(ws, backend="auto")
    q_indptr = torch.arange(b + 1, dtype=torch.int32, device=dev)
    kv_lens = case.seq_lens.to(torch.int32)
    kv_indptr = torch.zeros(b + 1, dtype=torch.int32, device=dev)
    kv_indptr[1:] = torch.cumsum(kv_lens, dim=0)
    kv_indices = torch.cat([case.req_to_token[case.rpi[i], : case.ctx] for i in range(b)]).to(torch.int32)
    wrapper.plan(q_indptr, kv_indptr, kv_indices, kv_lens, MLA_HEADS, rank, MLA_ROPE, 1, False, case.sm_scale,
                 case.q[0].dtype, case.latent[0].dtype)  # fmt: skip
    out = [torch.empty(b, MLA_HEADS, rank, dtype=q.dtype, device=dev) for q in case.q]
    q = [(x[:, :, :rank], x[:, :, rank:]) for x in case.q]
    lat = [(x[:, :, :rank], x[:, :, rank:]) for x in case.latent]
    return [functools.partial(wrapper.run, *q[i], *lat[i], out=out[i]) for i in range(case.layers)]


def run_case(case: PoolCase, budget: int, bw: float, sweep: list[str]) -> dict[str, Any]:
    """Times ``case`` (see the module docstring) -> one JSON row; ``sweep``: also its tile variants
    (:func:`attention_sweep` or, for an :class:`MLACase`, :func:`mla_sweep_variants`; :func:`indexer_sweep`)."""
    layers = case.layers
    res: dict[str, Any] = {"geometry": case.geometry, "flow": case.prepared.config.module_name,
                           "ctx": case.ctx, "batch": case.batch, "budget_tokens": budget,
                           "layers_rotated": layers,
                           "kv_dtype": next(k for k, v in KV_DTYPES.items() if v == case.kv_dtype),
                           "selected_blocks": case.selected_blocks, "dense_blocks": case.dense_blocks}  # fmt: skip
    res["plan_us"] = graph_us([case.plan_step])
    res["plan_launches"] = launches(case.plan_step)
    res["layer_launches"] = launches(lambda: case.layer(0))
    lay = [lambda i=i: case.layer(i) for i in range(layers)]
    res["layer_us"] = graph_us(lay)
    f0 = case.fields
    # the cache update as a launch of its own (what a flow without a scoring kernel runs), then the indexer
    # with it folded in when the executor can (the step's path)
    res["cache_us"] = graph_us([lambda i=i: case.core.update_cache(f0[i], case.loc) for i in range(layers)])
    locs = case.loc if case.core.executor.folds_cache_update else None
    res["indexer_us"] = graph_us(
        [lambda i=i: case.core.select(case.q[i], f0[i], case.plan, new_locs=locs) for i in range(layers)]
    )
    for exact in (False, True):
        case.core.exact_attention = exact
        key = "attention_exact_us" if exact else "attention_us"
        res[key] = graph_us([lambda i=i: case.attend(i) for i in range(layers)])
    case.core.exact_attention = False
    res["step_us"] = res["layer_us"] + res["plan_us"] / case.e2e_layers
    if case.geometry == "gqa":  # the whole layer as one launch (TritonExecutor(fuse_attention=True))
        res.update(fused_layer(case))
    if torch.cuda.get_device_capability()[0] >= 9:  # the same layer, each kernel launched with PDL
        case.core.enable_pdl = True
        res["layer_pdl_launches"] = launches(lambda: case.layer(0))
        res["layer_pdl_us"] = graph_us(lay)
        case.core.enable_pdl = False
        res["step_pdl_us"] = res["layer_pdl_us"] + res["plan_us"] / case.e2e_layers
    try:
        res["dense_flashinfer_us"] = graph_us(case.dense_steps())
    except Exception as exc:  # flashinfer missing or failing: no ratio
        res["dense_flashinfer_us"] = None
        res["flashinfer_error"] = f"{type(exc).__name__}: {exc}"[:300]
    res["bytes_sparse"] = case.bytes_sparse()
    res["bytes_dense"] = case.bytes_dense()
    if res["dense_flashinfer_us"]:
        res["dense_flashinfer_gbs"] = res["bytes_dense"] / (res["dense_flashinfer_us"] * 1e-6) / 1e9
        bw = max(bw, res["dense_flashinfer_gbs"])  # dense decode read faster than the probes: its rate is the bar
    res["floor_gbs"] = bw
    res["floor_us"] = res["bytes_sparse"] / (bw * 1e9) * 1e6
    res["floor_copy_us"] = res["bytes_sparse"] / (max(COPY_BANDWIDTH.values()) * 1e9) * 1e6  # issue 8's definition
    res["attention_floor_us"] = case.bytes_attention() / (bw * 1e9) * 1e6
    res["dense_floor_us"] = res["bytes_dense"] / (bw * 1e9) * 1e6
    if res["dense_flashinfer_us"]:
        res["speedup_vs_dense"] = res["dense_flashinfer_us"] / res["step_us"]
        if "step_pdl_us" in res:
            res["speedup_vs_dense_pdl"] = res["dense_flashinfer_us"] / res["step_pdl_us"]
    res["step_over_floor"] = res["step_us"] / res["floor_us"]
    res["step_over_copy_floor"] = res["step_us"] / res["floor_copy_us"]
    if sweep:
        res["sweep"] = []
        if "attention" in sweep:
            res["sweep"] += attention_sweep(case) if isinstance(case, Case) else mla_sweep_variants(case)
        if "indexer" in sweep:
            res["sweep"] += indexer_sweep(case)
    return res


def variant_us(fns: list[Callable[[], object]], what: str) -> float | None:
    """:func:`graph_us` of a sweep variant, or None (logged) when the variant fails to compile or launch."""
    try:
        return graph_us(fns)
    except Exception as exc:
        log(f"  {what} variant failed: {type(exc).__name__}: {str(exc)[:100]}")
        return None


def fused_layer(case: PoolCase) -> dict[str, Any]:
    """The sparse layer with attention fused into the indexer launch (the row's selecting program attends it,
    one split): its launches and time (``layer_fused_launches`` / ``layer_fused_us``), or its error. Opt-in
    until measured: for few short rows, where three dependent launches cost more than their work."""
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor

    core = case.core
    saved = core.executor, core.indexer_plan
    try:
        core.executor = TritonExecutor(core.prepared.traced, case.layout, fuse_attention=True)
        core.indexer_plan = core.executor.plan(case.batch * case.num_kv_heads, case.plan.max_blocks_per_row,
                                               case.device)  # fmt: skip
        return {"layer_fused_launches": launches(lambda: case.layer(0)),
                "layer_fused_us": graph_us([lambda i=i: case.layer(i) for i in range(case.layers)])}  # fmt: skip
    except Exception as exc:
        log(f"  fused layer failed: {type(exc).__name__}: {str(exc)[:200]}")
        return {"layer_fused_error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        core.executor, core.indexer_plan = saved


def split_variants(base: int, programs_per_split: int = 0, num_sms: int = 0) -> list[int]:
    """The split counts an attention sweep times: the default ``base``, half and double it (at most 64). When
    the default leaves most SMs without a program (``programs_per_split * base < num_sms``: few short rows, as
    at batch 1 and a 2k context), 4x and 8x it instead of half: splits of one loop step each, spread wider."""
    if programs_per_split * base < num_sms:
        return sorted({min(64, base * f) for f in (1, 2, 4, 8)})
    return sorted({base, max(1, base // 2), min(64, base * 2)})


def attention_sweep(case: Case) -> list[dict[str, Any]]:
    """GQA attention variants over the case's selection: split counts (:func:`split_variants`) x tiles of 32,
    64 and 128 tokens x 4 or 8 warps x 1-3 stages."""
    from vortex_torch.kernels.sparse_decode.triton_kernel import (
        SparseDecodeWorkspace,
        default_num_splits,
        launch,
    )

    out: list[dict[str, Any]] = []
    p, L = case.plan, case.layers
    rows = case.batch * HKV
    o = torch.empty_like(case.q[0])
    base_splits = default_num_splits(rows, p.max_selected_per_row, BS, D, torch.device("cuda"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 0
    for splits, tile, warps, stages in itertools.product(split_variants(base_splits, rows, sms), (32, 64, 128), (4, 8),
                                                         (1, 2, 3)):  # fmt: skip
        ws = SparseDecodeWorkspace.allocate(rows, splits, HQ // HKV, D, "cuda")

        def att(i: int, s: int = splits, t: int = tile, w: int = warps, st: int = stages,
                wsp: SparseDecodeWorkspace = ws) -> None:
            launch(case.q[i], case.k[i], case.v[i], p.sel_indptr, p.sel_indices, p.last_block_len, D**-0.5, o,
                   None, s, page_size=PAGE, block_size=BS, workspace=wsp, exact=False, tile_tokens=t, num_warps=w,
                   num_stages=st, k_scale=case.fields[i].get("k_scale"), v_scale=case.fields[i].get("v_scale"))  # fmt: skip

        us = variant_us([lambda i=i: att(i) for i in range(L)], "attention")
        out.append({"kind": "attention", "splits": splits, "tile_tokens": tile, "warps": warps,
                    "stages": stages, "us": us})  # fmt: skip
    return out


def indexer_sweep(case: PoolCase) -> list[dict[str, Any]]:
    """The scoring kernel's variants (GQA or MLA): blocks per chunk (0: the executor's default; half and double
    it; a literal of the generated source, so a fresh executor each) x warps x resident programs per SM with the
    selection apart, the default with the selection fused, the default and twice its chunk with the block ids
    prefetched (``prefetch_indices``); then the selection kernel alone
    (``select_only``) at 2, 4, 8 and 16 warps bit by bit, and at 4, 8 and 16 warps two bits per count pass
    (``bits_per_pass``): how much of the indexer is the top-k search, and whether the paired search pays."""
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor

    out: list[dict[str, Any]] = []
    p, L = case.plan, case.layers
    rows = case.batch * case.num_kv_heads
    core = case.core
    saved = core.executor, core.indexer_plan
    d, warps_d = core.executor.launch_config()  # the default chunk (64 for the quick start, 8 for MLA's), warps
    chunks = (0, *(c for c in (d // 2, 2 * d) if c))
    pps_d = core.executor.programs_per_sm
    fused = (0, warps_d, pps_d, True, False)  # the defaults, the selection fused
    # the defaults with the next chunk's block ids loaded one iteration ahead, and that at twice the chunk
    prefetched = [(c, warps_d, pps_d, False, True) for c in (0, 2 * d)]
    variants = [*itertools.product(chunks, (4, 8), (4, 8, 16), (False,), (False,)), fused, *prefetched]
    for chunk, warps, pps, fuse, prefetch in variants:
        try:
            core.executor = TritonExecutor(core.prepared.traced, case.layout, block_chunk=chunk,
                                           num_warps=warps, programs_per_sm=pps,
                                           fuse_selection=fuse, prefetch_indices=prefetch)  # fmt: skip
            core.indexer_plan = core.executor.plan(rows, p.max_blocks_per_row, case.device)
            us = graph_us([lambda i=i: core.select(case.q[i], case.fields[i], p) for i in range(L)])
        except Exception as exc:  # the executor's build fails too, not only its launch: not variant_us
            us = None
            log(f"  indexer variant failed: {type(exc).__name__}: {str(exc)[:100]}")
        out.append({"kind": "indexer", "block_chunk": chunk, "warps": warps, "programs_per_sm": pps,
                    "fuse_selection": fuse, "prefetch_indices": prefetch, "us": us})  # fmt: skip
    core.executor, core.indexer_plan = saved
    selection = select_only(case)
    for warps, bits in (*((w, 1) for w in (2, 4, 8, 16)), *((w, 2) for w in (4, 8, 16))):
        us = variant_us(selection(num_warps=warps, bits_per_pass=bits), "select")
        out.append({"kind": "select_only", "warps": warps, "bits_per_pass": bits, "us": us})
    return out


def select_only(case: PoolCase) -> Callable[..., list[Callable[[], object]]]:
    """The selection kernel alone on the case's plan, over random scores drawn once: ``select_only(case)(**launch)``
    is one call per rotated layer, ``launch`` being ``select_blocks_triton``'s options (warps, bits per pass)."""
    from vortex_torch.kernels.select.triton_kernel import select_blocks_triton

    p = case.plan
    nnz = p.dense_indptr.numel() and int(p.dense_indptr[-1])
    scores = [torch.randn(max(1, nnz), device=case.device) for _ in range(case.layers)]

    def calls(**launch: Any) -> list[Callable[[], object]]:
        return [lambda i=i: select_blocks_triton(
            scores[i], p.dense_indptr, p.dense_indices[:nnz], p.sel_indptr, 1, 1, out=p.sel_indices,
            max_blocks_per_row=p.max_blocks_per_row, **launch) for i in range(case.layers)]  # fmt: skip

    return calls


#: MLA attention variants swept: tile tokens, warps, stages
MLA_SWEEP: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((16, 32, 64), (4, 8), (1, 2))


def mla_sweep_variants(case: MLACase, grid: tuple[tuple[int, ...], ...] = MLA_SWEEP) -> list[dict[str, Any]]:
    """MLA attention tile variants over the case's selection (its default split count, half and double it;
    times ``grid``: tiles of 16, 32 and 64 tokens; 4 or 8 warps; 1 or 2 stages), which chose the defaults
    (``sparse_decode_mla.triton_kernel.default_tile_tokens`` / ``DEFAULT_NUM_WARPS`` / ``PROGRAMS_PER_SM``)."""
    from vortex_torch.kernels.sparse_decode_mla.triton_kernel import (
        SparseMLADecodeWorkspace,
        default_num_splits,
        launch,
    )

    out: list[dict[str, Any]] = []
    p, L, b = case.plan, case.layers, case.batch
    dev = torch.device(case.device)
    o = torch.empty(b, MLA_HEADS, MLA_RANK, dtype=torch.bfloat16, device=dev)
    base = default_num_splits(b, MLA_HEADS, p.max_selected_per_row, BS, MLA_RANK, dev)
    for splits, tile, warps, stages in itertools.product(split_variants(base), *grid):
        ws = SparseMLADecodeWorkspace.allocate(b, splits, MLA_HEADS, MLA_RANK, dev)

        def att(i: int, s: int = splits, t: int = tile, w: int = warps, st: int = stages,
                wsp: SparseMLADecodeWorkspace = ws) -> None:
            launch(case.q[i], case.latent[i], p.sel_indptr, p.sel_indices, p.last_block_len, case.sm_scale, o, None,
                   s, page_size=PAGE, block_size=BS, v_head_dim=MLA_RANK, workspace=wsp, exact=False, tile_tokens=t,
                   num_warps=w, num_stages=st, k_scale=case.fields[i].get("k_scale"),
                   v_scale=case.fields[i].get("v_scale"))  # fmt: skip

        us = variant_us([lambda i=i: att(i) for i in range(L)], "MLA attention")
        out.append({"kind": "mla_attention", "splits": splits, "tile_tokens": tile, "warps": warps,
                    "stages": stages, "us": us})  # fmt: skip
    return out


GQA_CASES = ["32768x32", "32768x8", "32768x1", "131072x32"]
MLA_CASES = ["32768x16", "8192x16", "32768x1"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (also what tests/test_device_plan.py checks the GPU plan's arguments with)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cases_help = f"CTXxBATCH (default {' '.join(GQA_CASES)}; --mla: {' '.join(MLA_CASES)})"
    ap.add_argument("--cases", nargs="+", default=None, help=cases_help)
    ap.add_argument("--budget", type=int, default=2048, help="tokens attended per row (topk_val = budget/16 - 2)")
    ap.add_argument("--layers", type=int, default=4, help="pool copies rotated (fewer when they would not fit)")
    mla_help = "DeepSeek-V2-Lite MLA geometry (16 heads, latent 512 + 64 in --kv-dtype); dense: FlashInfer MLA decode"
    ap.add_argument("--mla", action="store_true", help=mla_help)
    flow_help = f"an installed flow's registered name (default: the quick-start flow; --mla: {MLA_FLOW[1]})"
    ap.add_argument("--flow", default=None, help=flow_help)
    ap.add_argument("--sweep", nargs="*", choices=["attention", "indexer"], default=None,
                    help="also time attention and/or indexer tile variants (32k x 32/16/1 and 2k x 1; the "
                    "indexer's at 128k x 32 too; both when none is named)")  # fmt: skip
    ap.add_argument("--kv-dtype", choices=list(KV_DTYPES), default="bfloat16",
                    help="K/V storage (SGLang's --kv-cache-dtype); fp8 halves the K/V bytes of both paths")
    ap.add_argument("--out", default=os.path.join(os.environ.get("VORTEX_OUT", "."), "decode_step_bench.json"))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    cls: type[PoolCase] = MLACase if args.mla else Case
    flow = (None, args.flow) if args.flow else MLA_FLOW if args.mla else (FLOW, "custom_sparse_attention")
    t0 = time.time()
    copy_bw = copy_bandwidth_gbs()
    read_bw = read_bandwidth_gbs()
    bw = max(copy_bw, read_bw)
    log(f"copy bandwidth {copy_bw:.0f} GB/s (best of {COPY_BANDWIDTH}), streaming read {read_bw:.0f} GB/s")
    result: dict[str, Any] = {"date": str(date.today()), "gpu": torch.cuda.get_device_name(0), "kv_dtype": args.kv_dtype,
                              "geometry": cls.geometry, "flow": flow[1],
                              "torch": torch.__version__, "python": platform.python_version(),
                              "copy_bandwidth_gbs": copy_bw, "read_bandwidth_gbs": read_bw,
                              "copy_bandwidth_by_dtype_gbs": dict(COPY_BANDWIDTH),
                              "cases": []}  # fmt: skip
    free = torch.cuda.mem_get_info()[0]
    for spec in args.cases or (MLA_CASES if args.mla else GQA_CASES):
        ctx, batch = (int(x) for x in spec.lower().split("x"))
        layers = max(1, min(args.layers, int(0.6 * free // cls.pool_bytes_per_layer(ctx, batch))))
        # the sweep's cases: the bar's (32k x 32 / 16 / 1) and the short context where three launches cost the
        # most (2k x 1: is the selection fused into scoring cheaper there?)
        swept = args.sweep is not None and ((ctx == 32768 and batch in (32, 16, 1)) or (ctx, batch) == (2048, 1))
        sweep = (args.sweep or ["attention", "indexer"]) if swept else []
        # 128k x 32: the indexer only (8192 keys a row: the selection's default 16 warps fit one program per SM,
        # so 256 rows take two waves; the select_only rows show what fewer warps cost: 8 spill on sm_90)
        if args.sweep is not None and (ctx, batch) == (131072, 32) and "indexer" in (args.sweep or ["indexer"]):
            sweep = ["indexer"]
        rec = measure(args.mla, ctx, batch, args.budget, layers, flow, KV_DTYPES[args.kv_dtype], bw, sweep)
        log(json.dumps({k: v for k, v in rec.items() if k != "sweep"}))
        result["cases"].append(rec)
        torch.cuda.empty_cache()
        with open(args.out, "w") as fh:  # the cases so far survive a run cut at its time limit
            json.dump(result, fh, indent=1)
    result["copy_bandwidth_end_gbs"], result["read_bandwidth_end_gbs"] = copy_bandwidth_gbs(), read_bandwidth_gbs()
    log(f"at the end: copy {result['copy_bandwidth_end_gbs']:.0f} GB/s, read {result['read_bandwidth_end_gbs']:.0f} GB/s")
    result["wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(report(result))
    return 0


def measure(mla: bool, ctx: int, batch: int, budget: int, layers: int, flow: tuple[str | None, str],
            kv_dtype: torch.dtype, bw: float, sweep: list[str]) -> dict[str, Any]:  # fmt: skip
    """One case built and timed (its buffers freed on return), or its error."""
    try:
        cls = MLACase if mla else Case
        case: PoolCase = cls(ctx, batch, budget, layers, flow=flow, kv_dtype=kv_dtype)
        return run_case(case, budget, bw, sweep)
    except Exception as exc:
        return {"geometry": "mla" if mla else "gqa", "ctx": ctx, "batch": batch,
                "error": f"{type(exc).__name__}: {exc}"[:500]}  # fmt: skip


GQA_TITLE = f"Qwen3-8B geometry ({HQ} query heads, {HKV} KV heads, D {D})"
MLA_TITLE = f"DeepSeek-V2-Lite MLA geometry ({MLA_HEADS} query heads, latent {MLA_RANK} + {MLA_ROPE})"


def report(res: dict[str, Any]) -> str:
    f = lambda x: "-" if x is None else f"{x:.1f}"
    geometry = MLA_TITLE if res.get("geometry") == "mla" else GQA_TITLE
    lines = [f"## Decode step, one layer, {geometry}, flow {res.get('flow', 'custom_sparse_attention')} "
             f"({res['gpu']}, {res['date']}, K/V {res.get('kv_dtype', 'bfloat16')}; copy "
             f"{res['copy_bandwidth_gbs']:.0f} GB/s, streaming read {res.get('read_bandwidth_gbs', 0):.0f} GB/s; "
             "floor = bytes / the best of those and dense FlashInfer's own rate)",
             "", "| ctx x batch | dense FlashInfer us (GB/s) | sparse step us | speedup | floor us | step/floor | "
             "step/copy floor | plan us (per step) | cache apart | indexer (cache folded) | attention (exact) | "
             "launches/layer | step us with PDL (speedup) | layer us in one launch (fused attention) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["cases"]:
        if "error" in r:
            lines.append(f"| {r['ctx']} x {r['batch']} | error: {r['error'][:100]} |")
            continue
        sp, sp_pdl = r.get("speedup_vs_dense"), r.get("speedup_vs_dense_pdl")
        lines.append(
            f"| {r['ctx']} x {r['batch']} | {f(r['dense_flashinfer_us'])} ({r.get('dense_flashinfer_gbs', 0):.0f}) | "
            f"{f(r['step_us'])} | "
            f"{'-' if sp is None else f'{sp:.2f}x'} | {f(r['floor_us'])} | {r['step_over_floor']:.2f} | "
            f"{r.get('step_over_copy_floor', 0):.2f} | "
            f"{f(r['plan_us'])} | {f(r['cache_us'])} | {f(r['indexer_us'])} | {f(r['attention_us'])} "
            f"({f(r['attention_exact_us'])}) | {r['layer_launches']} (+{r['plan_launches']}/step) | "
            f"{f(r.get('step_pdl_us'))} ({'-' if sp_pdl is None else f'{sp_pdl:.2f}x'}) | {f(r.get('layer_fused_us'))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
