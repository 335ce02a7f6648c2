"""Parsing ``--budgets`` and ``--contexts``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from .errors import EvalUsageError


@dataclass(frozen=True)
class Budget:
    """One sparse budget, in the terms of the budget rule ``min(n, max(topk_val + bos + eos, floor(n * ratio)))``.

    ``label`` is what the user wrote (``"30"``, ``"1/16"``, ``"full"``): it names the budget in the result.
    """

    label: str
    topk_val: int
    topk_ratio: float


def parse_budget(text: str) -> Budget:
    """``"30"`` -> ``topk_val=30`` blocks; ``"1/16"`` or ``"0.0625"`` -> ``topk_ratio``; ``"full"`` -> every block."""
    t = text.strip().lower()
    if t == "full":
        return Budget("full", 0, 1.0)  # floor(n * 1.0) = n: every block, whatever the context
    if re.fullmatch(r"\d+", t):
        if int(t) <= 0:
            raise EvalUsageError(
                f"--budgets: {text!r} keeps no block; use a block count >= 1, a fraction or 'full'"
            )
        return Budget(t, int(t), 0.0)
    try:
        ratio = Fraction(t)
    except (ValueError, ZeroDivisionError):
        ratio = Fraction(-1)
    if not 0 < ratio <= 1:
        raise EvalUsageError(
            f"--budgets: {text!r} is not a budget; use block counts (30), fractions of the blocks in (0, 1] "
            "(1/16 or 0.0625) or 'full', comma-separated"
        )
    return Budget(t, 0, float(ratio))


def parse_budgets(text: str) -> list[Budget]:
    """Comma-separated budgets, duplicates rejected (they would overwrite each other in the result)."""
    budgets = [parse_budget(part) for part in text.split(",") if part.strip()]
    if not budgets:
        raise EvalUsageError("--budgets: give at least one budget, e.g. --budgets 1/16,1/8,full")
    labels = [b.label for b in budgets]
    if len(set(labels)) != len(labels):
        raise EvalUsageError(f"--budgets: {text!r} lists a budget twice")
    return budgets


def parse_contexts(text: str) -> list[int]:
    """``"4k,8k,512"`` -> ``[4096, 8192, 512]`` tokens (``k`` = 1024), each >= 256 (room for the question)."""
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(k?)", part)
        if m is None:
            raise EvalUsageError(f"--contexts: {part!r} is not a length; use token counts like 4k,8k or 512")
        n = int(m.group(1)) * (1024 if m.group(2) else 1)
        if n < 256:
            raise EvalUsageError(f"--contexts: {part!r} is shorter than 256 tokens, too short for the tasks")
        if n in out:
            raise EvalUsageError(f"--contexts: {part!r} is listed twice")
        out.append(n)
    if not out:
        raise EvalUsageError("--contexts: give at least one context length, e.g. --contexts 4k,8k")
    return out
