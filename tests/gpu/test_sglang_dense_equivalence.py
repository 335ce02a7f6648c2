"""Budget covering every block => Vortex inside SGLang reproduces plain SGLang.

For each setting, two engines, one after the other: stock SGLang, then SGLang + Vortex with a budget larger
than any row (every layer on the sparse path, every row's selection = all of its blocks, attention by Vortex's
kernel). Each runs the same workloads: a mixed-length batch of 6 (above the captured batch sizes: eager
decode), a batch of 3 (CUDA-graph decode) and a prompt sharing 1024 tokens with an earlier one (radix-cache
hit). Within each engine the graph and eager decodes of the same prompts must agree too.

Settings:

* ``bf16-flashinfer-exact`` (strict; ``exact_attention=True``): Vortex attends with FlashInfer's own decode
  kernel over the selected tokens (``engine.sgl.flashinfer_decode``), and with every block selected that call
  is bit-identical to plain SGLang's dense one (``test_kernel_vs_flashinfer``). Every generated token must be
  identical and the log-probs equal to 1e-3.
* ``bf16-flashinfer`` (the quick start's, default ``exact_attention=False``) and ``bf16-triton``: Vortex attends
  with its own Triton kernel, planned inside the CUDA graph; it splits and sums the KV in another order than
  SGLang's kernel, so a random-weight model's near-ties (top-2 log-prob gap < 0.15) may flip. Tokens must be
  identical up to a divergence at such a near-tie of the reference, with log-probs close before it.
* ``bf16-flashinfer-pdl``: the quick start's path with ``enable_pdl=True`` (every Vortex kernel launched with
  programmatic dependent launch, inside SGLang's decode CUDA graph; sm_90+): the same bar as ``bf16-flashinfer``.
* ``bf16-flashinfer-dense-below``: the quick start's path with ``sparse_decode_min_tokens=MIN_TOKENS``: the
  batch of ``small`` (2500 tokens in all, 3 more per step) decodes its first 13 steps densely from the dense CUDA
  graphs, then sparsely; ``mixed`` (3653 tokens) decodes sparsely and eagerly throughout; ``prefix`` (1224) never
  leaves the dense steps. The same bar as ``bf16-flashinfer``, and ``prefix`` must be token-identical to plain
  SGLang with log-probs equal to 1e-3 (dense steps run plain SGLang's kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from vortex_gpu_harness import (
    FULL_BUDGET_VORTEX,
    Gen,
    ScenarioCache,
    assert_all_close,
    assert_full_budget_matches,
    engine,
    full_budget_workloads,
    skip_reason,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

GRAPH_MAX_BS = 4


@dataclass(frozen=True)
class Setting:
    backend: str
    dtype: str
    #: every token identical (no near-tie allowance), log-probs within ``logprob_atol``
    strict: bool
    logprob_atol: float
    exact_attention: bool = False
    enable_pdl: bool = False
    sparse_decode_min_tokens: int = 0


#: a total the batch of ``small`` crosses while decoding (prompts of 300 + 700 + 1500 tokens, MAX_NEW more each)
MIN_TOKENS = 2540

SETTINGS = {
    "bf16-flashinfer-exact": Setting("flashinfer", "bfloat16", strict=True, logprob_atol=1e-3, exact_attention=True),
    "bf16-flashinfer": Setting("flashinfer", "bfloat16", strict=False, logprob_atol=0.15),
    "bf16-triton": Setting("triton", "bfloat16", strict=False, logprob_atol=0.15),
    "bf16-flashinfer-pdl": Setting("flashinfer", "bfloat16", strict=False, logprob_atol=0.15, enable_pdl=True),
    "bf16-flashinfer-dense-below": Setting("flashinfer", "bfloat16", strict=False, logprob_atol=0.15,
                                           sparse_decode_min_tokens=MIN_TOKENS),
}  # fmt: skip


def run(setting: Setting, vortex: bool) -> dict[str, list[Gen]]:
    kwargs: dict[str, Any] = {
        "attention_backend": setting.backend,
        "dtype": setting.dtype,
        "page_size": 16,
        "disable_overlap_schedule": True,
        "cuda_graph_max_bs_decode": GRAPH_MAX_BS,
    }
    if vortex:
        if setting.enable_pdl:
            import torch

            if torch.cuda.get_device_capability()[0] < 9:
                pytest.skip("programmatic dependent launch needs sm_90+")
        kwargs["vortex"] = {
            **FULL_BUDGET_VORTEX, "attention_backend": setting.backend, "dtype": setting.dtype,
            "exact_attention": setting.exact_attention, "enable_pdl": setting.enable_pdl,
            "sparse_decode_min_tokens": setting.sparse_decode_min_tokens,
        }  # fmt: skip
    else:
        kwargs["disable_prefill_cuda_graph"] = True  # the same prefill path as under Vortex
    with engine(**kwargs) as eng:
        return full_budget_workloads(eng)  # mixed: bs 6 > 4, eager; small: bs 3, CUDA graph


_RUNS = ScenarioCache()
for _name, _setting in SETTINGS.items():
    # one plain engine per base backend, shared by the settings on it
    _RUNS.runs[f"{_name}/plain"] = lambda s=_setting: _RUNS.get(f"{s.backend}/plain-engine")
    _RUNS.runs[f"{_setting.backend}/plain-engine"] = lambda s=_setting: run(s, vortex=False)
    _RUNS.runs[f"{_name}/vortex"] = lambda s=_setting: run(s, vortex=True)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_full_budget_matches_plain_sglang(name: str) -> None:
    setting = SETTINGS[name]
    plain, full = _RUNS.get(f"{name}/plain"), _RUNS.get(f"{name}/vortex")
    assert_full_budget_matches(name, plain, full, logprob_atol=setting.logprob_atol, strict=setting.strict)


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("which", ["plain", "vortex"])
def test_graph_and_eager_decode_agree(name: str, which: str) -> None:
    res = _RUNS.get(f"{name}/{which}")
    # Graph and eager decode split the KV differently (stock FlashInfer too): identical up to a near-tie.
    assert_all_close(res["mixed"][1:4], res["small"], f"{name}/{which}: eager (bs 6) vs CUDA graph (bs 3)")


@pytest.mark.parametrize("name", list(SETTINGS))
def test_prefix_cache_hit(name: str) -> None:
    plain, full = _RUNS.get(f"{name}/plain"), _RUNS.get(f"{name}/vortex")
    for res in (plain, full):
        assert res["prefix"][0].cached_tokens >= 1024
        assert all(g.cached_tokens > 0 for g in res["small"])  # the second batch hits the first one's prompts
    assert plain["prefix"][0].tokens[:1] == full["prefix"][0].tokens[:1]


def test_dense_steps_are_plain_sglang() -> None:
    """Every step of ``prefix`` (1224 + MAX_NEW tokens) holds fewer than MIN_TOKENS tokens: plain SGLang's
    kernels in plain SGLang's order (the dense CUDA graph), so its tokens are plain SGLang's exactly."""
    plain, dense = _RUNS.get("bf16-flashinfer-dense-below/plain"), _RUNS.get("bf16-flashinfer-dense-below/vortex")
    (ref,), (got,) = plain["prefix"], dense["prefix"]
    assert len(ref.tokens) + 1224 < MIN_TOKENS
    assert got.tokens == ref.tokens
    assert max(abs(a - b) for a, b in zip(ref.logprobs, got.logprobs, strict=True)) <= 1e-3
