"""SGLang decode throughput with and without Vortex, and where one sparse decode layer spends its time.

    VORTEX_MODELS=qwen3-8b-l4 bash tools/device/remote.sh bench sglang_decode_bench     (one call, < 9 min)
    python tools/bench/sglang_decode_bench.py --model /tmp/models/qwen3-8b-l4 [--quick]

Model: random weights with Qwen3-8B's attention geometry (32 query heads, 8 KV heads, head dim 128, hidden 4096)
and few layers (``tools/device/mk_tiny.py --preset qwen3-8b --layers 4``), bf16, page 16.

1. **Kernels, one layer** (no engine): at 8k and 32k context, batch 1 and 16, the per-step pieces of a Vortex
   sparse layer (quick-start flow, budget 32 blocks of 16 tokens) timed as CUDA-graph replays, as in serving:
   ``plan`` (once per step for all layers, eager), ``cache`` (forward_cache over the step's masked
   candidates), ``indexer`` (scores + top-k), of which ``select`` alone, ``attention`` (sparse), ``layer``
   (cache + indexer + attention) -- against FlashInfer's dense decode as SGLang plans it (page size 1).
2. **Engines**: ``sgl.Engine`` with flashinfer, plain and with Vortex (the quick start's VortexConfig, one engine
   per budget), with SGLang's overlap scheduler off or on (``--engines plain vortex plain:overlap
   vortex:overlap``), and Vortex's kernels launched with programmatic dependent launch (``vortex:pdl``,
   ``vortex:overlap:pdl``: ``VortexConfig(enable_pdl=True)``, sm_90+), and dense steps below a batch total
   (``vortex:dense8192``: ``VortexConfig(sparse_decode_min_tokens=8192)``). One engine per (kind, budget, overlap) serves every (ctx, batch) case, so an engine start
   (2-4 min cold, ~30 s warm) is paid once. Per case the same prompts (random ids, seeded by the case), greedy,
   ``ignore_eos``; the radix cache is on, so after one prefill ``t(1)`` and ``t(steps + 1)`` re-use the cached
   prompts and decode tokens/s = ``batch * steps / (t(steps + 1) - t(1))`` excludes prefill; the pair is timed
   ``--repeats`` times (default 3) and the median counts, its spread recorded. A case whose ``batch x ctx``
   tokens exceed the engine's KV pool (SGLang's ``max_total_num_tokens``) is skipped with that reason: SGLang
   would run part of the batch and re-prefill evicted prompts, so the time would not be decode.

``--profile-steps N``: after each case, N more decode steps under SGLang's own profiler (``Engine.start_profile``,
GPU activity); the trace's kernels summed by name (:mod:`gpu_trace`) are the case's ``profile``: launches and us per
step of every kernel, so plain SGLang's step and Vortex's can be compared kernel by kernel.

Time: ``--max-minutes`` (or ``--budget-s``) bounds the run. Engines and cases that would not fit are skipped and
recorded with the reason (:class:`TimeGuard`); ``--optional-cases`` (e.g. 128k x 4) run only where they fit on
every remaining engine. Each case logs a progress line, and the JSON (``--out``, ``--e2e-out``) is rewritten
after every case, so a run cut off by the GPU call's limit still leaves every case measured so far.

The e2e matrix of issue 8 (36 layers; 2k/8k/32k x batch 1/16; budgets 512 and 2048; overlap off and on) in two
GPU calls of under 9.5 min each (a cold engine start with its first prefill's JIT is ~4.5 min, a warm one ~30 s;
prefill of every case ~35 s per engine):

    # A: overlap off, plain + both budgets (3 engines)
    VORTEX_MODELS=qwen3-8b-l1 bash tools/device/remote.sh bench sglang_decode_bench --skip-kernels \
        --model /tmp/models/qwen3-8b-l1 --dummy-layers 36 --cases 2048x1 2048x16 8192x1 8192x16 32768x1 32768x16 \
        --engines plain vortex --budgets 512 2048 --max-minutes 8.3 --out $OUT/e2e_a_full.json --e2e-out $OUT/e2e_a.json
    # B: overlap on, plain + budget 512 (2 engines): the same with
    #    --engines plain:overlap vortex:overlap --budgets 512 --out $OUT/e2e_b_full.json --e2e-out $OUT/e2e_b.json

then ``python tools/bench/plot_e2e.py e2e_a.json e2e_b.json --merged-out results/gpu/<date>-e2e-decode.json``.

Tensor parallelism (issue 12): ``--tp-size N`` serves every engine, plain and Vortex, with SGLang's
``tp_size=N`` (attention heads split over N GPUs: Vortex runs on each rank's heads); the JSON records ``tp_size``
in the result and in every e2e row. N > 1 needs N GPUs (checked before any GPU work: one line, exit 2), and the
kernel section then times one rank's layer (H_q / N query and H_kv / N KV heads). NVLink multicast is kept off for
every engine (``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``, as
``remote.sh`` exports them). Plain vs Vortex at tp 2, 36 layers of Qwen3-8B geometry, 32k x 16, on the
``nvidia-h200-x2`` kind (one GPU call; a cold tp-2 engine start is est. 3-5 min, a warm one ~1 min):

    VORTEX_MODELS=qwen3-8b-l1 bash tools/device/remote.sh bench sglang_decode_bench --skip-kernels --tp-size 2 \
        --model /tmp/models/qwen3-8b-l1 --dummy-layers 36 --cases 32768x16 --engines plain vortex --budgets 512 \
        --max-minutes 8.5 --out $OUT/e2e_tp2_full.json --e2e-out $OUT/e2e_tp2.json

MLA models (issue 11): a model whose config has ``kv_lora_rank`` (DeepSeek-V2/V3, GLM) is served by SGLang's
FlashInfer MLA backend, and the Vortex engines run an MLA flow: ``--flow NAME`` (default
``rope_aware_block_sparse_mla``). The kernel section times GQA layers only (``--skip-kernels``;
``decode_step_bench.py --mla`` times one MLA layer). DeepSeek-V2-Lite's shape, 27 layers of dummy weights:

    VORTEX_MODELS=dsv2-lite-l1 bash tools/device/remote.sh bench sglang_decode_bench --skip-kernels \
        --model /tmp/models/dsv2-lite-l1 --dummy-layers 27 --cases 8192x1 8192x16 32768x1 32768x16 \
        --engines plain vortex --budgets 512 --max-minutes 9 --out $OUT/e2e_mla_full.json --e2e-out $OUT/e2e_mla.json

Writes ``$VORTEX_OUT/sglang_decode_bench.json`` (or ``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any, NoReturn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from indexer_bench import bench_eager, replay_us  # noqa: E402 - one eager and one graph timer for every bench

REPO = os.path.dirname(os.path.dirname(HERE))
FLOW_FILE = os.path.join(REPO, "examples", "custom_sparse_attention.py")
VORTEX = {
    "module_path": FLOW_FILE,
    "module_name": "custom_sparse_attention",
    "topk_val": 30,
    "layers_skip": [0],
    "block_reserved_bos": 1,
    "block_reserved_eos": 1,
}
#: the flow of a Vortex engine serving an MLA model (DeepSeek/GLM: ``kv_lora_rank`` in its config) when
#: ``--flow`` is not given: vortex-flows-contrib's, by name
MLA_FLOW = "rope_aware_block_sparse_mla"
T0 = time.time()
#: NVLink multicast off in NCCL, PyTorch symmetric memory (SGLang's custom all-reduce) and NVSHMEM, for every engine
#: (tools/device/remote.sh exports the same; on the lent multi-GPU machines multicast must stay off)
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def log(msg: str) -> None:
    print(f"[bench {time.time() - T0:6.1f}s] {msg}", flush=True)


# -- timing --------------------------------------------------------------------------------------------------------
def bench_graph(fn: Callable[[], object], iters: int = 50) -> float:
    """Mean microseconds of ``fn`` replayed as a CUDA graph (eager timing if it cannot be captured)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
    except Exception as exc:  # not capturable: report eager time, marked
        log(f"  (not capturable: {type(exc).__name__}: {str(exc)[:120]}; eager timing)")
        return -bench_eager(fn, iters)
    g.replay()
    torch.cuda.synchronize()
    return replay_us(g, iters)


