"""`vortex check` and `vortex list` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vortex_torch.flow.cli import main

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "examples" / "custom_sparse_attention.py"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    rc = main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_check_quickstart_reports_recall_at_one_sixteenth(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _run(capsys, "check", str(QUICKSTART), "--json", "--contexts", "4096", "16384")
    assert rc == 0 and report["ok"] is True
    for key in (
        "ok",
        "needle_recall",
        "attn_rel_error",
        "pages_selected",
        "pages_total",
        "kernels_per_layer",
    ):
        assert key in report
    assert report["flow"] == "custom_sparse_attention"
    assert report["budget_fraction"] == pytest.approx(1 / 16)
    assert report["needle_recall"] >= 0.99  # the bar the quick-start flow must meet at budget 1/16
    assert report["kernels_per_layer"] == 2  # fused scoring + selection
    assert report["pages_selected"] == (4096 + 16384) // 16 // 16 * 2  # 2 KV heads, 1/16 of the blocks
    assert 0.0 <= report["attn_rel_error"] < 0.2


def test_check_human_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(QUICKSTART), "--contexts", "4096"]) == 0
    out = capsys.readouterr().out
    assert "needle recall" in out and "compiled == ref    yes" in out


def test_check_bad_flow_fails_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad_flow.py"
    bad.write_text(QUICKSTART.read_text().replace("q_mean = self.mean(q, ctx=ctx)", "q_mean = q.mean(dim=1)")
                   .replace('"custom_sparse_attention"', '"bad_flow_for_cli"'))  # fmt: skip
    rc, report = _run(capsys, "check", str(bad), "--json")
    assert rc == 1 and report["ok"] is False
    assert "bad_flow.py:22" in report["error"] and "Mean(dim=" in report["error"]


def test_check_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _run(capsys, "check", "/nonexistent/flow.py", "--json")
    assert rc == 1 and "does not exist" in report["error"]


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, listing = _run(capsys, "list", "--json")
    assert rc == 0 and {"flows", "aliases", "broken"} <= set(listing)
    assert all({"name", "package", "description"} <= set(f) for f in listing["flows"])
