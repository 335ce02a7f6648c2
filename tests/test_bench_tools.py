"""The tools that produce the numbers the docs show: flows_bench.py times dense FlashInfer on separate K and V
(the same pool the sparse step reads) and records the HBM floor; gen_flow_index.py run on a CPU keeps the
committed GPU column; decode_step_bench.py's GQA and MLA cases run the step the reference runtime runs, and
its dense MLA baseline attends every token."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]


bench = load_tool(ROOT / "tools" / "bench" / "flows_bench.py")
index = load_tool(ROOT / "tools" / "gen_flow_index.py")


class FakeFlashInfer:
    """Records what the dense baseline hands to FlashInfer's batch decode wrapper."""

    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def BatchDecodeWithPagedKVCacheWrapper(self, ws: torch.Tensor, layout: str, **kw: Any) -> Any:  # noqa: N802
        calls = self.calls
        calls["layout"] = layout
        return SimpleNamespace(
            plan=lambda *a, **k: calls.update(plan=a),
            run=lambda q, kv: calls.update(q=q, kv=kv),
        )


def test_dense_flashinfer_reads_separate_k_and_v_of_the_sparse_pool() -> None:
    batch, pages_per_req, bs, hkv, d = 2, 3, 16, 2, 8
    k = torch.randn((batch * pages_per_req + 1) * bs, hkv, d)
    v = torch.randn_like(k)
    fi = FakeFlashInfer()
    step = bench.dense_flashinfer_step(fi, k, v, torch.randn(batch, 4 * hkv, d), batch=batch,
                                       pages_per_request=pages_per_req, block_size=bs, num_q_heads=4 * hkv)  # fmt: skip
    step()
    k_pages, v_pages = fi.calls["kv"]
    assert fi.calls["layout"] == "NHD"
    assert k_pages.shape == v_pages.shape == (batch * pages_per_req + 1, bs, hkv, d)
    assert k_pages.data_ptr() == k.data_ptr() and v_pages.data_ptr() == v.data_ptr()  # views of the pool
    assert k_pages.data_ptr() != v_pages.data_ptr(), "K and V must be different tensors"
    indptr, indices = fi.calls["plan"][:2]
    assert indptr.tolist() == [0, 3, 6] and indices.tolist() == list(range(1, 7))  # page 0 is never used


def test_floor_flags_a_dense_time_that_reads_half_the_bytes() -> None:
    # the 2026-11-25 run: 32k x batch 32, 8 KV heads, D 128, bf16; copy bandwidth 3008.3 GB/s
    floor = bench.floor_us(bench.dense_bytes(32, 32768, 8, 128), 3008.3)
    assert bench.dense_bytes(32, 32768, 8, 128) == 2**32
    assert floor == pytest.approx(1427.7, abs=0.1)
    assert bench.below_floor(704.5, floor)  # K passed as V: half the bytes, an impossible time
    assert not bench.below_floor(1399.9, floor)  # the indexer bench's dense FlashInfer: plausible
    assert bench.sparse_step_bytes(10, 4, 256, 16, 128) == 10 * 256 + 4 * 16 * 128 * 2 * 2


GPU_RUN = {
    "device": "GPU X", "date": "2030-01-01", "setup": {"ctx": 32768, "batch": 32},
    "copy_bandwidth_gbs": 3000.0, "dense_kv": bench.DENSE_KV, "dense_flashinfer_us": 1500.0,
    "dense_floor_us": 1431.7, "dense_flashinfer_below_floor": False,
    "flows": {"block_sparse_attention": {"step_us": 180.0, "kernels_per_layer": 2, "step_floor_us": 120.0}},
}  # fmt: skip


def test_gpu_text_hides_a_dense_time_from_a_run_that_read_k_as_v() -> None:
    committed = index.latest_gpu_results()
    assert committed is not None and "dense_kv" not in committed  # the 2026-11-25 run, before the fix
    text = index.gpu_step_text(committed, "block_sparse_attention")
    assert text.startswith("184.6 µs/layer (2 indexer kernels; dense FlashInfer: to be re-measured")
    assert "704.5" not in text
    fixed = index.gpu_step_text(GPU_RUN, "block_sparse_attention")
    assert fixed == ("180.0 µs/layer (2 indexer kernels, HBM floor 120.0 µs; dense FlashInfer 1500.0 µs, HBM floor "
                     "1431.7 µs; GPU X, 2030-01-01, 32k x batch 32)")  # fmt: skip
    assert "1500.0" not in index.gpu_step_text({**GPU_RUN, "dense_flashinfer_below_floor": True}, "block_sparse_attention")
    assert index.gpu_step_text(GPU_RUN, "streaming_llm") is None
    assert index.gpu_column("streaming_llm", GPU_RUN, {"gpu_step_time": "kept"}) == "kept"
    assert index.gpu_column("streaming_llm", None, None) == index.NOT_MEASURED


@pytest.fixture
def contrib_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The contrib package's READMEs and RESULTS.md files in a scratch copy the generator writes to."""
    src = index.CONTRIB
    dst = tmp_path / "vortex-flows-contrib"
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.endswith(".py") or n == "tests"])
    monkeypatch.setattr(index, "CONTRIB", dst)
    monkeypatch.setattr(index, "SRC", dst / "src" / "vortex_flows_contrib")
    return dst


def _results(contrib: Path, flow: str) -> dict[str, Any]:
    text = (contrib / "src" / "vortex_flows_contrib" / flow / "RESULTS.md").read_text()
    match = index.RESULTS_JSON.search(text)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.mark.slow
