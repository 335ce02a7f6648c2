"""tools/device/plan.py on a CPU: every step's sub-commands are ones remote.sh and the benches accept (a typo in a
flag would otherwise first show on the GPU, after minutes of device time), and a step run through a fake
remote.sh packs what each sub-command wrote into two files, skips what no longer fits and says so."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "tools" / "device" / "plan.py"
plan = load_tool(PLAN, "device_plan")

SUBS = [(step, sub) for step, subs in plan.STEPS.items() for sub in subs]
IDS = [f"{step}-{sub.name}" for step, sub in SUBS]


def remote_models() -> list[str]:
    """The model name patterns remote.sh's VORTEX_MODELS case statement builds."""
    text = (ROOT / "tools" / "device" / "remote.sh").read_text()
    block = text[text.index('case "$m" in') : text.index("esac", text.index('case "$m" in'))]
    return [p.strip() for line in re.findall(r"^\s*([\w|*\"-]+)\)", block, re.M) for p in line.split("|")]


@pytest.mark.parametrize(("step", "sub"), SUBS, ids=IDS)
def test_sub_command_is_one_remote_sh_runs(
    step: str, sub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = sub.argv(tmp_path, 300)
    kind = args[0]
    assert kind in ("suite", "bench", "py", "sanitize"), f"{step}/{sub.name}: remote.sh has no sub-command {kind!r}"
    assert not any(re.search(r"\{(out|minutes)\}", a) for a in args), f"a placeholder left in {args}"
    if kind == "suite":
        paths = [a for a in args[1:] if not a.startswith("-")]
        assert paths
        for p in paths:
            assert (ROOT / p).exists(), f"{step}/{sub.name}: no {p}"
    if kind == "py" and args[1] == "-m":  # a module: importable; through the launcher, its command as it checks it
        assert importlib.util.find_spec(args[2]) is not None, args[2]
        if args[2] == "vortex_torch.engine.sgl.run":
            from vortex_torch.engine.sgl import run

            monkeypatch.chdir(ROOT)  # remote.sh runs from the repository root: relative module_path
            run.prepare(args[3], args[4:])  # raises on a module outside SGLang, a bad --vortex-config, ...
            if args[3] == "sglang.benchmark.one_batch":  # its own parser takes every flag (exits 2 otherwise)
                import argparse

                from sglang.benchmark.one_batch import BenchArgs
                from sglang.srt.server_args import ServerArgs

                parser = argparse.ArgumentParser()
                ServerArgs.add_cli_args(parser)
                BenchArgs.add_cli_args(parser)
                parser.parse_args(args[4:])
    elif kind == "py":
        assert (ROOT / args[1]).is_file(), args[1]
    if kind == "bench":
        tool = ROOT / "tools" / "bench" / f"{args[1]}.py"
        assert tool.is_file()
        parsed = load_tool(tool).build_parser().parse_args(args[2:])  # exits 2 on an unknown flag or bad value
        for spec in getattr(parsed, "cases", None) or []:
            assert re.fullmatch(r"\d+x\d+", spec), spec
        if getattr(parsed, "engines", None):  # engine specs are checked by the bench's main, before any GPU work
            load_tool(tool).engine_plan(parsed.engines, parsed.budgets)
        if "--model" in args:  # the model is one this sub-command has remote.sh build
            model = Path(args[args.index("--model") + 1]).name
            assert model in sub.models.split(","), (model, sub.models)
    patterns = remote_models()
    for model in sub.models.split(","):
        assert any(re.fullmatch(p.strip('"').replace("*", r"\d+"), model) for p in patterns), (model, patterns)


def test_every_result_file_a_step_writes_is_ingested() -> None:
    """What a sub-command writes under ``{out}`` by name comes back into results/gpu with ``plan.py ingest``."""
    for step, subs in plan.STEPS.items():
        for sub in subs:
            for arg in sub.args:
                for name in re.findall(r"\{out\}/([\w.]+)", arg):
                    assert name in plan.INGESTED, (step, sub.name, name)


def test_budgets_fit_a_call() -> None:
    for step, subs in plan.STEPS.items():
        for sub in subs:
            assert 30 <= sub.min_s <= sub.cap_s <= 600 - plan.RESERVE_S, (step, sub.name)
    assert plan.budget_for(plan.STEPS["layer"][0], 600) == plan.STEPS["layer"][0].cap_s
    assert plan.budget_for(plan.STEPS["layer"][0], plan.STEPS["layer"][0].min_s + plan.RESERVE_S - 1) is None


FAKE_REMOTE = """#!/usr/bin/env bash
# stands in for remote.sh: records what it was given, writes what remote.sh writes
echo "$VORTEX_MODELS $VORTEX_BUDGET_S $VORTEX_REV $*" > "$OUT/args.txt"
printf '# GPU run: %s\\n\\n- result: rc=%s; fake\\n' "$1" "${FAKE_RC:-0}" > "$OUT/result.md"
echo '{"ok": 1}' > "$OUT/data.json"
[ "$1" = big ] && head -c 9000000 /dev/zero > "$OUT/trace.json"
exit "${FAKE_RC:-0}"
"""


def test_step_through_a_fake_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "remote.sh"
    fake.write_text(FAKE_REMOTE)
    out, work = tmp_path / "out", tmp_path / "work"
    monkeypatch.setitem(plan.STEPS, "t", [plan.sub("a", "suite x --o {out}/r.json", 20, 10, "tiny"),
                                          plan.sub("b", "big --m {minutes}", 600, 30),
                                          plan.sub("c", "bench y", 200, 110)])  # fmt: skip
    rc = plan.run_step("t", 120, out, ["bash", str(fake)], "abc1234", work)
    assert rc == 1  # c is skipped
    assert sorted(p.name for p in out.iterdir()) == ["plan-t.md", "plan-t.tgz"]  # two files come back
    # each sub-command got its budget, its models, the rev, its own OUT
    assert (work / "t" / "a" / "args.txt").read_text().split() == ["tiny", "20", "abc1234", "suite", "x", "--o",
                                                                  f"{work}/t/a/r.json"]  # fmt: skip
    b = (work / "t" / "b" / "args.txt").read_text().split()
    assert b[0] == "none" and int(b[1]) in (120 - plan.RESERVE_S - 1, 120 - plan.RESERVE_S - 2)  # what is left
    assert b[3:] == ["big", "--m", "1.0"]  # (budget - 60) / 60 minutes, at least 1
    assert not (work / "t" / "c").exists()
    md = (out / "plan-t.md").read_text()
    assert "## a: exit 0" in md and "## b: exit 0" in md and "## c: skipped" in md
    assert "- result: rc=0; fake" in md
    assert "b/trace.json (9000000 bytes)" in md  # over 8 MB: named, not packed
    with tarfile.open(out / "plan-t.tgz") as tar:
        names = sorted(tar.getnames())
    assert "t/a/data.json" in names and "t/b/result.md" in names and "t/b/trace.json" not in names


def test_a_failing_sub_command_is_reported_and_the_rest_still_runs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    fake = tmp_path / "remote.sh"
    fake.write_text(FAKE_REMOTE)
    monkeypatch.setenv("FAKE_RC", "3")
    monkeypatch.setitem(plan.STEPS, "t", [plan.sub("a", "suite x", 60, 30), plan.sub("b", "suite y", 60, 30)])
    rc = plan.run_step("t", 200, tmp_path / "out", ["bash", str(fake)], "r", tmp_path / "work")
    assert rc == 1
    md = (tmp_path / "out" / "plan-t.md").read_text()
    assert "## a: exit 3" in md and "## b: exit 3" in md


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PLAN), *args], capture_output=True, text=True, timeout=60)


