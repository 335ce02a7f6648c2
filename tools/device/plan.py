"""The GPU plan of tools/device/README.md §4 as named steps: one ``run`` call per step, one command each.

    python3 tools/device/plan.py STEP [--budget-s S] [--dry-run]
    python3 tools/device/plan.py list
    python3 tools/device/plan.py ingest STEP FILES_AT      (here, after the call: into results/gpu/)

A step is a list of sub-commands of ``tools/device/remote.sh`` (a suite, a bench or a python command) run one
after the other. Each
one gets ``VORTEX_BUDGET_S``: its own cap, or what is left of the step's ``--budget-s`` (default 580, under the
call's 600 s limit) if that is less; one whose minimum no longer fits is skipped, and the summary says so.

A ``run`` call brings back at most 8 files, and remote.sh writes three or four per sub-command. So each
sub-command writes into ``/tmp/vortex-plan/STEP/NAME`` (remote.sh's ``OUT``), and after each one this script
packs that folder into ``$OUT/plan-STEP.tgz`` and writes ``$OUT/plan-STEP.md`` (every sub-command's
``result.md`` and how it ended): two files, and a call cut at its limit still brings back what finished. A file
over 8 MB (a profiler trace) is left out of the archive and named in the summary.

The steps, in the order that wastes least device time (the machine stays warm 30 s after a call, and a warm
machine skips SGLang's and FlashInfer's JIT):

- ``layer``: the one-layer GQA bench at budget 2048 with the indexer sweep (it decides the opt-in defaults:
  ``prefetch_indices``, ``bits_per_pass``, ``layer_fused_us``), the scoring-kernel A/B (``ab_indexer.py``), the
  bench at the e2e budget 512, then the kernel suite;
- ``layer2``: the HBM probes (``bw_probe.py``: is a 2 KiB row gather, all KV heads of a page, faster than
  256 B rows?), the attention sweep at 32k x 32 and at 2k x 1 (budget 512), and the MLA bench, bf16 and fp8;
- ``ncu``: Nsight Compute over one decode step (``tools/bench/ncu_step.py``), GQA, budget 512, MLA, fp8 MLA;
- ``e2e``, ``e2e-2048``: 36 layers of Qwen3-8B geometry end to end, overlap off, budget 512 (with per-step
  profiles), then budget 2048;
- ``e2e-dense``: 2k and 8k cases and 32k x 1, budget 512, ``sparse_decode_min_tokens`` 32768 and 65536;
- ``sgl-bench``: SGLang's own ``one_batch`` through ``python -m vortex_torch.engine.sgl.run``, plain and with the
  quick start's config, then the launcher's GPU tests;
- ``overlap``: the overlap-scheduler suite, then the e2e bench with the overlap scheduler on;
- ``engines``, ``engines-eq``, ``engines-sparse``, ``engines2``, ``eval``: the SGLang engine suites (quick start
  and HTTP; dense equivalence; sparse; MLA and fp8; ``vortex eval``);
- ``mla-e2e``: 27 layers of DeepSeek-V2-Lite geometry end to end;
- ``extra``: compute-sanitizer over the kernel tests, then the contrib flows bench;
- ``tp-suite``, ``tp-bench``: tensor parallelism, on the 2-GPU kind (``"kind": "nvidia-h200-x2"``).

Each step's sub-commands are what §4 lists; ``--dry-run`` prints them with their budgets.

``ingest`` files what a call brought back (``plan-STEP.tgz`` and ``plan-STEP.md`` under the run tool's
``files_at``) into ``results/gpu/``: ``DATE-plan-STEP.md`` (the commands, rev, device and results) and, per
sub-command, its data and JUnit files as ``DATE-plan-STEP-SUB-NAME`` (DATE: the step's, from its summary).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the call's files come back from here; remote.sh's own OUT is a folder per sub-command under WORK
WORK = Path("/tmp/vortex-plan")
#: larger files stay out of the archive (16 MiB per returned file; traces can be larger)
MAX_PACKED_BYTES = 8_000_000
#: seconds kept back at the end of the step to pack and summarise
RESERVE_S = 15


@dataclass(frozen=True)
class Sub:
    """One remote.sh sub-command: ``args`` after ``remote.sh`` (``{out}``: this sub-command's OUT folder,
    ``{minutes}``: its budget in minutes less a margin, for the e2e bench's ``--max-minutes``)."""

    name: str
    args: list[str]
    cap_s: int
    min_s: int
    models: str = "none"
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, out: Path, budget_s: int) -> list[str]:
        minutes = f"{max(1.0, (budget_s - 60) / 60):.1f}"
        return [a.replace("{out}", str(out)).replace("{minutes}", minutes) for a in self.args]


