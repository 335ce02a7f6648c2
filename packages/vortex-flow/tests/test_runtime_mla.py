"""The MLA reference runtime, ``vortex check`` on MLA flows, and a tiny random-weight DeepSeek-V2 (transformers)
greedy-decoding through absorbed MLA attention over the latent cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch.abs.errors import FlowRuleError
from vortex_torch.flow import vFlowMLA
from vortex_torch.flow.runtime import RuntimeConfig, measure_flow, run_synthetic
from vortex_torch.flow.runtime.mla import MLAReferenceRuntime

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "custom_sparse_attention.py"

MLA_FLOW = '''
from vortex_torch.flow import vFlowMLA, register
from vortex_torch import indexer as I
from vortex_torch import cache as C


@register("test_mla_centroid")
class MLACentroid(vFlowMLA):
    """Test MLA flow: <mean absorbed query, mean latent>."""

    def __init__(self):
        super().__init__()
        self.mean = I.Mean(dim=1)
        self.gemm = I.GeMM()
        self.topk = I.topK()
        self.cmean = C.Mean(dim=1)

    def forward_indexer(self, q, o, cache, ctx):
        self.topk(self.gemm(self.mean(q, ctx=ctx), cache["centroids"], ctx=ctx), o, ctx=ctx)

    def forward_cache(self, cache, loc, ctx):
        self.cmean(cache["latent"], cache["centroids"], loc=loc, ctx=ctx)

    def create_cache(self, block_size, kv_lora_rank, qk_rope_head_dim):
        return {"centroids": (1, kv_lora_rank + qk_rope_head_dim)}
'''


@pytest.fixture(scope="module")
def flow_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mla") / "mla_centroid.py"
    path.write_text(MLA_FLOW)
    return path


def make_flow(flow_path: Path) -> vFlowMLA:
    from vortex_torch.flow import build_vflow, registry

    with registry.isolated():
        flow = build_vflow("test_mla_centroid", str(flow_path))
    assert isinstance(flow, vFlowMLA)
    return flow


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the runtime ---------------------------------------------------------------------------------------------------
def test_full_budget_is_dense_and_a_small_budget_is_not(flow_path: Path) -> None:
    lengths = [70, 16, 5]  # several pages, exactly one block, shorter than a block
    full = run_synthetic(
        make_flow(flow_path), lengths, 3, num_layers=2, head_dim=48, group_size=4, qk_rope_head_dim=16,
        config=RuntimeConfig(topk_val=100, block_size=4, page_size=8), shuffle_pages_seed=1,
    )  # fmt: skip
    rt = full.runtime
    assert isinstance(rt, MLAReferenceRuntime) and rt.kv_fields == ("k",) and rt.num_kv_heads == 1
    assert rt.kv_lora_rank == 32 and rt.latent_dim == 48
    for outs, dense in zip(full.outputs, full.dense_outputs, strict=True):
        for o, od in zip(outs, dense, strict=True):
            assert o.shape == (3, 4, 32)  # [B, H_q, kv_lora_rank]
            torch.testing.assert_close(o, od, rtol=0, atol=0)
    sparse = run_synthetic(
        make_flow(flow_path), lengths, 3, num_layers=2, head_dim=48, group_size=4, qk_rope_head_dim=16,
        config=RuntimeConfig(topk_val=1, block_size=4, page_size=8),
    )  # fmt: skip
    o, od = sparse.outputs[-1][1], sparse.dense_outputs[-1][1]
    assert not torch.allclose(o[0], od[0])  # row 0 keeps 3 of 19 blocks
    sel = sparse.selections[-1][1]
    assert len(sel.row(0, 0)) == 3 and sel.row(0, 0)[0] == 0 and sel.row(0, 0)[-1] == 18


def test_reference_matches_dense_latent_attention(flow_path: Path) -> None:
    """Dense MLA attention over the pool == softmax(q · latentᵀ · scale) · kv_c over the written latents."""
    rt = MLAReferenceRuntime(make_flow(flow_path), 1, 3, 24, 8, RuntimeConfig(block_size=4, page_size=8), 16,
                             torch.float32, shuffle_pages_seed=3)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    rt.add_request("a")
    lat = torch.randn(13, 32, generator=g)
    rt.append_latent(0, ["a"], lat, [13])
    torch.testing.assert_close(rt.gather_latent(0, "a"), lat)
    plan = rt.plan(["a"])
    q = torch.randn(1, 3, 32, generator=g)
    want = torch.softmax(q[0] @ lat.T * 0.25, -1) @ lat[:, :24]
    torch.testing.assert_close(rt.dense_attention(0, q, plan, sm_scale=0.25)[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="latent must be"):
        rt.append_latent(0, ["a"], torch.randn(1, 31), [1])


def test_triton_attention_and_compiled_executor_match_the_reference(flow_path: Path) -> None:
    from vortex_torch.flow.compiler.triton_executor import TritonExecutor

    kw: dict[str, Any] = dict(num_layers=1, head_dim=40, group_size=5, qk_rope_head_dim=8, seed=2)
    lengths = [45, 9, 33]
    ref = run_synthetic(make_flow(flow_path), lengths, 2, config=RuntimeConfig(topk_val=2, block_size=4, page_size=8),
                        **kw)  # fmt: skip
    fast = run_synthetic(
        make_flow(flow_path), lengths, 2, attention="triton",
        config=RuntimeConfig(topk_val=2, block_size=4, page_size=8, executor=lambda t, lay: TritonExecutor(t, lay)),
        **kw,
    )  # fmt: skip
    for step in range(2):
        assert ref.selections[step][0].positions == fast.selections[step][0].positions
        torch.testing.assert_close(fast.outputs[step][0], ref.outputs[step][0], rtol=1e-4, atol=1e-5)


def test_gqa_flow_on_the_mla_runtime_is_a_flow_rule_error() -> None:
    from vortex_torch.flow import build_vflow, registry

    with registry.isolated():
        flow = build_vflow("custom_sparse_attention", str(EXAMPLE))
    with pytest.raises(FlowRuleError, match="write the flow as a vFlowMLA"):
        MLAReferenceRuntime(flow, 1, 4, 32, 16, RuntimeConfig(), 8)


def test_measure_flow_finds_needles_in_the_latent(flow_path: Path) -> None:
    m = measure_flow(make_flow(flow_path), (2048, 4096), 1 / 16, head_dim=576, group_size=16, qk_rope_head_dim=64)
    assert m["mla"] is True and m["num_kv_heads"] == 1
    assert m["needle_recall"] == 1.0
    assert m["pages_selected"] == (2048 + 4096) // 16 // 16


# -- vortex check -------------------------------------------------------------------------------------------------------
def test_vortex_check_detects_an_mla_flow(flow_path: Path, tmp_path: Path) -> None:
    exe = shutil.which("vortex", path=str(Path(sys.executable).parent))
    assert exe
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    proc = subprocess.run(
        [exe, "check", str(flow_path), "--contexts", "4096", "--kv-lora-rank", "128", "--qk-rope-head-dim", "32",
         "--mla-heads", "8", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], proc.stdout + proc.stderr
    assert report["mla"] is True and report["head_dim"] == 160 and report["group_size"] == 8
    assert report["kv_heads"] == 1 and report["compiled_ok"] and report["needle_recall"] == 1.0
    assert report["pages_selected"] == 4096 // 16 // 16  # one latent head: one row per request


# -- a tiny DeepSeek-V2 (transformers) -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deepseek() -> Any:
    pytest.importorskip("transformers")
    from vortex_torch.flow.runtime.hf_mla import make_tiny_deepseek_v2

    return make_tiny_deepseek_v2(seed=0)


PROMPTS = [[5, 17, 99, 3, 250, *range(60, 90)], [1, 2, 3], list(range(200, 216))]


def test_deepseek_v2_full_budget_greedy_equals_dense(deepseek: Any, flow_path: Path) -> None:
    from vortex_torch.flow.runtime.hf import hf_greedy_reference
    from vortex_torch.flow.runtime.hf_mla import greedy_generate_mla, mla_runtime_for_model

    rt = mla_runtime_for_model(
        deepseek, make_flow(flow_path), RuntimeConfig(topk_val=1000, block_size=4, page_size=8),
        keep_selection_log=True,
    )  # fmt: skip
    assert (rt.num_layers, rt.group_size, rt.kv_lora_rank, rt.qk_rope_head_dim) == (3, 4, 64, 16)
    got = greedy_generate_mla(deepseek, rt, PROMPTS, 6)
    want = hf_greedy_reference(deepseek, PROMPTS, 6)
    assert got == want
    assert rt.selection_log and all(not s.dense for s in rt.selection_log)  # the flow ran in every layer
    assert rt.pool.requests() == []  # released


def test_deepseek_v2_sparse_budget_selects_per_budget(deepseek: Any, flow_path: Path) -> None:
    from vortex_torch.flow.runtime.hf_mla import greedy_generate_mla, mla_runtime_for_model

    rt = mla_runtime_for_model(
        deepseek, make_flow(flow_path), RuntimeConfig(topk_val=1, block_size=4, page_size=8, layers_skip=(0,)),
        keep_selection_log=True,
    )  # fmt: skip
    out = greedy_generate_mla(deepseek, rt, PROMPTS[:1], 4)
    assert len(out[0]) == 4
    sparse = [s for s in rt.selection_log if not s.dense]
    assert sparse and all(len(s.row(0, 0)) == 3 for s in sparse)  # bos + 1 + eos of ~10 blocks
    assert any(s.dense for s in rt.selection_log)  # layer 0 is dense
