"""Vortex inside SGLang with an fp8 KV cache (``kv_cache_dtype="fp8_e4m3"`` / ``"fp8_e5m2"``), tiny Qwen3.

1. Full budget => plain SGLang with the same fp8 cache. Two engines per setting, one after the other (stock
   SGLang, then SGLang + Vortex with a budget larger than any row), the workloads of
   ``test_sglang_dense_equivalence``: a mixed batch of 6 (eager decode), a batch of 3 (CUDA-graph decode), a
   radix-cache hit. Settings:

   * ``fp8_e4m3-flashinfer-exact`` (strict): FlashInfer's own fp8 decode over the selected tokens, as plain SGLang
     calls it (``kv_data_type`` fp8, ``k_scale``/``v_scale``): every token identical, log-probs within 1e-3;
   * ``fp8_e4m3-triton``, ``fp8_e5m2-triton``: Vortex's Triton kernel reads the fp8 blocks and dequantises in
     registers; SGLang's kernel sums in another order, so a near-tie (top-2 gap < 0.15) may flip.

2. Sparse (the quick start's 32-block budget, triton, fp8_e4m3) with ``VORTEX_DEBUG_DUMP``: every dumped step is
   replayed on the host by the reference executor over the dequantised cache (``stored * scale``): aux fields
   recomputed from the fp8 K/V, the selection (ties aside) and the attention output over the chosen blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from vortex_gpu_harness import (
    FULL_BUDGET_VORTEX,
    MIXED_LENGTHS,
    QUICKSTART_VORTEX,
    Gen,
    ScenarioCache,
    assert_all_close,
    assert_full_budget_matches,
    assert_replays_clean,
    engine,
    fresh_dir,
    generate,
    prompts,
    skip_reason,
    with_shared_prefix,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

GRAPH_MAX_BS = 4
DUMP_STEPS = 8


@dataclass(frozen=True)
class Setting:
    backend: str
    kv_cache_dtype: str
    strict: bool
    logprob_atol: float
    exact_attention: bool = False


SETTINGS = {
    "fp8_e4m3-flashinfer-exact": Setting(
        "flashinfer", "fp8_e4m3", strict=True, logprob_atol=1e-3, exact_attention=True
    ),
    "fp8_e4m3-triton": Setting("triton", "fp8_e4m3", strict=False, logprob_atol=0.15),
    "fp8_e5m2-triton": Setting("triton", "fp8_e5m2", strict=False, logprob_atol=0.15),
}


def workloads(eng: Any) -> dict[str, list[Gen]]:
    mixed = prompts(MIXED_LENGTHS)
    out = {"mixed": generate(eng, mixed)}  # bs 6 > 4: eager decode
    out["small"] = generate(eng, mixed[1:4])  # bs 3: CUDA-graph decode
    out["prefix"] = generate(eng, [with_shared_prefix(mixed[3], 1024, 200)])
    return out


def run(setting: Setting, vortex: bool) -> dict[str, list[Gen]]:
    kwargs: dict[str, Any] = {
        "attention_backend": setting.backend,
        "kv_cache_dtype": setting.kv_cache_dtype,
        "page_size": 16,
        "disable_overlap_schedule": True,
        "cuda_graph_max_bs_decode": GRAPH_MAX_BS,
    }
    if vortex:
        kwargs["vortex"] = {
            **FULL_BUDGET_VORTEX, "attention_backend": setting.backend, "exact_attention": setting.exact_attention,
        }  # fmt: skip
    else:
        kwargs["disable_prefill_cuda_graph"] = True  # the same prefill path as under Vortex
    with engine(**kwargs) as eng:
        return workloads(eng)


_RUNS = ScenarioCache()
for _name, _setting in SETTINGS.items():
    _RUNS.runs[f"{_name}/plain"] = lambda s=_setting: run(s, vortex=False)
    _RUNS.runs[f"{_name}/vortex"] = lambda s=_setting: run(s, vortex=True)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_fp8_full_budget_matches_plain_sglang(name: str) -> None:
    setting = SETTINGS[name]
    plain, full = _RUNS.get(f"{name}/plain"), _RUNS.get(f"{name}/vortex")
    assert_full_budget_matches(name, plain, full, logprob_atol=setting.logprob_atol, strict=setting.strict)
    assert full["prefix"][0].cached_tokens >= 1024


@pytest.fixture(scope="module")
def sparse_fp8_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vortex_torch.engine.sgl.debug_dump import DUMP_ENV, DUMP_STEPS_ENV

    dump_dir = fresh_dir(tmp_path_factory.mktemp("vortex_fp8") / "dump")
    os.environ[DUMP_ENV], os.environ[DUMP_STEPS_ENV] = str(dump_dir), str(DUMP_STEPS)
    mixed = prompts(MIXED_LENGTHS)
    try:
        with engine(
            attention_backend="triton", kv_cache_dtype="fp8_e4m3", page_size=16, disable_overlap_schedule=True,
            cuda_graph_max_bs_decode=2, vortex={**QUICKSTART_VORTEX, "attention_backend": "triton"},
        ) as eng:  # fmt: skip
            out: dict[str, Any] = {"mixed": generate(eng, mixed), "graph": generate(eng, mixed[2:4])}
    finally:
        os.environ.pop(DUMP_ENV, None)
        os.environ.pop(DUMP_STEPS_ENV, None)
    out["dump_dir"] = dump_dir
    return out


def test_fp8_sparse_dumps_replay_clean_on_the_dequantised_cache(sparse_fp8_run: dict[str, Any]) -> None:
    import torch

    from vortex_torch.engine.sgl.debug_dump import load_records

    records = load_records(str(sparse_fp8_run["dump_dir"]))
    assert records, "no decode step was dumped (VORTEX_DEBUG_DUMP did not reach the scheduler?)"
    assert all(r["k_blocks"].dtype == torch.float8_e4m3fn for r in records)
    assert all(set(r["kv_scales"]) == {"k_scale", "v_scale"} for r in records)
    assert_replays_clean(records, "fp8", DUMP_STEPS)


def test_fp8_sparse_graph_and_eager_agree(sparse_fp8_run: dict[str, Any]) -> None:
    mixed: list[Gen] = sparse_fp8_run["mixed"]
    assert_all_close(mixed[2:4], sparse_fp8_run["graph"], "fp8 sparse: eager (bs 6) vs CUDA graph (bs 2)")
