"""``vortex``: check a flow, list the installed flows.

    vortex check FLOW [--json] [--min-recall R] ...   load, validate, compile and measure a flow on the CPU
                                                      (FLOW: a .py file, or the name of an installed flow)
    vortex list [--json]                              every registered flow, its package and description
    vortex eval FLOW --model M | --server-url URL     accuracy vs budget on synthetic long-context tasks
    vortex --version                                  the versions of the four Vortex distributions

Each subcommand is one ``_add_<name>(sub)`` function below that adds its parser and sets ``func`` (and, when
its arguments need checking together, ``validate``). A bad argument is one line on stderr naming the flag and
the allowed values, exit code 2 (with ``--json``, also a JSON object on stdout); a check that fails exits 1.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from importlib import metadata
from typing import Any, NoReturn

DISTRIBUTIONS = ("vortex-ops", "vortex-flow", "vortex-sglang", "vortex-flows-contrib")
MAX_CONTEXT = 262_144


class UsageError(Exception):
    """A bad command line: ``prog`` is the (sub)command, ``message`` names the flag and the allowed values."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog, self.message = prog, message


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits; a UsageError lets main() print one line (and JSON with --json)
    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


# -- argument types: each error names the allowed values (argparse prefixes the flag) --------------------------
def _int(text: str, lo: int, hi: int, what: str, pow2: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    ok = value is not None and lo <= value <= hi and (not pow2 or value & (value - 1) == 0)
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    assert value is not None
    return value


def _ranged(lo: int, hi: int, *, pow2: bool = False) -> Callable[[str], int]:
    what = f"a power of two from {lo} to {hi}" if pow2 else f"an integer from {lo} to {hi}"
    return lambda text: _int(text, lo, hi, what, pow2)


def _fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1] such as 1/16 or 0.0625, got {text!r}")
    return value


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _aux_dtype(text: str) -> str:
    from .check.options import AUX_DTYPES

    if text not in AUX_DTYPES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(AUX_DTYPES)}, got {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 86400], got {text!r}")
    return value


# -- vortex check ------------------------------------------------------------------------------------------------
def _validate_check(args: argparse.Namespace) -> None:
    """Cross-argument checks argparse cannot express; fills ``args.contexts`` with ints."""
    from .check.options import flow_is_file, min_context

    prog = "vortex check"
    raw: list[str] = list(args.contexts)
    # `vortex check --contexts 4096 8192 flow.py`: the list swallowed the flow; take it back.
    if args.flow is None and raw and not raw[-1].lstrip("-").isdigit():
        args.flow = raw.pop()
    if args.flow is None:
        raise UsageError(
            prog,
            "missing FLOW: the path of a flow's .py file, or the name of an installed flow (`vortex list`)",
        )
    lo = min_context(args.needles, args.block_size)
    contexts = []
    for text in raw:
        try:
            n = int(text)
        except ValueError:
            n = -1
        if not lo <= n <= MAX_CONTEXT:
            raise UsageError(
                prog,
                f"argument --contexts: must be context lengths in tokens from {lo} to {MAX_CONTEXT} (the minimum "
                f"holds --needles {args.needles} outside the first and last block of --block-size "
                f"{args.block_size}), got {text!r}",
            )
        contexts.append(n)
    if not contexts:
        raise UsageError(
            prog, "argument --contexts: expected at least one context length, e.g. --contexts 4096"
        )
    args.contexts = contexts
    if args.name is not None and not flow_is_file(args.flow):
        raise UsageError(
            prog,
            f"argument --name: only for a FLOW file that registers several flows; {args.flow!r} is a flow name "
            "(drop --name, or pass the file's path)",
        )


def cmd_check(args: argparse.Namespace) -> int:
    from .check import CheckOptions, render_text, run_check, to_json

    opts = CheckOptions(
        flow=args.flow, name=args.name, contexts=tuple(args.contexts), budget=args.budget, needles=args.needles,
        block_size=args.block_size, head_dim=args.head_dim, group_size=args.group_size, kv_heads=args.kv_heads,
        kv_lora_rank=args.kv_lora_rank, qk_rope_head_dim=args.qk_rope_head_dim, mla_heads=args.mla_heads,
        seed=args.seed, min_recall=args.min_recall, timeout_s=args.timeout, aux_dtype=args.aux_dtype,
    )  # fmt: skip
    report = run_check(opts)
    try:
        print(to_json(report) if args.json else render_text(report), flush=True)
    except BrokenPipeError:  # `vortex check ... | head -1`: the reader left; exit non-zero, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if report.get("interrupted"):
        return 130
    return 0 if report["ok"] else 1


