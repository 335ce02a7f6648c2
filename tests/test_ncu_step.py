"""tools/bench/ncu_step.py on a CPU: the profiling command it builds, how it reads ncu's raw CSV back, the phase
of each kernel and the summary, driven end to end through a fake ``ncu`` on PATH (the real one runs on the GPU
machine only)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]


ncu_step = load_tool(ROOT / "tools" / "bench" / "ncu_step.py")

HEADER = ['"ID"', '"Process ID"', '"Kernel Name"', '"Block Size"', '"Grid Size"', '"gpu__time_duration.sum"',
          '"dram__bytes_read.sum"', '"dram__throughput.avg.pct_of_peak_sustained_elapsed"',
          '"launch__registers_per_thread"', '"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"',
          '"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio"']  # fmt: skip
UNITS = ['""', '""', '""', '""', '""', '"ns"', '"byte"', '"%"', '"register/thread"', '"inst"', '"inst"']


def raw_csv(kernels: list[tuple[str, float, float]]) -> str:
    """ncu's ``--csv --page raw`` shape: a ==PROF== note, the header, a units row, one row per kernel."""
    rows = ["==PROF== Disconnected", ",".join(HEADER), ",".join(UNITS)]
    for i, (name, ns, read) in enumerate(kernels):
        rows.append(",".join(f'"{x}"' for x in (i, 4242, name, "(256, 1, 1)", "(64, 5, 1)", ns, read, 71.5, 40,
                                                     3.25, 0.5)))  # fmt: skip
    return "\n".join(rows) + "\n"


KERNELS = [("plan_kernel", 4000.0, 1e5), ("indexer", 50000.0, 1.34e8), ("_select_blocks_kernel", 14000.0, 2e6),
           ("_split_kernel", 72000.0, 2.68e8), ("BatchDecodeWithPagedKVCacheKernel", 960000.0, 4.29e9),
           ("MergeStatesKernel", 5000.0, 1e6)]  # fmt: skip


def fake_ncu(tmp_path: Path, launched: dict[str, list[str]], fail: bool = False) -> Path:
    """An ``ncu`` on PATH: profiling writes the report and what the child would record (the Triton kernels it
    ``launched`` per phase); ``--import`` prints the canned raw CSV or a details page."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "raw.csv").write_text(raw_csv(KERNELS))
    script = bindir / "ncu"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        a = sys.argv[1:]
        if "--import" in a:
            if "raw" in a:
                print(open({str(tmp_path / "raw.csv")!r}).read(), end="")
            else:
                print("details of", a[a.index("--import") + 1])
            sys.exit(0)
        if {fail!r}:
            print("==ERROR== profiling failed", file=sys.stderr)
            sys.exit(1)
        open(a[a.index("--export") + 1], "w").write("report")
        json.dump({launched!r}, open(a[a.index("--counts") + 1], "w"))
        with open({str(tmp_path / "argv.json")!r}, "w") as fh:
            json.dump(a, fh)
    """))
    script.chmod(0o755)
    return bindir


def test_profile_command_leaves_clocks_alone_and_profiles_only_the_marked_step() -> None:
    cmd = ncu_step.ncu_command("ncu", "/tmp/r.ncu-rep", ["python", "x.py", "--child", "2048x1"])
    joined = " ".join(cmd)
    assert "--profile-from-start off" in joined and "--clock-control none" in joined
    assert cmd[cmd.index("--export") + 1] == "/tmp/r.ncu-rep"
    assert cmd[-4:] == ["python", "x.py", "--child", "2048x1"]
    assert "gpu__time_duration.sum" in cmd[cmd.index("--metrics") + 1]


def test_raw_csv_rows_skip_notes_and_units() -> None:
    rows = ncu_step.read_raw_csv(raw_csv(KERNELS[:2]))
    assert [r["Kernel Name"] for r in rows] == ["plan_kernel", "indexer"]
    r = ncu_step.kernel_row(rows[1])
    assert r["us"] == pytest.approx(50.0)
    assert r["dram_read_gbs"] == pytest.approx(1.34e8 / 50000.0)  # bytes per ns = GB/s
    assert r["stalls"][0] == ["long_scoreboard", 3.25] and r["stalls"][1][0] == "barrier"
    assert r["occupancy_pct"] is None  # a metric ncu did not give stays None
    assert ncu_step.read_raw_csv("==PROF== nothing profiled\n") == []


