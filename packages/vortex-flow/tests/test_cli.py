"""`vortex check`, `vortex list` and `vortex --version` as a user runs them.

Every check runs the installed `vortex` script as a subprocess in a clean environment (no TRITON_INTERPRET,
nothing this test session's conftest set), from the repository root, exactly as README shows it, and reads its
real stdout, stderr and exit code. Bad arguments are also checked through ``main()`` in-process: they must be
rejected before any worker process starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vortex_torch.flow.cli import main

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "examples" / "custom_sparse_attention.py"
README = REPO / "README.md"
# the console script installed next to this interpreter (.venv/bin/vortex, or the hatch environment's)
VORTEX = shutil.which("vortex", path=str(Path(sys.executable).parent))


def clean_env(tmp: Path) -> dict[str, str]:
    """What a fresh shell has: PATH and HOME, no Triton or Vortex variables, no PYTHONPATH."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "LANG": "C.UTF-8"}


def vortex(tmp: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    assert VORTEX, f"no `vortex` script next to {sys.executable}: is vortex-flow installed?"
    return subprocess.run(
        [VORTEX, *args], cwd=REPO, env=clean_env(tmp), capture_output=True, text=True, timeout=timeout
    )


def check_json(tmp: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """``vortex check ARGS --json``: exit code, the one JSON object on stdout, stderr."""
    proc = vortex(tmp, "check", *args, "--json")
    report = json.loads(proc.stdout)  # the whole stdout is one object: nothing else may be printed there
    assert isinstance(report, dict)
    return proc.returncode, report, proc.stderr


def flow_file(
    tmp: Path, name: str, edit: dict[str, str] | None = None, head: str = "", tail: str = ""
) -> Path:
    """A copy of the quick-start flow registered as ``name``, with ``edit`` replacements and extra lines."""
    text = QUICKSTART.read_text().replace('"custom_sparse_attention"', repr(name).replace("'", '"'))
    for old, new in (edit or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / f"{name}.py"
    path.write_text(head + text + tail)
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# -- the README ------------------------------------------------------------------------------------------------
def readme_output() -> tuple[str, list[str]]:
    """The `vortex check` command of README's first code block and the output block README shows for it."""
    text = README.read_text()
    command = re.search(r"^bash tools/setup\.sh && \.venv/bin/vortex (check \S+)", text, re.M)
    shown = re.search(r"^```\n(vortex check: .*?)^```", text, re.M | re.S)
    assert command and shown, "README lost its quick-start command or its output block"
    return command.group(1), shown.group(1).splitlines()


@pytest.mark.slow
def test_readme_first_command_verbatim_in_a_clean_environment(tmp_path: Path) -> None:
    """README's `.venv/bin/vortex check examples/custom_sparse_attention.py`, no TRITON_INTERPRET: exit 0,
    the report README shows (every line but the time), and nothing on stderr (no warnings)."""
    command, shown = readme_output()
    proc = vortex(tmp_path, *command.split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    got = proc.stdout.splitlines()
    assert len(got) == len(shown)
    for want, line in zip(shown, got, strict=True):
        if want.strip().startswith("time"):
            assert re.fullmatch(r"  time +\d+(\.\d+)? s", line), line
        else:
            assert line == want


def test_json_reports_compile_and_quality_separately(tmp_path: Path) -> None:
    rc, report, err = check_json(tmp_path, str(QUICKSTART), "--contexts", "4096", "16384")
    assert rc == 0 and err == "", err
    assert report["ok"] is True and report["compiled_ok"] is True and report["quality_ok"] is True
    assert report["flow"] == "custom_sparse_attention"
    assert report["min_recall"] == 0.9 and report["min_recall_from"] == "default"
    assert report["quality_problems"] == []
    assert report["budget_fraction"] == pytest.approx(1 / 16)
    assert report["needle_recall"] >= 0.99  # the bar the quick-start flow must meet at budget 1/16
    assert report["kernels_per_layer"] == 2  # scoring, then the selection
    assert report["pages_selected"] == (4096 + 16384) // 16 // 16 * 2  # 2 KV heads, 1/16 of the blocks
    assert 0.0 <= report["attn_rel_error"] < 0.2
    assert [row["context"] for row in report["per_context"]] == [4096, 16384]


def test_block_size_changes_what_is_measured(tmp_path: Path) -> None:
    """--block-size reaches the measurement (it used to change only the compile check); the flow may also
    come after the options."""
    pages = {}
    for bs in (16, 64):
        rc, report, _ = check_json(tmp_path, "--block-size", str(bs), "--contexts", "8192", str(QUICKSTART))
        assert rc == 0, report
        assert report["block_size"] == bs
        pages[bs] = (report["pages_total"], report["pages_selected"])
    assert pages[16] == (8192 // 16 * 2, 8192 // 16 // 16 * 2)
    assert pages[64] == (8192 // 64 * 2, 8192 // 64 // 16 * 2)


def test_check_by_registered_name_uses_the_flows_own_recall_bar(tmp_path: Path) -> None:
    """An installed contrib flow, by name; StreamingLLM declares expected_min_recall = None (it does not
    retrieve), so its recall of ~0 passes, while --min-recall puts a bar back."""
    rc, report, err = check_json(tmp_path, "streaming_llm", "--contexts", "4096")
    assert rc == 0 and err == "", report
    assert report["flow"] == "streaming_llm" and report["package"] == "vortex-flows-contrib"
    assert report["file"].endswith("streaming_llm/__init__.py")
    assert report["min_recall"] is None and report["min_recall_from"] == "StreamingLLM.expected_min_recall"
    assert report["needle_recall"] < 0.5 and report["quality_ok"] is True
    rc, report, _ = check_json(tmp_path, "streaming_llm", "--contexts", "4096", "--min-recall", "0.5")
    assert (
        rc == 1 and report["ok"] is False and report["compiled_ok"] is True and report["quality_ok"] is False
    )
    assert "--min-recall" in report["quality_problems"][0]


def test_check_by_name_without_warnings(tmp_path: Path) -> None:
    """A flow whose reference uses index_reduce (PyTorch flags it beta) prints no warning."""
    proc = vortex(tmp_path, "check", "gqa_block_sparse_attention", "--contexts", "4096")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[-1] == "  result             PASSED"


def test_unknown_name_is_a_failed_check_naming_the_known_flows(tmp_path: Path) -> None:
    rc, report, _ = check_json(tmp_path, "quest_sparse_atention")
    assert rc == 1 and report["ok"] is False and report["stage"] == "load"
    assert "neither a file nor a registered flow" in report["error"]
    assert "Did you mean 'quest_sparse_attention'?" in report["error"]


def test_recall_below_the_bar_fails_the_check(tmp_path: Path) -> None:
    """A flow that picks the least similar blocks compiles correctly and finds no needle: exit 1, and the
    human report says why. --min-recall 0 accepts it; a flow's own expected_min_recall = None does too."""
    inverted = {"        self.output_func = topK()": "        self.neg = Add_Mul(beta=-1.0)\n"
                "        self.output_func = topK()",
                "        self.output_func(score, o, ctx=ctx)": "        self.output_func(self.neg(score, ctx=ctx), o, "
                "ctx=ctx)",
                "import GeMM, Mean, topK": "import Add_Mul, GeMM, Mean, topK"}  # fmt: skip
    path = flow_file(tmp_path, "inverted_flow", inverted)
    proc = vortex(tmp_path, "check", str(path), "--contexts", "4096")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "compiled == ref    yes" in proc.stdout
    assert "quality            FAILED: needle recall 0.000 < 0.9 (default)" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "  result             FAILED: quality below the bar"
    rc, report, _ = check_json(tmp_path, str(path), "--contexts", "4096", "--min-recall", "0")
    assert rc == 0 and report["ok"] is True and report["min_recall_from"] == "--min-recall"
    declared = dict(
        inverted, **{"    def __init__(self):": "    expected_min_recall = None\n\n    def __init__(self):"}
    )
    rc, report, _ = check_json(
        tmp_path, str(flow_file(tmp_path, "inverted_declared", declared)), "--contexts", "4096"
    )
    assert rc == 0 and report["min_recall_from"] == "CustomSparseAttention.expected_min_recall"


def test_nan_scale_is_not_ok(tmp_path: Path) -> None:
    """A NaN scale used to give recall 0.000 and ok: true. Now it fails, whether the op rejects NaN when the
    flow is built or the measurement finds no needle."""
    nan = {"        self.output_func = topK()": "        self.scale = Add_Mul(beta=float('nan'))\n"
           "        self.output_func = topK()",
           "        self.output_func(score, o, ctx=ctx)": "        self.output_func(self.scale(score, ctx=ctx), o, "
           "ctx=ctx)",
           "import GeMM, Mean, topK": "import Add_Mul, GeMM, Mean, topK"}  # fmt: skip
    rc, report, _ = check_json(tmp_path, str(flow_file(tmp_path, "nan_flow", nan)), "--contexts", "4096")
    assert rc == 1 and report["ok"] is False
    assert report.get("stage") == "load" or report["quality_ok"] is False, report


def test_invalid_expected_min_recall_is_reported(tmp_path: Path) -> None:
    path = flow_file(tmp_path, "bad_bar", {"    def __init__(self):": "    expected_min_recall = 'high'\n\n    "
                                           "def __init__(self):"})  # fmt: skip
    rc, report, _ = check_json(tmp_path, str(path), "--contexts", "4096")
    assert rc == 1 and report["stage"] == "load"
    assert "CustomSparseAttention.expected_min_recall must be None or a number in [0, 1]" in report["error"]
    assert f"bad_bar.py:{line_of(path, 'expected_min_recall =')}" in report["error"]


# -- flow code that raises, hangs or exits ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "edit", "head", "marker", "raised"),
    [
        ("native_op", {"q_mean = self.mean(q, ctx=ctx)": "q_mean = q.mean(dim=1)"}, "", "q.mean(dim=1)",
         "Mean(dim="),
        ("sys_exit", {}, "import sys\nsys.exit(3)\n", "sys.exit(3)", "SystemExit: 3"),
        ("keyboard_interrupt", {"        super().__init__()": "        super().__init__()\n"
                                "        raise KeyboardInterrupt"}, "", "raise KeyboardInterrupt",
         "constructing flow 'keyboard_interrupt' raised KeyboardInterrupt"),
        ("generator_exit", {"        self.output_func(score, o, ctx=ctx)": "        raise GeneratorExit('bye')"},
         "", "raise GeneratorExit", "tracing flow 'generator_exit' raised GeneratorExit: bye"),
        ("zero_division", {"        q_mean = self.mean(q, ctx=ctx)": "        q_mean = 1 / 0"}, "", "1 / 0",
         "ZeroDivisionError"),
    ],
)  # fmt: skip
def test_flow_errors_are_failed_checks_with_file_and_line(
    tmp_path: Path, case: str, edit: dict[str, str], head: str, marker: str, raised: str
) -> None:
    path = flow_file(tmp_path, case, edit, head=head)
    rc, report, _ = check_json(tmp_path, str(path), "--contexts", "4096")
    assert rc == 1 and report["ok"] is False and report["stage"] == "load", report
    assert f"{case}.py:{line_of(path, marker)}" in report["error"] and raised in report["error"]
    proc = vortex(tmp_path, "check", str(path), "--contexts", "4096")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "FAILED while loading the flow" in proc.stdout


def test_flow_that_never_finishes_loading_times_out(tmp_path: Path) -> None:
    """An import that holds the GIL in C (a thread could not even be waited for) is stopped at --timeout."""
    path = flow_file(tmp_path, "forever", head="_ = sum(range(10**15))\n")
    rc, report, _ = check_json(tmp_path, str(path), "--timeout", "2")
    assert rc == 1 and report["stage"] == "load" and report["timed_out"] is True
    assert "did not finish loading" in report["error"] and "within 2 s" in report["error"]
    assert report["time_s"] < 60


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker through /proc")
def test_ctrl_c_stops_the_check_and_its_worker(tmp_path: Path) -> None:
    path = flow_file(tmp_path, "forever", head="_ = sum(range(10**15))\n")
    assert VORTEX
    proc = subprocess.Popen(
        [VORTEX, "check", str(path), "--json"], cwd=REPO, env=clean_env(tmp_path), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )  # fmt: skip
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 120
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = int(children.read_text().split()[0])
    time.sleep(2)  # inside main()'s wait, not in the middle of an import
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["ok"] is False and "Traceback" not in err
    assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text()


def test_flow_that_kills_the_process_is_reported(tmp_path: Path) -> None:
    rc, report, _ = check_json(tmp_path, str(flow_file(tmp_path, "exits", head="import os\nos._exit(0)\n")))
    assert rc == 1 and report["ok"] is False
    assert "ended with exit code 0 before it reported" in report["error"]


def test_flow_output_does_not_break_json(tmp_path: Path) -> None:
    path = flow_file(tmp_path, "chatty", head="print('hello from the flow')\n")
    rc, report, err = check_json(tmp_path, str(path), "--contexts", "4096")
    assert rc == 0 and report["ok"] is True
    assert "hello from the flow" in err


def test_file_registering_two_flows_needs_name(tmp_path: Path) -> None:
    path = flow_file(tmp_path, "first", tail='\n\n@register("second")\nclass Second(CustomSparseAttention):\n'
                     '    """Same again."""\n')  # fmt: skip
    rc, report, _ = check_json(tmp_path, str(path))
    assert rc == 1 and "registers 2 flows (first, second)" in report["error"] and "--name" in report["error"]
    rc, report, _ = check_json(tmp_path, str(path), "--name", "second", "--contexts", "4096")
    assert rc == 0 and report["flow"] == "second"


def test_missing_file(tmp_path: Path) -> None:
    rc, report, _ = check_json(tmp_path, "/nonexistent/flow.py")
    assert rc == 1 and report["stage"] == "load" and "does not exist" in report["error"]


# -- bad arguments: one line, exit 2, before any work ----------------------------------------------------------
BAD_ARGS = [
    (
        ["check", "F", "--block-size", "24"],
        "argument --block-size: must be a power of two from 2 to 256, got '24'",
    ),
    (["check", "F", "--block-size", "1"], "argument --block-size: must be a power of two from 2 to 256"),
    (["check", "F", "--group-size", "0"], "argument --group-size: must be an integer from 1 to 64, got '0'"),
    (["check", "F", "--kv-heads", "two"], "argument --kv-heads: must be an integer from 1 to 64, got 'two'"),
    (["check", "F", "--head-dim", "4"], "argument --head-dim: must be an integer from 8 to 512"),
    (["check", "F", "--needles", "0"], "argument --needles: must be an integer from 1 to 1024, got '0'"),
    (["check", "F", "--contexts", "16"], "argument --contexts: must be context lengths in tokens from 33 to"),
    (["check", "F", "--contexts", "4096", "x"], "argument --contexts: must be context lengths in tokens"),
    (["check", "F", "--needles", "40", "--contexts", "64"], "from 65 to 262144"),
    (["check", "F", "--budget", "2"], "argument --budget: must be a fraction in (0, 1]"),
    (["check", "F", "--min-recall", "1.5"], "argument --min-recall: must be a number from 0 to 1, got '1.5'"),
    (["check", "F", "--timeout", "0"], "argument --timeout: must be a number of seconds in (0, 86400]"),
    (
        ["check", "F", "--aux-dtype", "fp8"],
        "argument --aux-dtype: must be one of bfloat16, float16, float32, fp8_e4m3, fp8_e5m2, got 'fp8'",
    ),
    (["check"], "missing FLOW"),
    (["check", "F", "G"], "one FLOW at a time; got the extra argument 'G'"),
    (["check", "F", "--block", "32"], "did you mean --block-size?"),
    (["--json", "check", "F"], "--json is an option of `vortex check`: put it after the command"),
    (["check", "streaming_llm", "--name", "x"], "argument --name: only for a FLOW file"),
    (["evaluate"], "argument COMMAND: invalid choice: 'evaluate'"),
    ([], "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS)
def test_bad_arguments_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [str(tmp_path / "flow.py") if a == "F" else a for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("vortex") and message in err, err
    assert out == "" or "--json" in argv
    assert main([*argv, "--json"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False and report["stage"] == "arguments" and message in report["error"]


def test_bad_argument_in_a_clean_subprocess(tmp_path: Path) -> None:
    proc = vortex(tmp_path, "check", str(QUICKSTART), "--block-size", "3")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "vortex check: error: argument --block-size: must be a power of two from 2 to 256, got '3' (see "
        "`vortex check --help`)"
    ]


def test_bad_aux_dtype_in_a_clean_subprocess(tmp_path: Path) -> None:
    proc = vortex(tmp_path, "check", str(QUICKSTART), "--aux-dtype", "float8", "--json")
    assert proc.returncode == 2
    line = (
        "vortex check: error: argument --aux-dtype: must be one of bfloat16, float16, float32, fp8_e4m3, fp8_e5m2, "
        "got 'float8' (see `vortex check --help`)"
    )
    assert proc.stderr.splitlines() == [line]
    assert json.loads(proc.stdout) == {"ok": False, "stage": "arguments", "error": line}


# -- --aux-dtype: summaries stored in fp8 (VortexConfig.dtype), measured against bf16 ----------------------------
AUX_KEYS = {
    "aux_dtype", "baseline_aux_dtype", "needle_recall", "baseline_needle_recall", "attn_rel_error",
    "baseline_attn_rel_error", "summary_bytes_per_block", "baseline_summary_bytes_per_block", "per_context",
}  # fmt: skip


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_aux_dtype_fp8_reports_fp8_and_bf16_side_by_side(tmp_path: Path, dtype: str) -> None:
    """The quick-start flow with fp8 summaries: the check's numbers are the fp8 run, ``aux_comparison`` puts
    them next to the bf16 run's; the centroid keeps its needles in fp8 and its summary takes half the bytes."""
    args = (str(QUICKSTART), "--contexts", "4096", "8192", "--aux-dtype", dtype)
    rc, report, err = check_json(tmp_path, *args)
    assert rc == 0 and err == "", report
    cmp = report["aux_comparison"]
    assert set(cmp) == AUX_KEYS
    assert report["aux_dtype"] == cmp["aux_dtype"] == dtype and cmp["baseline_aux_dtype"] == "bfloat16"
    # the report's own quality numbers (and its verdict) are those of the fp8 run
    assert report["needle_recall"] == cmp["needle_recall"]
    assert report["attn_rel_error"] == cmp["attn_rel_error"]
    # one (1, 128) centroid per block: 128 bytes in fp8, 256 in bf16
    assert cmp["summary_bytes_per_block"] == 128 and cmp["baseline_summary_bytes_per_block"] == 256
    assert cmp["baseline_needle_recall"] >= 0.99  # the bf16 bar of test_json_reports_compile_and_quality...
    assert cmp["needle_recall"] >= cmp["baseline_needle_recall"] - 0.05
    assert 0.0 <= cmp["attn_rel_error"] <= 1.5 * cmp["baseline_attn_rel_error"] + 0.01
    assert [row["context"] for row in cmp["per_context"]] == [4096, 8192]
    row_keys = {"context", "needle_recall", "baseline_needle_recall", "attn_rel_error", "baseline_attn_rel_error"}
    assert all(set(row) == row_keys for row in cmp["per_context"])
    # the text report says the same, in one section
    proc = vortex(tmp_path, "check", *args)
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    at = lines.index(f"  aux dtype          {dtype} summaries vs bfloat16 (the table above is {dtype}):")
    assert lines[at + 1] == (
        f"                     recall {cmp['needle_recall']:.3f} vs {cmp['baseline_needle_recall']:.3f}, "
        f"attn rel err {cmp['attn_rel_error']:.4f} vs {cmp['baseline_attn_rel_error']:.4f}, "
        "summary bytes per block 128 vs 256"
    )


def test_aux_dtype_bfloat16_is_the_baseline_and_default_has_no_comparison(tmp_path: Path) -> None:
    rc, report, _ = check_json(tmp_path, str(QUICKSTART), "--contexts", "4096", "--aux-dtype", "bfloat16")
    assert rc == 0, report
    cmp = report["aux_comparison"]
    assert cmp["aux_dtype"] == cmp["baseline_aux_dtype"] == "bfloat16"
    assert cmp["needle_recall"] == cmp["baseline_needle_recall"] == report["needle_recall"]
    assert cmp["summary_bytes_per_block"] == cmp["baseline_summary_bytes_per_block"] == 256
    proc = vortex(tmp_path, "check", str(QUICKSTART), "--contexts", "4096")
    assert proc.returncode == 0 and "aux dtype" not in proc.stdout, proc.stdout
    rc, report, _ = check_json(tmp_path, str(QUICKSTART), "--contexts", "4096")
    assert report["aux_dtype"] == "bfloat16" and "aux_comparison" not in report


# -- list, version -----------------------------------------------------------------------------------------------
def test_list_json(tmp_path: Path) -> None:
    proc = vortex(tmp_path, "list", "--json")
    listing = json.loads(proc.stdout)
    assert proc.returncode == 0 and {"flows", "aliases", "broken"} <= set(listing)
    assert all({"name", "package", "description"} <= set(f) for f in listing["flows"])
    assert "streaming_llm" in {f["name"] for f in listing["flows"]}


def test_version_names_the_four_distributions(tmp_path: Path) -> None:
    from importlib.metadata import version

    proc = vortex(tmp_path, "--version")
    assert proc.returncode == 0 and proc.stderr == ""
    dists = ("vortex-ops", "vortex-flow", "vortex-sglang", "vortex-flows-contrib")
    assert proc.stdout.splitlines() == [f"{d} {version(d)}" for d in dists]
