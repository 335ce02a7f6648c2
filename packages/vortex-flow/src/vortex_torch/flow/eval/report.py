"""Writing the result: ``result.json``, ``accuracy_vs_budget.png`` and a short text table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EvalError, first_line

RESULT_JSON = "result.json"
PLOT_PNG = "accuracy_vs_budget.png"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n")


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy (mean over tasks) vs budget, one line per context; the dense accuracy of each context is a
    dashed line of the same colour.

    Budgets are categorical on the x axis, in the order given: block counts and fractions of the blocks
    cannot share a numeric axis.
    """
    try:
        # the object-oriented API with the Agg canvas: no pyplot, so no display and no global backend switch
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EvalError(
            f"the plot needs matplotlib ({first_line(exc)}); install it with pip install 'vortex-flow[eval]'"
        ) from exc
    labels: list[str] = result["budgets"]
    xs = list(range(len(labels)))
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, row in enumerate(result["summary"]):
        color = f"C{i % 10}"
        ys = [row["budgets"][b]["accuracy"] for b in labels]
        ax.plot(xs, ys, marker="o", color=color, label=f"{row['context']} tokens")
        if row["dense_accuracy"] is not None:
            ax.axhline(
                row["dense_accuracy"],
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"{row['context']} dense",
            )
    ax.set_xticks(xs, labels)
    ax.set_xlabel("budget (blocks kept per row, or fraction of the blocks)")
    ax.set_ylabel("accuracy (mean over tasks)")
    ax.set_ylim(-0.03, 1.03)
    backend = result["backend"]
    ax.set_title(
        f"{backend.get('flow') or 'vortex'} on {backend.get('model') or backend['kind']}", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def table(result: dict[str, Any]) -> str:
    """The summary as text: accuracy per (context, budget), dense accuracy and agreement with dense."""
    labels: list[str] = result["budgets"]
    width = max(12, *(len(b) for b in labels))  # "1.000 (1.00)"
    head = f"  {'context':>8}  {'dense':>6}  " + "  ".join(f"{b:>{width}}" for b in labels)
    lines = ["accuracy (agreement with dense in brackets)", head]
    for row in result["summary"]:
        dense = "-" if row["dense_accuracy"] is None else f"{row['dense_accuracy']:.3f}"
        cells = []
        for b in labels:
            cell = row["budgets"][b]
            agree = "" if cell["agreement"] is None else f" ({cell['agreement']:.2f})"
            cells.append(f"{cell['accuracy']:.3f}{agree}".rjust(width))
        lines.append(f"  {row['context']:>8}  {dense:>6}  " + "  ".join(cells))
    return "\n".join(lines)
