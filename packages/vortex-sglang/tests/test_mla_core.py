"""Sparse MLA decode's SGLang-independent core, driven the way SGLang drives it, against SGLang's real
``MLATokenToKVPool`` (latent buffer ``[slots, 1, kv_lora_rank + qk_rope_head_dim]``), paged allocator and
``ReqToTokenPool``, compared with the MLA reference runtime fed the same latents and absorbed queries.

Prefill writes the latents through ``set_kv_buffer`` (SGLang's triton MLA path) and summarises completed blocks
with exact counts; each decode step writes one latent per request, runs the in-graph-style masked cache update,
plans once, and per sparse layer runs indexer -> selection -> MLA attention. Per (step, layer, request) the
selected block positions must equal the reference's and the outputs must be close.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from vortex_sgl_testlib import sglang_missing_reason

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.engine.sgl.aux_store import AuxFieldStore
from vortex_torch.engine.sgl.config import VortexConfig, VortexConfigError
from vortex_torch.engine.sgl.flow_spec import prepare_flow
from vortex_torch.engine.sgl.mla_backend import absorbed_query_rows
from vortex_torch.engine.sgl.mla_core import VortexMLADecodeCore
from vortex_torch.engine.sgl.planner import count_completed_blocks
from vortex_torch.flow import build_vflow
from vortex_torch.flow.runtime import RuntimeConfig
from vortex_torch.flow.runtime.mla import MLAReferenceRuntime
from vortex_torch.kernels.sparse_decode_mla.triton_kernel import default_num_splits

pytestmark = [pytest.mark.sglang, pytest.mark.skipif(sglang_missing_reason() is not None,
                                                     reason=sglang_missing_reason() or "")]  # fmt: skip

ROOT = Path(__file__).resolve().parents[3]
FLOW = "rope_aware_block_sparse_mla"
RANK, ROPE, HEADS = 32, 16, 4
PAGE, BLOCK, LAYERS, CTX, TOPK, SKIP = 8, 4, 3, 512, 2, (0,)
SCALE = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Layer:
    def __init__(self, layer_id: int) -> None:
        self.layer_id = layer_id


def config(impl: str, tmp: Path) -> VortexConfig:
    return VortexConfig(module_name=FLOW, block_size=BLOCK, topk_val=TOPK, block_reserved_bos=1,
                        block_reserved_eos=1, layers_skip=list(SKIP), dtype="float32", impl_backend=impl,
                        compilation_cache_dir=str(tmp / "jit"))  # fmt: skip


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("impl", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
def test_mla_core_matches_reference_runtime(impl: str, kv_dtype: torch.dtype, tmp_path: Path) -> None:
    """fp8: SGLang's MLATokenToKVPool in fp8 holding ``latent / k_scale`` (its Triton MLA path's write,
    :func:`write_mla_latent` with the layer's scale); the reference runtime gets the dequantised latents."""
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool, ReqToTokenPool

    from vortex_torch.engine.sgl.mla_backend import write_mla_latent

    dtype, dev = torch.float32, "cpu"
    fp8 = kv_dtype != dtype
    k_scale = torch.tensor(0.07)

    def write(layer: int, loc: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """Write as SGLang does; returns what the cache now holds, as values (the reference's latents)."""
        write_mla_latent(pool, _Layer(layer), loc, lat[:, None], lat[:, None, :RANK], None, k_scale if fp8 else None)
        return (lat / k_scale).to(kv_dtype).float() * k_scale if fp8 else lat

    size = 60 * PAGE
    pool = MLATokenToKVPool(size, page_size=PAGE, dtype=kv_dtype, kv_lora_rank=RANK, qk_rope_head_dim=ROPE,
                            layer_num=LAYERS, device=dev, enable_memory_saver=False)  # fmt: skip
    alloc = PagedTokenToKVPoolAllocator(size, PAGE, dtype, dev, pool, need_sort=False)
    req_to_token = ReqToTokenPool(8, CTX, dev, False).req_to_token
    prepared = prepare_flow(config(impl, tmp_path), head_dim=RANK + ROPE, group_size=HEADS, kv_dtype=kv_dtype,
                            qk_rope_head_dim=ROPE)  # fmt: skip
    layout = PoolLayout(page_size=PAGE, block_size=BLOCK, num_kv_heads=1)
    layers = prepared.sparse_layers(0, LAYERS)
    aux = AuxFieldStore.attach(pool, prepared, layout, layers)
    core = VortexMLADecodeCore(prepared, layout, context_len=CTX, device=dev, kv_lora_rank=RANK)
    ref = MLAReferenceRuntime(
        build_vflow(FLOW), LAYERS, HEADS, RANK, ROPE, num_pages=80, kv_dtype=dtype, shuffle_pages_seed=5,
        config=RuntimeConfig(topk_val=TOPK, layers_skip=SKIP, block_size=BLOCK, page_size=PAGE, dtype=dtype),
    )  # fmt: skip

    scales = {"k_scale": k_scale.reshape(1), "v_scale": k_scale.reshape(1)} if fp8 else {}

    def fields(layer: int) -> dict[str, torch.Tensor]:
        return {"k": pool.get_key_buffer(layer), **aux.fields(layer), **scales}

    lens: dict[int, int] = {}
    last_page: dict[int, int] = {}

    def extend(row: int, n: int) -> torch.Tensor:
        start, page, out = lens.get(row, 0), last_page.get(row, -1), []
        for t in range(start, start + n):
            if t % PAGE == 0:
                page = int(alloc.alloc(PAGE)[0]) // PAGE
            out.append(page * PAGE + t % PAGE)
        loc = torch.tensor(out, dtype=torch.int64)
        req_to_token[row, start : start + n] = loc.to(torch.int32)
        lens[row], last_page[row] = start + n, page
        return loc

    g = torch.Generator().manual_seed(0)
    prompts = [29, 8, 45]  # partial last block, exactly two blocks, several pages
    rows = [1, 2, 3]
    for r in rows:
        ref.add_request(r)
    loc = torch.cat([extend(r, n) for r, n in zip(rows, prompts, strict=True)])
    for layer in range(LAYERS):
        lat = write(layer, loc, torch.randn(loc.numel(), RANK + ROPE, generator=g))
        if layer in layers:
            core.update_cache(fields(layer), loc, count_completed_blocks(BLOCK, [0, 0, 0], prompts))
        ref.append_latent(layer, rows, lat, prompts)

    sparse_rows = 0
    for step in range(5):
        loc = torch.cat([extend(r, 1) for r in rows])
        seq_lens = torch.tensor([lens[r] for r in rows])
        ref.reserve(rows, [1] * len(rows))
        ref_plan = ref.plan(rows)
        plan = None
        for layer in range(LAYERS):
            lat = torch.randn(len(rows), RANK + ROPE, generator=g)
            q = torch.randn(len(rows), HEADS, RANK + ROPE, generator=g)
            lat = write(layer, loc, lat)
            ref.append_latent(layer, rows, lat, [1] * len(rows))
            want = ref.decode_attention(layer, q, ref_plan, sm_scale=SCALE)
            if layer not in layers:
                continue
            if plan is None:  # the first sparse layer plans the step, as in the decode CUDA graph
                plan = core.plan(req_to_token, torch.tensor(rows), seq_lens)
            # the model hands SGLang q_nope·W_UK and q_pe apart (flashinfer MLA) or joined (triton)
            q_rows = absorbed_query_rows(q[..., :RANK].reshape(len(rows), -1), q[..., RANK:].reshape(len(rows), -1),
                                         HEADS, RANK, ROPE)  # fmt: skip
            assert torch.equal(q_rows, absorbed_query_rows(q.reshape(len(rows), -1), None, HEADS, RANK, ROPE))
            # the cache update of the blocks this step completes: folded into scoring (triton), or apart
            o = core.decode_layer(q_rows, fields(layer), plan, SCALE, new_locs=loc)
            assert core.executor.folds_cache_update == (impl == "triton")
            assert o.shape == (len(rows), HEADS, RANK)
            sel = ref.last_selection[layer]
            dptr, sptr = plan.dense_indptr.tolist(), plan.sel_indptr.tolist()
            for b in range(len(rows)):
                dense = plan.dense_indices[dptr[b] : dptr[b + 1]].tolist()
                chosen = plan.sel_indices[sptr[b] : sptr[b + 1]].tolist()
                got = [dense.index(x) for x in chosen]
                assert got == sel.row(b, 0), f"step {step}, layer {layer}, request {b}: {got} != {sel.row(b, 0)}"
                sparse_rows += len(got) < len(dense)
            torch.testing.assert_close(o, want, rtol=1e-4, atol=1e-5)
    assert sparse_rows > 0, "the test must exercise real sparsity"


def test_gqa_flow_on_an_mla_model_is_a_config_error(tmp_path: Path) -> None:
    cfg = VortexConfig(module_path=str(ROOT / "examples" / "custom_sparse_attention.py"),
                       module_name="custom_sparse_attention", block_size=BLOCK)  # fmt: skip
    with pytest.raises(VortexConfigError, match="write the flow as a vFlowMLA"):
        prepare_flow(cfg, head_dim=RANK + ROPE, group_size=HEADS, kv_dtype=torch.bfloat16, qk_rope_head_dim=ROPE)
    with pytest.raises(VortexConfigError, match="is a vFlowMLA"):
        prepare_flow(config("reference", tmp_path), head_dim=128, group_size=4, kv_dtype=torch.bfloat16)


def test_mla_workspace_and_buffers_are_sized_for_latent_rows(tmp_path: Path) -> None:
    prepared = prepare_flow(config("triton", tmp_path), head_dim=RANK + ROPE, group_size=HEADS,
                            kv_dtype=torch.float32, qk_rope_head_dim=ROPE)  # fmt: skip
    core = VortexMLADecodeCore(prepared, PoolLayout(PAGE, BLOCK, 1), context_len=CTX, device="cpu", kv_lora_rank=RANK)
    bufs = core.allocate_buffers(6)
    assert bufs.max_rows == 6 and core.mla_workspace is not None
    assert core.mla_workspace.mid_o.shape[0] == 6 and core.mla_workspace.mid_o.shape[2:] == (HEADS, RANK)

    # DeepSeek's kv_lora_rank 512: exact attention takes 16-token tiles (fast: 64), so more splits; the scratch
    # has room for both, since exact_attention may be switched after allocation
    cfg = dataclasses.replace(config("triton", tmp_path), topk_val=30)  # 32 blocks of 4 tokens attended
    wide = prepare_flow(cfg, head_dim=512 + 64, group_size=HEADS, kv_dtype=torch.float32, qk_rope_head_dim=64)
    core = VortexMLADecodeCore(wide, PoolLayout(PAGE, BLOCK, 1), context_len=4096, device="cpu", kv_lora_rank=512)
    core.allocate_buffers(1)
    cpu = torch.device("cpu")
    splits = [default_num_splits(1, HEADS, core.max_selected_per_row, BLOCK, 512, cpu, x) for x in (False, True)]
    assert splits[0] < splits[1]
    assert core.mla_workspace is not None and core.mla_workspace.fits(1, splits[1], HEADS, 512)
    with pytest.raises(ValueError, match="one latent head"):
        VortexMLADecodeCore(prepared, PoolLayout(PAGE, BLOCK, 2), context_len=CTX, device="cpu", kv_lora_rank=RANK)


# -- ServerArgs on a DeepSeek-V2 (MLA) model -----------------------------------------------------------------------------
TINY_DEEPSEEK_V2 = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 1024, "hidden_size": 512,
    "intermediate_size": 1024, "moe_intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 8,
    "num_key_value_heads": 8, "n_shared_experts": 1, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128, "v_head_dim": 128, "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


def test_server_args_on_an_mla_model(sgl: object, tmp_path: Path) -> None:
    """An MLA model resolves to MLA geometry (one latent head, 512 + 64, 8 heads); a vFlowMLA is accepted, a vFlow
    is refused naming module_name and the fix, before any GPU memory."""
    import json

    from vortex_torch.engine.sgl import server_rules

    (tmp_path / "config.json").write_text(json.dumps(TINY_DEEPSEEK_V2))
    kw = dict(model_path=str(tmp_path), device="cpu", skip_tokenizer_init=True, attention_backend="triton")
    sa = sgl.ServerArgs(**kw, vortex={"module_name": FLOW, "topk_val": 8, "attention_backend": "triton"})  # type: ignore[attr-defined]
    geo = server_rules.model_geometry(sa)
    assert (geo.num_kv_heads, geo.group_size, geo.head_dim, geo.qk_rope_head_dim) == (1, 8, 576, 64)
    with pytest.raises(VortexConfigError, match=r"module_name.*write the flow as a vFlowMLA"):
        sgl.ServerArgs(**kw, vortex={"module_name": "block_sparse_attention", "attention_backend": "triton"})  # type: ignore[attr-defined]
