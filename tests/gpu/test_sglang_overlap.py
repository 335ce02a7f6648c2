"""Evidence for lifting ``disable_overlap_schedule=True`` (opt-in: ``VORTEX_GPU_TEST_OVERLAP=1``).

Vortex builds its decode plan on the GPU, on the forward stream, into backend-owned buffers, with no host
sync, and writes the aux fields inside the forward (docs/sglang-integration.md §5's rules). If that holds,
SGLang's overlap scheduler cannot change what Vortex computes: the same sparse workload must give the same
greedy tokens with the overlap scheduler off (Vortex's default) and on (``VORTEX_ALLOW_OVERLAP_SCHEDULE=1``).
Two engines (triton + Vortex, quick-start config, CUDA graphs up to batch 4).
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
    engine,
    generate,
    prompts,
    skip_reason,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
    pytest.mark.skipif(
        os.environ.get("VORTEX_GPU_TEST_OVERLAP") != "1", reason="opt-in: VORTEX_GPU_TEST_OVERLAP=1"
    ),
]


def run(overlap: bool) -> dict[str, list[Gen]]:
    from vortex_torch.engine.sgl.server_rules import ALLOW_OVERLAP_ENV

    if overlap:
        os.environ[ALLOW_OVERLAP_ENV] = "1"
    try:
        with engine(
            attention_backend="triton",
            page_size=16,
            disable_overlap_schedule=not overlap,
            cuda_graph_max_bs_decode=4,
            vortex=QUICKSTART_VORTEX,
        ) as eng:
            assert eng.server_args.disable_overlap_schedule is (not overlap)
            mixed = prompts(MIXED_LENGTHS)
            return {"mixed": generate(eng, mixed), "graph": generate(eng, mixed[1:4])}
    finally:
        os.environ.pop(ALLOW_OVERLAP_ENV, None)


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return {"off": run(False), "on": run(True)}


def test_overlap_scheduler_gives_the_same_tokens(results: dict[str, Any]) -> None:
    for key in ("mixed", "graph"):
        assert_all_close(results["off"][key], results["on"][key], f"overlap off vs on, {key}", tie_gap=0.0)