@pytest.mark.parametrize("gpu_dir", ["committed", "empty"])
def test_cpu_regeneration_keeps_the_gpu_column(contrib_copy: Path, tmp_path: Path, gpu_dir: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    flow = "block_sparse_attention"
    before = _results(contrib_copy, flow)["gpu_step_time"]
    assert "µs/layer" in before
    if gpu_dir == "empty":  # no GPU JSON: the value RESULTS.md had stays
        (tmp_path / "gpu").mkdir()
        monkeypatch.setattr(index, "GPU_RESULTS", tmp_path / "gpu")
        expected = before
    else:  # the committed GPU JSON: its number, rendered by today's rules
        committed = index.latest_gpu_results()
        assert committed is not None
        expected = index.gpu_step_text(committed, flow)
    assert index.main(["--flows", flow, "--context", "2048"]) == 0
    after = _results(contrib_copy, flow)
    assert after["setup"]["context"] == 2048  # it did measure
    assert after["gpu_step_time"] == expected
    row = next(line for line in (contrib_copy / "README.md").read_text().splitlines() if f"[`{flow}`]" in line)
    assert row.endswith(f"| {expected} |")


# -- sglang_decode_bench.py: the e2e engine loop (no GPU: fake engines and a fake clock) ---------------------------

decode_bench = load_tool(ROOT / "tools" / "bench" / "sglang_decode_bench.py")


class Clock:
    """A clock that only moves when the fake engine works."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """``generate`` costs ``prefill_s`` the first time it sees a batch of prompts (then they are cached, as with
    SGLang's radix cache) plus ``step_s`` per new token; ``fail_ctx`` raises for that context."""

    def __init__(self, clock: Clock, prefill_s: float = 5.0, step_s: float = 0.01, fail_ctx: int = -1) -> None:
        self.clock, self.prefill_s, self.step_s, self.fail_ctx = clock, prefill_s, step_s, fail_ctx
        self.cached: set[int] = set()
        self.calls: list[tuple[int, int, int]] = []
        self.flushes = self.shutdowns = 0

    def generate(self, input_ids: list[list[int]], sampling_params: dict[str, Any]) -> None:
        ctx = len(input_ids[0])
        if ctx + 72 == self.fail_ctx:  # prompts are ctx - steps(64) - 8 long
            raise RuntimeError("out of memory")
        key = hash(tuple(input_ids[0][:16]))
        if key not in self.cached:
            self.clock.now += self.prefill_s
            self.cached.add(key)
        self.clock.now += 0.001 + sampling_params["max_new_tokens"] * self.step_s
        self.calls.append((ctx, len(input_ids), sampling_params["max_new_tokens"]))

    def flush_cache(self) -> bool:
        self.flushes += 1
        self.cached.clear()
        return True

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_decode_time_excludes_prefill_and_prompts_depend_on_the_case_only() -> None:
    clock = Clock()
    eng = FakeEngine(clock, prefill_s=30.0, step_s=0.02)
    rec = decode_bench.run_case(eng, 4096, 3, 64, clock)
    assert rec["tok_per_s"] == pytest.approx(3 * 64 / (64 * 0.02), rel=1e-3)  # 30 s of prefill not in it
    assert rec["prefill_s"] == pytest.approx(30.0 + 0.001 + 2 * 0.02)
    assert [c[2] for c in eng.calls] == [2, 9, 1, 65, 1, 65, 1, 65]  # prefill, warm-up, 3 x (t(1), t(steps + 1))
    assert rec["decode_s_runs"] == [pytest.approx(64 * 0.02)] * 3
    assert decode_bench.prompt_ids(4096, 3, 64) == decode_bench.prompt_ids(4096, 3, 64)
    assert len(decode_bench.prompt_ids(4096, 3, 64)[0]) == 4096 - 64 - 8


class JitteryEngine(FakeEngine):
    """A :class:`FakeEngine` whose decode steps cost ``step_s`` times the next factor of ``slow`` per call."""

    def __init__(self, clock: Clock, slow: list[float], pool: int | None = None) -> None:
        super().__init__(clock, prefill_s=1.0, step_s=0.01)
        self.slow, self.pool = list(slow), pool

    def generate(self, input_ids: list[list[int]], sampling_params: dict[str, Any]) -> None:
        before = self.clock.now
        super().generate(input_ids, sampling_params)
        factor = self.slow.pop(0) if self.slow else 1.0
        self.clock.now = before + (self.clock.now - before) * factor

    def get_server_info(self) -> dict[str, Any]:
        return {"max_total_num_tokens": self.pool}


def test_decode_time_is_the_median_of_repeated_timings() -> None:
    """One slow timing (a host hiccup: 3x the steps' time) does not move tok/s; its spread is recorded, and the
    e2e row carries the slowest over the fastest timing."""
    clock = Clock()
    # prefill, warm-up, then (t1, tn) x 3 with the second tn three times slower
    rec = decode_bench.run_case(JitteryEngine(clock, [1, 1, 1, 1, 1, 3, 1, 1]), 2048, 1, 32, clock, repeats=3)
    fast = 0.001 + 33 * 0.01 - (0.001 + 0.01)
    assert rec["decode_s"] == pytest.approx(fast, abs=1e-3)
    assert rec["tok_per_s"] == pytest.approx(32 / fast, rel=1e-2)
    assert max(rec["decode_s_runs"]) > 2.5 * fast
    rows = decode_bench.e2e_rows({"engines": {"plain": [rec], "vortex512": [{**rec, "decode_s_runs": [1.0, 1.1]}]}})
    assert rows[0]["plain_spread"] == pytest.approx(max(rec["decode_s_runs"]) / min(rec["decode_s_runs"]) - 1,
                                                    abs=1e-3)  # fmt: skip
    assert rows[0]["vortex_spread"] == pytest.approx(0.1)
    one = decode_bench.run_case(JitteryEngine(clock, []), 2048, 1, 32, clock, repeats=1)
    assert len(one["decode_s_runs"]) == 1
    assert decode_bench.e2e_rows({"engines": {"plain": [one], "vortex512": [one]}})[0]["vortex_spread"] is None


def test_a_case_larger_than_the_kv_pool_is_skipped_with_the_reason() -> None:
    """An engine whose pool cannot hold batch x ctx tokens does not time that case (SGLang would re-prefill
    evicted prompts); the smaller cases run and every record carries the pool's size. An engine that reports no
    pool size runs every case and records None."""
    clock = Clock()
    guard = decode_bench.TimeGuard(3600, clock)
    out: list[dict[str, Any]] = []
    decode_bench.engine_cases(lambda: JitteryEngine(clock, [], pool=300_000), "plain", [(8192, 16), (32768, 16)],
                              [], 32, guard, engines_after=0, out=out, clock=clock,
                              progress=lambda n, r: None)  # fmt: skip
    assert "tok_per_s" in out[0] and out[0]["kv_pool_tokens"] == 300_000
    assert "tok_per_s" not in out[1]
    assert out[1]["skipped"] == ("does not fit the engine's KV pool: 16 x 32768 = 524288 tokens, the pool holds "
                                 "300000 (a GPU with more memory, or fewer requests)")  # fmt: skip
    out = []
    decode_bench.engine_cases(lambda: FakeEngine(clock), "plain", [(32768, 16)], [], 32, guard, engines_after=0,
                              out=out, clock=clock, progress=lambda n, r: None)  # fmt: skip
    assert "tok_per_s" in out[0] and out[0]["kv_pool_tokens"] is None


def _trace(path: Path, kernels: list[tuple[str, float]]) -> None:
    """A chrome trace as torch.profiler writes it (gzip): one complete kernel event per ``(name, dur)``, plus a
    CPU op and a memcpy that are not kernels."""
    events: list[dict[str, Any]] = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 500.0},
                                    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "dur": 70.0}]  # fmt: skip
    events += [{"ph": "X", "cat": "kernel", "name": n, "dur": d, "ts": i} for i, (n, d) in enumerate(kernels)]
    with gzip.open(path, "wt") as fh:
        json.dump({"traceEvents": events}, fh)


