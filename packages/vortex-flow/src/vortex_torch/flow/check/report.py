"""The verdict of ``vortex check`` and how it is shown.

A report is a JSON-able dict. ``compiled_ok`` says whether the compiled kernels agree with the reference
interpreter; ``quality_ok`` whether the flow finds the planted needles (recall at least ``min_recall``) and
sparse attention stays finite; ``ok`` is both. A report that stops early carries ``stage`` and ``error``.
``aux_dtype`` is the dtype the aux fields were stored in for the measurement; with ``--aux-dtype``,
``aux_comparison`` puts its recall, attention error and summary bytes per block next to the bf16 baseline's.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from numbers import Real
from typing import Any

from vortex_torch.abs.callsite import CallSite, at
from vortex_torch.abs.errors import VortexError

from .options import DEFAULT_MIN_RECALL

#: the class attribute a flow declares its own recall bar with (``None``: not a retrieval flow)
EXPECTED_MIN_RECALL = "expected_min_recall"

__all__ = ["EXPECTED_MIN_RECALL", "judge_quality", "render_text", "resolve_min_recall", "to_json"]


def resolve_min_recall(cli_value: float | None, flow_cls: type | None) -> tuple[float | None, str]:
    """The recall bar and where it comes from: ``--min-recall``, else the flow class's ``expected_min_recall``
    (``None`` means the flow is not meant to retrieve, and only finiteness is checked), else the default."""
    if cli_value is not None:
        return cli_value, "--min-recall"
    if flow_cls is not None and hasattr(flow_cls, EXPECTED_MIN_RECALL):
        value = getattr(flow_cls, EXPECTED_MIN_RECALL)
        where = f"{flow_cls.__qualname__}.{EXPECTED_MIN_RECALL}"
        if value is None:
            return None, where
        if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
            raise VortexError(
                f"{where} must be None or a number in [0, 1], got {value!r}{at(_attribute_site(flow_cls))}. Fix: "
                "declare the needle recall the flow should reach at budget 1/16 (e.g. 0.9), or None for a flow "
                "that does not retrieve (e.g. a sink + recent-window flow)."
            )
        return float(value), where
    return DEFAULT_MIN_RECALL, "default"


def _attribute_site(flow_cls: type) -> CallSite | None:
    """The line that sets ``expected_min_recall`` in the class body that defines it (else the class line)."""
    from ..registry import class_site

    owner = next((c for c in flow_cls.__mro__ if EXPECTED_MIN_RECALL in vars(c)), flow_cls)
    site = class_site(owner)
    try:
        lines, first = inspect.getsourcelines(owner)
    except (OSError, TypeError):
        return site
    pattern = re.compile(rf"^\s*{EXPECTED_MIN_RECALL}\s*[:=]")
    hit = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
    if site is None or hit is None:
        return site
    return CallSite(site.filename, first + hit)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def judge_quality(report: dict[str, Any]) -> None:
    """Set ``quality_ok`` and ``quality_problems`` from the measured recall and error and ``min_recall``."""
    problems: list[str] = []
    recall, best, err = report["needle_recall"], report["needle_recall_max"], report["attn_rel_error"]
    bar, source = report["min_recall"], report["min_recall_from"]
    if not _finite(err):
        problems.append(
            f"sparse attention is not finite (relative error {err}): the flow's scores or selection produce "
            "NaN/inf (check scales and divisions in forward_indexer / forward_cache)"
        )
    if not _finite(recall):
        problems.append(f"needle recall is {recall}")
    elif bar is not None and recall < bar:
        why = f"needle recall {recall:.3f} < {bar:g} ({source})"
        if _finite(best) and best < bar:
            why += (
                f"; at budget {report['budget_fraction']:.4g} no flow can exceed {best:.3f}: raise --budget"
            )
        problems.append(why)
    report["quality_ok"] = not problems
    report["quality_problems"] = problems


def _clean(x: Any) -> Any:
    """NaN and inf become null: the output must parse as strict JSON (jq, JSON.parse)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(_clean(report), allow_nan=False)


_STAGES = {
    "start": "starting the check process",
    "load": "loading the flow",
    "compile": "compiling the flow",
    "measure": "measuring the flow",
}


def _num(x: Any, spec: str) -> str:
    return format(x, spec) if _finite(x) else str(x)


