"""SGLang's overlap scheduler under Vortex (issue 8, item 4): greedy tokens with overlap on == overlap off.

With ``disable_overlap_schedule=False`` SGLang builds batch N+1 (``out_cache_loc``, ``req_to_token``, frees
finished requests) and runs the backend's ``init_forward_metadata`` while the GPU still runs batch N
(docs/sglang-integration.md §5). Vortex is correct under it only if its plan and aux-field writes are
stream-ordered into backend-owned buffers; then the overlap cannot change what a decode step computes. Two
engines, flashinfer base (the quick start's and the e2e bench's) + Vortex with the quick start's config, CUDA
graphs up to batch 4, differing only in ``disable_overlap_schedule``:

* ``mixed`` (6 prompts: eager decode above the graph size) and ``graph`` (3 prompts, padded to a graph of 4),
  every request with the same number of new tokens: both engines run identical batches, so tokens must be
  identical and log-probs equal to float noise;
* ``staggered``: the mixed prompts with different ``max_new_tokens``, so requests finish at different steps.
  Under overlap a finished request rides one step longer and its pages are freed while the next batch's
  metadata is built: the case the scheduler overlaps. Batch sizes then differ at those steps (split sizes may
  differ), so near-ties may flip: compared with the harness's usual tie tolerance.

Until the overlap scheduler is supported by default, the plugin refuses ``disable_overlap_schedule=False``
unless ``VORTEX_ALLOW_OVERLAP_SCHEDULE=1`` (``server_rules.ALLOW_OVERLAP_ENV``); the overlap engine sets it (a
no-op once the gate is gone). The quick start, which passes ``disable_overlap_schedule=True``, is checked by
``test_sglang_quickstart.py``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from vortex_gpu_harness import (
    MAX_NEW,
    MIXED_LENGTHS,
    QUICKSTART_VORTEX,
    Gen,
    assert_all_close,
    engine,
    generate,
    parse_output,
    prompts,
    skip_reason,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

#: new tokens per request of the staggered workload: finishing at 6 different steps
STAGGERED = [8, 30, 12, 24, 5, 17]


def generate_each(eng: Any, batch: list[list[int]], max_new: list[int]) -> list[Gen]:
    """One ``generate`` call, each prompt with its own ``max_new_tokens`` (greedy, log-probs and top-2)."""
    params = [{"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True} for n in max_new]
    outs = eng.generate(input_ids=batch, sampling_params=params, return_logprob=True, top_logprobs_num=2)
    return [parse_output(o) for o in outs]


def run(overlap: bool) -> dict[str, Any]:
    from vortex_torch.engine.sgl.server_rules import ALLOW_OVERLAP_ENV

    if overlap:
        os.environ[ALLOW_OVERLAP_ENV] = "1"  # read here and by the scheduler processes SGLang starts
    try:
        with engine(
            attention_backend="flashinfer",
            page_size=16,
            disable_overlap_schedule=not overlap,
            cuda_graph_max_bs_decode=4,
            vortex=QUICKSTART_VORTEX,
        ) as eng:
            mixed = prompts(MIXED_LENGTHS)
            return {
                "overlap_on": not eng.server_args.disable_overlap_schedule,
                "mixed": generate(eng, mixed),
                "graph": generate(eng, mixed[1:4]),
                "staggered": generate_each(eng, mixed, STAGGERED),
            }
    finally:
        os.environ.pop(ALLOW_OVERLAP_ENV, None)


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return {"off": run(False), "on": run(True)}


def test_the_engines_really_differ_in_the_overlap_scheduler(results: dict[str, Any]) -> None:
    assert results["off"]["overlap_on"] is False
    assert results["on"]["overlap_on"] is True, (
        "SGLang resolved disable_overlap_schedule=True: nothing compared"
    )


def test_same_batches_give_identical_tokens(results: dict[str, Any]) -> None:
    for key in ("mixed", "graph"):
        off, on = results["off"][key], results["on"][key]
        assert all(len(g.tokens) == MAX_NEW for g in off + on)
        assert_all_close(off, on, f"overlap off vs on, {key}", tie_gap=0.0, logprob_atol=1e-3)


def test_requests_finishing_at_different_steps_decode_the_same(results: dict[str, Any]) -> None:
    off, on = results["off"]["staggered"], results["on"]["staggered"]
    assert [len(g.tokens) for g in off] == [len(g.tokens) for g in on] == STAGGERED
    assert_all_close(off, on, "overlap off vs on, staggered finishes")
