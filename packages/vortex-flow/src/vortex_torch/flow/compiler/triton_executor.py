"""The compiled executor: generated Triton kernels for the scoring graph plus the selection kernel."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from vortex_torch import indexer as ix
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.kernels._split_kv import fp8_scale_args, log2_scale
from vortex_torch.kernels._sync import pdl_launch_options
from vortex_torch.kernels.select.triton_kernel import (
    LOW_BIT,
    select_blocks_triton,
    select_tiling,
    tolerance_bits,
)
from vortex_torch.kernels.sparse_decode.reference import check_inputs
from vortex_torch.kernels.sparse_decode.triton_kernel import check_kv_rows, kernel_constexprs

from ..trace import TracedFlow
from .base import FlowExecutor, IndexerPlan, SelectionSpec, kv_scale
from .codegen import (
    KV_FIELDS,
    KernelArg,
    KernelSource,
    KVLayout,
    cache_kernel,
    fused_kernel,
    standalone_kernel,
)
from .indexer_kernel import indexer_kernel
from .lowerings import per_block_elements
from .schedule import CompileError, KernelGroup, group_nodes, live_nodes, materialized


@dataclass
class TritonIndexerPlan(IndexerPlan):
    """The compiled indexer's plan: its bounds and its scratch, owned by the caller: ``counter [max_rows] int32``
    (0 between launches; the row's last scoring program re-arms it) and the intermediates of every stored tensor
    (fp32, by tensor id: ``[max_rows * max_blocks_per_row * r * c]`` per block, ``[max_rows * r * c]`` per row)."""

    counter: torch.Tensor
    buffers: dict[int, torch.Tensor]


@dataclass
class FusedAttention:
    """What an executor built with ``fuse_attention`` needs to attend each row in the indexer launch too:
    SGLang's ``k`` / ``v`` buffers ``[num_slots, H_kv, D]`` (last dim contiguous), the rows' last-block lengths
    ``last_block_len [R]`` int32 (the plan's), the output ``out [R, G, D]`` (contiguous, q's dtype) and the
    softmax scale; an fp8 cache's ``[1]`` fp32 ``k_scale`` / ``v_scale``; ``exact`` and ``tile_tokens`` as
    :func:`vortex_torch.kernels.sparse_decode.sparse_decode_attention` takes them. The output is that kernel's
    with one split over the row's selection (``run``'s ``out``)."""

    k: torch.Tensor
    v: torch.Tensor
    last_block_len: torch.Tensor
    out: torch.Tensor
    sm_scale: float
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    exact: bool = False
    tile_tokens: int | None = None


def default_cache_dir() -> str:
    return os.environ.get(
        "VORTEX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vortex")
    )


#: fp32 elements of the largest per-block tile, times the blocks of a program, that a program may hold
TILE_BUDGET = 8192


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


class TritonExecutor(FlowExecutor):
    """Runs a traced flow as generated Triton kernels: the whole indexer (every scoring group and the selection)
    as ONE launch (:mod:`.indexer_kernel`), ``forward_cache`` as one more (per extend, or per decode step).

    ``block_chunk``: blocks a group handles at once (a power of two; 0 picks, per group, up to 64 so that its
    largest tile stays within ``TILE_BUDGET`` elements: ``chunks``); ``cache_chunk`` the same for
    ``forward_cache``. ``num_warps`` (0: the measured default, :meth:`launch_config`), ``programs_per_sm`` and
    ``num_stages`` tune the indexer launch. ``enable_pdl``: launch the scoring and the selection kernels with
    Hopper programmatic dependent launch (sm_90+; see :func:`vortex_torch.kernels._sync.pdl_launch_options`).
    ``prefetch_indices``: the scoring loops load the next chunk's block ids one iteration ahead (same results;
    off until timed on a GPU). ``fuse_attention`` (implies ``fuse_selection``): the program that selects a row
    also attends it, one split over its selection: the whole sparse layer is one launch (``run``'s
    ``attention``; for few short rows, where three dependent launches cost more than their work; off until
    timed)."""

    needs_row_index = False

    def __init__(
        self,
        traced: TracedFlow,
        layout: PoolLayout,
        *,
        block_chunk: int = 0,
        cache_dir: str | None = None,
        cache_chunk: int = 0,
        num_warps: int = 0,
        programs_per_sm: int = 8,
        num_stages: int | None = None,
        fuse_selection: bool = False,
        enable_pdl: bool = False,
        prefetch_indices: bool = False,
        fuse_attention: bool = False,
    ) -> None:
        super().__init__(traced, layout)
        #: the row's selecting program also attends it (one launch per sparse layer; ``run``'s ``attention``)
        self.fuse_attention = fuse_attention
        fuse_selection = fuse_selection or fuse_attention
        #: scoring loops load the next chunk's block ids one iteration ahead (codegen ``_finish``; not yet timed)
        self.prefetch_indices = prefetch_indices
        #: scoring and selection kernels are launched with programmatic dependent launch (sm_90+)
        self.enable_pdl = enable_pdl
        #: warps per program of the indexer kernel (0: the measured default, :meth:`launch_config`)
        self.num_warps = num_warps
        #: resident indexer programs per SM the parallel stage aims for (``num_splits``)
        self.programs_per_sm = programs_per_sm
        #: software-pipelining stages of the indexer's chunk loop (None: Triton's default)
        self.num_stages = num_stages
        self._weight_cache: dict[tuple[int, torch.device], tuple[int, torch.Tensor]] = {}
        kv = KVLayout(layout.page_size, layout.block_size, layout.num_kv_heads)
        for what, v in (("block_chunk", block_chunk), ("cache_chunk", cache_chunk)):
            if v < 0 or (v & (v - 1)):
                raise ValueError(f"{what} must be a power of two (Triton tile sizes are), got {v}")
        nodes = live_nodes(traced.indexer)
        self.groups: list[KernelGroup] = group_nodes(nodes)
        self.block_chunk = block_chunk
        #: blocks per program of each kernel (the selection kernel picks its own tiles)
        self.chunks = [
            block_chunk or min(64, _pow2_floor(TILE_BUDGET // per_block_elements(g.nodes)))
            for g in self.groups
        ]
        self.stored = materialized(self.groups)
        self.terminal = self.groups[-1].nodes[0]
        entries = traced.indexer.entries
        entry_of = {t.tensor_id: f"entry:{n}" for n, t in entries.items()}
        score = self.terminal.inputs[0]
        #: the selection reads a cache field directly (``topK()(cache["f"], o)``): gathered at the dense blocks
        self.score_field: str | None = entry_of[score.tensor_id][6:] if score.tensor_id in entry_of else None
        if self.score_field in KV_FIELDS:
            raise CompileError(
                f"topK of cache[{self.score_field!r}] itself: reduce it to one score per block first"
            )
        if self.score_field is None:
            self.stored.add(score.tensor_id)  # the score feeds the selection kernel
        self.kernels: list[KernelSource] = []  # one device function per non-terminal group
        for i, g in enumerate(self.groups[:-1]):
            name = f"_g{i}_{g.kind}"
            if g.kind == "fused":
                external = {
                    t.tensor_id: entry_of.get(t.tensor_id, f"buffer:{t.tensor_id}")
                    for n in g.nodes
                    for t in n.inputs
                }
                self.kernels.append(
                    fused_kernel(name, g, external, self.stored, kv, prefetch_indices=prefetch_indices)
                )
            else:
                t = g.nodes[0].inputs[0]
                self.kernels.append(
                    standalone_kernel(name, g.nodes[0], entry_of.get(t.tensor_id, f"buffer:{t.tensor_id}"), kv)
                )
        op = self.terminal.op
        assert isinstance(op, ix.topK)
        #: approxTopK's tolerance (0: exact topK)
        self.tolerate_ratio = float(op.tolerate_ratio)
        if self.score_field is not None:
            score_arg = KernelArg("f_score", f"entry:{self.score_field}", score)
        else:
            score_arg = KernelArg(f"out{score.tensor_id}", f"buffer:{score.tensor_id}", score)
        #: the indexer writes state (a ``Save``): every row is scored, copied rows too
        self.stateful = any(n.writes is not None for g in self.groups[:-1] for n in g.nodes)
        #: the selection runs in the scoring kernel's last program per row (one launch) instead of a launch of
        #: its own. Off by default: slower with many rows on the H200 (65 against 53 µs at 32k x 32, the
        #: row's last program searches alone; results/gpu/2026-12-04-decode-step-bench-sweep.md)
        self.fuse_selection = fuse_selection
        cache_nodes = live_nodes(traced.cache)
        #: the decode ``forward_cache`` of one slot and head, folded into the scoring kernel (``run``'s
        #: ``new_locs``); None when the flow has no forward_cache or no scoring kernel
        self.cache_row = (
            cache_kernel("_cache_row", cache_nodes, traced.cache.entries, kv, decode=True, row=True)
            if cache_nodes and self.kernels
            else None
        )
        self.indexer = indexer_kernel(
            "indexer", self.kernels, self.chunks[:-1], score_arg=score_arg, skip_dense=not self.stateful,
            fuse_selection=fuse_selection, cache_row=self.cache_row, kv_heads=layout.num_kv_heads,
            attention=fuse_attention,
        )  # fmt: skip
        #: position of the scores among the kernel's pointer arguments (what a separate selection reads)
        self._score_arg_index = [a.name for a in self.indexer.args].index(self.indexer.score_arg)
        self.cache_kernel = (
            cache_kernel("cache_update", cache_nodes, traced.cache.entries, kv) if cache_nodes else None
        )
        #: the same forward_cache for a decode step: takes the step's token slots, finds completed blocks itself
        self.cache_kernel_decode = (
            cache_kernel("cache_update_decode", cache_nodes, traced.cache.entries, kv, decode=True)
            if cache_nodes
            else None
        )
        # blocks per cache-kernel program: a power of two with at most ~4096 elements per tile
        self.cache_chunk = cache_chunk or _pow2_floor(min(16, 4096 // per_block_elements(cache_nodes)))
        self.source = self._render()
        self.source_path = ""  # the generated module on disk (set by _import)
        self.module = self._import(cache_dir or default_cache_dir())

    # -- build -----------------------------------------------------------------------------------------------
    def _render(self) -> str:
        parts = [
            f"# Generated by vortex_torch.flow.compiler for {type(self.traced.flow).__qualname__}; do not edit.",
            "import triton",
            "import triton.language as tl",
            "",
            "from vortex_torch.kernels._layout import block_first_slot as _vx_block_first_slot",
            "from vortex_torch.kernels._layout import block_head as _vx_block_head",
            "from vortex_torch.kernels._layout import block_id as _vx_block_id",
            "from vortex_torch.kernels._sync import dependent_launch_prologue as _vx_dependent_launch_prologue",
            "from vortex_torch.kernels._sync import release_fence as _vx_release_fence",
            "from vortex_torch.kernels.fp8 import store_cast as _vx_store_cast",
            "from vortex_torch.kernels.select.triton_kernel import select_row as _vx_select_row",
            *(
                ["from vortex_torch.kernels.sparse_decode.triton_kernel import attend_split as _vx_attend_split"]
                if self.fuse_attention
                else []
            ),
            "",
        ]
        for k in [*self.kernels, self.cache_row, self.indexer, self.cache_kernel, self.cache_kernel_decode]:
            if k is not None:
                parts += ["", *k.lines, ""]
        return "\n".join(parts)

    def _import(self, cache_dir: str) -> ModuleType:
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"vortex_flow_{digest}.py")
        self.source_path = path
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                fh.write(self.source)
            os.replace(tmp, path)  # atomic: concurrent processes never see a half-written file
        name = f"vortex_flow_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    @property
    def folds_cache_update(self) -> bool:
        """Whether ``run(..., new_locs=...)`` also runs the decode cache update (no launch of its own)."""
        return self.cache_row is not None

    @property
    def indexer_launches(self) -> int:
        if self.fuse_selection:
            return 1
        return 1 + bool(self.kernels)  # the selection, after the scoring kernel (none when topK reads a field)

    # -- run -------------------------------------------------------------------------------------------------
    def _resolve(
        self, source: str, q: torch.Tensor, fields: dict[str, torch.Tensor], bufs: dict[int, torch.Tensor]
    ) -> Any:
        kind, _, key = source.partition(":")
        if kind == "entry":
            return q if key == "q" else fields[key]
        if kind in ("stride0", "stride1"):  # native K/V buffer [num_slots, H_kv, D]: slot and head strides
            buf = fields[key]
            if buf.dim() != 3 or buf.shape[1] != self.layout.num_kv_heads or buf.stride(2) != 1:
                raise ValueError(
                    f"cache[{key!r}] must be a [num_slots, H_kv={self.layout.num_kv_heads}, D] buffer with "
                    f"contiguous rows, got shape {tuple(buf.shape)} strides {buf.stride()}"
                )
            return buf.stride(0 if kind == "stride0" else 1)
        if kind == "scale":  # fp8 K/V: the layer's dequantisation scale, a [1] fp32 tensor on the device
            return kv_scale(fields, key)
        return bufs[int(key)]

    def _device_weight(self, weight: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``weight`` as a contiguous tensor on ``device``, copied once and reused (a copy on every call would
        break CUDA-graph capture and cost a host-to-device transfer per layer); recopied if it was modified."""
        key = (id(weight), device)
        hit = self._weight_cache.get(key)
        if hit is None or hit[0] != weight._version:
            hit = (weight._version, weight.detach().to(device).contiguous())
            self._weight_cache[key] = hit
        return hit[1]

    def plan(self, max_rows: int, max_blocks_per_row: int, device: torch.device | str) -> TritonIndexerPlan:
        """Bounds and caller-owned scratch for indexer launches of up to ``max_rows`` rows of
        ``max_blocks_per_row`` blocks (FlashInfer's rule: allocate once, e.g. before CUDA-graph capture, and pass
        it to every layer)."""
        bufs: dict[int, torch.Tensor] = {}
        for g in self.groups:
            for n in g.nodes:
                t = n.output
                if t is not None and t.tensor_id in self.stored:
                    lead = max_rows if t.format == FORMAT.BATCHED else max_rows * max_blocks_per_row
                    bufs[t.tensor_id] = torch.empty(
                        max(1, lead * t.inner[0] * t.inner[1]), dtype=torch.float32, device=device
                    )
        counter = torch.zeros(max(1, max_rows), dtype=torch.int32, device=device)
        return TritonIndexerPlan(max_rows, max_blocks_per_row, counter=counter, buffers=bufs)

    def launch_config(self) -> tuple[int, int]:
        """``(blocks per chunk of the parallel stage, warps per program)`` of an indexer launch.

        Measured on an H200 (results/gpu/2026-12-04-decode-step-bench-sweep.md, quick-start flow, 32k context,
        scoring + selection apart): eight warps and the default chunk of 64 blocks are fastest or within 1% of
        it with many rows and with few (53.5 µs at 256 rows against 58.8 with two warps, 13.0 µs at 8 rows
        against 13.6), since a chunk's summary rows are gathered at scattered block ids and more warps keep
        more of them in flight. ``block_chunk``/``num_warps`` given to the executor override both.
        """
        return self.indexer.parallel_chunk, self.num_warps or 8

    def num_splits(self, rows: int, max_blocks_per_row: int, device: torch.device, chunk: int = 0) -> int:
        """Programs per row of the parallel stage: enough ``(row, split)`` programs to fill the GPU, none
        beyond the longest row's chunks. Depends on shapes and the device only (CUDA-graph stable)."""
        chunk = chunk or self.indexer.parallel_chunk
        if not chunk:
            return 1
        most = triton_cdiv(max_blocks_per_row, chunk)
        if device.type != "cuda":  # the interpreter: a few splits per row, so tests exercise the hand-off
            return max(1, min(4, most))
        slots = self.programs_per_sm * torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(triton_cdiv(slots, max(rows, 1)), most))

    def run(
        self,
        q: torch.Tensor,
        fields: dict[str, torch.Tensor],
        dense: DenseBlocks,
        selection: SelectionSpec,
        out: torch.Tensor,
        *,
        plan: IndexerPlan | None = None,
        new_locs: torch.Tensor | None = None,
        attention: FusedAttention | None = None,
    ) -> None:
        """The scoring kernel (:mod:`.indexer_kernel`), then the selection kernel, or both in one launch with
        ``fuse_selection``. A ``plan`` from :meth:`plan` makes the call sync-free and allocation-free (CUDA
        graphs). ``new_locs [R / H_kv]``: the decode step's new token slots (K/V written); the scoring kernel
        first summarises the blocks they complete (only when :attr:`folds_cache_update`). ``attention``
        (required exactly when built with ``fuse_attention``): the same launch attends every row over its
        selection into ``attention.out`` (``q [R, G, D]`` is the queries)."""
        if (attention is None) == self.fuse_attention:
            raise ValueError("attention= is what an executor built with fuse_attention=True needs (and only it)")
        if new_locs is not None and not self.folds_cache_update:
            raise ValueError(
                "new_locs given, but this flow's decode cache update is not folded into scoring "
                "(no forward_cache or no scoring kernel): call run_cache_decode first"
            )
        q = q.contiguous()
        rows = dense.num_rows
        if rows == 0:
            return
        if new_locs is not None and new_locs.numel() * self.layout.num_kv_heads != rows:
            raise ValueError(
                f"new_locs has {new_locs.numel()} slots for {rows} rows; a decode step has one slot per request "
                f"({self.layout.num_kv_heads} rows each)"
            )
        max_n = plan.max_blocks_per_row if plan is not None else int(dense.lengths().max())  # else: a host sync
        ws = plan if isinstance(plan, TritonIndexerPlan) and plan.fits(rows, max_n) else None
        if ws is None:  # no plan, or one too small: scratch for this call only
            ws = self.plan(rows, max_n, q.device)
        args: list[Any] = []
        for a in self.indexer.args:
            kind, _, attr = a.source.partition(":")
            if kind == "param":  # "param:<attr>:<group>": a tensor of that group's op (Conv1d's weight)
                attr, _, group = attr.partition(":")
                args.append(self._device_weight(getattr(self.groups[int(group)].nodes[0].op, attr), q.device))
            elif kind == "buffer":
                args.append(ws.buffers[int(attr)])
            else:
                args.append(self._resolve(a.source, q, fields, {}))
        # scores are fp32 intermediates, or the dtype of the cache field topK reads (the key width follows it)
        score_dtype = fields[self.score_field].dtype if self.score_field is not None else torch.float32
        approx, tol_bits = tolerance_bits(self.tolerate_ratio)
        chunk, warps = self.launch_config()
        block_n, single = select_tiling(max_n, warps)
        splits = self.num_splits(rows, max_n, q.device, chunk)
        kernel = getattr(self.module, self.indexer.name)
        att_args, att_meta = (
            self._attention_args(q, attention, selection, out) if attention is not None else ([], {})
        )
        if self.fuse_selection or self.kernels:
            kernel[(rows, splits)](
                dense.indptr, dense.indices, selection.sel_indptr, ws.counter, out, selection.bos, selection.eos,
                tol_bits, dense.indptr if new_locs is None else new_locs, *args, *att_args, **att_meta, APPROX=approx,
                LOW_BIT=LOW_BIT[score_dtype], SINGLE_TILE=single, BLOCK_N=block_n, GATHER=self.score_field is not None,
                CACHE=new_locs is not None, BS0=max(1, chunk), FENCE=q.is_cuda, PDL=self.enable_pdl,
                num_warps=warps, **({} if self.num_stages is None else {"num_stages": self.num_stages}),
                **pdl_launch_options(self.enable_pdl, q.device, "the flow's scoring kernel"),
            )  # fmt: skip
        if not self.fuse_selection:
            score = args[self._score_arg_index]
            if self.score_field is None:  # the plan's score buffer, cut to the dense lists' capacity
                score = score[: dense.indices.numel()]
            select_blocks_triton(
                score, dense.indptr, dense.indices, selection.sel_indptr, selection.bos, selection.eos,
                tolerate_ratio=self.tolerate_ratio, out=out, max_blocks_per_row=max_n,
                gather=self.score_field is not None, enable_pdl=self.enable_pdl,
            )  # fmt: skip

    def _attention_args(
        self, q: torch.Tensor, att: FusedAttention, selection: SelectionSpec, sel_out: torch.Tensor
    ) -> tuple[list[Any], dict[str, Any]]:
        """The indexer kernel's attention parameters and constexprs (``indexer_kernel.ATTENTION_PARAMS``), after
        the checks the sparse attention kernel makes of the same inputs (the selection is ``sel_out``, written
        by the same launch)."""
        k, v, o = att.k, att.v, att.out
        check_inputs(q, k, v, selection.sel_indptr, sel_out, att.last_block_len, o, self.layout.page_size,
                     self.layout.block_size)  # fmt: skip
        check_kv_rows(k, v)
        if not o.is_contiguous():  # written at row * stride(0) + g * stride(1) + d
            raise ValueError(f"attention.out must be contiguous, got strides {o.stride()}")
        group, dim = q.shape[1], q.shape[2]
        kv_fp8, k_scale, v_scale = fp8_scale_args(k.dtype, att.k_scale, att.v_scale, att.last_block_len, "fp8 K/V")
        cx = kernel_constexprs(group, dim, self.layout, q.dtype, kv_fp8, att.exact, att.tile_tokens)
        args = [q, k, v, att.last_block_len, o, k_scale, v_scale, log2_scale(att.sm_scale), q.stride(0), q.stride(1),
                k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1)]  # fmt: skip
        return args, {f"ATT_{name}": value for name, value in cx.items()}

    def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
        if self.cache_kernel is None or block_ids.numel() == 0:
            return
        n = block_ids.numel()
        args = [self._resolve(a.source, block_ids, fields, {}) for a in self.cache_kernel.args]
        kernel = getattr(self.module, self.cache_kernel.name)
        kernel[(triton_cdiv(n, self.cache_chunk),)](block_ids, n, *args, BS=self.cache_chunk)


    def run_cache_decode(self, fields: dict[str, torch.Tensor], locs: torch.Tensor) -> None:
        """``forward_cache`` of a decode step: ``locs [T]`` are the token slots just written; the kernel
        summarises the blocks (all KV heads) those tokens complete and skips the rest (one launch, no sync)."""
        if self.cache_kernel_decode is None or locs.numel() == 0:
            return
        n = locs.numel()
        args = [self._resolve(a.source, locs, fields, {}) for a in self.cache_kernel_decode.args]
        kernel = getattr(self.module, self.cache_kernel_decode.name)
        grid = (triton_cdiv(n * self.layout.num_kv_heads, self.cache_chunk),)
        kernel[grid](locs, n, *args, BS=self.cache_chunk)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
