"""The compiled executor: generated Triton kernels for the scoring graph plus the selection kernel."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import torch

from vortex_torch import indexer as ix
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.kernels.select import select_blocks

from ..trace import TracedFlow
from .base import FlowExecutor, SelectionSpec
from .codegen import KV_FIELDS, KernelSource, KVLayout, cache_kernel, fused_kernel, standalone_kernel
from .lowerings import per_block_elements
from .schedule import CompileError, KernelGroup, group_nodes, live_nodes, materialized


def default_cache_dir() -> str:
    return os.environ.get(
        "VORTEX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vortex")
    )


#: fp32 elements of the largest per-block tile, times the blocks of a program, that a program may hold
TILE_BUDGET = 8192


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


class TritonExecutor(FlowExecutor):
    """Runs a traced flow as generated Triton kernels (one per fused group, one per standalone op, one for
    selection). ``num_warps`` is the warps per program of the scoring kernels. ``block_chunk`` is the number of blocks a program handles at once (a power of two; 0 picks,
    per kernel, up to 64 so that its largest tile stays within ``TILE_BUDGET`` elements: ``chunks``);
    ``cache_chunk`` the same for ``forward_cache``."""

    def __init__(
        self,
        traced: TracedFlow,
        layout: PoolLayout,
        *,
        block_chunk: int = 0,
        cache_dir: str | None = None,
        cache_chunk: int = 0,
        num_warps: int = 2,
    ) -> None:
        super().__init__(traced, layout)
        #: warps per program of the generated scoring kernels (2 measured fastest: results/gpu/*indexer-bench*)
        self.num_warps = num_warps
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
        self.kernels: list[KernelSource | None] = []
        for i, g in enumerate(self.groups):
            name = f"k{i}_{g.kind}"
            if g.kind == "fused":
                external = {
                    t.tensor_id: entry_of.get(t.tensor_id, f"buffer:{t.tensor_id}")
                    for n in g.nodes
                    for t in n.inputs
                }
                self.kernels.append(fused_kernel(name, g, external, self.stored, kv))
            elif g.kind == "standalone":
                t = g.nodes[0].inputs[0]
                self.kernels.append(
                    standalone_kernel(
                        name, g.nodes[0], entry_of.get(t.tensor_id, f"buffer:{t.tensor_id}"), kv
                    )
                )
            else:
                self.kernels.append(None)
        cache_nodes = live_nodes(traced.cache)
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
            "from vortex_torch.kernels._layout import block_id as _vx_block_id",
            "",
        ]
        for k in [*self.kernels, self.cache_kernel, self.cache_kernel_decode]:
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
    def indexer_launches(self) -> int:
        return len(self.groups) + (self.score_field is not None)

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

    def run_indexer(
        self,
        q: torch.Tensor,
        fields: dict[str, torch.Tensor],
        dense: DenseBlocks,
        selection: SelectionSpec,
        out: torch.Tensor,
        *,
        max_blocks_per_row: int | None = None,
    ) -> None:
        q = q.contiguous()
        rows, nnz = dense.num_rows, dense.nnz
        max_n = max_blocks_per_row if max_blocks_per_row is not None else int(dense.lengths().max())
        bufs: dict[int, torch.Tensor] = {}
        for g in self.groups:
            for n in g.nodes:
                t = n.output
                if t is not None and t.tensor_id in self.stored:
                    lead = rows if t.format == FORMAT.BATCHED else nnz
                    bufs[t.tensor_id] = torch.empty(
                        lead * t.inner[0] * t.inner[1], dtype=torch.float32, device=q.device
                    )
        for g, k, bs in zip(self.groups, self.kernels, self.chunks, strict=True):
            if k is None:
                (score_t,) = g.nodes[0].inputs
                op = g.nodes[0].op
                assert isinstance(op, ix.topK)
                if self.score_field is not None:
                    score = fields[self.score_field].reshape(-1)[dense.indices.long()]
                else:
                    score = bufs[score_t.tensor_id]
                select_blocks(
                    score,
                    dense.indptr,
                    dense.indices,
                    selection.sel_indptr,
                    selection.bos,
                    selection.eos,
                    tolerate_ratio=op.tolerate_ratio,
                    out=out,
                    max_blocks_per_row=max_n,
                )
                continue
            args = []
            for a in k.args:
                kind, _, attr = a.source.partition(":")
                if kind == "param":  # a tensor parameter of the kernel's op (Conv1d's weight)
                    args.append(self._device_weight(getattr(g.nodes[0].op, attr), q.device))
                else:
                    args.append(self._resolve(a.source, q, fields, bufs))
            kernel = getattr(self.module, k.name)
            grid = (rows, triton_cdiv(max_n, bs)) if k.ragged else (rows,)
            kernel[grid](dense.indptr, dense.indices, *args, BS=bs, num_warps=self.num_warps)

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