def test_gpu_trace_sums_kernels_by_name(tmp_path: Path) -> None:
    """Kernels (and only kernels) summed by their name without template arguments, costliest first, the tail
    summed in one row, per step too; a file that is no trace is an error naming it."""
    import gpu_trace

    path = tmp_path / "x.trace.json.gz"
    fi = "flashinfer::BatchDecodeWithPagedKVCacheKernel<128, 8, (PosEncodingMode)0>"
    _trace(path, [(fi, 6.0), ("indexer", 4.0), ("_select_blocks_kernel", 3.0), (fi, 6.0), ("indexer", 4.0),
                  ("nvjet_tst", 1.0)])  # fmt: skip
    got = gpu_trace.kernel_summary(gpu_trace.load_trace(str(path)), steps=2, top=2)
    assert got["kernel_us_per_step"] == 12.0 and got["launches_per_step"] == 3.0
    assert [(r["name"], r["launches"], r["us_per_step"]) for r in got["kernels"]] == [
        ("flashinfer::BatchDecodeWithPagedKVCacheKernel", 2, 6.0), ("indexer", 2, 4.0),
        ("(others: 2 kernels)", 2, 2.0)]  # fmt: skip
    assert gpu_trace.newest_trace(str(tmp_path), 0.0) == str(path)
    assert gpu_trace.main([str(path), "--steps", "2"]) == 0
    bad = tmp_path / "bad.trace.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.trace\.json: not a readable chrome trace"):
        gpu_trace.load_trace(str(bad))
    assert gpu_trace.main([str(bad)]) == 2


class ProfilingEngine(FakeEngine):
    """A :class:`FakeEngine` with SGLang's ``start_profile`` / ``stop_profile``: stopping writes a trace of one
    kernel launch per decode step run while profiling into the requested ``output_dir``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.profiling: dict[str, Any] | None = None

    def start_profile(self, output_dir: str, activities: list[str]) -> None:
        assert activities == ["GPU"]
        self.profiling = {"dir": output_dir, "from": len(self.calls)}

    def stop_profile(self) -> None:
        assert self.profiling is not None
        new = sum(c[2] for c in self.calls[self.profiling["from"]:])
        _trace(Path(self.profiling["dir"]) / "p.trace.json.gz", [("indexer", 5.0)] * new)
        self.profiling = None


def test_profiled_case_records_kernels_per_step(tmp_path: Path) -> None:
    """``--profile-steps``: after the timed runs, that many more decode steps under the engine's profiler; the
    trace it wrote is summed into the record's ``profile``; an engine whose profiler fails keeps its tok/s."""
    clock = Clock()
    rec = decode_bench.run_case(ProfilingEngine(clock), 4096, 2, 64, clock, profile_steps=4,
                                profile_dir=str(tmp_path / "t"))  # fmt: skip
    assert "tok_per_s" in rec and rec["profile"]["trace"] == "p.trace.json.gz"
    assert rec["profile"]["kernels"] == [{"name": "indexer", "launches": 5, "us": 25.0, "us_per_step": 6.25}]
    rec = decode_bench.run_case(FakeEngine(clock), 4096, 2, 64, clock, profile_steps=4, profile_dir=str(tmp_path))
    assert "tok_per_s" in rec and "start_profile" in rec["profile"]["error"]


def test_report_lists_profiled_cases(tmp_path: Path) -> None:
    """The printed report has one row per profiled case: its kernel time and launches per step, the costliest
    kernels, or why its profile failed."""
    clock = Clock()
    ok = decode_bench.run_case(ProfilingEngine(clock), 2048, 1, 8, clock, profile_steps=2,
                               profile_dir=str(tmp_path))  # fmt: skip
    res = {"gpu": "G", "date": "d", "kernels": [], "e2e": [],
           "engines": {"vortex512": [ok, {**ok, "profile": {"error": "no trace"}}]}}  # fmt: skip
    text = decode_bench.report(res)
    assert "| vortex512 | 2048 | 1 | 7.5 | 1.5 | indexer 7.5 |" in text
    assert "| vortex512 | 2048 | 1 | profile failed: no trace | | |" in text