def _aux_lines(cmp: dict[str, Any] | None) -> list[str]:
    """``--aux-dtype``: the measured dtype's summaries side by side with the baseline's (bf16)."""
    if not cmp:
        return []
    dt, base = cmp["aux_dtype"], cmp["baseline_aux_dtype"]
    nb, mb = cmp["summary_bytes_per_block"], cmp["baseline_summary_bytes_per_block"]
    if dt == base:
        return [f"  aux dtype          {dt} summaries (the baseline itself): {nb} bytes per block"]
    return [
        f"  aux dtype          {dt} summaries vs {base} (the table above is {dt}):",
        f"                     recall {_num(cmp['needle_recall'], '.3f')} vs "
        f"{_num(cmp['baseline_needle_recall'], '.3f')}, attn rel err {_num(cmp['attn_rel_error'], '.4f')} vs "
        f"{_num(cmp['baseline_attn_rel_error'], '.4f')}, summary bytes per block {nb} vs {mb}",
    ]


def render_text(r: dict[str, Any]) -> str:
    """The human-readable report (the last line is the verdict)."""
    title = f"{r['flow']} ({r['file']})" if r.get("flow") else str(r.get("file") or r.get("target"))
    lines = [f"vortex check: {title}"]
    if "error" in r:
        doing = _STAGES.get(r.get("stage", ""), "checking")
        lines.append(f"  FAILED while {doing}: {r['error']}")
        lines.append(f"  time               {r.get('time_s', 0)} s")
        return "\n".join(lines)
    c = r["compile"]
    k, kc = c["kernels_per_layer"], c["cache_kernels"]
    where = "; in decode inside scoring" if c.get("cache_folded_in_decode") else ""
    lines.append(
        f"  compile            ok; {k} indexer kernel{'' if k == 1 else 's'} per layer "
        f"(+ {kc} cache-update kernel{'' if kc == 1 else 's'}{where})"
    )
    lines.append(
        f"  compiled == ref    {'yes' if r['compiled_ok'] else 'NO'} (Triton on {c['device']}, small ragged batch)"
    )
    lines += [f"    {m}" for m in c["mismatches"][:5]]
    if r.get("mla"):
        lines.append(
            f"  model              MLA: one latent head of {r['kv_lora_rank']} + {r['qk_rope_head_dim']} "
            f"(cache['latent']), {r['group_size']} absorbed query heads"
        )
    lines.append(
        f"  budget             {r['budget_fraction']:.4g} of each row's blocks of {r['block_size']} tokens"
    )
    lines.append(f"  {'context':>8}  {'needle recall':>13}  {'attn rel err':>12}  {'pages sel/total':>16}")
    for row in r["per_context"]:
        sel = f"{row['pages_selected']}/{row['pages_total']}"
        lines.append(
            f"  {row['context']:>8}  {_num(row['needle_recall'], '.3f'):>13}  "
            f"{_num(row['attn_rel_error'], '.4f'):>12}  {sel:>16}"
        )
    sel = f"{r['pages_selected']}/{r['pages_total']}"
    lines.append(
        f"  {'all':>8}  {_num(r['needle_recall'], '.3f'):>13}  {_num(r['attn_rel_error'], '.4f'):>12}  {sel:>16}"
    )
    lines += _aux_lines(r.get("aux_comparison"))
    bar, source = r["min_recall"], r["min_recall_from"]
    if r["quality_ok"]:
        if bar is None:
            lines.append(f"  quality            ok: attention finite; no recall bar ({source} is None)")
        else:
            how = "default bar; --min-recall R sets another" if source == "default" else source
            lines.append(
                f"  quality            ok: needle recall {r['needle_recall']:.3f} >= {bar:g} ({how})"
            )
    else:
        lines += [f"  quality            FAILED: {p}" for p in r["quality_problems"]]
    if r["ok"]:
        verdict = "PASSED"
    else:
        failed = [what for what, good in (("compiled != reference", r["compiled_ok"]),
                                          ("quality below the bar", r["quality_ok"])) if not good]  # fmt: skip
        verdict = "FAILED: " + "; ".join(failed)
    lines.append(f"  time               {r['time_s']} s")
    lines.append(f"  result             {verdict}")
    return "\n".join(lines)
