"""tools/bench/plot_e2e.py: the e2e JSON contract (rows of ctx, batch, budget_tokens, overlap, plain_tok_s,
vortex_tok_s) in, a PNG out; bad input is one line on stderr naming the key, exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]


plot_e2e = load_tool(ROOT / "tools" / "bench" / "plot_e2e.py")


def rows(overlap: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ctx in (2048, 8192, 32768):
        for batch in (1, 16):
            plain = 2000.0 / (1 + ctx / 8192) * batch
            out.append({"ctx": ctx, "batch": batch, "budget_tokens": 512, "overlap": overlap, "plain_tok_s": plain,
                        "vortex_tok_s": plain * (0.9 + ctx / 16384), "gpu": "GPU X"})  # fmt: skip
    out[-1]["vortex_tok_s"] = None  # a case skipped for time: left out of the plot
    return out


def write(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_plots_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "2030-01-02-e2e-decode.json", rows())
    out = tmp_path / "docs" / "speedup.png"
    assert plot_e2e.main([src, "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert "5 points, 1 rows without both throughputs left out" in capsys.readouterr().out
    ns = plot_e2e.argparse.Namespace(date=None, device=None, json=[src])
    assert plot_e2e.title_date(ns, [{}]) == "2030-01-02" and plot_e2e.title_device(ns, rows()) == "GPU X"


def test_two_calls_merge_and_a_repeated_case_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.json", rows(False))
    b = write(tmp_path / "b.json", rows(True))
    merged = tmp_path / "merged.json"
    assert plot_e2e.main([a, b, "--out", str(tmp_path / "p.png"), "--merged-out", str(merged)]) == 0
    assert json.loads(merged.read_text()) == rows(False) + rows(True)
    assert plot_e2e.main([a, a, "--out", str(tmp_path / "q.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the same case" in err and not (tmp_path / "q.png").exists()


def test_pdl_rows_are_cases_of_their_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Vortex engine with ``enable_pdl`` measures the same (ctx, batch, budget, overlap) again: its rows are
    another line of the plot, not a repeated case; two PDL rows of one case still are."""
    pdl = [{**r, "pdl": True} for r in rows()]
    out = tmp_path / "p.png"
    assert plot_e2e.main([write(tmp_path / "a.json", rows()), write(tmp_path / "b.json", pdl), "--out", str(out)]) == 0
    assert "10 points" in capsys.readouterr().out and out.exists()
    assert plot_e2e.main([write(tmp_path / "c.json", pdl + pdl[:1]), "--out", str(out)]) == 2
    assert "the same case" in capsys.readouterr().err
    tp2 = [{**r, "tp_size": 2} for r in rows()]  # a tp 2 run of the same cases: lines of their own
    assert plot_e2e.main([write(tmp_path / "d.json", rows() + tp2), "--out", str(out)]) == 0
    assert "10 points" in capsys.readouterr().out
    dense = [{**r, "sparse_decode_min_tokens": 8192} for r in rows()]  # a vortex:dense8192 engine: its own line
    assert plot_e2e.main([write(tmp_path / "e.json", rows() + dense), "--out", str(out)]) == 0
    assert "10 points" in capsys.readouterr().out


@pytest.mark.parametrize("key", plot_e2e.REQUIRED)
def test_a_missing_key_is_one_line_naming_it(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = rows()
    del data[2][key]
    out = tmp_path / "p.png"
    assert plot_e2e.main([write(tmp_path / "bad.json", data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("plot_e2e: ") and f"row 2: missing key '{key}'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ctx": 1}, "expected a list of row objects"),
        ([1], "row 0: expected an object"),
        ([{**rows()[0], "ctx": "2k"}], "key 'ctx' must be a positive integer"),
        ([{**rows()[0], "overlap": "no"}], "key 'overlap' must be true or false"),
        ([{**rows()[0], "pdl": 1}], "key 'pdl' must be true or false"),
        ([{**rows()[0], "tp_size": 0}], "key 'tp_size' must be a positive integer"),
        ([{**rows()[0], "sparse_decode_min_tokens": True}], "key 'sparse_decode_min_tokens' must be an integer >= 0"),
        ([{**rows()[0], "plain_tok_s": -1}], "key 'plain_tok_s' must be a positive number or null"),
        ([{**rows()[0], "vortex_tok_s": None}], "nothing to plot"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, data: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plot_e2e.main([write(tmp_path / "bad.json", data), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_the_committed_rows_meet_the_contract() -> None:
    committed = sorted((ROOT / "results" / "gpu").glob("*-e2e-decode.json"))
    assert committed, "no results/gpu/<date>-e2e-decode.json committed"
    for path in committed:
        assert plot_e2e.load_rows([str(path)])