def run_engines(plan: list[str], budgets: list[int], cases: list[tuple[int, int]], optional: list[tuple[int, int]],
                minutes: float, start_s: float = 100.0, **engine_kw: Any) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """main()'s engine loop over fake engines that take ``start_s`` to start (one timing per case: the guard's
    arithmetic in the tests below counts one)."""
    clock = Clock()
    guard = decode_bench.TimeGuard(minutes * 60, clock)
    result: dict[str, Any] = {"engines": {}, "gpu": "GPU X", "date": "2030-01-01"}
    lines: list[str] = []
    engines = decode_bench.engine_plan(plan, budgets)
    made: list[FakeEngine] = []

    def make() -> FakeEngine:
        clock.now += start_s
        made.append(FakeEngine(clock, **engine_kw))
        return made[-1]

    for i, (name, _cfg, _overlap) in enumerate(engines):
        result["engines"][name] = []
        decode_bench.engine_cases(make, name, cases, optional, 64, guard, engines_after=len(engines) - 1 - i,
                                  out=result["engines"][name], clock=clock, repeats=1,
                                  progress=lambda n, r: lines.append(f"{n} {r.get('ctx')} {sorted(r)}"))  # fmt: skip
    assert all(e.shutdowns == 1 for e in made)
    return result, lines


def test_one_engine_per_kind_budget_and_overlap_serves_every_case() -> None:
    cases = [(2048, 1), (2048, 16), (32768, 16)]
    result, lines = run_engines(["plain", "vortex", "plain:overlap", "vortex:overlap"], [512, 2048], cases, [], 60)
    assert list(result["engines"]) == ["plain", "vortex512", "vortex2048", "plain:overlap", "vortex512:overlap",
                                       "vortex2048:overlap"]  # fmt: skip
    assert len(lines) == 6 * 3  # a progress line (and a JSON write) per case
    for recs in result["engines"].values():
        assert [(r["ctx"], r["batch"]) for r in recs] == cases and all("tok_per_s" in r for r in recs)
    rows = decode_bench.e2e_rows(result)
    assert len(rows) == 4 * 3
    row = next(r for r in rows if r["overlap"] and r["budget_tokens"] == 2048 and r["ctx"] == 32768)
    assert set(plot_keys := ("ctx", "batch", "budget_tokens", "overlap", "plain_tok_s", "vortex_tok_s")) <= set(row)
    plain_on = result["engines"]["plain:overlap"][2]["tok_per_s"]
    assert row["plain_tok_s"] == plain_on and row["plain_overlap_off_tok_s"] == result["engines"]["plain"][2]["tok_per_s"]
    assert row["gpu"] == "GPU X" and all(r[k] is not None for r in rows for k in plot_keys)


def test_pdl_engines_are_vortex_engines_with_enable_pdl_compared_to_the_same_plain() -> None:
    engines = decode_bench.engine_plan(["plain", "vortex", "vortex:pdl", "plain:overlap", "vortex:overlap:pdl"], [512])
    assert [(n, None if c is None else c["enable_pdl"], o) for n, c, o in engines] == [
        ("plain", None, False), ("vortex512", False, False), ("vortex512:pdl", True, False),
        ("plain:overlap", None, True), ("vortex512:overlap:pdl", True, True),
    ]  # fmt: skip
    dense = decode_bench.engine_plan(["vortex:dense8192", "vortex:overlap:pdl:dense4096"], [512])
    assert [(n, c["sparse_decode_min_tokens"], c["enable_pdl"], o) for n, c, o in dense] == [
        ("vortex512:dense8192", 8192, False, False), ("vortex512:overlap:pdl:dense4096", 4096, True, True),
    ]  # fmt: skip
    assert "sparse_decode_min_tokens" not in engines[1][1]  # the quick start's config, untouched
    for bad in ("plain:pdl", "vortex:pdl:pdl", "vortex:pdl:fast", "plain:dense4096", "vortex:dense", "vortex:dense0",
                "vortex:dense4096:dense8192", "vortex:dense-1"):  # fmt: skip
        with pytest.raises(SystemExit, match=f"unknown {bad!r}"):
            decode_bench.engine_plan([bad], [512])
    result, _ = run_engines(["plain", "vortex:pdl", "plain:overlap", "vortex:overlap:pdl"], [512], [(2048, 1)], [], 60)
    rows = {(r["overlap"], r["pdl"]): r for r in decode_bench.e2e_rows(result)}
    assert set(rows) == {(False, True), (True, True)}
    assert {r["sparse_decode_min_tokens"] for r in rows.values()} == {0}
    dense_run, _ = run_engines(["plain", "vortex", "vortex:dense8192"], [512], [(2048, 1)], [], 60)
    by_threshold = {r["sparse_decode_min_tokens"]: r for r in decode_bench.e2e_rows(dense_run)}
    assert set(by_threshold) == {0, 8192}  # both against the same plain engine
    assert {r["plain_tok_s"] for r in by_threshold.values()} == {dense_run["engines"]["plain"][0]["tok_per_s"]}
    assert by_threshold[8192]["vortex_tok_s"] == dense_run["engines"]["vortex512:dense8192"][0]["tok_per_s"]
    assert rows[False, True]["plain_tok_s"] == result["engines"]["plain"][0]["tok_per_s"]
    assert rows[True, True]["plain_tok_s"] == result["engines"]["plain:overlap"][0]["tok_per_s"]


