"""The evaluation loop shared by every backend: generate the samples, run dense and each budget, score.

A backend runs a whole list of samples per call (dense, or one budget), so the HF backend builds one Vortex
runtime per budget and a server backend can keep several requests in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .tasks import Sample, TokenCounter, make_samples

#: called once per finished generation (advances the progress bar)
Tick = Callable[[], None]


class Backend(Protocol):
    """Where the generations come from: a local HF model or an OpenAI-compatible server."""

    #: ``"hf"`` or ``"server"``
    kind: str
    #: budget labels, in the order the user gave them
    budget_labels: list[str]

    def count_tokens(self, text: str) -> int: ...

    def dense(self, samples: Sequence[Sample], tick: Tick) -> list[str] | None:
        """Greedy outputs with dense attention, or ``None`` when the backend has no dense baseline."""
        ...

    def sparse(self, samples: Sequence[Sample], budget: str, tick: Tick) -> list[str]:
        """Greedy outputs with the flow at budget ``budget`` (one of :attr:`budget_labels`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the result should record about the backend (model, URLs, runtime settings)."""
        ...


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def run_eval(
    backend: Backend,
    tasks: Sequence[str],
    contexts: Sequence[int],
    num_samples: int,
    seed: int,
    progress: bool | None = None,
    count_tokens: TokenCounter | None = None,
) -> dict[str, Any]:
    """Run every (context, task, sample) densely and at every budget; return the JSON-ready result.

    ``result["results"]`` has one row per (task, context, budget): ``accuracy`` (mean score), ``dense_accuracy``
    and ``agreement`` (fraction of samples whose sparse output equals the dense output exactly; ``None``
    without a dense baseline). ``result["summary"]`` averages over tasks per (context, budget); ``outputs``
    keeps every generation. ``progress=None`` shows bars only on a terminal.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    count = count_tokens or backend.count_tokens
    labels = backend.budget_labels
    rows: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    disable = None if progress is None else not progress  # tqdm: None = auto (off when not a terminal)
    # every prompt first: a context too short for a task fails before any generation
    by_context = {ctx: make_samples(tasks, ctx, num_samples, seed, count) for ctx in contexts}
    for ctx, samples in by_context.items():
        with tqdm(
            total=len(samples) * (1 + len(labels)), desc=f"context {ctx}", unit="gen", disable=disable
        ) as bar:
            tick: Tick = lambda: bar.update(1)
            bar.set_postfix_str("dense")
            dense = backend.dense(samples, tick)
            sparse: dict[str, list[str]] = {}
            for label in labels:
                bar.set_postfix_str(f"budget {label}")
                sparse[label] = backend.sparse(samples, label, tick)
        for i, s in enumerate(samples):
            outputs.append(
                {"task": s.task, "context": ctx, "index": s.index, "answers": list(s.answers)}
                | {"dense": None if dense is None else dense[i], "sparse": {b: sparse[b][i] for b in labels}}
            )
        ctx_row: dict[str, Any] = {"context": ctx, "dense_accuracy": None, "budgets": {}}
        if dense is not None:
            ctx_row["dense_accuracy"] = _mean([s.score(o) for s, o in zip(samples, dense, strict=True)])
        for label in labels:
            for task in tasks:
                idx = [i for i, s in enumerate(samples) if s.task == task]
                rows.append(
                    {
                        "task": task,
                        "context": ctx,
                        "budget": label,
                        "n": len(idx),
                        "accuracy": _mean([samples[i].score(sparse[label][i]) for i in idx]),
                        "dense_accuracy": None
                        if dense is None
                        else _mean([samples[i].score(dense[i]) for i in idx]),
                        "agreement": None
                        if dense is None
                        else _mean([float(sparse[label][i] == dense[i]) for i in idx]),
                    }
                )
            ctx_row["budgets"][label] = {
                "accuracy": _mean([s.score(o) for s, o in zip(samples, sparse[label], strict=True)]),
                "agreement": None
                if dense is None
                else _mean([float(a == b) for a, b in zip(sparse[label], dense, strict=True)]),
            }
        summary.append(ctx_row)
    return {
        "backend": backend.describe(),
        "tasks": list(tasks),
        "contexts": list(contexts),
        "budgets": list(labels),
        "samples_per_task": num_samples,
        "seed": seed,
        "scoring": "fraction of the expected answers found verbatim in the greedy output",
        "summary": summary,
        "results": rows,
        "outputs": outputs,
        "time_s": round(time.perf_counter() - t0, 2),
    }