KERNEL_SUITE = (
    "packages/vortex-ops/tests packages/vortex-flow/tests/test_compiler.py "
    "packages/vortex-sglang/tests/test_decode_core.py tests/gpu/test_launch_count.py"
)
STEP = "bench decode_step_bench"
NCU = "bench ncu_step"
E2E = "bench sglang_decode_bench --skip-kernels"
QWEN36 = "--model /tmp/models/qwen3-8b-l1 --dummy-layers 36"
DSV2 = "--model /tmp/models/dsv2-lite-l1 --dummy-layers 27"
E2E_OUT = "--max-minutes {minutes} --out {out}/e2e_full.json --e2e-out {out}/e2e.json"
#: SGLang's own one-batch benchmark through vortex-sglang's launcher (issue 8: users reproduce with SGLang's tools):
#: the same 36 layers of random weights, one process per engine, prefill timed apart from decode. It runs every
#: batch size with every input length and prefills a batch in one forward (no chunking): 32k x 16 would need
#: 77 GB of K/V plus ~45 GB of prefill activations, so the long context is 8k here (32k x 16 is `e2e`'s)
ONE_BATCH = (
    "py -m vortex_torch.engine.sgl.run sglang.benchmark.one_batch --model-path /tmp/models/qwen3-8b-l1 "
    "--load-format dummy --json-model-override-args '{\"num_hidden_layers\": 36}' --attention-backend flashinfer "
    "--page-size 16 --mem-fraction-static 0.8 --cuda-graph-max-bs 16 --disable-prefill-cuda-graph "
    "--batch-size 1 16 --input-len 2048 8192 --output-len 32 --result-filename {out}/one_batch.jsonl"
)
#: the quick start's VortexConfig (as tools/bench/sglang_decode_bench.py's VORTEX), as --vortex-config JSON
QUICKSTART_JSON = (
    '{"module_path": "examples/custom_sparse_attention.py", "module_name": "custom_sparse_attention", '
    '"topk_val": 30, "layers_skip": [0], "block_reserved_bos": 1, "block_reserved_eos": 1}'
)


def sub(name: str, command: str, cap_s: int, min_s: int, models: str = "none", **env: str) -> Sub:
    """A sub-command written as on a command line (split as a shell would)."""
    return Sub(name, shlex.split(command), cap_s, min_s, models, env)