def run_with_fake_ncu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launched: dict[str, list[str]], args: list[str],
    fail: bool = False,
) -> tuple[int, Path]:  # fmt: skip
    """``ncu_step.main(args)`` with :func:`fake_ncu` first on PATH -> (exit code, the output folder)."""
    monkeypatch.setenv("PATH", f"{fake_ncu(tmp_path, launched, fail)}:/usr/bin:/bin")
    out = tmp_path / "out"
    return ncu_step.main([*args, "--out-dir", str(out)]), out


def test_end_to_end_with_a_fake_ncu_labels_phases_and_writes_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched = {"plan": ["plan_kernel"], "sparse": ["indexer", "_select_blocks_kernel", "_split_kernel"], "dense": []}
    rc, out = run_with_fake_ncu(tmp_path, monkeypatch, launched, ["--cases", "2048x1", "--budget", "512"])
    assert rc == 0
    argv = json.loads((tmp_path / "argv.json").read_text())
    child = argv[argv.index("--child"):]
    assert child[:2] == ["--child", "2048x1"] and child[child.index("--budget") + 1] == "512"
    (case,) = json.loads((out / "ncu.json").read_text())
    assert case["phases_ok"]
    assert [k["phase"] for k in case["kernels"]] == ["plan", "sparse", "sparse", "sparse", "dense", "dense"]
    md = (out / "ncu-summary.md").read_text()
    assert "GQA 2048 x 1, budget 512" in md
    assert "sparse 136.0" in md and "dense 965.0" in md and "plan 4.0" in md
    assert "details of" in (out / "ncu-details.txt").read_text()
    assert "BatchDecodeWithPagedKVCacheKernel" in (out / "ncu-raw.csv").read_text()


def test_kernels_other_than_the_childs_leave_phases_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ncu's third kernel is not the child's second sparse one (a launch the child did not see in between)."""
    launched = {"plan": ["plan_kernel"], "sparse": ["indexer", "_split_kernel"], "dense": []}
    rc, out = run_with_fake_ncu(tmp_path, monkeypatch, launched, ["--cases", "32768x32"])
    assert rc == 0
    (case,) = json.loads((out / "ncu.json").read_text())
    assert not case["phases_ok"] and {k["phase"] for k in case["kernels"]} == {"?"}
    assert "phases unknown" in (out / "ncu-summary.md").read_text()


def test_a_failed_profile_is_the_cases_error_and_the_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out = run_with_fake_ncu(tmp_path, monkeypatch, {}, ["--cases", "2048x1"], fail=True)
    assert rc == 1
    md = (out / "ncu-summary.md").read_text()
    assert "error: RuntimeError: ncu exited 1" in md and "profiling failed" in md


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--cases", "32k"], "--cases: '32k' is not CTXxBATCH"), (["--budget", "100"], "--budget: 100")],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        ncu_step.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_no_ncu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ncu_step, "find_ncu", lambda: None)
    assert ncu_step.main(["--cases", "2048x1"]) == 2
    assert "ncu (Nsight Compute) not found" in capsys.readouterr().err


def test_phases_need_the_childs_kernels_first_and_a_dense_one_after() -> None:
    rows = [{"kernel": k} for k in ("plan_kernel", "indexer", "BatchDecode")]
    assert ncu_step.assign_phases(rows, {"plan": ["plan_kernel"], "sparse": ["indexer"]})
    assert [r["phase"] for r in rows] == ["plan", "sparse", "dense"]
    assert not ncu_step.assign_phases(rows[:2], {"plan": ["plan_kernel"], "sparse": ["indexer"]})  # no dense kernel
    assert not ncu_step.assign_phases(rows, {"plan": ["indexer"], "sparse": []})
    assert {r["phase"] for r in rows} == {"?"}
