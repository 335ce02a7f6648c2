"""The process that runs one ``vortex check``: ``python -P -m vortex_torch.flow.check.worker '<options json>'``.

It talks to the CLI (:mod:`.runner`) over its original stdout, one JSON object a line: ``{"event": "ready"}``
once its imports are done, ``{"event": "loaded"}`` once the flow is imported, constructed and traced, and
``{"event": "report", "report": {...}}`` at the end. Everything else that would reach stdout (a flow's
``print``, a C library) is sent to stderr instead, so ``--json`` output stays one JSON object.

Whatever the flow's code raises, ``BaseException`` included (``SystemExit``, ``KeyboardInterrupt``), becomes the
report's ``error`` with the file and line: in this process no such exception can come from the user, since the
CLI started it in its own session and delivers Ctrl-C by killing it.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
import traceback
from typing import IO, Any

from vortex_torch.abs.callsite import at, traceback_callsite
from vortex_torch.abs.errors import VortexError

from ..backend import use_triton_interpreter_without_cuda
from .options import AUX_DTYPES, BASELINE_AUX_DTYPE, CheckOptions
from .report import judge_quality, resolve_min_recall, to_json


class _Failed(Exception):
    """A stage failed; ``stage`` and the message go into the report."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _describe(exc: BaseException, doing: str, prefer: str | None) -> str:
    """One message for anything raised while ``doing``: Vortex's own errors already name the file, line and
    fix; anything else gets the innermost frame of the flow file (or of whatever raised it)."""
    if isinstance(exc, VortexError):
        return str(exc)
    site = traceback_callsite(exc.__traceback__, prefer=prefer)
    where = at(site)
    if not where:  # raised inside Vortex or a library: name that frame, it is what a bug report needs
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (in {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = str(exc)
    return f"{doing} raised {type(exc).__name__}{': ' + text if text else ''}{where}"


class _Stage:
    """``with _Stage("importing the flow", "load", prefer=path):`` turns any exception into :class:`_Failed`."""

    def __init__(self, doing: str, stage: str, prefer: str | None = None) -> None:
        self.doing, self.stage, self.prefer = doing, stage, prefer

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, _Failed):
            return
        raise _Failed(self.stage, _describe(exc, self.doing, self.prefer)) from None


def _load(opts: CheckOptions, report: dict[str, Any]) -> Any:
    """Import, construct and trace the flow (the part ``--timeout`` limits). Returns (flow, traced)."""
    from vortex_torch.abs.context import Geometry
    from vortex_torch.abs.mla import MLAGeometry

    from .. import registry
    from ..loader import build_vflow, load_module_file
    from ..trace import trace_flow
    from ..user_code import is_mla_flow

    prefer: str | None = None
    if opts.is_file:
        prefer = os.path.realpath(opts.flow)
        with _Stage(f"importing flow file {opts.flow}", "load", prefer):
            names = load_module_file(opts.flow, what="FLOW")
        name = opts.name
        if name is None:
            if not names:
                raise _Failed(
                    "load",
                    f"{opts.flow} registers no flow. Fix: decorate the flow class with @register('my_flow') "
                    "(from vortex_torch.flow import register).",
                )
            if len(names) > 1:
                raise _Failed(
                    "load",
                    f"{opts.flow} registers {len(names)} flows ({', '.join(names)}). Fix: pick one with --name NAME.",
                )
            name = names[0]
        elif name not in names:
            raise _Failed(
                "load",
                f"--name {name!r}: {opts.flow} registers {', '.join(repr(n) for n in names) or 'no flow'}. Fix: "
                "pass one of those names.",
            )
    else:
        name = opts.flow
        with _Stage(f"looking up the flow {name!r}", "load"):
            info = registry.get_info(name, missing_ok=True)
        if info is None:
            known = registry.list_keys()
            close = difflib.get_close_matches(name, known + sorted(registry.aliases()), n=1)
            broken = registry.broken_packages()
            raise _Failed(
                "load",
                f"{name!r} is neither a file nor a registered flow. Known flows: {', '.join(known) or '(none)'}."
                + (f" Did you mean {close[0]!r}?" if close else "")
                + (f" Flow packages that failed to load: {broken}." if broken else "")
                + " Fix: pass an installed flow's name (`vortex list`) or a flow file's path (e.g. ./my_flow.py).",
            )
        name = info.name
        prefer = info.source if info.source != "?" else None
    info = registry.get_info(name)
    assert info is not None
    report.update(flow=name, file=opts.flow if opts.is_file else info.source)
    if not opts.is_file:
        report["package"] = info.package
    with _Stage(f"constructing flow {name!r}", "load", prefer):
        flow = build_vflow(name)
        report["min_recall"], report["min_recall_from"] = resolve_min_recall(opts.min_recall, type(flow))
    geometry: Geometry
    if is_mla_flow(flow):  # an MLA model's layer: one latent head, absorbed queries
        geometry = MLAGeometry.of(
            block_size=opts.block_size,
            kv_lora_rank=opts.kv_lora_rank,
            qk_rope_head_dim=opts.qk_rope_head_dim,
            num_heads=opts.mla_heads,
        )
        report.update(
            mla=True, head_dim=geometry.head_dim, group_size=opts.mla_heads, kv_heads=1,
            kv_lora_rank=opts.kv_lora_rank, qk_rope_head_dim=opts.qk_rope_head_dim,
        )  # fmt: skip
    else:
        geometry = Geometry(block_size=opts.block_size, head_dim=opts.head_dim, group_size=opts.group_size)
    with _Stage(f"tracing flow {name!r}", "load", prefer):
        traced = trace_flow(flow, geometry)
    return flow, traced


def _measure_contexts(flow: Any, opts: CheckOptions, mla: bool, aux_dtype: str) -> list[dict[str, Any]]:
    """``measure_flow`` once per context, with the aux fields stored in ``aux_dtype`` (a key of AUX_DTYPES)."""
    import torch
    from tqdm import tqdm

    from ..runtime.config import RuntimeConfig
    from ..runtime.synthetic import measure_flow

    # block_size sets the blocks the flow summarises and selects; a page holds one block, as in SGLang with
    # page_size == block_size.
    dtype = getattr(torch, AUX_DTYPES[aux_dtype])
    config = RuntimeConfig(block_size=opts.block_size, page_size=opts.block_size, dtype=dtype)
    bar = tqdm(
        opts.contexts, desc=f"needle contexts ({aux_dtype} aux)", unit="ctx", disable=not sys.stderr.isatty(),
        leave=False,
    )  # fmt: skip
    return [
        measure_flow(
            flow,
            seq_lens=[n],
            budget_fraction=opts.budget,
            num_needles=opts.needles,
            num_kv_heads=1 if mla else opts.kv_heads,
            head_dim=opts.kv_lora_rank + opts.qk_rope_head_dim if mla else opts.head_dim,
            group_size=opts.mla_heads if mla else opts.group_size,
            config=config,
            seed=opts.seed,
            qk_rope_head_dim=opts.qk_rope_head_dim,
        )
        for n in bar
    ]


def _summarise(opts: CheckOptions, per_ctx: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's quality numbers over every context (recall weighted by needle blocks, error averaged)."""
    hits = sum(m["needle_blocks_hit"] for m in per_ctx)
    total = sum(m["needle_blocks_total"] for m in per_ctx)
    best = sum(m["needle_recall_max"] * m["needle_blocks_total"] for m in per_ctx)
    return {
        "needle_recall": hits / total,
        "needle_recall_max": best / total,
        "attn_rel_error": sum(m["attn_rel_error"] for m in per_ctx) / len(per_ctx),
        "pages_selected": sum(m["pages_selected"] for m in per_ctx),
        "pages_total": sum(m["pages_total"] for m in per_ctx),
        "per_context": [
            {k: m[k] for k in ("needle_recall", "attn_rel_error", "pages_selected", "pages_total")}
            | {"context": n}
            for n, m in zip(opts.contexts, per_ctx, strict=True)
        ],
    }


def summary_bytes_per_block(traced: Any, aux_dtype: str) -> int:
    """Bytes of the flow's aux fields (its summaries) for one block of one KV head, stored in ``aux_dtype``."""
    import torch

    itemsize = getattr(torch, AUX_DTYPES[aux_dtype]).itemsize
    return sum(r * c for r, c in traced.fields.values()) * int(itemsize)


def _measure(flow: Any, traced: Any, opts: CheckOptions, report: dict[str, Any]) -> None:
    """Fill the quality numbers, measured with the aux fields in ``--aux-dtype`` (the baseline dtype without
    it); with ``--aux-dtype``, also ``aux_comparison``: the same numbers with baseline (bf16) summaries."""
    mla = bool(report.get("mla"))
    dtype = opts.aux_dtype or BASELINE_AUX_DTYPE
    measured = _summarise(opts, _measure_contexts(flow, opts, mla, dtype))
    report.update(measured, aux_dtype=dtype)
    if opts.aux_dtype is None:
        return
    base_dtype = BASELINE_AUX_DTYPE
    base = measured
    if dtype != base_dtype:
        base = _summarise(opts, _measure_contexts(flow, opts, mla, base_dtype))
    report["aux_comparison"] = {
        "aux_dtype": dtype,
        "baseline_aux_dtype": base_dtype,
        "needle_recall": measured["needle_recall"],
        "baseline_needle_recall": base["needle_recall"],
        "attn_rel_error": measured["attn_rel_error"],
        "baseline_attn_rel_error": base["attn_rel_error"],
        "summary_bytes_per_block": summary_bytes_per_block(traced, dtype),
        "baseline_summary_bytes_per_block": summary_bytes_per_block(traced, base_dtype),
        "per_context": [
            {
                "context": row["context"],
                "needle_recall": row["needle_recall"],
                "baseline_needle_recall": brow["needle_recall"],
                "attn_rel_error": row["attn_rel_error"],
                "baseline_attn_rel_error": brow["attn_rel_error"],
            }
            for row, brow in zip(measured["per_context"], base["per_context"], strict=True)
        ],
    }


def run(opts: CheckOptions, send: Any) -> dict[str, Any]:
    """The whole check; ``send(event, **data)`` reports progress to the CLI. Never raises."""
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "ok": False, "compiled_ok": None, "quality_ok": None, "file": opts.flow, "flow": None,
        "budget_fraction": opts.budget, "block_size": opts.block_size, "head_dim": opts.head_dim,
        "group_size": opts.group_size, "kv_heads": opts.kv_heads, "needles": opts.needles,
        "contexts": list(opts.contexts),
    }  # fmt: skip
    try:
        with _Stage("switching Triton's interpreter on", "start"):
            use_triton_interpreter_without_cuda()
        send("ready")
        flow, traced = _load(opts, report)
        send("loaded", flow=report["flow"])
        from ..testing import compile_check

        with _Stage(f"compiling flow {report['flow']!r}", "compile"):
            compiled = compile_check(traced, seed=opts.seed, num_kv_heads=1 if report.get("mla") else opts.kv_heads)
        report["compile"] = compiled.as_dict()
        report["kernels_per_layer"] = compiled.kernels_per_layer
        report["compiled_ok"] = compiled.ok
        with _Stage(f"measuring flow {report['flow']!r} on needle contexts", "measure", report["file"]):
            _measure(flow, traced, opts, report)
        judge_quality(report)
        report["ok"] = bool(report["compiled_ok"] and report["quality_ok"])
    except _Failed as exc:
        report.update(stage=exc.stage, error=str(exc))
    report["time_s"] = round(time.perf_counter() - t0, 2)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The protocol channel is the stdout the CLI reads; fd 1 itself now points at stderr (see module doc).
    channel: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(event: str, **data: Any) -> None:
        channel.write(json.dumps({"event": event, **data}) + "\n")
        channel.flush()

    opts = CheckOptions.from_json(argv[0])
    report = run(opts, send)
    channel.write(json.dumps({"event": "report", "report": json.loads(to_json(report))}) + "\n")
    channel.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