STEPS: dict[str, list[Sub]] = {
    "layer": [  # the benches first: on a cold H100 the suite alone ran past 184 s (results/gpu/2026-12-05-h100-session6.md)
        sub("gqa", f"{STEP} --cases 32768x32 32768x1 131072x32 32768x8 2048x1 --sweep indexer --out {{out}}/step.json",
            240, 90),
        # the scoring kernel's loads in flight (query mean hoisted or not, maxnreg 48, a 128-block chunk)
        sub("ab", "py tools/device/ab_indexer.py --out {out}/ab_indexer.json", 150, 60),
        sub("gqa512", f"{STEP} --budget 512 --cases 2048x1 2048x16 8192x1 32768x1 --out {{out}}/step.json", 120, 45),
        sub("suite", f"suite {KERNEL_SUITE} -q -rf", 300, 90),
    ],
    "layer2": [
        sub("bw", "py tools/device/bw_probe.py", 120, 45),  # 256 B vs 2 KiB row gathers: the summaries' layout
        sub("att", f"{STEP} --cases 32768x32 --sweep attention --out {{out}}/step.json", 150, 70),
        sub("att512", f"{STEP} --budget 512 --cases 2048x1 --sweep attention --out {{out}}/step.json", 120, 60),
        sub("mla", f"{STEP} --mla --cases 32768x16 8192x16 32768x1 --out {{out}}/step.json", 150, 60),
        sub("mla8", f"{STEP} --mla --kv-dtype fp8_e4m3 --cases 32768x16 --out {{out}}/step.json", 120, 50),
    ],
    "ncu": [
        sub("ncu", f"{NCU} --cases 32768x32 32768x1 2048x1 --out-dir {{out}}", 240, 90),
        sub("ncu512", f"{NCU} --budget 512 --cases 2048x1 32768x16 --out-dir {{out}}", 150, 70),
        sub("ncumla", f"{NCU} --mla --cases 32768x16 --out-dir {{out}}", 100, 50),
        sub("ncumla8", f"{NCU} --mla --kv-dtype fp8_e4m3 --cases 32768x16 --out-dir {{out}}", 100, 50),
    ],
    # one Vortex engine per call: on a cold H100 the plain engine alone (start, first prefill's JIT, six cases)
    # took 370 s (results/gpu/2026-12-05-h100-runs.md)
    "e2e": [
        sub("e2e", f"{E2E} {QWEN36} --cases 2048x1 2048x16 8192x1 8192x16 32768x1 32768x16 --engines plain vortex "
            f"--budgets 512 --steps 32 --profile-steps 8 {E2E_OUT}", 580, 240, "qwen3-8b-l1"),
    ],
    "e2e-2048": [
        sub("e2e", f"{E2E} {QWEN36} --cases 2048x1 32768x1 32768x16 --engines plain vortex --budgets 2048 "
            f"--steps 32 {E2E_OUT}", 580, 240, "qwen3-8b-l1"),
    ],
    # no 32k x 16: on a cold H100 the plain engine's start, first prefill (JIT) and that case alone took 370 s
    # (results/gpu/2026-12-05-h100-runs.md). Two thresholds: on the H100 (2026-12-05) 2k x 16, just over 32768
    # tokens and so sparse, ran at 0.87x; 65536 keeps it (and 32k x 1) dense and 8k x 16 sparse
    "e2e-dense": [
        sub("e2e", f"{E2E} {QWEN36} --cases 2048x1 2048x16 8192x1 8192x16 32768x1 --engines plain vortex:dense32768 "
            f"vortex:dense65536 --budgets 512 --steps 32 {E2E_OUT}", 580, 240, "qwen3-8b-l1"),
    ],
    "overlap": [
        sub("suite", "suite tests/gpu/test_sglang_overlap.py -q -rf", 420, 200, "tiny"),
        sub("e2e", f"{E2E} {QWEN36} --cases 32768x16 2048x1 2048x16 8192x16 --engines plain:overlap vortex:overlap "
            f"--budgets 512 --steps 32 {E2E_OUT}", 580, 150, "qwen3-8b-l1"),
    ],
    # the four engine suites took more than one call on 2026-12-05 (H100, cold: the quick start's script alone
    # 355 s with SGLang's and FlashInfer's first JIT; results/gpu/2026-12-05-h100-runs.md): three calls
    "engines": [
        sub("suite", "suite tests/gpu/test_sglang_quickstart.py tests/gpu/test_sglang_http.py -q -rf", 580, 240,
            "tiny"),
    ],
    "engines-eq": [
        sub("suite", "suite tests/gpu/test_sglang_dense_equivalence.py -q -rf", 580, 240, "tiny"),
    ],
    "engines-sparse": [
        sub("suite", "suite tests/gpu/test_sglang_sparse.py -q -rf", 580, 240, "tiny"),
    ],
    "engines2": [
        sub("suite", "suite tests/gpu/test_sglang_mla.py tests/gpu/test_sglang_fp8.py -q -rf", 580, 240, "tiny"),
    ],
    "eval": [  # vortex eval: a transformers model on cuda and three SGLang servers (est. 5-8 min warm)
        sub("suite", "suite tests/gpu/test_vortex_eval.py -q -rf", 580, 240, "tiny"),
    ],
    "mla-e2e": [
        sub("e2e", f"{E2E} {DSV2} --cases 8192x1 8192x16 32768x1 32768x16 --engines plain vortex --budgets 512 "
            f"--steps 32 {E2E_OUT}", 580, 240, "dsv2-lite-l1"),
    ],
    "extra": [
        sub("sanitize", "sanitize", 300, 120, VORTEX_SANITIZE_S="270"),
        sub("flows", "bench flows_bench --out {out}/flows_bench.json", 270, 120),
    ],
    "sgl-bench": [
        sub("plain", f"{ONE_BATCH} --run-name plain", 240, 120, "qwen3-8b-l1"),
        sub("vortex", f"{ONE_BATCH} --run-name vortex --vortex-config '{QUICKSTART_JSON}'", 240, 120, "qwen3-8b-l1"),
        sub("suite", "suite tests/gpu/test_sglang_bench_tools.py -q -rf", 300, 120, "tiny"),  # the launcher's tests
    ],
    "tp-suite": [
        sub("suite", "suite tests/gpu/test_sglang_tp.py -q -rf", 580, 300, "tiny"),
    ],
    "tp-bench": [
        sub("e2e", f"{E2E} --tp-size 2 {QWEN36} --cases 32768x16 --engines plain vortex --budgets 512 {E2E_OUT}",
            580, 300, "qwen3-8b-l1"),
    ],
}