def test_cli_dry_run_list_and_bad_input() -> None:
    dry = run_cli("layer", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [s.name for s in plan.STEPS["layer"]]
    assert "VORTEX_BUDGET_S=240 bash tools/device/remote.sh bench decode_step_bench --cases 32768x32" in lines[0]
    assert lines[-1] == "suite: skipped unless time is left (needs 90 s)"  # as if every bench took its whole cap
    listed = run_cli("list")
    assert listed.returncode == 0 and [ln.split(":")[0] for ln in listed.stdout.splitlines()] == list(plan.STEPS)
    for bad, says in ((["nope"], "unknown step 'nope'"), (["layer", "--budget-s", "900"], "--budget-s 900")):
        proc = run_cli(*bad)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr


def test_a_signal_from_outside_reaches_the_sub_command_and_starts_no_other(tmp_path: Path) -> None:
    """The run tool's limit (TERM): remote.sh gets it (so it stops its own command and writes its summary),
    and the step starts nothing after it but still packs and summarises."""
    import os
    import signal
    import time

    fake = tmp_path / "remote.sh"
    fake.write_text('trap \'echo stopped > "$OUT/stopped.txt"; exit 130\' TERM\n'
                    'echo "# r" > "$OUT/result.md"; touch "$OUT/started"; while :; do sleep 0.1; done\n')  # fmt: skip
    out, work = tmp_path / "out", tmp_path / "work"
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
              "from tool_loader import load_tool\n"
              f"plan = load_tool(__import__('pathlib').Path({str(PLAN)!r}), 'device_plan')\n"
              "plan.STEPS['t'] = [plan.sub('a', 'suite x', 60, 30), plan.sub('b', 'suite y', 60, 30)]\n"
              f"sys.exit(plan.run_step('t', 200, __import__('pathlib').Path({str(out)!r}), ['bash', {str(fake)!r}], "
              f"'r', __import__('pathlib').Path({str(work)!r})))\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (work / "t" / "a" / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert (work / "t" / "a" / "stopped.txt").exists()  # remote.sh got the signal
    assert not (work / "t" / "b").exists()
    md = (out / "plan-t.md").read_text()
    assert "## a: exit 130" in md and f"## b: not started (signal {int(signal.SIGTERM)} from outside)" in md


def test_ingest_files_a_calls_results_under_the_steps_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """``plan.py ingest STEP FILES_AT``: the step's summary and each sub-command's data and JUnit files land in
    results/gpu under the step's date; logs stay in the archive; a missing file, or a summary without the step
    header (no date), is one line and exit 2, nothing written."""
    fake = tmp_path / "remote.sh"
    fake.write_text(FAKE_REMOTE)
    monkeypatch.setitem(plan.STEPS, "t", [plan.sub("a", "suite x", 100, 10), plan.sub("b", "bench y", 100, 10)])
    out = tmp_path / "files_at"
    plan.run_step("t", 300, out, ["bash", str(fake)], "abc1234", tmp_path / "work")
    for sub in ("a", "b"):  # as remote.sh writes them: a suite's JUnit file, a bench's JSON
        (tmp_path / "work" / "t" / sub / ("junit.xml" if sub == "a" else "e2e.json")).write_text(sub)
    plan.pack("t", tmp_path / "work" / "t", out, [(out / "plan-t.md").read_text().rstrip("\n")])
    results = tmp_path / "results"
    assert plan.main(["ingest", "t", str(out), "--results", str(results)]) == 0
    header = (out / "plan-t.md").read_text().splitlines()[0]  # "# GPU plan step `t` (rev abc1234, DATE HH:MM UTC)"
    date = header.split(", ")[1].split()[0]
    assert sorted(p.name for p in results.iterdir()) == [
        f"{date}-plan-t-a-junit.xml", f"{date}-plan-t-b-e2e.json", f"{date}-plan-t.md"
    ]
    assert (results / f"{date}-plan-t-b-e2e.json").read_text() == "b"
    assert "rev abc1234" in (results / f"{date}-plan-t.md").read_text()
    capsys.readouterr()
    assert plan.main(["ingest", "t", str(tmp_path / "nowhere"), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plan-t.md: not there" in err
    (out / "plan-t.md").write_text("# some other summary\n")  # no step header: no date to file it under
    assert plan.main(["ingest", "t", str(out), "--results", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a step summary's header" in err and not (tmp_path / "again").exists()