def test_mla_models_get_an_mla_flow_unless_one_is_named() -> None:
    quick = decode_bench.vortex_base(None, mla=False)
    assert quick is decode_bench.VORTEX and quick["module_name"] == "custom_sparse_attention"
    mla = decode_bench.vortex_base(None, mla=True)
    assert (mla["module_path"], mla["module_name"]) == (None, "rope_aware_block_sparse_mla")
    named = decode_bench.vortex_base("quest_mla", mla=True)
    assert (named["module_path"], named["module_name"]) == (None, "quest_mla")
    assert named["topk_val"] == decode_bench.VORTEX["topk_val"] and named["layers_skip"] == [0]
    (_, cfg, _), = decode_bench.engine_plan(["vortex"], [512], mla)
    assert cfg is not None and cfg["module_name"] == "rope_aware_block_sparse_mla" and cfg["topk_val"] == 30


def test_a_failing_case_is_recorded_and_the_next_one_runs() -> None:
    result, _ = run_engines(["plain"], [512], [(2048, 1), (8192, 1), (32768, 1)], [], 60, fail_ctx=8192)
    recs = result["engines"]["plain"]
    assert "tok_per_s" in recs[0] and "out of memory" in recs[1]["error"] and "tok_per_s" in recs[2]


def test_the_guard_skips_what_does_not_fit_and_says_why() -> None:
    # 100 s per start, ~25.8 s per case: engine 1 ends at 177 s; engine 2 is up at 277 s, its first case (measured
    # on engine 1) fits a 320 s deadline, the second no longer does
    cases = [(2048, 1), (8192, 1), (32768, 1)]
    result, _ = run_engines(["plain", "vortex"], [512], cases, [], 320 / 60, prefill_s=25.0)
    plain, vortex = result["engines"]["plain"], result["engines"]["vortex512"]
    assert all("tok_per_s" in r for r in plain)
    assert "tok_per_s" in vortex[0] and all(r["skipped"].startswith("time budget") for r in vortex[1:])
    rows = decode_bench.e2e_rows(result)
    assert [r["vortex_tok_s"] is None for r in rows] == [False, True, True]
    # an engine whose start no longer fits is not started (~117 s per engine, 250 s): its cases are recorded
    result, _ = run_engines(["plain", "vortex"], [512, 2048], cases, [], 250 / 60, prefill_s=5.0)
    assert all("tok_per_s" in r for r in result["engines"]["vortex512"])
    assert all("engine not started" in r["skipped"] for r in result["engines"]["vortex2048"])


def test_optional_cases_run_on_every_engine_or_not_at_all() -> None:
    cases, big = [(2048, 1), (8192, 1)], [(131072, 4)]
    result, _ = run_engines(["plain", "vortex"], [512], cases, big, 20.0, prefill_s=5.0)
    assert all("tok_per_s" in recs[-1] and recs[-1]["optional"] for recs in result["engines"].values())
    # not enough for both engines: skipped on the first, and therefore on the second too
    result, _ = run_engines(["plain", "vortex"], [512], cases, big, 6.0, prefill_s=5.0)
    assert all(recs[-1]["optional"] and "time budget" in recs[-1]["skipped"] for recs in result["engines"].values())
    assert all("tok_per_s" in r for recs in result["engines"].values() for r in recs[:-1])


def test_json_is_replaced_whole_and_the_dummy_model_serves_the_longest_case(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    decode_bench.write_json(str(out), [1])
    decode_bench.write_json(str(out), [{"ctx": 2}])
    assert json.loads(out.read_text()) == [{"ctx": 2}] and [p.name for p in tmp_path.iterdir()] == ["e2e.json"]  # no .tmp left
    src = tmp_path / "model"
    src.mkdir()
    cfg = {"num_hidden_layers": 1, "max_position_embeddings": 40960, "layer_types": ["full_attention"]}
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "tokenizer.json").write_text("{}")
    model = Path(decode_bench.dummy_model(str(src), cfg, 36, 131072 + 64, parent=str(tmp_path)))
    got = json.loads((model / "config.json").read_text())
    assert got["num_hidden_layers"] == 36 and got["layer_types"] == ["full_attention"] * 36
    assert got["max_position_embeddings"] == 131136
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "tokenizer.json"]
    kept = json.loads((Path(decode_bench.dummy_model(str(src), cfg, 36, 32768 + 64, str(tmp_path))) / "config.json").read_text())
    assert kept["max_position_embeddings"] == 40960  # long enough already: the context is not changed
    with pytest.raises(SystemExit, match="unknown 'vortex:fast'"):
        decode_bench.engine_plan(["vortex:fast"], [512])


def test_cases_are_checked_before_any_gpu_work() -> None:
    """``--cases``: CTXxBATCH with positive integers, each once (a repeat would be paired with the other engine's
    last run of it); a bad one is one line naming the flag, exit 2, from the command line."""
    assert decode_bench.parse_cases(["2048x1", "32768X16"], "--cases") == [(2048, 1), (32768, 16)]
    for bad, why in ((["2kx1"], "not CTXxBATCH"), (["2048x0"], "not CTXxBATCH"), (["2048x1", "2048x1"], "twice")):
        with pytest.raises(ValueError, match=why):
            decode_bench.parse_cases(bad, "--cases")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "sglang_decode_bench.py"), "--cases",
                           "2048x1", "2048x1"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--cases: '2048x1' given twice" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


# -- decode_step_bench.py: its GQA and MLA cases built on the CPU (Triton's interpreter) ---------------------

step_bench = load_tool(ROOT / "tools" / "bench" / "decode_step_bench.py")
CPU_CTX, CPU_BATCH, CPU_BUDGET, CPU_LAYERS = 256, 2, 64, 2  # 16 blocks per row, 4 selected

interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the cases on the CPU, in Triton's interpreter (on CUDA: the GPU suite)"
)