def budget_for(sub: Sub, left_s: float) -> int | None:
    """The sub-command's VORTEX_BUDGET_S with ``left_s`` seconds of the step left, or None: it does not fit."""
    budget = int(min(sub.cap_s, left_s - RESERVE_S))
    return budget if budget >= sub.min_s else None


def pack(step: str, work: Path, out: Path, lines: list[str]) -> None:
    """``$OUT/plan-STEP.tgz`` (the work folder, files over MAX_PACKED_BYTES left out) and ``plan-STEP.md``."""
    left_out = []
    with tarfile.open(out / f"plan-{step}.tgz", "w:gz") as tar:
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            if path.stat().st_size > MAX_PACKED_BYTES:
                left_out.append(f"{path.relative_to(work)} ({path.stat().st_size} bytes)")
                continue
            tar.add(path, arcname=str(Path(step) / path.relative_to(work)))
    text = [*lines]
    if left_out:
        text += ["", "## Left out of the archive (over 8 MB)", "", *(f"- {x}" for x in left_out)]
    (out / f"plan-{step}.md").write_text("\n".join(text) + "\n")


#: a step summary's first line (written by run_step, read back by ingest for the step's date)
HEADER = "# GPU plan step `{step}` (rev {rev}, {date} {time} UTC)"
HEADER_DATE = re.compile(r"^# GPU plan step `[^`]+` \(rev [^,]+, (\d{4}-\d{2}-\d{2}) \d{2}:\d{2} UTC\)$")


def run_step(step: str, budget_s: int, out: Path, remote: list[str], rev: str, work_root: Path = WORK) -> int:
    """Run ``step``'s sub-commands (remote.sh is ``remote``); returns 0 when every one ran and exited 0."""
    t0 = time.monotonic()
    work = work_root / step
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    now = time.gmtime()
    lines = [HEADER.format(step=step, rev=rev, date=time.strftime("%Y-%m-%d", now), time=time.strftime("%H:%M", now)),
             ""]  # fmt: skip
    failed = False  # a sub-command skipped or not exiting 0
    child: subprocess.Popen[bytes] | None = None
    stopped: list[int] = []

    def forward(signum: int, _frame: object) -> None:  # the run tool's limit: let remote.sh stop its command
        stopped.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sub in STEPS[step]:
        if stopped:  # no new sub-command after a signal from outside
            lines += [f"## {sub.name}: not started (signal {stopped[0]} from outside)", ""]
            failed = True
            pack(step, work, out, lines)
            continue
        left = budget_s - (time.monotonic() - t0)
        budget = budget_for(sub, left)
        sub_out = work / sub.name
        if budget is None:
            lines += [f"## {sub.name}: skipped ({left:.0f} s left, it needs {sub.min_s} + {RESERVE_S})", ""]
            failed = True
            pack(step, work, out, lines)
            continue
        sub_out.mkdir(parents=True)
        argv = [*remote, *sub.argv(sub_out, budget)]
        env = {**os.environ, **sub.env, "OUT": str(sub_out), "VORTEX_BUDGET_S": str(budget),
               "VORTEX_MODELS": sub.models, "VORTEX_REV": rev}  # fmt: skip
        print(f"[plan] {sub.name} (budget {budget} s): {shlex.join(argv)}", flush=True)
        t = time.monotonic()
        child = subprocess.Popen(argv, env=env, cwd=ROOT)
        rc = child.wait()
        child = None
        secs = time.monotonic() - t
        result = sub_out / "result.md"
        body = result.read_text().strip().splitlines() if result.exists() else ["(no result.md)"]
        lines += [f"## {sub.name}: exit {rc} in {secs:.0f} s (budget {budget} s)", "",
                  f"`VORTEX_MODELS={sub.models} VORTEX_BUDGET_S={budget} {shlex.join(argv)}`", "",
                  *(x for x in body if not x.startswith("# ")), ""]  # fmt: skip
        failed = failed or rc != 0
        pack(step, work, out, lines)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    print((out / f"plan-{step}.md").read_text(), flush=True)
    return int(failed)


