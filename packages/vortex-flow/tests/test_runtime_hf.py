"""End to end: a tiny random-weight Qwen3 (transformers) greedy-decoding through the reference runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from vortex_torch.flow import build_vflow, vFlow
from vortex_torch.flow.runtime import RuntimeConfig
from vortex_torch.flow.runtime.hf import (
    greedy_generate,
    hf_greedy_reference,
    make_tiny_qwen3,
    register_vortex_attention,
    runtime_for_model,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "custom_sparse_attention.py"
NEW_TOKENS = 6
PROMPT_LENS = (3, 16, 37, 70)  # partial first block, exactly one block, several pages, crossing pages


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls: intra-op threads only add overhead (several x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Any:
    return make_tiny_qwen3(seed=0)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 1024, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def reference(model: Any, prompts: list[list[int]]) -> list[list[int]]:
    return hf_greedy_reference(model, prompts, NEW_TOKENS, attn_implementation="eager")


def quickstart() -> vFlow:
    return build_vflow("custom_sparse_attention", module_path=str(EXAMPLE))


@pytest.mark.parametrize("page_size", [16, 32])
def test_full_budget_matches_hf_eager(
    model: Any, prompts: list[list[int]], reference: list[list[int]], page_size: int
) -> None:
    cfg = RuntimeConfig(topk_val=1000, page_size=page_size)
    rt = runtime_for_model(model, quickstart(), cfg, num_pages=32, shuffle_pages_seed=page_size)
    assert greedy_generate(model, rt, prompts, NEW_TOKENS) == reference
    assert rt.pool.allocator.num_free == 31  # every request released
    assert model.config._attn_implementation == "eager"  # restored


def test_sparse_budget_runs_and_records_selections(model: Any, prompts: list[list[int]]) -> None:
    cache_calls: list[int] = []

    def counting(traced: Any, layout: Any) -> Any:
        from vortex_torch.flow.compiler.reference import ReferenceExecutor

        class Counting(ReferenceExecutor):
            def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
                cache_calls.extend(block_ids.tolist())
                super().run_cache(fields, block_ids)

        return Counting(traced, layout)

    cfg = RuntimeConfig(topk_val=1, layers_skip=(0,), executor=counting)
    rt = runtime_for_model(model, quickstart(), cfg, num_pages=32, keep_selection_log=True)
    out = greedy_generate(model, rt, prompts, NEW_TOKENS)
    assert [len(o) for o in out] == [NEW_TOKENS] * len(prompts)
    assert all(0 <= t < 1024 for o in out for t in o)
    # one selection per decode step (the first new token comes from prefill) per layer
    log = rt.selection_log
    assert len(log) == (NEW_TOKENS - 1) * 2
    assert [s.layer for s in log[:2]] == [0, 1] and log[0].dense and not log[1].dense
    final = [n + NEW_TOKENS - 1 for n in PROMPT_LENS]  # tokens attended at the last step
    last = rt.last_selection[1]
    for b, n in enumerate(final):
        blocks = -(-n // 16)
        for h in range(2):
            pos = last.row(b, h)
            assert pos == (list(range(blocks)) if blocks <= 3 else [0, pos[1], blocks - 1])
    # forward_cache ran once per completed block of layer 1 (layer 0 is skipped): prefill and decode alike
    assert len(cache_calls) == len(set(cache_calls)) == sum(n // 16 for n in final) * 2


def test_vortex_attention_without_runtime_falls_back_to_sdpa(model: Any, prompts: list[list[int]]) -> None:
    register_vortex_attention()
    ids = torch.tensor([prompts[2]])
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        model.set_attn_implementation("vortex")
        try:
            got = model(input_ids=ids, use_cache=False).logits
        finally:
            model.set_attn_implementation("eager")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