def bench_case(geometry: str, kv_dtype: torch.dtype = torch.bfloat16) -> Any:
    torch.manual_seed(0)
    cls = step_bench.MLACase if geometry == "mla" else step_bench.Case
    return cls(CPU_CTX, CPU_BATCH, CPU_BUDGET, CPU_LAYERS, device="cpu", kv_dtype=kv_dtype)


def replay(case: Any) -> tuple[Any, Any]:
    """The reference runtime fed ``case``'s pool: each request's K/V (latents) in position order, every layer
    copy, the flow and budget of the case; returns it with its plan of the step."""
    from vortex_torch.flow import build_vflow
    from vortex_torch.flow.runtime import ReferenceRuntime, RuntimeConfig
    from vortex_torch.flow.runtime.mla import MLAReferenceRuntime

    cfg = case.prepared.config
    flow = build_vflow(cfg.module_name, cfg.module_path)
    rc = RuntimeConfig(topk_val=cfg.topk_val, block_size=step_bench.BS, page_size=step_bench.PAGE)
    pages = case.num_pages + 1
    ref: Any
    if case.geometry == "mla":
        rank, rope = step_bench.MLA_RANK, step_bench.MLA_ROPE
        ref = MLAReferenceRuntime(flow, case.layers, case.num_q_heads, rank, rope, config=rc, num_pages=pages)
    else:
        group = case.num_q_heads // case.num_kv_heads
        ref = ReferenceRuntime(flow, case.layers, case.num_kv_heads, case.head_dim, group, config=rc,
                               num_pages=pages)  # fmt: skip
    rids = list(range(case.batch))
    for r in rids:
        ref.add_request(r)
    slots = torch.cat([case.req_to_token[r + 1, : case.ctx] for r in rids]).long()
    for layer in range(case.layers):
        if case.geometry == "mla":
            ref.append_latent(layer, rids, case.latent[layer][slots, 0], [case.ctx] * case.batch)
        else:
            ref.append_kv(layer, rids, case.k[layer][slots], case.v[layer][slots], [case.ctx] * case.batch)
    return ref, ref.plan(rids)


