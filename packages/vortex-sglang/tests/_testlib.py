"""Constants and helpers shared by the vortex-sglang tests (``conftest.py`` registers this module as
``vortex_sgl_testlib``, so test modules can import it under ``--import-mode=importlib``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.engine.sgl.aux_store import AuxFieldStore
from vortex_torch.engine.sgl.config import VortexConfig
from vortex_torch.engine.sgl.decode_core import VortexDecodeCore
from vortex_torch.engine.sgl.flow_spec import prepare_flow
from vortex_torch.engine.sgl.planner import DecodePlan, count_completed_blocks
from vortex_torch.flow import build_vflow
from vortex_torch.flow.runtime import ReferenceRuntime, RuntimeConfig

ROOT = Path(__file__).resolve().parents[3]
FLOW_FILE = ROOT / "examples" / "custom_sparse_attention.py"
FLOW_NAME = "custom_sparse_attention"

#: the tiny Qwen3 shape of tools/device/mk_tiny.py's "tiny" preset (only config.json is needed on the CPU)
TINY_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def sglang_missing_reason() -> str | None:
    """Why the ``sglang`` tests cannot run here, or None."""
    if importlib.util.find_spec("sglang") is None:
        return (
            "sglang is not installed: tools/setup.sh installs its Python side into .venv "
            "(PYTHON=... bash tools/install_sglang_cpu.sh for another interpreter)"
        )
    try:
        found = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return "sglang is importable but has no distribution metadata"
    if found != "0.5.17":
        return f"vortex-sglang targets sglang 0.5.17, found {found}"
    return None


def budget_policy(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    """A ``schedule_policy``: the docs' example, more blocks for longer rows, capped at 256."""
    return torch.clamp(topk_val + bos + eos + n // 64, max=256)


# -- a small model played on SGLang's side and on the reference runtime (test_decode_core, test_backend) -----------
LAYERS, H_KV, GROUP, DIM = 3, 2, 2, 32
PAGE, BLOCK = 8, 4
SKIP = (0,)
TOPK, BOS, EOS = 2, 1, 1
CTX = 256


class NativePool:
    """SGLang's side: K/V buffers ``[slots, H_kv, D]`` per layer, pages, ``req_to_token``. An fp8 ``dtype`` stores
    ``k / k_scale`` and ``v / v_scale`` as SGLang's ``set_kv_buffer`` does (``kv_scales``)."""

    def __init__(
        self, kind: str, num_pages: int, dtype: torch.dtype, device: str = "cpu",
        kv_scales: tuple[float, float] | None = None,
    ) -> None:  # fmt: skip
        self.kind = kind
        self.dtype = dtype
        self.kv_scales = kv_scales
        size = (num_pages - 1) * PAGE  # page 0 is the padding page, as in SGLang
        if kind == "sglang":
            from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
            from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool

            self.pool = MHATokenToKVPool(size, page_size=PAGE, dtype=dtype, head_num=H_KV, head_dim=DIM,
                                         layer_num=LAYERS, device=device, enable_memory_saver=False)  # fmt: skip
            self.allocator = PagedTokenToKVPoolAllocator(
                size, PAGE, dtype, device, self.pool, need_sort=False
            )
            self.req_to_token = ReqToTokenPool(8, CTX, device, False).req_to_token
        else:
            self.k = [torch.zeros(size + PAGE, H_KV, DIM, dtype=dtype, device=device) for _ in range(LAYERS)]
            self.v = [torch.zeros_like(t) for t in self.k]
            g = torch.Generator().manual_seed(7)
            self.free = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()
            self.req_to_token = torch.zeros(9, CTX, dtype=torch.int32, device=device)
        self.device = device
        self.num_slots = size + PAGE
        self.lens: dict[int, int] = {}
        self.last_page: dict[int, int] = {}

    def new_page(self) -> int:
        if self.kind == "sglang":
            return int(self.allocator.alloc(PAGE)[0]) // PAGE
        return self.free.pop()

    def extend(self, row: int, n: int) -> torch.Tensor:
        """Allocate the next ``n`` slots of request row ``row`` (pages as SGLang's paged allocator gives)."""
        start = self.lens.get(row, 0)
        page = self.last_page.get(row, -1)
        out = []
        for t in range(start, start + n):
            if t % PAGE == 0:
                page = self.new_page()
            out.append(page * PAGE + t % PAGE)
        loc = torch.tensor(out, dtype=torch.int64, device=self.device)
        self.req_to_token[row, start : start + n] = loc.to(torch.int32)
        self.lens[row], self.last_page[row] = start + n, page
        return loc

    def share_prefix(self, src: int, dst: int, n: int) -> None:
        """Radix-cache hit: ``dst`` starts with ``src``'s first ``n`` slots (whole pages)."""
        assert n % PAGE == 0
        self.req_to_token[dst, :n] = self.req_to_token[src, :n]
        self.lens[dst] = n

    def write(self, layer: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        ks, vs = self.kv_scales or (None, None)
        if self.kind == "sglang":  # set_kv_buffer divides its inputs in place: give it copies
            self.pool.set_kv_buffer(_Layer(layer), loc, k.clone(), v.clone(), ks, vs)
        elif self.dtype != k.dtype:  # what MHATokenToKVPool.set_kv_buffer does
            self.k[layer][loc] = (k / (ks or 1.0)).to(self.dtype)
            self.v[layer][loc] = (v / (vs or 1.0)).to(self.dtype)
        else:
            self.k[layer][loc] = k
            self.v[layer][loc] = v

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "sglang":
            return self.pool.get_key_buffer(layer), self.pool.get_value_buffer(layer)
        return self.k[layer], self.v[layer]


class _Layer:
    def __init__(self, layer_id: int) -> None:
        self.layer_id = layer_id


def positions_of(plan: DecodePlan, ids: torch.Tensor) -> list[list[int]]:
    """Per-row positions of the selected block ids, through the plan's dense lists."""
    dense = plan.dense_blocks_with_row_index()
    indptr, indices, sel_ptr, sel = (t.cpu() for t in (dense.indptr, dense.indices, plan.sel_indptr, ids))
    out = []
    for r in range(plan.num_rows):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        where = {int(b): j for j, b in enumerate(indices[lo:hi].tolist())}
        out.append([where[int(b)] for b in sel[int(sel_ptr[r]) : int(sel_ptr[r + 1])].tolist()])
    return out


class Scenario:
    """Both sides of the comparison, fed the same random tensors (see the module doc)."""

    def __init__(
        self, kind: str, impl: str, prompts: list[int], tmp: Path, device: str = "cpu",
        kv_dtype: torch.dtype = torch.float32,
    ) -> None:  # fmt: skip
        self.dtype = torch.float32  # q, and the oracle's K/V (the dequantised cache when kv_dtype is fp8)
        self.kv_dtype = kv_dtype
        #: fp8: SGLang's per-layer scales (stored = value / scale), different for K and V
        self.kv_scales = (0.05, 0.08) if kv_dtype != self.dtype else None
        self.device = device
        cfg = VortexConfig(module_path=str(FLOW_FILE), module_name=FLOW_NAME, block_size=BLOCK, topk_val=TOPK,
                           block_reserved_bos=BOS, block_reserved_eos=EOS, layers_skip=list(SKIP), dtype="float32",
                           impl_backend=impl, compilation_cache_dir=str(tmp / "jit"))  # fmt: skip
        self.prepared = prepare_flow(cfg, head_dim=DIM, group_size=GROUP, kv_dtype=kv_dtype)
        self.layout = PoolLayout(page_size=PAGE, block_size=BLOCK, num_kv_heads=H_KV)
        self.pool = NativePool(kind, num_pages=80, dtype=kv_dtype, device=device, kv_scales=self.kv_scales)
        self.sparse_layers = self.prepared.sparse_layers(0, LAYERS)
        self.aux = AuxFieldStore(self.prepared, self.layout, self.pool.num_slots, self.sparse_layers, device)
        self.core = VortexDecodeCore(self.prepared, self.layout, context_len=CTX, device=device)
        self.rt = ReferenceRuntime(
            build_vflow(FLOW_NAME, str(FLOW_FILE)), num_layers=LAYERS, num_kv_heads=H_KV, head_dim=DIM,
            group_size=GROUP, num_pages=80, kv_dtype=self.dtype, shuffle_pages_seed=3,
            config=RuntimeConfig(topk_val=TOPK, block_reserved_bos=BOS, block_reserved_eos=EOS, layers_skip=SKIP,
                                 block_size=BLOCK, page_size=PAGE, dtype=self.dtype),
        )  # fmt: skip
        self.gen = torch.Generator().manual_seed(0)
        self.rows = list(range(1, len(prompts) + 1))  # req_to_token rows (row 0 is SGLang's padding row)
        self.prompts = prompts
        self.sparse_rows = 0

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=self.dtype)

    def fields(self, layer: int) -> dict[str, torch.Tensor]:
        k, v = self.pool.kv(layer)
        out = {"k": k, "v": v, **self.aux.fields(layer)}
        if self.kv_scales is not None:
            ks, vs = self.kv_scales
            out["k_scale"] = torch.tensor([ks], dtype=torch.float32, device=self.device)
            out["v_scale"] = torch.tensor([vs], dtype=torch.float32, device=self.device)
        return out

    def dequantised(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the SGLang side's cache holds for ``k``/``v``, as values: the oracle's K/V."""
        if self.kv_scales is None:
            return k, v
        ks, vs = self.kv_scales
        return (k / ks).to(self.kv_dtype).float() * ks, (v / vs).to(self.kv_dtype).float() * vs

    def prefill(self) -> None:
        """One extend batch of all prompts, then a radix-cache hit on two pages of the third request."""
        loc = torch.cat([self.pool.extend(r, n) for r, n in zip(self.rows, self.prompts, strict=True)])
        for rid in self.rows:
            self.rt.add_request(rid)
        kv_log = {}
        for layer in range(LAYERS):
            k, v = self.rand(loc.numel(), H_KV, DIM), self.rand(loc.numel(), H_KV, DIM)
            self.extend_layer(
                layer, loc, k.to(self.device), v.to(self.device), [0] * len(self.prompts), self.prompts
            )
            self.rt.append_kv(layer, self.rows, *self.dequantised(k, v), self.prompts)
            kv_log[layer] = list(zip(k.split(self.prompts), v.split(self.prompts), strict=True))

        src, shared, extra = self.rows[min(2, len(self.rows) - 1)], 2 * PAGE, 11
        assert self.prompts[self.rows.index(src)] >= shared
        new = len(self.rows) + 1
        self.pool.share_prefix(src, new, shared)
        new_loc = self.pool.extend(new, extra)
        self.rt.add_request(new)
        for layer in range(LAYERS):
            k_src, v_src = kv_log[layer][self.rows.index(src)]
            k_new, v_new = self.rand(extra, H_KV, DIM), self.rand(extra, H_KV, DIM)
            # only the new tokens are computed and written; the shared pages keep their K/V and summaries
            self.extend_layer(layer, new_loc, k_new.to(self.device), v_new.to(self.device), [shared], [extra])
            k_all, v_all = self.dequantised(
                torch.cat([k_src[:shared], k_new]), torch.cat([v_src[:shared], v_new])
            )
            self.rt.append_kv(layer, [new], k_all, v_all, [shared + extra])
        self.rows.append(new)

    def extend_layer(
        self,
        layer: int,
        loc: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        prefix: list[int],
        extend: list[int],
    ) -> None:
        """One layer of an extend batch on the SGLang side: write K/V, summarise the completed blocks."""
        self.pool.write(layer, loc, k, v)
        if layer in self.sparse_layers:
            self.core.update_cache(
                self.fields(layer), loc, count=count_completed_blocks(BLOCK, prefix, extend)
            )

    def next_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Allocate this step's slots (both sides) -> ``(loc [B], seq_lens [B], rows [B])`` on the device."""
        loc = torch.cat([self.pool.extend(r, 1) for r in self.rows])
        self.rt.reserve(self.rows, [1] * len(self.rows))
        seq_lens = torch.tensor([self.pool.lens[r] for r in self.rows], device=self.device)
        return loc, seq_lens, torch.tensor(self.rows, device=self.device)

    def layer_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        b = len(self.rows)
        return [
            (self.rand(b, H_KV * GROUP, DIM), self.rand(b, H_KV, DIM), self.rand(b, H_KV, DIM))
            for _ in range(LAYERS)
        ]

    def reference_step(self, inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[int, Any]:
        """The oracle's decode step: ``{sparse layer: (o [B, H_q, D], positions, scores per row)}``."""
        plan = self.rt.plan(self.rows)
        out = {}
        for layer, (q, k, v) in enumerate(inputs):
            self.rt.append_kv(layer, self.rows, *self.dequantised(k, v), [1] * len(self.rows))
            if layer in self.sparse_layers:
                o = self.rt.decode_attention(layer, q, plan=plan)
                score, _ = self.rt.executor.evaluate(
                    q.reshape(-1, GROUP, DIM), self.rt.pool.fields(layer), plan.dense
                )
                ptr = plan.dense.indptr.tolist()
                scores = [score[ptr[r] : ptr[r + 1]].tolist() for r in range(len(ptr) - 1)]
                out[layer] = (o, self.rt.last_selection[layer].positions, scores, plan)
        return out

    def check(
        self,
        step: int,
        layer: int,
        plan: DecodePlan,
        o: torch.Tensor,
        ref: Any,
        *,
        ties: bool,
        sel: torch.Tensor | None = None,
    ) -> None:
        """Layer ``layer``'s selection (``sel``, default the plan's buffer, which the next layer overwrites) and
        output against the reference runtime's."""
        ro, want, scores, rplan = ref
        assert torch.equal(plan.budget.cpu(), rplan.budget)
        got = positions_of(plan, plan.sel_indices if sel is None else sel)
        for r, (g, w) in enumerate(zip(got, want, strict=True)):
            if g == w:
                continue
            assert ties, f"step {step} layer {layer} row {r}: {g} != {w}"
            k = len(w) - BOS - EOS  # every chosen middle block must score within a tie of the k-th best
            middle = sorted(scores[r][BOS : len(scores[r]) - EOS], reverse=True)
            kth = middle[k - 1]
            assert all(scores[r][j] >= kth - 1e-3 * (1 + abs(kth)) for j in g[BOS : len(g) - EOS]), (
                f"step {step} layer {layer} row {r}: selected {g}, reference {w}; reference scores "
                f"{[round(x, 4) for x in scores[r]]}"
            )
        self.sparse_rows += sum(
            int(b) < int(n) for b, n in zip(rplan.budget, rplan.dense.lengths(), strict=True)
        )
        if got == want:
            torch.testing.assert_close(o.reshape(len(self.rows), -1, DIM).cpu(), ro, atol=2e-5, rtol=2e-5)


def scattered_requests(
    layout: PoolLayout, seq_lens: list[int], max_ctx: int, num_pages: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A ``req_to_token`` whose requests own shuffled pages (page 0 never used, as in SGLang), the batch's
    ``req_pool_indices`` (rows in a shuffled order too) and each request's slots."""
    g = torch.Generator().manual_seed(seed)
    pages = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()
    rows = (torch.randperm(len(seq_lens) + 3, generator=g)[: len(seq_lens)] + 1).tolist()
    req_to_token = torch.zeros(len(seq_lens) + 4, max_ctx, dtype=torch.int32)
    slots_of = []
    for row, n in zip(rows, seq_lens, strict=True):
        own = [pages.pop() for _ in range(-(-n // layout.page_size))]
        t = torch.arange(n)
        slots = torch.tensor(own)[t // layout.page_size] * layout.page_size + t % layout.page_size
        req_to_token[row, :n] = slots.to(torch.int32)
        slots_of.append(slots)
    return req_to_token, torch.tensor(rows, dtype=torch.int64), slots_of
