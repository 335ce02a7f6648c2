"""Shared pieces of the GPU suite (registered by ``tests/gpu/conftest.py`` as ``vortex_gpu_harness``).

The suite runs on the lent GPU through ``bash tools/device/remote.sh suite tests/gpu`` against the tiny
random-weight Qwen3 that ``remote.sh`` builds at ``$VORTEX_TINY_MODEL`` (2 layers, H_q 4, H_kv 2, D 64,
byte-level tokenizer). Engines are expensive (1.5-3 min cold): every scenario starts exactly one, runs all of
its workloads, shuts it down (so one engine at a time holds the GPU) and caches the results for the tests.

Greedy outputs of two engines are compared with :func:`compare_greedy`: identical tokens, except that a
divergence is accepted at a step where the reference's top-2 log-probabilities are within ``tie_gap`` (random
bf16 weights give near-ties, where any kernel difference may flip the argmax); the tokens before it must agree
and their log-probabilities be close.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOW_FILE = ROOT / "examples" / "custom_sparse_attention.py"
QUICKSTART = ROOT / "examples" / "quickstart.py"
FLOW_NAME = "custom_sparse_attention"

#: the quick start's VortexConfig (examples/quickstart.py), with the flow file of examples/
QUICKSTART_VORTEX: dict[str, Any] = {
    "module_path": str(FLOW_FILE),
    "module_name": FLOW_NAME,
    "topk_val": 30,
    "layers_skip": [0],
    "block_reserved_bos": 1,
    "block_reserved_eos": 1,
    "max_seq_lens": 8192,
}
#: a budget that covers every block of every row: Vortex must reproduce dense attention
FULL_BUDGET_VORTEX: dict[str, Any] = {
    "module_path": str(FLOW_FILE),
    "module_name": FLOW_NAME,
    "topk_val": 1 << 20,
}

MAX_NEW = 24
#: mixed prompt lengths: below one block, several pages, and well above the quick start's 32-block budget
MIXED_LENGTHS = [37, 300, 700, 1500, 16, 1100]


def skip_reason() -> str | None:
    """Why the GPU suite cannot run here, or None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("sglang") is None:
        return "needs sglang==0.5.17 (tools/device/remote.sh installs it from .sglpack)"
    model = os.environ.get("VORTEX_TINY_MODEL")
    if not model or not (Path(model) / "config.json").is_file():
        return "VORTEX_TINY_MODEL is not set to a model directory (tools/device/remote.sh builds one)"
    return None


def tiny_model() -> str:
    return os.environ["VORTEX_TINY_MODEL"]


def vocab_size() -> int:
    import json

    return int(json.loads((Path(tiny_model()) / "config.json").read_text())["vocab_size"])


def prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Deterministic random token ids (3 .. vocab-1: no pad/bos/eos), one list per length."""
    rng = random.Random(seed)
    top = vocab_size() - 1
    return [[rng.randint(3, top) for _ in range(n)] for n in lengths]


def with_shared_prefix(base: list[int], prefix_len: int, tail: int, seed: int = 99) -> list[int]:
    """``base[:prefix_len]`` + ``tail`` new tokens: a radix-cache hit on ``prefix_len`` tokens."""
    return base[:prefix_len] + prompts([tail], seed)[0]


@dataclass
class Gen:
    """One greedy generation: tokens, their log-probs, the top-2 gap at every step, cached prompt tokens."""

    tokens: list[int]
    logprobs: list[float]
    top2_gap: list[float]
    cached_tokens: int = 0
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gen:
        return cls(**data)


def sampling(max_new: int = MAX_NEW) -> dict[str, Any]:
    return {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}


def parse_output(out: dict[str, Any]) -> Gen:
    meta = out.get("meta_info", {})
    tokens = list(out.get("output_ids") or [t for _lp, t, *_ in meta.get("output_token_logprobs", [])])
    logprobs = [float(lp) for lp, *_ in meta.get("output_token_logprobs", [])]
    gaps = []
    for top in meta.get("output_top_logprobs") or []:
        vals = sorted((float(lp) for lp, *_ in (top or [])), reverse=True)
        gaps.append(vals[0] - vals[1] if len(vals) > 1 else float("inf"))
    return Gen(tokens, logprobs, gaps, int(meta.get("cached_tokens", 0)), out.get("text", ""))


def generate(engine: Any, batch: list[list[int]], max_new: int = MAX_NEW) -> list[Gen]:
    """Greedy generation of ``batch`` (token ids) in one call, with log-probs and top-2 gaps."""
    outs = engine.generate(
        input_ids=batch, sampling_params=sampling(max_new), return_logprob=True, top_logprobs_num=2
    )
    return [parse_output(o) for o in outs]


def full_budget_workloads(engine: Any) -> dict[str, list[Gen]]:
    """The workloads :func:`assert_full_budget_matches` compares, on an engine capturing decode CUDA graphs up to
    batch 4: ``mixed`` (the batch of 6: eager decode), ``small`` (3 of its prompts, now radix-cached: CUDA-graph
    decode) and ``prefix`` (one prompt sharing 1024 tokens with ``mixed[3]``: a radix-cache hit)."""
    mixed = prompts(MIXED_LENGTHS)
    out = {"mixed": generate(engine, mixed)}
    out["small"] = generate(engine, mixed[1:4])
    out["prefix"] = generate(engine, [with_shared_prefix(mixed[3], 1024, 200)])
    return out


@dataclass
class Comparison:
    """How a generation compares with a reference one (see the module doc)."""

    same_prefix: int
    length: int
    exact: bool
    ok: bool
    max_logprob_diff: float
    reason: str = ""
    #: the reference's top-2 log-prob gap at the first differing step (inf when none differs)
    gap_at_split: float = float("inf")


def compare_greedy(ref: Gen, got: Gen, *, tie_gap: float = 0.15, logprob_atol: float = 0.15) -> Comparison:
    n = min(len(ref.tokens), len(got.tokens))
    same = 0
    while same < n and ref.tokens[same] == got.tokens[same]:
        same += 1
    diffs = [abs(a - b) for a, b in zip(ref.logprobs[:same], got.logprobs[:same], strict=False)]
    max_diff = max(diffs, default=0.0)
    exact = same == n == len(ref.tokens) == len(got.tokens)
    reason = ""
    ok = max_diff <= logprob_atol
    if not ok:
        reason = f"log-probs differ by {max_diff:.3f} > {logprob_atol} before any divergence"
    gap = float("inf")
    if not exact:
        gap = ref.top2_gap[same] if same < len(ref.top2_gap) else float("inf")
        if gap > tie_gap:
            ok = False
            reason = f"diverged at step {same} where the reference's top-2 gap is {gap:.3f} > {tie_gap}"
    return Comparison(same, n, exact, ok, max_diff, reason, gap)


def assert_all_close(refs: list[Gen], gots: list[Gen], what: str, **kw: float) -> list[Comparison]:
    """Every pair passes :func:`compare_greedy`; returns the comparisons (for the report)."""
    comps = [compare_greedy(r, g, **kw) for r, g in zip(refs, gots, strict=True)]
    bad = [(i, c) for i, c in enumerate(comps) if not c.ok]
    summary = ", ".join(
        f"#{i}: {c.same_prefix}/{c.length}"
        + ("" if c.exact else f" (split at top-2 gap {c.gap_at_split:.4f})")
        for i, c in enumerate(comps)
    )
    worst = max((c.max_logprob_diff for c in comps), default=0.0)
    print(f"[{what}] agreeing tokens {summary}; max |d logprob| before a split {worst:.4f}")
    assert not bad, f"{what}: " + "; ".join(f"prompt {i}: {c.reason}" for i, c in bad)
    return comps


def assert_full_budget_matches(
    name: str, plain: dict[str, list[Gen]], full: dict[str, list[Gen]], *, logprob_atol: float, strict: bool
) -> None:
    """A full-budget Vortex run against plain SGLang on the ``mixed``, ``small`` and ``prefix`` workloads: every
    pair within :func:`assert_all_close`, and every generation token-identical when ``strict``."""
    comps = []
    for key in ("mixed", "small", "prefix"):
        comps += assert_all_close(
            plain[key], full[key], f"{name}: full budget vs plain, {key}", logprob_atol=logprob_atol
        )
    exact = sum(c.exact for c in comps)
    worst = max(c.max_logprob_diff for c in comps)
    print(f"[{name}] {exact}/{len(comps)} generations token-identical to plain SGLang, max |dlogprob| {worst:.2e}")
    if strict:
        assert exact == len(comps), f"{name}: only {exact}/{len(comps)} generations token-identical"


@contextlib.contextmanager
def engine(**kwargs: Any) -> Iterator[Any]:
    """An ``sgl.Engine`` for the tiny model, shut down on exit (one engine on the GPU at a time)."""
    import sglang as sgl

    import vortex_torch  # noqa: F401  (the quick start's adapter; the plugin entry point does the same)

    kwargs.setdefault("model_path", tiny_model())
    kwargs.setdefault("mem_fraction_static", 0.5)
    kwargs.setdefault("log_level", "warning")
    eng = sgl.Engine(**kwargs)
    try:
        yield eng
    finally:
        eng.shutdown()


@dataclass
class ScenarioCache:
    """Runs each scenario (an engine and its workloads) at most once per session."""

    runs: dict[str, Callable[[], Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name in self.errors:
            pytest.fail(f"scenario {name!r} failed earlier: {self.errors[name]!r}")
        if name not in self.results:
            try:
                self.results[name] = self.runs[name]()
            except BaseException as exc:
                self.errors[name] = exc
                raise
        return self.results[name]


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def assert_replays_clean(records: list[dict[str, Any]], what: str, dump_steps: int) -> None:
    """Every ``VORTEX_DEBUG_DUMP`` record of one run (one GPU, or one TP rank) replays through the reference
    executor (``debug_dump.replay``): one sparse layer (1; layer 0 is dense) over ``dump_steps`` steps,
    selections equal to the reference's beyond ties, aux fields and attention output close, real sparsity, and
    at least 90% of the rows exact."""
    from vortex_torch.engine.sgl.debug_dump import replay

    assert records, f"{what}: no decode step was dumped (VORTEX_DEBUG_DUMP did not reach the scheduler?)"
    assert {r["layer"] for r in records} == {1}, f"{what}: layer 0 is dense (layers_skip=[0]); layer 1 is sparse"
    assert len({r["step"] for r in records}) == dump_steps, f"{what}: dumped steps"
    total = sparse = exact = tied = 0
    worst_aux = worst_o = 0.0
    failures = []
    for rec in records:
        rep = replay(rec)
        total += rep.rows
        sparse += rep.rows_sparse
        exact += rep.rows_exact
        tied += rep.rows_tied
        worst_aux, worst_o = max(worst_aux, rep.aux_max_err), max(worst_o, rep.o_max_err)
        if not rep.ok:
            failures.append((rep.step, rep.layer, rep.mismatches[:3]))
    print(
        f"[replay {what}] {len(records)} records, {total} rows ({sparse} sparse): {exact} exact, {tied} equal up "
        f"to ties; max |aux - ref| {worst_aux:.2e}, max |o - ref| {worst_o:.2e}"
    )
    assert not failures, f"{what}: selections differ from the reference beyond ties: {failures}"
    assert sparse > 0, f"{what}: the workload must make rows sparse (prompts longer than 32 blocks)"
    assert worst_aux < 2e-2, f"{what}: aux fields differ from forward_cache recomputed on the host"
    assert worst_o < 2e-2, f"{what}: sparse attention output differs from the reference over the same blocks"
    assert exact >= 0.9 * total, f"{what}: too many rows differ (even if within the tie tolerance)"


# -- SGLang HTTP servers ------------------------------------------------------------------------------------------
SERVER_STARTUP_S = 420


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def http_server(log: Path, vortex: dict[str, Any] | None, mem_fraction: float = 0.5) -> Iterator[str]:
    """``python -m sglang.launch_server`` on the tiny model (FlashInfer, page 16), with ``--vortex-config
    <vortex>`` unless None (plain SGLang); yields its base URL once ``/health_generate`` answers, and stops the
    whole process group afterwards (its log's tail printed). Fails the test if it exits or is not healthy
    within :data:`SERVER_STARTUP_S`."""
    import json
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", tiny_model(), "--host", "127.0.0.1",
        "--port", str(port), "--attention-backend", "flashinfer", "--page-size", "16",
        "--cuda-graph-max-bs-decode", "4", "--mem-fraction-static", str(mem_fraction),
        *(["--vortex-config", json.dumps(vortex)] if vortex is not None else []),
    ]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"launch_server exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health_generate", timeout=30) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail(f"launch_server not healthy after {SERVER_STARTUP_S}s:\n{log.read_text()[-6000:]}")
            time.sleep(2)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
        print(log.read_text()[-3000:])