#: what ``ingest`` files from each sub-command's folder (the rest, logs and summaries, stays in the archive)
INGESTED = ("step.json", "e2e.json", "e2e_full.json", "flows_bench.json", "junit.xml", "ab_indexer.json",
            "one_batch.jsonl")


def ingest(step: str, files_at: Path, results: Path = ROOT / "results" / "gpu") -> list[Path]:
    """Copy a call's ``plan-STEP.md`` and each sub-command's :data:`INGESTED` files into ``results``; returns the
    written paths. Raises ``FileNotFoundError`` naming what is missing, ``ValueError`` for a summary that is not
    a step's (no date to file it under)."""
    summary, archive = files_at / f"plan-{step}.md", files_at / f"plan-{step}.tgz"
    for path in (summary, archive):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not there (was `plan.py {step}` the latest call, and is FILES_AT its files_at?)")
    text = summary.read_text()
    found = HEADER_DATE.match(text.split("\n", 1)[0])
    if found is None:
        raise ValueError(f"{summary}: its first line is not a step summary's header ({HEADER!r}), so it has no date")
    date = found.group(1)
    results.mkdir(parents=True, exist_ok=True)
    written = [results / f"{date}-plan-{step}.md"]
    written[0].write_text(text)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts  # STEP/SUB/NAME
            if member.isfile() and len(parts) == 3 and parts[0] == step and parts[2] in INGESTED:
                data = tar.extractfile(member)
                assert data is not None
                dest = results / f"{date}-plan-{step}-{parts[1]}-{parts[2]}"
                dest.write_bytes(data.read())
                written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ingest"]:
        ip = argparse.ArgumentParser(prog="plan.py ingest", description=ingest.__doc__)
        ip.add_argument("step", choices=list(STEPS))
        ip.add_argument("files_at", type=Path, help="the run tool's files_at folder of the step's call")
        ip.add_argument("--results", type=Path, default=ROOT / "results" / "gpu", help=argparse.SUPPRESS)  # tests
        iargs = ip.parse_args(argv[1:])
        try:
            for path in ingest(iargs.step, iargs.files_at, iargs.results):
                print(path)
        except (FileNotFoundError, ValueError, tarfile.TarError) as exc:
            print(f"plan.py ingest: {exc}", file=sys.stderr)
            return 2
        return 0
    ap = argparse.ArgumentParser(prog="plan.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("step", help="one of: " + ", ".join(STEPS) + " (or list)")
    ap.add_argument("--budget-s", type=int, default=580, help="seconds the whole step may take (default 580)")
    ap.add_argument("--dry-run", action="store_true", help="print the sub-commands and their budgets only")
    ap.add_argument("--remote", default=str(ROOT / "tools/device/remote.sh"), help=argparse.SUPPRESS)  # tests
    ap.add_argument("--work", type=Path, default=WORK, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step == "list":
        for name, subs in STEPS.items():
            print(f"{name}: " + ", ".join(s.name for s in subs))
        return 0
    if args.step not in STEPS:
        ap.error(f"unknown step {args.step!r}; the steps: {', '.join(STEPS)}")
    if not 60 <= args.budget_s <= 600:
        ap.error(f"--budget-s {args.budget_s}: between 60 and 600 (a call runs at most 600 s)")
    if args.dry_run:
        left = float(args.budget_s)
        for sub in STEPS[args.step]:  # as if each sub-command took its whole budget
            budget = budget_for(sub, left)
            if budget is None:
                print(f"{sub.name}: skipped unless time is left (needs {sub.min_s} s)")
                continue
            out = args.work / args.step / sub.name
            print(f"{sub.name}: VORTEX_MODELS={sub.models} VORTEX_BUDGET_S={budget} "
                  f"bash tools/device/remote.sh {shlex.join(sub.argv(out, budget))}")  # fmt: skip
            left -= budget
        return 0
    out = Path(os.environ.get("OUT", "/tmp/vortex-out"))
    rev = os.environ.get("VORTEX_REV", "unknown (set VORTEX_REV)")
    return run_step(args.step, args.budget_s, out, ["bash", args.remote], rev, args.work)


if __name__ == "__main__":
    sys.exit(main())