def _add_check(sub: Any) -> None:
    from .check import DEFAULT_MIN_RECALL, DEFAULT_TIMEOUT_S

    c = sub.add_parser(
        "check",
        allow_abbrev=False,
        help="load, validate, compile and measure a flow on planted-needle contexts",
        description="Load a flow, check its rules, compile it to Triton (interpreted on a CPU) against the "
        "reference, and measure needle recall and attention error at a budget. Exit code 0 only when the "
        "compiled kernels match the reference and the recall reaches the bar.",
    )
    c.add_argument("flow", nargs="?", metavar="FLOW", help="a flow's .py file, or an installed flow's name")
    c.add_argument("--name", help="the @register name, when the file registers several flows")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument(
        "--contexts", nargs="+", default=["4096", "8192", "16384", "32768"], metavar="TOKENS",
        help=f"context lengths in tokens (default: 4096 8192 16384 32768; at most {MAX_CONTEXT})",
    )  # fmt: skip
    c.add_argument(
        "--budget", type=_fraction, default=1 / 16, help="fraction of each row's blocks kept (1/16)"
    )
    c.add_argument("--needles", type=_ranged(1, 1024), default=4, help="needles per (context, KV head) (4)")
    c.add_argument("--block-size", type=_ranged(2, 256, pow2=True), default=16, help="tokens per block (16)")
    c.add_argument("--head-dim", type=_ranged(8, 512), default=128, help="head dimension (128)")
    c.add_argument("--group-size", type=_ranged(1, 64), default=4, help="query heads per KV head (4)")
    c.add_argument("--kv-heads", type=_ranged(1, 64), default=2, help="KV heads (2)")
    c.add_argument(
        "--kv-lora-rank", type=_ranged(8, 2048), default=512, help="MLA flows (vFlowMLA): latent kv_c width (512)"
    )
    c.add_argument(
        "--qk-rope-head-dim", type=_ranged(0, 256), default=64, help="MLA flows: RoPE part of the latent (64)"
    )
    c.add_argument("--mla-heads", type=_ranged(1, 128), default=16, help="MLA flows: query heads (16)")
    c.add_argument("--seed", type=_ranged(0, 2**31 - 1), default=0)
    c.add_argument(
        "--min-recall", type=_unit, default=None, metavar="R",
        help=f"fail below this needle recall (default: the flow's expected_min_recall, else {DEFAULT_MIN_RECALL})",
    )  # fmt: skip
    c.add_argument(
        "--aux-dtype", type=_aux_dtype, default=None, metavar="DTYPE",
        help="measure with the flow's aux fields (summaries) stored in DTYPE, as VortexConfig.dtype stores them "
        "(bfloat16, float16, float32, fp8_e4m3, fp8_e5m2; fp8 saturates), and report recall, attention error and "
        "summary bytes per block side by side with bfloat16 (default: bfloat16 only, no comparison)",
    )  # fmt: skip
    c.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
        help=f"seconds the flow may take to import, construct and trace ({DEFAULT_TIMEOUT_S:g})",
    )  # fmt: skip
    c.set_defaults(func=cmd_check, validate=_validate_check)


# -- vortex list -------------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from . import registry

    flows = registry.list_flows()
    broken = registry.broken_packages()
    if args.json:
        print(json.dumps({
            "flows": [{"name": f.name, "package": f.package, "description": f.description} for f in flows],
            "aliases": registry.aliases(),
            "broken": broken,
        }))  # fmt: skip
        return 0
    width = max((len(f.name) for f in flows), default=4)
    pw = max((len(f.package) for f in flows), default=7)
    for f in flows:
        print(f"{f.name:<{width}}  {f.package:<{pw}}  {f.description}")
    for name, err in broken.items():
        print(f"warning: flow package {name} failed to load: {err}", file=sys.stderr)
    return 0


def _add_list(sub: Any) -> None:
    ls = sub.add_parser("list", allow_abbrev=False, help="list registered flows")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


# -- vortex --version --------------------------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    """``{distribution: version}`` of the four Vortex distributions (None: not installed)."""
    found: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        for dist, version in versions().items():
            print(f"{dist} {version or '(not installed)'}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="vortex", description="Vortex: programmable sparse attention", allow_abbrev=False)
    ap.add_argument(
        "--version", action=_Version, nargs=0, help="print the versions of the Vortex distributions"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_check(sub)
    _add_list(sub)
    from .eval.command import add_parser as add_eval_parser  # `vortex eval`: all of it lives in flow/eval/

    add_eval_parser(sub)
    return ap


def _unrecognized(ap: argparse.ArgumentParser, argv: list[str], exc: UsageError) -> UsageError:
    """Say what an unrecognized option was meant to be: a command's option put before the command, or a typo."""
    prefix = "unrecognized arguments: "
    if not exc.message.startswith(prefix):
        return exc
    commands: dict[str, argparse.ArgumentParser] = {}
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = dict(action.choices)
    at = next((i for i, a in enumerate(argv) if a in commands), None)
    if at is None:
        return exc
    name, parser = argv[at], commands[argv[at]]
    options = sorted(o for o in parser._option_string_actions if o.startswith("--") and o != "--help")
    unknown = exc.message[len(prefix) :].split()
    flag = next((u for u in unknown if u.startswith("-")), unknown[0])
    key = flag.split("=", 1)[0]
    if not flag.startswith("-"):
        why = f"one FLOW at a time; got the extra argument {flag!r} (run `vortex {name}` once per flow)"
    elif key in options and flag in argv[:at]:
        why = f"{key} is an option of `vortex {name}`: put it after the command (vortex {name} ... {key})"
    else:
        close = difflib.get_close_matches(key, options, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        why = f"unrecognized argument {flag!r}: {hint}the options of `vortex {name}` are {', '.join(options)}"
    return UsageError(f"vortex {name}", why)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
        validate = getattr(args, "validate", None)
        if validate is not None:
            validate(args)
    except UsageError as raw:
        exc = _unrecognized(ap, argv, raw)
        line = f"{exc.prog}: error: {exc.message} (see `{exc.prog} --help`)"
        print(line, file=sys.stderr)
        if "--json" in argv:
            print(json.dumps({"ok": False, "stage": "arguments", "error": line}))
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
