"""Sparse MLA decode inside SGLang on a tiny random-weight DeepSeek-V2 (``mk_tiny.py --preset deepseek-v2-tiny``:
latent 512 + 64, 8 heads, 3 layers, dense first layer then experts), on SGLang's two MLA decode paths.

The model is ``$VORTEX_TINY_MLA_MODEL`` when set, else built here once (CPU init, seconds, no network).

* full budget (every block of every row selected) => greedy tokens equal plain SGLang's, on ``triton`` and
  ``flashinfer`` (up to near-ties: Vortex's MLA kernel keeps softmax weights fp32, the base kernels do not);
* sparse budget, CUDA graph == eager (the in-graph plan and cache update replay correctly);
* ``sparse_decode_min_tokens`` crossed while decoding (dense steps, then full budget) => plain SGLang's tokens;
* sparse budget, SGLang == the CPU reference runtime: the same checkpoint greedy-decoded by Hugging Face through
  absorbed MLA over ``MLAReferenceRuntime`` with the same flow and budget (``greedy_generate_mla``) gives the same
  tokens (up to near-ties), i.e. the selections SGLang made are the reference's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vortex_gpu_harness import ROOT, Gen, assert_all_close, engine, generate, prompts, skip_reason

pytestmark = [pytest.mark.gpu, pytest.mark.sglang]

FLOW = "rope_aware_block_sparse_mla"
LENGTHS = [37, 300, 700, 1500, 16, 1100]
SPARSE = {"module_name": FLOW, "topk_val": 8, "layers_skip": [0], "block_reserved_bos": 1, "block_reserved_eos": 1}
FULL = {"module_name": FLOW, "topk_val": 1 << 20}
MAX_NEW = 16


def _skip() -> str | None:
    reason = skip_reason()
    if reason is not None and "VORTEX_TINY_MODEL" not in reason:
        return reason
    return None


@pytest.fixture(scope="module")
def mla_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    reason = _skip()
    if reason:
        pytest.skip(reason)
    given = os.environ.get("VORTEX_TINY_MLA_MODEL")
    if given and (Path(given) / "config.json").is_file():
        return given
    out = tmp_path_factory.mktemp("dsv2") / "dsv2-tiny"
    subprocess.run([sys.executable, str(ROOT / "tools" / "device" / "mk_tiny.py"), "--preset", "deepseek-v2-tiny",
                    "--device", "cpu", str(out)], check=True)  # fmt: skip
    return str(out)


def run(model: str, backend: str, vortex: dict[str, Any] | None, batch: list[list[int]], **kw: Any) -> list[Gen]:
    extra: dict[str, Any] = {"vortex": {**vortex, "attention_backend": backend}} if vortex else {}
    with engine(model_path=model, attention_backend=backend, page_size=16, disable_overlap_schedule=True,
                **extra, **kw) as eng:  # fmt: skip
        return generate(eng, batch, max_new=MAX_NEW)


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_full_budget_greedy_equals_plain_sglang(mla_model: str, backend: str) -> None:
    batch = prompts(LENGTHS)
    plain = run(mla_model, backend, None, batch)
    vortex = run(mla_model, backend, FULL, batch)
    assert_all_close(plain, vortex, f"MLA full budget vs plain SGLang ({backend})")


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_sparse_cuda_graph_equals_eager(mla_model: str, backend: str) -> None:
    batch = prompts(LENGTHS[:4], seed=3)
    graph = run(mla_model, backend, SPARSE, batch)
    eager = run(mla_model, backend, SPARSE, batch, disable_cuda_graph=True)
    assert_all_close(eager, graph, f"MLA sparse CUDA graph vs eager ({backend})")


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_dense_steps_below_the_threshold_then_sparse(mla_model: str, backend: str) -> None:
    """``sparse_decode_min_tokens`` on SGLang's MLA paths: the batch's first 8 steps (below 2570 tokens in all)
    run SGLang's own MLA decode from their own CUDA graphs (three per batch size, the FlashInfer MLA wrappers
    kept per step mode), the rest Vortex's at full budget: greedy tokens as plain SGLang's."""
    batch = prompts(LENGTHS[:4], seed=5)  # 2537 tokens in all, 4 more per step: the batch crosses 2570
    plain = run(mla_model, backend, None, batch)
    crossing = run(mla_model, backend, {**FULL, "sparse_decode_min_tokens": 2570}, batch)
    assert_all_close(plain, crossing, f"MLA dense below 2570 tokens then full budget vs plain SGLang ({backend})")


def test_sparse_sglang_equals_reference_runtime(mla_model: str) -> None:
    """Same checkpoint, same flow and budget: SGLang (triton MLA) and the CPU reference runtime decode alike."""
    import torch
    from transformers import AutoModelForCausalLM

    from vortex_torch.flow import build_vflow
    from vortex_torch.flow.runtime import RuntimeConfig
    from vortex_torch.flow.runtime.hf_mla import greedy_generate_mla, mla_runtime_for_model

    batch = prompts([300, 700, 1100], seed=7)
    got = run(mla_model, "triton", SPARSE, batch, disable_cuda_graph=True)
    model = AutoModelForCausalLM.from_pretrained(mla_model, dtype=torch.bfloat16, attn_implementation="eager").cuda()
    cfg = RuntimeConfig(topk_val=8, layers_skip=(0,), block_size=16, page_size=16, dtype=torch.bfloat16)
    rt = mla_runtime_for_model(model.eval(), build_vflow(FLOW), cfg, num_pages=512, device="cuda")
    ref_tokens = greedy_generate_mla(model, rt, batch, MAX_NEW)
    ref = [Gen(t, [0.0] * len(t), [1.0] * len(t), 0, "") for t in ref_tokens]
    # no log-probs on the reference side: tokens must agree until SGLang itself saw a near-tie
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        same = next((j for j, (a, b) in enumerate(zip(r.tokens, g.tokens, strict=True)) if a != b), len(r.tokens))
        near_tie = same < len(r.tokens) and same < len(g.top2_gap) and g.top2_gap[same] < 0.15
        assert same == len(r.tokens) or near_tie, f"prompt {i}: SGLang {g.tokens} vs reference {r.tokens}"
