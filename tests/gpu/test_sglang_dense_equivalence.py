"""Budget covering every block => Vortex inside SGLang reproduces plain SGLang (flashinfer, CUDA graphs on).

Two engines, one after the other: stock flashinfer, then flashinfer + Vortex with a budget larger than any
row (every layer sparse-path, every row copied whole by the selection, attention by Vortex's kernel). Each runs
the same workloads: a mixed-length batch of 6 (above the captured batch sizes: eager decode), a batch of 3
(CUDA-graph decode) and a prompt sharing 1024 tokens with an earlier one (radix-cache hit). Greedy tokens
must agree (a divergence only at a near-tie of the reference) and log-probs be close; within each engine the
graph and eager decodes of the same prompts must agree too.
"""

from __future__ import annotations

from typing import Any

import pytest
from vortex_gpu_harness import (
    FULL_BUDGET_VORTEX,
    MIXED_LENGTHS,
    Gen,
    assert_all_close,
    engine,
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


def workloads(eng: Any) -> dict[str, list[Gen]]:
    mixed = prompts(MIXED_LENGTHS)
    out = {"mixed": generate(eng, mixed)}  # bs 6 > 4: eager decode
    out["small"] = generate(eng, mixed[1:4])  # bs 3: CUDA-graph decode (prompts now radix-cached)
    out["prefix"] = generate(eng, [with_shared_prefix(mixed[3], 1024, 200)])  # bs 1, 1024 cached tokens
    return out


def run(vortex: dict[str, Any] | None) -> dict[str, list[Gen]]:
    kwargs: dict[str, Any] = {
        "attention_backend": "flashinfer",
        "page_size": 16,
        "disable_overlap_schedule": True,
        "cuda_graph_max_bs_decode": GRAPH_MAX_BS,
    }
    if vortex is not None:
        kwargs["vortex"] = vortex
    else:
        kwargs["disable_prefill_cuda_graph"] = True  # the same prefill path as under Vortex
    with engine(**kwargs) as eng:
        return workloads(eng)


@pytest.fixture(scope="module")
def plain() -> dict[str, list[Gen]]:
    return run(None)


@pytest.fixture(scope="module")
def full_budget(plain: dict[str, list[Gen]]) -> dict[str, list[Gen]]:
    return run(FULL_BUDGET_VORTEX)  # after `plain` has shut its engine down


def test_full_budget_matches_plain_sglang(
    plain: dict[str, list[Gen]], full_budget: dict[str, list[Gen]]
) -> None:
    comps = []
    for key in ("mixed", "small", "prefix"):
        comps += assert_all_close(plain[key], full_budget[key], f"full budget vs plain, {key}")
    exact = sum(c.exact for c in comps)
    print(f"[full budget] {exact}/{len(comps)} generations token-identical to plain SGLang")
    # Every generation is token-identical up to its first near-tie (assert_all_close checks that, and that the
    # logprobs agree). Past a near-tie of the random-weight model, a different (bf16) attention kernel may pick
    # the other token: the first GPU run saw 7/10 identical and 3 such splits, each at a top-2 gap < 0.15.


@pytest.mark.parametrize("which", ["plain", "full_budget"])
def test_graph_and_eager_decode_agree(which: str, request: pytest.FixtureRequest) -> None:
    res = request.getfixturevalue(which)
    assert_all_close(res["mixed"][1:4], res["small"], f"{which}: eager (bs 6) vs CUDA graph (bs 3)")


def test_prefix_cache_hit(plain: dict[str, list[Gen]], full_budget: dict[str, list[Gen]]) -> None:
    for res in (plain, full_budget):
        assert res["prefix"][0].cached_tokens >= 1024
        assert all(g.cached_tokens > 0 for g in res["small"])  # the second batch hits the first one's prompts
    assert plain["prefix"][0].tokens[:1] == full_budget["prefix"][0].tokens[:1]
