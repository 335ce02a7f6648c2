"""``vortex eval``: the command line (parsing, backend choice, output files). See README "Measuring a flow on
a model" for examples."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from vortex_torch.abs.errors import VortexError

from .budgets import parse_budgets, parse_contexts
from .errors import EvalError, EvalUsageError, first_line
from .runner import Backend, run_eval
from .tasks import TASKS, ContextTooShortError

DESCRIPTION = """\
Measure a flow against dense attention on synthetic long-context tasks (passkey, needle-in-a-haystack,
multi-key, multi-value, variable tracking), generated locally, at several budgets and context lengths.

  vortex eval FLOW --model PATH_OR_HUB_ID [--device cuda]       transformers, through Vortex's reference runtime
  vortex eval --server-url URL [--server-url URL ...] --dense-url URL --budgets LABELS
                                                                 OpenAI-compatible servers, one per budget

Writes OUT/result.json and OUT/accuracy_vs_budget.png.
"""


def _one_line_error(prog: str) -> Callable[[str], NoReturn]:
    """argparse's ``error`` prints the whole usage; a user needs the one line naming the flag."""

    def error(message: str) -> NoReturn:
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    return error


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``vortex`` subcommand parsers ``sub``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "eval",
        help="measure a flow against dense attention on a model (HF or a server)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.error = _one_line_error("vortex eval")  # type: ignore[method-assign,assignment]
    p.add_argument(
        "flow", nargs="?", help="the flow: a .py file or a registered name (optional with --server-url)"
    )
    p.add_argument("--name", help="the @register name, when the flow file registers several")
    src = p.add_argument_group("model (one of)")
    src.add_argument(
        "--model", help="HF model: a local checkpoint directory or a hub id (e.g. Qwen/Qwen3-0.6B)"
    )
    src.add_argument(
        "--server-url", action="append", help="OpenAI-compatible server with Vortex, once per budget"
    )
    hf = p.add_argument_group("--model options")
    hf.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    hf.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16"
    )
    hf.add_argument(
        "--dense-attn", default="sdpa", help="transformers attention for the dense baseline (sdpa)"
    )
    hf.add_argument("--block-size", type=int, default=16, help="tokens per block (16)")
    hf.add_argument("--page-size", type=int, default=None, help="tokens per page (default: the block size)")
    hf.add_argument("--bos", type=int, default=1, help="leading blocks always kept (1)")
    hf.add_argument("--eos", type=int, default=1, help="trailing blocks always kept (1)")
    hf.add_argument("--layers-skip", default="", help="comma-separated layers left dense, e.g. 0,1 (none)")
    srv = p.add_argument_group("--server-url options")
    srv.add_argument("--dense-url", help="the same model served without Vortex: the dense baseline")
    srv.add_argument("--server-model", help="the request's model field (default: asked from /v1/models)")
    srv.add_argument("--tokenizer", help="HF tokenizer to size prompts (default: ~4 characters per token)")
    srv.add_argument("--concurrency", type=int, default=8, help="requests in flight per server (8)")
    srv.add_argument("--timeout", type=float, default=600.0, help="seconds per request (600)")
    run = p.add_argument_group("what to run")
    run.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)} (all)"
    )
    run.add_argument("--contexts", default="4k,8k", help="context lengths in tokens, e.g. 4k,8k,512 (4k,8k)")
    run.add_argument(
        "--budgets",
        default=None,
        help="--model: blocks (30), fractions of the blocks (1/16, 0.0625) or full (default 1/32,1/16,1/8,full);"
        " --server-url: one label per server",
    )
    run.add_argument("--samples", type=int, default=5, help="samples per task and context (5)")
    run.add_argument("--seed", type=int, default=0, help="seed of the task generator (0)")
    run.add_argument("--out", default="vortex-eval", help="output directory (vortex-eval)")
    run.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bars (auto: on a terminal)",
    )
    p.set_defaults(func=main)
    return p


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise EvalUsageError(
            f"--tasks: unknown task {', '.join(bad) or '(none given)'}; choose from {','.join(TASKS)}"
        )
    return list(dict.fromkeys(tasks))


def _layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise EvalUsageError(f"--layers-skip: {text!r} is not a list of layer indices, e.g. 0,1") from None
    if any(i < 0 for i in layers):
        raise EvalUsageError(f"--layers-skip: {text!r} has a negative layer index")
    return layers


_FLAGS = {
    "RuntimeConfig.block_size": "--block-size",
    "RuntimeConfig.page_size": "--page-size",
    "RuntimeConfig.block_reserved_bos": "--bos",
    "RuntimeConfig.block_reserved_eos": "--eos",
    "RuntimeConfig.layers_skip": "--layers-skip",
}


def _as_flag_error(exc: ValueError) -> EvalUsageError:
    """A :class:`RuntimeConfig` error, reworded with the flag the user typed."""
    msg = str(exc)
    for field, flag in _FLAGS.items():
        msg = msg.replace(field, flag)
    return EvalUsageError(msg)