@interpreter_only
@pytest.mark.parametrize("geometry", ["gqa", "mla"])
def test_bench_case_decodes_as_the_reference_runtime(geometry: str) -> None:
    """What the bench times is the real sparse step: per layer copy, the case's ``layer(i)`` (cache update
    folded into the compiled scoring, selection, sparse attention over the shuffled pages) summarises the
    blocks its new tokens complete, selects the blocks the reference runtime selects from the same K/V
    (latents) and returns its output."""
    case = bench_case(geometry)
    assert case.core.executor.folds_cache_update  # the compiled path, not the reference executor
    rows = CPU_BATCH * case.num_kv_heads
    assert 0 < case.selected_blocks < case.dense_blocks == rows * CPU_CTX // step_bench.BS
    ref, plan = replay(case)
    # the blocks the step's new tokens complete (one per row): their summaries must be rewritten by the step
    heads = torch.arange(case.num_kv_heads)
    assert bool(case.layout.completes_block(case.loc).all())
    done = case.layout.block_id(case.loc[:, None], heads[None, :]).flatten()
    for layer in range(case.layers):
        aux = case.aux.fields(layer)
        summaries = {name: t[done].clone() for name, t in aux.items()}
        for t in aux.values():
            t[done] = 0
        o = case.layer(layer)
        for name, t in aux.items():
            assert torch.equal(t[done], summaries[name]), f"{geometry}: new blocks left unsummarised"
        q = case.q[layer].reshape(case.batch, case.num_q_heads, case.head_dim)
        want = ref.decode_attention(layer, q, plan, sm_scale=case.sm_scale)
        p = case.plan
        dptr, sptr = p.dense_indptr.tolist(), p.sel_indptr.tolist()
        for row in range(rows):
            dense = p.dense_indices[dptr[row] : dptr[row + 1]].tolist()
            got = [dense.index(x) for x in p.sel_indices[sptr[row] : sptr[row + 1]].tolist()]
            want_pos = ref.last_selection[layer].row(row // case.num_kv_heads, row % case.num_kv_heads)
            assert got == want_pos, f"{geometry} layer {layer} row {row}: {got} != {want_pos}"
        assert o.shape == (rows, case.num_q_heads // case.num_kv_heads, case.out_dim)
        torch.testing.assert_close(o.reshape(want.shape).float(), want.float(), rtol=2e-2, atol=2e-2)


@interpreter_only
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_mla_sweep_launches_each_variant(kv_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--mla --sweep attention`` (bf16 or fp8 latents, ``--kv-dtype``): every variant launches MLA attention
    with its tile, warps and split count (the interpreter runs them; ``graph_us`` is swapped for one plain call
    per layer); none is recorded as failed (a launch that raises is logged and recorded with ``us`` None)."""
    case = bench_case("mla", kv_dtype)
    assert case.latent[0].dtype == kv_dtype and case.kv_elt == kv_dtype.itemsize
    assert ("k_scale" in case.fields[0]) == (kv_dtype != torch.bfloat16)
    calls: list[int] = []

    def once(fns: list[Any]) -> float:
        calls.append(len(fns))
        for f in fns:
            f()
        return 1.0

    monkeypatch.setattr(step_bench, "graph_us", once)
    rows = step_bench.mla_sweep_variants(case, grid=((16, 32), (4,), (2,)))
    assert [r["tile_tokens"] for r in rows] == [16, 32] * (len(rows) // 2) and all(r["us"] == 1.0 for r in rows)
    assert calls == [case.layers] * len(rows)


@pytest.mark.parametrize("geometry", ["gqa", "mla"])
def test_indexer_sweep_runs_each_variant(geometry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--sweep indexer`` (GQA, and MLA too): every scoring variant (default chunk, half and double it, warps,
    programs per SM, the selection fused) and the selection alone run and are recorded, none failed, and the
    case's own executor is put back afterwards (the interpreter runs them; ``graph_us`` is one plain call)."""
    case = bench_case(geometry)
    own = case.core.executor
    monkeypatch.setattr(step_bench, "graph_us", lambda fns: [f() for f in fns] and 1.0)
    rows = step_bench.indexer_sweep(case)
    scoring = [r for r in rows if r["kind"] == "indexer"]
    default = own.launch_config()[0]
    assert {r["block_chunk"] for r in scoring} == {0, default // 2, 2 * default}
    assert [r["fuse_selection"] for r in scoring].count(True) == 1
    assert [r["block_chunk"] for r in scoring if r["prefetch_indices"]] == [0, 2 * default]
    only = [(r["warps"], r["bits_per_pass"]) for r in rows if r["kind"] == "select_only"]
    assert only == [(2, 1), (4, 1), (8, 1), (16, 1), (4, 2), (8, 2), (16, 2)]
    assert all(r["us"] == 1.0 for r in rows), [r for r in rows if r["us"] != 1.0]
    assert case.core.executor is own


class FakeFlashInferMLA:
    """``flashinfer.mla`` whose ``BatchMLAPagedAttentionWrapper`` computes what FlashInfer 0.6.15's docstrings
    say the real one does (plan: CSR of pages of ``page_size`` tokens per request; run: softmax over ``(q_nope
    · ckvᵀ + q_pe · kpeᵀ) * sm_scale``, weights times ``ckv``), recording the arguments."""

    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def BatchMLAPagedAttentionWrapper(self, ws: torch.Tensor, backend: str = "auto") -> Any:  # noqa: N802
        calls = self.calls
        calls["backend"] = backend

        def run(q_nope: torch.Tensor, q_pe: torch.Tensor, ckv: torch.Tensor, kpe: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:  # fmt: skip
            calls["run"] = (q_nope, q_pe, ckv, kpe)
            _, kv_indptr, kv_indices, _, _, _, _, page_size, causal, sm_scale, _, _ = calls["plan"]
            assert page_size == 1 and not causal
            for b in range(q_nope.shape[0]):
                idx = kv_indices[kv_indptr[b] : kv_indptr[b + 1]].long()
                k_nope, k_pe = ckv[idx, 0].float(), kpe[idx, 0].float()
                logits = (q_nope[b].float() @ k_nope.T + q_pe[b].float() @ k_pe.T) * sm_scale
                out[b] = (torch.softmax(logits, dim=-1) @ k_nope).to(out.dtype)
            return out

        return SimpleNamespace(plan=lambda *a: calls.update(plan=a), run=run)


@interpreter_only
def test_dense_mla_baseline_attends_every_token_of_the_sparse_pool() -> None:
    """The dense baseline hands FlashInfer's MLA wrapper SGLang's arguments (token-level pages, the latent
    buffer's two column ranges as views), and they mean full attention over each request's tokens: a stand-in
    that does what the wrapper is documented to do matches the reference runtime's dense attention."""
    case = bench_case("mla")
    fi = FakeFlashInferMLA()
    steps = step_bench.dense_flashinfer_mla(case, fi)
    ref, plan = replay(case)
    heads, rank, rope = step_bench.MLA_HEADS, step_bench.MLA_RANK, step_bench.MLA_ROPE
    for layer, step in enumerate(steps):
        o = step()
        q_nope, q_pe, ckv, kpe = fi.calls["run"]
        latent = case.latent[layer]  # views of it, no copy
        assert ckv.data_ptr() == latent.data_ptr() and ckv.shape == (latent.shape[0], 1, rank)
        assert kpe.data_ptr() == latent.data_ptr() + rank * 2 and kpe.shape == (latent.shape[0], 1, rope)
        assert q_nope.shape == (CPU_BATCH, heads, rank) and q_pe.shape == (CPU_BATCH, heads, rope)
        want = ref.dense_attention(layer, case.q[layer], plan, sm_scale=case.sm_scale)
        torch.testing.assert_close(o.float(), want.float(), rtol=2e-2, atol=2e-2)
    q_indptr, kv_indptr, _, kv_lens, *shape = fi.calls["plan"]
    assert q_indptr.tolist() == [0, 1, 2] and kv_indptr.tolist() == [0, CPU_CTX, 2 * CPU_CTX]
    assert kv_lens.tolist() == [CPU_CTX] * CPU_BATCH
    assert shape == [heads, rank, rope, 1, False, case.sm_scale, torch.bfloat16, torch.bfloat16]
    assert fi.calls["backend"] == "auto"


@interpreter_only
@pytest.mark.parametrize("geometry", ["gqa", "mla"])
def test_bench_case_bytes_are_what_the_step_reads(geometry: str) -> None:
    """The floor's bytes: per token of a row GQA reads K and V of 128 bf16 each, MLA one latent row of 576
    bf16 (K, and V in its first 512 columns); every block's summaries (the quick-start flow's and
    rope_aware_block_sparse_mla's: one centroid row); q and o once."""
    case = bench_case(geometry)
    token, summary = (576 * 2, 576 * 2) if geometry == "mla" else (2 * 128 * 2, 128 * 2)
    assert case.bytes_dense() == CPU_BATCH * CPU_CTX * case.num_kv_heads * token
    assert case.bytes_attention() == case.selected_blocks * 16 * token
    q_o = CPU_BATCH * case.num_q_heads * (case.head_dim + case.out_dim) * 2
    assert case.bytes_sparse() == case.selected_blocks * 16 * token + case.dense_blocks * summary + q_o
    assert q_o == case.q[0].numel() * 2 + case.layer(0).numel() * 2


@interpreter_only
def test_mla_rows_have_the_gqa_rows_shape_and_a_dense_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_case`` on both geometries with the GPU timers replaced by one plain call each: the MLA row has the
    GQA row's keys (``geometry`` tells them apart), FlashInfer missing here is the row's ``flashinfer_error``
    (the sparse numbers stay), and the markdown table shows both."""
    monkeypatch.setattr(step_bench, "graph_us", lambda fns, iters=20: ([f() for f in fns], 1.0)[1])
    monkeypatch.setattr(step_bench, "launches", lambda fn: (fn(), 3)[1])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # no PDL run
    monkeypatch.setitem(step_bench.COPY_BANDWIDTH, "uint8", 1000.0)
    rows = {g: step_bench.run_case(bench_case(g), CPU_BUDGET, 1000.0, []) for g in ("gqa", "mla")}
    # GQA's row also times the layer with attention fused into the indexer (MLA attends with its own kernel)
    assert set(rows["gqa"]) - {"layer_fused_launches", "layer_fused_us"} == set(rows["mla"])
    assert rows["gqa"]["layer_fused_us"] == 1.0, rows["gqa"].get("layer_fused_error")
    for g, row in rows.items():
        assert row["geometry"] == g and row["layer_launches"] == row["plan_launches"] == 3 and row["step_us"] > 1
        assert row["dense_flashinfer_us"] is None and "flashinfer" in row["flashinfer_error"]
    assert rows["mla"]["flow"] == "rope_aware_block_sparse_mla" and rows["mla"]["kv_dtype"] == "bfloat16"
    assert rows["mla"]["bytes_dense"] == CPU_BATCH * CPU_CTX * 576 * 2
    text = step_bench.report({"gpu": "GPU X", "date": "2030-01-01", "copy_bandwidth_gbs": 1000.0,
                              "geometry": "mla", "flow": "rope_aware_block_sparse_mla",
                              "cases": [rows["mla"], {"ctx": 8192, "batch": 16, "error": "boom"}]})  # fmt: skip
    assert "DeepSeek-V2-Lite MLA geometry" in text and "rope_aware_block_sparse_mla" in text
    assert f"| {CPU_CTX} x {CPU_BATCH} | - (0) |" in text and "| 8192 x 16 | error: boom |" in text


def test_split_variants_spread_wider_when_the_gpu_is_underfilled() -> None:
    """Half / default / double, but at few short rows (8 rows x 2 splits on 132 SMs) 1x-8x the default."""
    assert step_bench.split_variants(4) == [2, 4, 8]
    assert step_bench.split_variants(1, 256, 132) == [1, 2]
    assert step_bench.split_variants(2, 8, 132) == [2, 4, 8, 16]
    assert step_bench.split_variants(16, 8, 132) == [16, 32, 64]


@interpreter_only
def test_ab_indexer_variants_select_what_the_built_executor_selects() -> None:
    """``tools/device/ab_indexer.py``'s variants are the same indexer: the un-hoisted scoring kernel (another
    source) and the 128-block chunk select the blocks the executor as built selects; the ``maxnreg`` variant
    only adds the launch option to the scoring kernel's launches."""
    ab = load_tool(ROOT / "tools" / "device" / "ab_indexer.py")
    case = bench_case("gqa")
    exs = ab.variants(case)
    assert exs["A_as_built"].source != exs["B_unhoisted"].source
    core, p = case.core, case.plan
    picks = {}
    for name in ("A_as_built", "B_unhoisted", "D_chunk128"):
        core.executor = exs[name]
        core.indexer_plan = exs[name].plan(case.batch * case.num_kv_heads, p.max_blocks_per_row, case.device)
        p.sel_indices.fill_(-1)  # what a variant does not write shows
        core.select(case.q[0], case.fields[0], p)
        picks[name] = p.sel_indices[: int(p.sel_indptr[-1])].sort().values.clone()
        assert picks[name].numel() > 0 and bool((picks[name] >= 0).all()), name
    assert torch.equal(picks["A_as_built"], picks["B_unhoisted"])
    assert torch.equal(picks["A_as_built"], picks["D_chunk128"])
    launched: list[tuple[Any, dict[str, Any]]] = []

    class Kernel:
        def __getitem__(self, grid: Any) -> Any:
            return lambda *a, **k: launched.append((grid, k))

    wrapped = ab.MaxNReg(type("M", (), {"indexer": Kernel(), "other": 7})(), 48)
    wrapped.indexer[(3, 1)](1, 2, BS0=64)
    assert launched == [((3, 1), {"BS0": 64, "maxnreg": 48})] and wrapped.other == 7


def test_replay_us_is_the_median_round_per_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one graph timer of the benches: per replay, the median of the rounds' means, so one slow round (a
    clock ramp, another process) does not move the number."""
    indexer_bench = load_tool(ROOT / "tools" / "bench" / "indexer_bench.py")
    clock = {"ms": 0.0}
    per_round_ms = iter([2.0, 2.2, 40.0, 2.1, 1.9])  # 10 replays per round; round 3 is a hiccup

    class Graph:
        replays = 0

        def replay(self) -> None:
            self.replays += 1

    class Event:
        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing
            self.at = 0.0

        def record(self) -> None:
            self.at = clock["ms"]

        def elapsed_time(self, other: Event) -> float:
            return other.at - self.at

    started = {"n": 0}
    original_record = Event.record

    def record(self: Event) -> None:
        started["n"] += 1
        if started["n"] % 2 == 0:  # the end event of a round: that round's time passed
            clock["ms"] += next(per_round_ms)
        original_record(self)

    monkeypatch.setattr(Event, "record", record)
    monkeypatch.setattr(indexer_bench.torch.cuda, "Event", Event)
    monkeypatch.setattr(indexer_bench.torch.cuda, "synchronize", lambda: None)
    graph = Graph()
    assert indexer_bench.replay_us(graph, iters=10, rounds=5) == pytest.approx(2.1 * 1000 / 10)
    assert graph.replays == 50
