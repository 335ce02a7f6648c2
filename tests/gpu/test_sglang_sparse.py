"""Real sparsity inside SGLang equals the CPU reference, per (request, head, layer, step) (triton backend).

One engine: triton + Vortex with the quick start's config (32-block budget, layer 0 dense), CUDA graphs
captured up to batch size 2 only, and ``VORTEX_DEBUG_DUMP`` set, so every decode batch above 2 runs eagerly
and dumps, per sparse layer, its queries, plan, selection, attention output and the K/V + aux fields of every
listed block. Workloads, in order:

1. a prompt alone with one new token (prefill only: its pages enter the radix cache);
2. a batch of 3 whose first prompt shares 1024 tokens with (1): the radix-cache hit, decoded sparse and dumped
   (the reused blocks' aux fields were computed by (1)'s prefill);
3. the mixed-length batch of 6 (dumped);
4. two of (3)'s prompts as a batch of 2: CUDA-graph decode, compared with their eager decode in (3).

The host then replays every dump through the reference executor (``debug_dump.replay``): aux fields
recomputed from K/V must match the pool's, the selection must equal the reference's top-k (ties aside) and
the attention output must match attention over the chosen blocks.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from vortex_gpu_harness import (
    MIXED_LENGTHS,
    QUICKSTART_VORTEX,
    Gen,
    assert_all_close,
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

DUMP_STEPS = 12


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vortex_torch.engine.sgl.debug_dump import DUMP_ENV, DUMP_STEPS_ENV

    dump_dir = fresh_dir(
        tmp_path_factory.mktemp("vortex") / "dump"
    )  # not under $VORTEX_OUT: 8 files come back
    os.environ[DUMP_ENV], os.environ[DUMP_STEPS_ENV] = str(dump_dir), str(DUMP_STEPS)  # read by the scheduler
    mixed = prompts(MIXED_LENGTHS)
    try:
        with engine(
            attention_backend="triton",
            page_size=16,
            disable_overlap_schedule=True,
            cuda_graph_max_bs_decode=2,
            vortex={**QUICKSTART_VORTEX, "attention_backend": "triton"},
        ) as eng:
            out: dict[str, Any] = {"warm": generate(eng, [mixed[3]], max_new=1)}
            hit = with_shared_prefix(mixed[3], 1024, 150)
            out["prefix"] = generate(eng, [hit, *prompts([600, 800], seed=5)], max_new=4)
            out["mixed"] = generate(eng, mixed)
            out["graph"] = generate(eng, mixed[2:4])
    finally:
        os.environ.pop(DUMP_ENV, None)
        os.environ.pop(DUMP_STEPS_ENV, None)
    out["dump_dir"] = dump_dir
    return out


def test_dumps_replay_clean_through_the_reference(sparse_run: dict[str, Any]) -> None:
    from vortex_torch.engine.sgl.debug_dump import load_records

    assert_replays_clean(load_records(str(sparse_run["dump_dir"])), "1 GPU", DUMP_STEPS)


def test_prefix_hit_was_served_from_the_cache(sparse_run: dict[str, Any]) -> None:
    assert sparse_run["prefix"][0].cached_tokens >= 1024


def test_graph_and_eager_sparse_decode_agree(sparse_run: dict[str, Any]) -> None:
    mixed: list[Gen] = sparse_run["mixed"]
    assert_all_close(mixed[2:4], sparse_run["graph"], "sparse: eager (bs 6) vs CUDA graph (bs 2)")


def test_mixed_batch_is_sane(sparse_run: dict[str, Any]) -> None:
    import math

    for g in sparse_run["mixed"]:
        assert len(g.tokens) == 24
        assert all(math.isfinite(lp) for lp in g.logprobs)