def _flow_factory(flow: str, name: str | None) -> tuple[str, Callable[[], Any]]:
    """``(flow name, factory)`` for a flow file or a registered name; loads it once now so errors show early."""
    from ..loader import build_vflow, load_module_file

    if flow.endswith(".py") or os.path.sep in flow or os.path.exists(flow):
        names = load_module_file(flow)
        if name is None:
            if len(names) != 1:
                raise EvalUsageError(
                    f"{flow} registers {len(names)} flows ({', '.join(names) or 'none'}): pick one with --name"
                )
            name = names[0]
        elif name not in names:
            raise EvalUsageError(f"--name {name}: {flow} registers {', '.join(names) or 'no flow'}")
    else:
        name = flow
    build_vflow(name)
    resolved = name
    return resolved, lambda: build_vflow(resolved)


def _hf_backend(args: argparse.Namespace, contexts: list[int]) -> Backend:
    from ..runtime.config import RuntimeConfig
    from .hf_backend import HFBackend, load_model, resolve_device, resolve_dtype

    if args.flow is None:
        raise EvalUsageError("--model needs a flow: vortex eval FLOW.py --model ...")
    budgets = parse_budgets(args.budgets or "1/32,1/16,1/8,full")
    try:
        base = RuntimeConfig(
            block_size=args.block_size,
            page_size=args.page_size if args.page_size is not None else args.block_size,
            block_reserved_bos=args.bos,
            block_reserved_eos=args.eos,
            layers_skip=_layers(args.layers_skip),
        )
    except ValueError as exc:
        raise _as_flag_error(exc) from None
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    flow_name, factory = _flow_factory(args.flow, args.name)
    model, tokenizer = load_model(args.model, device, dtype, args.dense_attn)
    backend = HFBackend(model, tokenizer, factory, budgets, base, name=args.model, flow_name=flow_name)
    for ctx in contexts:
        backend.check_context(ctx)
    try:  # a runtime of the model's shape now: a flow that does not fit the model fails before any decoding
        backend.sparse_runner(budgets[0].label, base.page_size)
    except ValueError as exc:
        if "RuntimeConfig." not in str(exc):  # not about a flag (a flow error is reported as itself)
            raise
        raise _as_flag_error(exc) from None
    return backend


def _server_backend(args: argparse.Namespace) -> Backend:
    from .server_backend import ServerBackend

    urls: list[str] = args.server_url
    if args.budgets is None:
        if len(urls) > 1:
            raise EvalUsageError("--budgets: give one label per --server-url (e.g. --budgets 30,60,full)")
        labels = ["vortex"]
    else:
        labels = [b.strip() for b in args.budgets.split(",") if b.strip()]
    if len(labels) != len(urls) or len(set(labels)) != len(labels):
        raise EvalUsageError(
            f"--budgets: {len(urls)} --server-url given, so give {len(urls)} distinct labels, got {labels}"
        )
    for url in [*urls, *([args.dense_url] if args.dense_url else [])]:
        if not url.startswith(("http://", "https://")):
            raise EvalUsageError(
                f"--server-url/--dense-url: {url!r} is not an http(s) URL, e.g. http://127.0.0.1:30000"
            )
    if args.concurrency < 1 or args.timeout <= 0:
        raise EvalUsageError("--concurrency must be >= 1 and --timeout > 0")
    count = None
    if args.tokenizer:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(args.tokenizer)
        except Exception as exc:
            raise EvalError(f"--tokenizer {args.tokenizer}: cannot load it: {first_line(exc)}") from exc
        count = lambda text: len(tok(text)["input_ids"])
    return ServerBackend(
        dict(zip(labels, urls, strict=True)),
        args.dense_url,
        args.server_model,
        count,
        args.concurrency,
        args.timeout,
        tokenizer_name=args.tokenizer,
    )


def _run(args: argparse.Namespace) -> int:
    from .report import PLOT_PNG, RESULT_JSON, plot, table, write_json

    if (args.model is None) == (args.server_url is None):
        raise EvalUsageError("give either --model (a HF model) or --server-url (a running server)")
    tasks = _tasks(args.tasks)
    contexts = parse_contexts(args.contexts)
    if args.samples < 1:
        raise EvalUsageError(f"--samples must be >= 1, got {args.samples}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalUsageError(f"--out: {out} exists and is not a directory")
    backend = _hf_backend(args, contexts) if args.model is not None else _server_backend(args)
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    result = run_eval(backend, tasks, contexts, args.samples, args.seed, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / RESULT_JSON)
    plot(result, out / PLOT_PNG)
    print(table(result))
    print(f"wrote {out / RESULT_JSON} and {out / PLOT_PNG} ({result['time_s']} s)")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``vortex eval``; every failure is one line on stderr: exit 2 for a bad flag, 1 otherwise."""
    try:
        return _run(args)
    except ContextTooShortError as exc:
        print(f"vortex eval: error: --contexts: {exc}", file=sys.stderr)
        return 2
    except EvalUsageError as exc:
        print(f"vortex eval: error: {exc}", file=sys.stderr)
        return 2
    except VortexError as exc:
        print(f"vortex eval: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        # e.g. an out-of-memory or a file that cannot be written: still one line, never a traceback
        print(f"vortex eval: error: {first_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vortex eval: interrupted", file=sys.stderr)
        return 130