# -- 1. one layer's kernels ----------------------------------------------------------------------------------------
def kernel_case(ctx: int, batch: int, context_len: int, tp_size: int = 1) -> dict[str, Any]:
    """One layer of one rank at ``tp_size``: Qwen3-8B's 32 query / 8 KV heads split as SGLang splits them."""
    import torch

    from vortex_torch.abs.layout import PoolLayout
    from vortex_torch.engine.sgl.aux_store import AuxFieldStore
    from vortex_torch.engine.sgl.config import VortexConfig
    from vortex_torch.engine.sgl.decode_core import VortexDecodeCore
    from vortex_torch.engine.sgl.flow_spec import prepare_flow
    from vortex_torch.kernels.select import select_blocks
    from vortex_torch.kernels.sparse_decode import sparse_decode_attention

    dev = "cuda"
    hq, hkv, d, page, blk = 32 // tp_size, max(1, 8 // tp_size), 128, 16, 16
    group = hq // hkv
    cfg = VortexConfig(**{k: v for k, v in VORTEX.items() if k != "layers_skip"})
    prepared = prepare_flow(cfg, head_dim=d, group_size=group, kv_dtype=torch.bfloat16)
    layout = PoolLayout(page_size=page, block_size=blk, num_kv_heads=hkv)
    pages_per_req = math.ceil(ctx / page)
    num_pages = batch * pages_per_req + 1
    slots = num_pages * page
    k_buf = torch.randn(slots, hkv, d, dtype=torch.bfloat16, device=dev)
    v_buf = torch.randn_like(k_buf)
    # requests own shuffled pages (as after a while in a server)
    perm = torch.randperm(num_pages - 1, device=dev) + 1
    req_to_token = torch.zeros(batch + 1, context_len, dtype=torch.int32, device=dev)
    t = torch.arange(ctx, device=dev)
    for b in range(batch):
        own = perm[b * pages_per_req : (b + 1) * pages_per_req]
        req_to_token[b + 1, :ctx] = (own[t // page] * page + t % page).to(torch.int32)
    rpi = torch.arange(1, batch + 1, device=dev)
    seq_lens = torch.full((batch,), ctx, device=dev)
    aux = AuxFieldStore(prepared, layout, slots, [0], dev)
    core = VortexDecodeCore(prepared, layout, context_len=context_len, device=dev)
    buffers = core.allocate_buffers(batch)
    fields = {"k": k_buf, "v": v_buf, **aux.fields(0)}
    core.executor.run_cache(
        fields, torch.arange(layout.num_blocks(num_pages), device=dev)
    )  # summaries of all blocks
    plan = core.plan(req_to_token, rpi, seq_lens, buffers=buffers)
    q = torch.randn(batch * hkv, group, d, dtype=torch.bfloat16, device=dev)
    loc = req_to_token[rpi, ctx - 1].long()  # this step's token slots
    score = torch.randn(plan.dense_indices.numel(), dtype=torch.float32, device=dev)
    nnz = batch * hkv * math.ceil(ctx / blk)
    sel = int(plan.sel_indptr[-1])

    res: dict[str, Any] = {"ctx": ctx, "batch": batch, "q_heads": hq, "kv_heads": hkv, "dense_blocks": nnz,
                           "selected_blocks": sel}  # fmt: skip
    res["plan_eager_us"] = bench_eager(lambda: core.plan(req_to_token, rpi, seq_lens, buffers=buffers))
    res["cache_us"] = bench_graph(lambda: core.update_cache(fields, loc))
    res["indexer_us"] = bench_graph(lambda: core.select(q, fields, plan))
    res["select_us"] = bench_graph(
        lambda: select_blocks(
            score,
            plan.dense_indptr,
            plan.dense_indices,
            plan.sel_indptr,
            1,
            1,
            out=plan.sel_indices,
            max_blocks_per_row=plan.max_blocks_per_row,
        )
    )
    core.select(q, fields, plan)
    res["attention_us"] = bench_graph(lambda: core.attend(q, fields, plan, None))
    res["layer_us"] = bench_graph(lambda: core.decode_layer(q, fields, plan, None, new_locs=loc))
    # The flashinfer base backend's path: token table + FlashInfer's decode over the selected tokens.
    from types import SimpleNamespace

    from vortex_torch.engine.sgl.decode_core import make_budget_fn
    from vortex_torch.engine.sgl.flashinfer_decode import FlashInferSparseDecode

    fi = FlashInferSparseDecode(
        SimpleNamespace(decode_use_tensor_cores=group >= 4, decode_backend="auto"), group=group, head_dim=d,
        num_kv_heads=hkv, block_size=blk, page_size=page, kv_dtype=torch.bfloat16, q_dtype=torch.bfloat16,
        max_blocks_per_row=core.max_blocks_per_row, max_selected_per_row=core.max_selected_per_row,
        budget_fn=make_budget_fn(prepared, torch.device("cpu"), core.max_selected_per_row), device=torch.device(dev),
    )  # fmt: skip
    fi.allocate_graph_buffers(batch)
    fi_plan = core.plan(
        req_to_token, rpi, seq_lens, buffers=buffers, budget=fi.begin_step(seq_lens.cpu(), graph=True)
    )
    core.select(q, fields, fi_plan)
    layer = SimpleNamespace(scaling=d**-0.5, logit_cap=0.0, k_scale_float=None, v_scale_float=None)
    res["plan_host_fi_us"] = bench_eager(lambda: fi.begin_step(seq_lens.cpu(), graph=True))
    res["attention_fi_us"] = bench_graph(lambda: fi.attend(q, k_buf, v_buf, fi_plan, layer))
    res["layer_fi_us"] = bench_graph(
        lambda: core.decode_layer(
            q, fields, fi_plan, None, attend=lambda q_, f_, p_: fi.attend(q_, k_buf, v_buf, p_, layer), new_locs=loc
        )
    )
    res["dense_vortex_kernel_us"] = bench_graph(
        lambda: sparse_decode_attention(q, k_buf, v_buf, plan.dense_indptr, plan.dense_indices, plan.last_block_len,
                                        page_size=page, block_size=blk, max_blocks_per_row=plan.max_blocks_per_row)
    )  # fmt: skip
    try:
        import flashinfer

        ws = torch.empty(512 << 20, dtype=torch.uint8, device=dev)
        lens = seq_lens.to(torch.int32)
        indptr = torch.zeros(batch + 1, dtype=torch.int32, device=dev)
        indptr[1:] = torch.cumsum(lens, 0)
        indices = torch.cat([req_to_token[b + 1, :ctx] for b in range(batch)])
        last = torch.ones(batch, dtype=torch.int32, device=dev)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
        wrapper.plan(
            indptr, indices, last, hq, hkv, d, 1, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16
        )
        qd = q.reshape(batch, hq, d)
        kv4 = (
            k_buf.unsqueeze(1),
            v_buf.unsqueeze(1),
        )  # NHD [pages, page_size=1, H_kv, D], as SGLang plans it
        res["dense_flashinfer_us"] = bench_graph(lambda: wrapper.run(qd, kv4))
    except Exception as exc:
        res["dense_flashinfer_us"] = None
        res["flashinfer_error"] = f"{type(exc).__name__}: {exc}"[:300]
    res["bytes_dense_kv"] = batch * ctx * hkv * d * 2 * 2
    res["bytes_sparse_kv"] = sel * blk * d * 2 * 2 + nnz * d * 2  # selected K/V + every centroid
    return res


# -- 2. engines ----------------------------------------------------------------------------------------------------
#: guesses used until this run has measured the real thing (2026-12-04, H200, 36 layers: a cold engine start took
#: 157 s and its first prefill 106 s of JIT; a warm start 31 s)
ENGINE_START_GUESS_S = 60.0
ENGINE_GUESS_S = 150.0  # a warm engine with its cases
OPTIONAL_CASE_GUESS_S = 120.0  # e.g. 128k x 4: ~4 x 20 s of prefill, then the decode runs
MARGIN_S = 10.0  # shutdown, the last JSON write


class TimeGuard:
    """Decides whether the next engine or case still fits before ``deadline``, from what this run measured.

    * An engine starts only when the time left covers its start (the last measured start, else a guess) plus a
      margin: an engine that cannot run one case is not started.
    * A required case runs unless an earlier engine measured it (prefill + runs) and that no longer fits.
    * An optional case (``--optional-cases``, e.g. 128k x 4) runs only if it fits in *this and every later*
      engine: time left >= (engines left incl. this one) x its estimate + (later engines) x an engine's time.
      Once one engine skipped it, later engines skip it too, so it is measured on all engines or on none
      past the first skip.
    """

    def __init__(self, deadline: float, clock: Callable[[], float] = time.time) -> None:
        self.deadline = deadline
        self.clock = clock
        self.engine_start_s = ENGINE_START_GUESS_S
        self.engine_s: float | None = None  # the last finished engine, start and required cases
        self.case_s: dict[tuple[int, int], float] = {}
        self.dropped: set[tuple[int, int]] = set()  # optional cases skipped once: skipped from then on

    def left(self) -> float:
        return self.deadline - self.clock()

    def engine_skip(self) -> str | None:
        need = self.engine_start_s + MARGIN_S
        if self.left() < need:
            return f"time budget: {self.left():.0f} s left, an engine start needs ~{need:.0f} s"
        return None

    def case_skip(self, case: tuple[int, int], *, optional: bool = False, engines_after: int = 0) -> str | None:
        left = self.left()
        if optional:
            if case in self.dropped:
                return "time budget: skipped on an earlier engine (measured on all engines or none)"
            est = self.case_s.get(case, OPTIONAL_CASE_GUESS_S)
            need = est * (1 + engines_after) + (self.engine_s or ENGINE_GUESS_S) * engines_after + MARGIN_S
            if left < need:
                self.dropped.add(case)
                return f"time budget: {left:.0f} s left, {1 + engines_after} engine(s) x this case need ~{need:.0f} s"
            return None
        need = self.case_s.get(case, 0.0) + MARGIN_S
        if left < need:
            return f"time budget: {left:.0f} s left, this case took {self.case_s[case]:.0f} s before" if case in \
                self.case_s else f"time budget: {left:.0f} s left"  # fmt: skip
        return None

    def record_case(self, case: tuple[int, int], seconds: float) -> None:
        self.case_s[case] = seconds

    def record_start(self, seconds: float) -> None:
        self.engine_start_s = seconds

    def record_engine(self, seconds: float) -> None:
        self.engine_s = seconds


def prompt_ids(ctx: int, batch: int, steps: int, vocab: int = 31000) -> list[list[int]]:
    """The case's prompts: random ids (3 .. vocab), ``ctx - steps - 8`` each so the context ends near ``ctx``.
    Seeded by the case alone: every engine gets the same prompts for a case, whatever ran before."""
    rng = random.Random(ctx * 1000 + batch)
    return [[rng.randint(3, vocab) for _ in range(ctx - steps - 8)] for _ in range(batch)]


def run_case(
    engine: Any, ctx: int, batch: int, steps: int, clock: Callable[[], float] = time.time, profile_steps: int = 0,
    profile_dir: str = "", repeats: int = 3,
) -> dict[str, Any]:
    """Decode tokens/s of one case on a running engine, prefill excluded.

    The radix cache is on: ``generate`` with 2 new tokens prefills the prompts (and caches them), a short run
    warms this batch size up, then ``t(1)`` and ``t(steps + 1)`` both re-use the cached prompts (one token
    re-computed), so ``t(steps + 1) - t(1)`` is ``steps`` decode steps alone. That pair is timed ``repeats``
    times; ``decode_s`` is the median (``decode_s_runs`` all of them), ``tok_per_s`` is ``batch * steps`` over it.
    One pair is not enough at short contexts: on an H100 (2026-12-05) the same 2k x 1 plain case gave 103.2 and
    123.4 tok/s in two runs, where the two engines' kernels per step differed by 4%.

    ``profile_steps``: afterwards, ``profile_steps`` more decode steps under SGLang's profiler (GPU activity,
    traces under ``profile_dir``), summed per kernel (:func:`gpu_trace.kernel_summary`) as the record's
    ``profile`` (the cached prompt's one-token extend is in the trace too).
    """
    prompts = prompt_ids(ctx, batch, steps)

    def run(new: int) -> float:
        sp = {"temperature": 0.0, "max_new_tokens": new, "ignore_eos": True}
        t0 = clock()
        engine.generate(input_ids=prompts, sampling_params=sp)
        return clock() - t0

    tp = run(2)  # prefill (cached from now on), JIT and allocator warm-up at this shape
    run(min(steps, 8) + 1)  # a few decode steps more at this batch size (graph replay, plan buffers)
    pairs = [(run(1), run(steps + 1)) for _ in range(max(1, repeats))]
    runs = [tn - t1 for t1, tn in pairs]
    decode_s = statistics.median(runs)
    rec = {"ctx": ctx, "batch": batch, "steps": steps, "prefill_s": round(tp, 3),
           "one_s": round(statistics.median(t1 for t1, _ in pairs), 3), "decode_s": round(decode_s, 3),
           "decode_s_runs": [round(x, 4) for x in runs],
           "tok_per_s": round(batch * steps / max(decode_s, 1e-9), 1)}  # fmt: skip
    if profile_steps:
        rec["profile"] = profile_case(engine, lambda: run(profile_steps + 1), profile_steps, profile_dir, clock)
    return rec


def kv_pool_tokens(engine: Any) -> int | None:
    """The tokens of K/V the engine's pool holds (SGLang's ``max_total_num_tokens``), or None: not reported."""
    try:
        info = engine.get_server_info()
    except Exception as exc:
        log(f"  the engine's KV pool size is unknown ({type(exc).__name__}: {str(exc)[:120]}): cases unchecked")
        return None
    tokens = info.get("max_total_num_tokens") if isinstance(info, dict) else None
    if not isinstance(tokens, int):
        log("  the engine reported no max_total_num_tokens: cases are not checked against its KV pool")
        return None
    return tokens


def pool_skip(ctx: int, batch: int, pool: int | None) -> str | None:
    """Why a case cannot be measured on an engine whose KV pool holds ``pool`` tokens, or None: it fits.

    Every request holds about ``ctx`` tokens at once (prompt ``ctx - steps - 8`` plus up to ``steps + 1`` new
    ones). If the pool is smaller SGLang runs part of the batch, queues the rest and evicts cached prompts, and
    the "decode" time is re-prefill: on an H100, 32k x 16 of Qwen3-8B's 36 layers (77 GB of K/V) profiled 976 ms
    of prefill kernels per decode step (results/gpu/2026-12-05-h100-session6.md)."""
    need = batch * ctx
    if pool is None or need <= pool:
        return None
    return (f"does not fit the engine's KV pool: {batch} x {ctx} = {need} tokens, the pool holds {pool} "
            "(a GPU with more memory, or fewer requests)")


def profile_case(
    engine: Any, decode: Callable[[], float], steps: int, directory: str, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """``decode()`` (``steps`` decode steps) under SGLang's profiler, GPU activity only; the kernels of the trace
    it writes into ``directory``, summed by name (or ``{"error": ...}``: a failed profile does not fail the
    case)."""
    from gpu_trace import kernel_summary, load_trace, newest_trace

    os.makedirs(directory, exist_ok=True)
    since = clock()
    try:
        engine.start_profile(output_dir=directory, activities=["GPU"])
        decode()
        engine.stop_profile()
        path = None
        for _ in range(30):  # the scheduler process writes the trace as it stops
            path = newest_trace(directory, since - 1)
            if path:
                break
            time.sleep(1)
        if path is None:
            return {"error": f"no trace written under {directory}"}
        summary = kernel_summary(load_trace(path), steps)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    summary["trace"] = os.path.basename(path)
    return summary


def engine_kwargs(
    model: str, vortex: dict[str, Any] | None, overlap: bool, dummy: bool, tp_size: int = 1
) -> dict[str, Any]:
    """``sgl.Engine`` keyword arguments of one engine; ``tp_size`` is the same for plain and Vortex engines."""
    kwargs: dict[str, Any] = dict(
        model_path=model, tp_size=tp_size, attention_backend="flashinfer", page_size=16,
        disable_overlap_schedule=not overlap,
        disable_prefill_cuda_graph=True, cuda_graph_max_bs_decode=16,
        mem_fraction_static=0.8, skip_tokenizer_init=True, log_level="warning",
        chunked_prefill_size=16384,
    )  # fmt: skip
    if dummy:
        kwargs["load_format"] = "dummy"  # random weights, no checkpoint read
    if vortex is not None:
        kwargs["vortex"] = vortex
    return kwargs


def engine_cases(
    make_engine: Callable[[], Any], name: str, cases: list[tuple[int, int]], optional: list[tuple[int, int]],
    steps: int, guard: TimeGuard, *, engines_after: int, out: list[dict[str, Any]],
    progress: Callable[[str, dict[str, Any]], None], clock: Callable[[], float] = time.time,
    profile_steps: int = 0, profile_dir: str = "", repeats: int = 3,
) -> None:
    """One engine (``make_engine()``) over its cases, each record appended to ``out`` as soon as it exists
    (``progress`` is called after every one: the caller writes the JSON, so a timeout still leaves data).
    A case that raises is recorded with its error and the next one runs; a case larger than the engine's KV pool
    (:func:`pool_skip`) is recorded as skipped, with the reason; the engine is always shut down."""
    why = guard.engine_skip()
    if why:
        for ctx, batch in [*cases, *optional]:
            out.append({"ctx": ctx, "batch": batch, "skipped": f"engine not started: {why}"})
            progress(name, out[-1])
        return
    t0 = clock()
    try:
        engine = make_engine()
    except Exception as exc:
        out.append({"error": f"engine start: {type(exc).__name__}: {exc}"[:800]})
        progress(name, out[-1])
        return
    start_s = clock() - t0
    guard.record_start(start_s)
    log(f"engine {name} up in {start_s:.0f} s ({guard.left():.0f} s left)")
    try:
        pool = kv_pool_tokens(engine)
        for i, (ctx, batch) in enumerate([*cases, *optional]):
            is_optional = i >= len(cases)
            if is_optional and not any("tok_per_s" in r for r in out):
                rec: dict[str, Any] = {"ctx": ctx, "batch": batch, "skipped": "no required case ran on this engine"}
            elif why := pool_skip(ctx, batch, pool) or guard.case_skip(
                (ctx, batch), optional=is_optional, engines_after=engines_after
            ):
                rec = {"ctx": ctx, "batch": batch, "skipped": why}
            else:
                t = clock()
                try:
                    rec = run_case(engine, ctx, batch, steps, clock, profile_steps,
                                   os.path.join(profile_dir, f"{name}-{ctx}x{batch}"), repeats)  # fmt: skip
                except Exception as exc:
                    rec = {"ctx": ctx, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:800]}
                guard.record_case((ctx, batch), clock() - t)
                try:
                    engine.flush_cache()  # the next case's prompts start from an empty KV pool
                except Exception as exc:
                    log(f"  flush_cache failed: {exc}")
            rec["engine_start_s"] = round(start_s, 1)
            rec["kv_pool_tokens"] = pool
            rec["optional"] = is_optional
            out.append(rec)
            progress(name, rec)
            if i == len(cases) - 1:
                guard.record_engine(clock() - t0)  # start + required cases: the estimate for later engines
    finally:
        try:
            engine.shutdown()
        except Exception as exc:
            log(f"engine {name}: shutdown failed: {exc}")


def e2e_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The e2e table as rows ``{ctx, batch, budget_tokens, overlap, pdl, plain_tok_s, vortex_tok_s}`` (+ the plain
    engine's tok/s with the overlap scheduler off, ``tp_size``, ``gpu`` and ``date``), one per case of every Vortex
    engine; a throughput is None where that engine did not measure the case (skipped, failed). ``tp_size`` is the
    result's (1 for results written before the option existed). ``plain_spread`` / ``vortex_spread``: the case's
    slowest timing over its fastest, less one (None: one timing)."""
    rows = []
    eng = result["engines"]
    tp_size = int(result.get("tp_size", 1))

    def by_case(key: str) -> dict[tuple[Any, Any], dict[str, Any]]:
        return {(r["ctx"], r["batch"]): r for r in eng.get(key, []) if "ctx" in r}

    def spread(rec: dict[str, Any] | None) -> float | None:  # slowest / fastest timing of the case, less one
        runs = (rec or {}).get("decode_s_runs") or []
        return round(max(runs) / min(runs) - 1, 3) if len(runs) > 1 and min(runs) > 0 else None

    for key, recs in eng.items():
        if not key.startswith("vortex"):
            continue
        kind, *modes = key.split(":")
        budget = int(kind[len("vortex"):])
        overlap, pdl, threshold = "overlap" in modes, "pdl" in modes, dense_min_tokens(modes)
        plain = by_case("plain" + (":overlap" if overlap else ""))
        plain_off = by_case("plain")
        for r in recs:
            if "ctx" not in r:  # an engine-level error record
                continue
            case = (r["ctx"], r["batch"])
            rows.append({"ctx": r["ctx"], "batch": r["batch"], "budget_tokens": budget, "overlap": overlap, "pdl": pdl,
                         "sparse_decode_min_tokens": threshold,
                         "plain_tok_s": plain.get(case, {}).get("tok_per_s"), "vortex_tok_s": r.get("tok_per_s"),
                         "plain_overlap_off_tok_s": plain_off.get(case, {}).get("tok_per_s"), "tp_size": tp_size,
                         "plain_spread": spread(plain.get(case)), "vortex_spread": spread(r),
                         "gpu": result.get("gpu"), "date": result.get("date")})  # fmt: skip
    return rows


def write_json(path: str, data: Any) -> None:
    """Write through a temporary file and rename: a kill mid-write leaves the previous complete file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def parse_cases(specs: list[str] | None, flag: str) -> list[tuple[int, int]]:
    """``CTXxBATCH`` strings -> ``[(ctx, batch)]``; raises ``ValueError`` naming ``flag`` for a malformed or
    repeated case (a repeat would be paired with the other engine's last run of it: repeat in another call)."""
    out: list[tuple[int, int]] = []
    for spec in specs or []:
        ctx, _, batch = spec.lower().partition("x")
        if not (ctx.isdigit() and batch.isdigit() and int(ctx) > 0 and int(batch) > 0):
            raise ValueError(f"{flag}: {spec!r} is not CTXxBATCH with positive integers (e.g. 32768x16)")
        if (int(ctx), int(batch)) in out:
            raise ValueError(f"{flag}: {spec!r} given twice; to repeat a case, run the bench again")
        out.append((int(ctx), int(batch)))
    return out


def positive_int(text: str) -> int:
    """``--tp-size``'s argparse type: a positive integer, else argparse's one-line error naming the flag (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer (e.g. 2)")
    return value


def tp_problem(tp_size: int, gpus: int, model_cfg: dict[str, Any] | None = None) -> str | None:
    """Why ``--tp-size tp_size`` cannot run on ``gpus`` visible GPUs (``torch.cuda.device_count()``) with the
    model of ``model_cfg`` (its ``config.json``), or None. SGLang's tensor parallelism puts one rank on each of
    ``tp_size`` GPUs and splits the query heads evenly, the KV heads evenly or replicated (Qwen3's rule)."""
    if tp_size > 1 and gpus < tp_size:
        return (f"--tp-size {tp_size}: needs {tp_size} GPUs, {gpus} visible (torch.cuda.device_count()); run on a "
                f"machine with {tp_size} GPUs (e.g. the nvidia-h200-x{tp_size} kind) or pass --tp-size 1")  # fmt: skip
    if model_cfg is None or tp_size == 1:
        return None
    heads = int(model_cfg.get("num_attention_heads", 0))
    kv = int(model_cfg.get("num_key_value_heads") or heads)
    if heads % tp_size:
        return f"--tp-size {tp_size}: the model's {heads} query heads do not split over {tp_size} ranks"
    if kv % tp_size and tp_size % kv:
        return f"--tp-size {tp_size}: the model's {kv} KV heads neither split over nor replicate to {tp_size} ranks"
    return None


def vortex_base(flow: str | None, mla: bool) -> dict[str, Any]:
    """The Vortex engines' config before the budget: the quick start's, with ``flow`` (an installed flow's
    registered name) when given, else :data:`MLA_FLOW` for an MLA model, else the quick-start flow file."""
    name = flow or (MLA_FLOW if mla else None)
    return VORTEX if name is None else {**VORTEX, "module_path": None, "module_name": name}


def dense_min_tokens(modes: list[str]) -> int:
    """The ``sparse_decode_min_tokens`` of an engine spec's modes (``denseN``: N tokens), 0 without one."""
    return next((int(m[len("dense"):]) for m in modes if m.startswith("dense")), 0)


def engine_plan(
    engines: list[str], budgets: list[int], base: dict[str, Any] = VORTEX
) -> list[tuple[str, dict[str, Any] | None, bool]]:
    """``(result key, VortexConfig dict or None for plain, overlap)`` per engine, in run order; the Vortex
    engines' config is ``base`` with the budget's ``topk_val``."""
    plan: list[tuple[str, dict[str, Any] | None, bool]] = []
    for spec in engines:
        kind, *modes = spec.split(":")
        allowed = ("overlap", "pdl") if kind == "vortex" else ("overlap",)
        dense = [m for m in modes if kind == "vortex" and re.fullmatch(r"dense[1-9][0-9]*", m)]
        if (
            kind not in ("plain", "vortex")
            or any(m not in allowed and m not in dense for m in modes)
            or len(set(modes)) < len(modes)
            or len(dense) > 1
        ):
            raise SystemExit(
                f"--engines: unknown {spec!r} (plain, plain:overlap, vortex, vortex:overlap, vortex:pdl, "
                "vortex:overlap:pdl; a vortex engine may add :denseN, VortexConfig(sparse_decode_min_tokens=N))"
            )
        overlap, pdl, threshold = "overlap" in modes, "pdl" in modes, dense_min_tokens(modes)
        for budget in budgets if kind == "vortex" else [0]:
            vcfg = None if kind == "plain" else {**base, "topk_val": budget // 16 - 2, "enable_pdl": pdl}
            if vcfg is not None and threshold:
                vcfg["sparse_decode_min_tokens"] = threshold
            name = ("plain" if vcfg is None else f"vortex{budget}") + (":overlap" if overlap else "") + (
                ":pdl" if pdl else ""
            ) + (f":dense{threshold}" if threshold else "")
            plan.append((name, vcfg, overlap))
    return plan


def dummy_model(src: str, cfg: dict[str, Any], layers: int, min_context: int, parent: str | None = None) -> str:
    """A copy of ``src`` without weights, its config at ``layers`` layers (served with ``load_format=dummy``)
    and ``max_position_embeddings`` raised to ``min_context`` when below (random weights: any RoPE length)."""
    import shutil
    import tempfile

    model = tempfile.mkdtemp(prefix="vortex-dummy-", dir=parent)
    for f in os.listdir(src):
        if not f.endswith(".safetensors") and f != "model.safetensors.index.json":
            shutil.copy(os.path.join(src, f), model)
    cfg = dict(cfg, num_hidden_layers=layers)
    if isinstance(cfg.get("layer_types"), list) and cfg["layer_types"]:
        cfg["layer_types"] = [cfg["layer_types"][0]] * layers
    if int(cfg.get("max_position_embeddings", 0)) < min_context:
        cfg["max_position_embeddings"] = min_context
    with open(os.path.join(model, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return model


def build_parser() -> argparse.ArgumentParser:
    """The command line (also what tests/test_device_plan.py checks the GPU plan's arguments with)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models_dir = os.environ.get("VORTEX_MODELS_DIR", "/tmp/models")
    p.add_argument("--model", default=os.path.join(models_dir, "qwen3-8b-l4"))
    p.add_argument(
        "--out", default=os.path.join(os.environ.get("VORTEX_OUT", "."), "sglang_decode_bench.json")
    )
    p.add_argument("--ctx", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per case")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="times each case's decode is timed; the median counts (default 3)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("VORTEX_BENCH_BUDGET_S", 430)),
                   help="seconds this script may run (--max-minutes wins)")  # fmt: skip
    p.add_argument("--max-minutes", type=float,
                   help="stop starting engines and cases that would not end within this many minutes of the "
                        "start; what was skipped is recorded with the reason")  # fmt: skip
    p.add_argument("--skip-engines", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--quick", action="store_true", help="8k only, 16 steps")
    p.add_argument("--cases", nargs="+", help="CTXxBATCH engine cases (replaces --ctx/--batch for engines)")
    p.add_argument("--optional-cases", nargs="+", default=[],
                   help="CTXxBATCH cases run after --cases on every engine, only when the guard predicts they "
                        "fit on this and all later engines (e.g. 131072x4)")  # fmt: skip
    p.add_argument("--budgets", type=int, nargs="+", default=[512], help="Vortex budgets in tokens (topk_val = b/16 - 2)")
    p.add_argument("--engines", nargs="+", default=["plain", "vortex"],
                   help="plain, plain:overlap, vortex, vortex:overlap (overlap: SGLang's overlap scheduler on)")
    p.add_argument("--dummy-layers", type=int, default=0,
                   help="serve --model's config with this many layers and random weights (load_format=dummy)")
    p.add_argument("--e2e-out", help="also write the e2e rows here (list of {ctx, batch, budget_tokens, ...})")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="after each case, profile this many more decode steps with SGLang's profiler and record the "
                        "GPU kernels per step (name, launches, us) as the case's 'profile' (0: off)")  # fmt: skip
    p.add_argument("--profile-dir", default=os.path.join(os.environ.get("VORTEX_OUT", "/tmp"), "traces"),
                   help="where the traces go (default $VORTEX_OUT/traces)")
    p.add_argument("--flow", help="an installed flow's registered name for the Vortex engines (default: the quick-start "
                   f"flow; for an MLA model, {MLA_FLOW})")  # fmt: skip
    p.add_argument("--tp-size", type=positive_int, default=1,
                   help="SGLang tensor parallelism of every engine, plain and Vortex (N > 1 needs N GPUs)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.profile_steps < 0:
        p.error(f"--profile-steps must be >= 0, got {args.profile_steps}")
    try:
        given_cases, optional = parse_cases(args.cases, "--cases"), parse_cases(args.optional_cases, "--optional-cases")
    except ValueError as exc:
        p.error(str(exc))  # one line, exit 2, before any GPU work
    if args.quick:
        args.ctx, args.steps = [8192], 16
    deadline = T0 + (args.max_minutes * 60 if args.max_minutes else args.budget_s)
    engine_plan(args.engines, args.budgets)  # a bad --engines is refused before anything else

    import torch

    def refuse(why: str) -> NoReturn:
        """One line on stderr, exit 2: a setting this machine or model cannot run, found before any GPU work."""
        print(f"{os.path.basename(sys.argv[0])}: error: {why}", file=sys.stderr)
        sys.exit(2)

    if why := tp_problem(args.tp_size, torch.cuda.device_count()):
        refuse(why)
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    if why := tp_problem(args.tp_size, torch.cuda.device_count(), cfg):
        refuse(why)
    mla = "kv_lora_rank" in cfg
    if mla and not args.skip_kernels:
        refuse("an MLA model: pass --skip-kernels (the kernel section times a GQA layer; "
               "tools/bench/decode_step_bench.py --mla times an MLA layer)")  # fmt: skip
    base = vortex_base(args.flow, mla)
    plan = engine_plan(args.engines, args.budgets, base)
    os.environ.update(NO_MULTICAST)  # before any engine: SGLang's scheduler processes inherit the environment
    context_len = int(cfg.get("max_position_embeddings", 40960))
    cases = [(c, b) for c in args.ctx for b in args.batch]
    result: dict[str, Any] = {
        "date": str(date.today()),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
        "tp_size": args.tp_size,
        "comm_env": {k: os.environ.get(k) for k in NO_MULTICAST},
        "model": {
            k: cfg.get(k)
            for k in (
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "hidden_size",
                "max_position_embeddings",
                "kv_lora_rank",
                "qk_rope_head_dim",
            )
        },
        "vortex": {k: v for k, v in base.items() if k != "module_path"},
        "kernels": [],
        "engines": {},
        "complete": False,
    }

    def save() -> None:
        result["e2e"] = e2e_rows(result)
        result["wall_s"] = round(time.time() - T0, 1)
        write_json(args.out, result)
        if args.e2e_out:
            write_json(args.e2e_out, result["e2e"])

    if not args.skip_kernels:
        log("kernels, one layer")
        for ctx, batch in cases:
            try:
                rec = kernel_case(ctx, batch, context_len, args.tp_size)
            except Exception as exc:
                rec = {"ctx": ctx, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"  {rec}")
            result["kernels"].append(rec)
            torch.cuda.empty_cache()
        save()
    engine_cases_list = given_cases or cases
    model = args.model
    if args.dummy_layers:
        need = max(c for c, _ in [*engine_cases_list, *optional]) + 64
        model = dummy_model(args.model, cfg, args.dummy_layers, need)
        result["model"]["num_hidden_layers"] = args.dummy_layers
        result["model"]["max_position_embeddings"] = max(context_len, need)
        result["model"]["weights"] = "random (SGLang load_format=dummy)"
    else:  # a real checkpoint serves its own context length only
        too_long = [c for c in [*engine_cases_list, *optional] if c[0] + 64 > context_len]
        if too_long:
            log(f"cases longer than the model's context ({context_len}) dropped: {too_long}")
        engine_cases_list = [c for c in engine_cases_list if c not in too_long]
        optional = [c for c in optional if c not in too_long]
    if not args.skip_engines and os.path.isdir(model):
        guard = TimeGuard(deadline)
        total = len(plan) * (len(engine_cases_list) + len(optional))
        done = [0]

        def progress(name: str, rec: dict[str, Any]) -> None:
            done[0] += "ctx" in rec
            what = (f"{rec['tok_per_s']} tok/s (prefill {rec['prefill_s']} s, decode {rec['decode_s']} s)"
                    if "tok_per_s" in rec else rec.get("skipped") or rec.get("error"))  # fmt: skip
            log(f"[{done[0]}/{total}] {name} ctx={rec.get('ctx')} batch={rec.get('batch')}: {what}; "
                f"{guard.left():.0f} s left")  # fmt: skip
            save()

        for i, (name, vcfg, overlap) in enumerate(plan):
            if overlap and vcfg is not None:
                os.environ["VORTEX_ALLOW_OVERLAP_SCHEDULE"] = "1"  # server_rules.ALLOW_OVERLAP_ENV
            kwargs = engine_kwargs(model, vcfg, overlap, bool(args.dummy_layers), args.tp_size)

            def make_engine(kw: dict[str, Any] = kwargs) -> Any:
                import sglang as sgl

                import vortex_torch  # noqa: F401  (the adapter; the plugin entry point does the same)

                return sgl.Engine(**kw)

            result["engines"][name] = []
            engine_cases(make_engine, name, engine_cases_list, optional, args.steps, guard,
                         engines_after=len(plan) - 1 - i, out=result["engines"][name], progress=progress,
                         profile_steps=args.profile_steps, profile_dir=args.profile_dir,
                         repeats=args.repeats)  # fmt: skip
    result["complete"] = True
    save()
    print(report(result))


def report(res: dict[str, Any]) -> str:
    tp = int(res.get("tp_size", 1))
    lines = [f"## SGLang decode bench ({res['gpu']}{f' x {tp}, tp {tp}' if tp > 1 else ''}, {res['date']})", ""]
    if res["kernels"]:
        lines += [
            "One layer, per decode step, us (CUDA-graph replays; plan is eager, once per step for all layers):",
            "",
            "Triton path (triton base backend) and FlashInfer path (flashinfer base backend: token table +",
            "FlashInfer decode over the selected tokens; its plan is host-side, per step).",
            "",
            "| ctx | batch | plan (device) | plan (host, fi) | cache | indexer | (select) | attention triton | "
            "attention fi | sparse layer triton | sparse layer fi | dense flashinfer | dense vortex kernel |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["kernels"]:
            if "error" in r:
                lines.append(f"| {r['ctx']} | {r['batch']} | error: {r['error'][:80]} |")
                continue
            f = lambda x: "-" if x is None else (f"{x:.1f}" if x >= 0 else f"{-x:.1f} (eager)")
            lines.append(
                f"| {r['ctx']} | {r['batch']} | {f(r['plan_eager_us'])} | {f(r.get('plan_host_fi_us'))} | "
                f"{f(r['cache_us'])} | {f(r['indexer_us'])} | {f(r['select_us'])} | {f(r['attention_us'])} | "
                f"{f(r.get('attention_fi_us'))} | {f(r['layer_us'])} | {f(r.get('layer_fi_us'))} | "
                f"{f(r['dense_flashinfer_us'])} | {f(r['dense_vortex_kernel_us'])} |"
            )
    if res.get("e2e"):
        lines += ["", "End to end decode throughput, tokens/s (flashinfer base; Vortex = the quick-start flow):", "",
                  "| ctx | batch | budget | overlap | plain | vortex | speedup | spread plain / vortex |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["e2e"]:
            a, b = r.get("plain_tok_s"), r.get("vortex_tok_s")
            speed = f"{b / a:.2f}x" if a and b else "-"
            pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"
            lines.append(f"| {r['ctx']} | {r['batch']} | {r['budget_tokens']} | {r['overlap']} | {a or '-'} | "
                         f"{b or '-'} | {speed} | {pct(r.get('plain_spread'))} / {pct(r.get('vortex_spread'))} |")
    elif res["engines"]:
        lines += ["", "engines: " + json.dumps(res["engines"])[:2000]]
    profiled = [(name, r) for name, recs in res["engines"].items() for r in recs if "profile" in r]
    if profiled:
        lines += ["", "GPU kernels per decode step (--profile-steps; the five costliest, us per step):", "",
                  "| engine | ctx | batch | kernel us / step | launches / step | costliest |", "|---|---|---|---|---|---|"]
        for name, r in profiled:
            pr = r["profile"]
            if "error" in pr:
                lines.append(f"| {name} | {r['ctx']} | {r['batch']} | profile failed: {pr['error'][:80]} | | |")
                continue
            top = "; ".join(f"{k['name'][:40]} {k['us_per_step']}" for k in pr["kernels"][:5])
            lines.append(f"| {name} | {r['ctx']} | {r['batch']} | {pr['kernel_us_per_step']} | "
                         f"{pr['launches_per_step']} | {top} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
