"""``python -m vortex_torch.engine.sgl.run MODULE [ARGS...]``: one of SGLang's own command-line modules, with
Vortex's hooks applied, so that its ``--vortex-config`` works as in ``launch_server``.

SGLang loads its plugins (Vortex among them) in ``sgl.Engine``, ``launch_server``, ``sglang serve`` and every
scheduler process, but its benchmark scripts build their argument parser before any of that:
``python -m sglang.benchmark.offline_throughput --vortex-config ...`` stops at "unrecognized arguments", and
``sglang.benchmark.one_batch`` builds its model runner in-process, where no plugin was loaded. This loads them
first (SGLang's own ``load_plugins()``), then runs the module as ``__main__``, with ``--vortex-config`` carried
into every ``ServerArgs`` it builds (:func:`.plugin.vortex_cli_scope`): ``offline_throughput`` rebuilds its
``ServerArgs`` as ``Engine(**dataclasses.asdict(server_args))``, which would otherwise drop the Vortex config
and serve densely. Run the same command without ``--vortex-config`` for the plain-SGLang baseline.

    python -m vortex_torch.engine.sgl.run sglang.benchmark.offline_throughput --model-path Qwen/Qwen3-8B \\
        --vortex-config '{"module_name": "block_sparse_attention", "topk_val": 30}' \\
        --dataset-name random --random-input-len 32768 --random-output-len 256 --num-prompts 16
    python -m vortex_torch.engine.sgl.run sglang.benchmark.one_batch --model-path Qwen/Qwen3-8B \\
        --vortex-config '{"module_name": "block_sparse_attention", "topk_val": 30}' \\
        --batch-size 16 --input-len 32768 --output-len 64

Errors in the command (no module, a module outside ``sglang``, an invalid ``--vortex-config``, a setting Vortex
refuses) are one line on stderr and exit status 2, before any GPU memory is touched.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys

from vortex_torch.abs.config_fields import ConfigFieldError

from . import plugin
from .config import VortexConfig
from .errors import VortexSGLangError

PROG = "python -m vortex_torch.engine.sgl.run"
#: modules that run the model in this process and, with tp_size > 1, in ranks of their own that never load
#: SGLang's plugins: a Vortex run there would silently be dense
IN_PROCESS_RANKS = ("sglang.benchmark.one_batch", "sglang.bench_one_batch")


class CommandError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


def _server_flags(argv: list[str]) -> argparse.Namespace:
    """The ``ServerArgs`` flags among ``argv`` (SGLang's own parser, hooks applied: ``--vortex-config`` too);
    everything else is the module's own."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    for action in parser._actions:  # a missing --model-path is the module's own parser's error to report
        action.required = False
    known, _rest = parser.parse_known_args(argv)
    return known


def prepare(module: str, argv: list[str]) -> str | None:
    """Check the command and apply SGLang's plugins; returns the ``--vortex-config`` value (None: plain SGLang).
    Raises :class:`CommandError` naming what to fix."""
    if module != "sglang" and not module.startswith("sglang."):
        raise CommandError(f"{module!r} is not one of SGLang's modules: this runs sglang.* modules "
                           "(e.g. sglang.benchmark.offline_throughput, sglang.benchmark.one_batch)")  # fmt: skip
    plugin.check_sglang_version()  # not installed, or not the release the hooks target: say so, not "no module"
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise CommandError(f"no module named {module!r} in this SGLang installation")
    from sglang.srt.plugins import load_plugins

    load_plugins()  # registers and applies Vortex's hooks (and any other installed plugin's), as launch_server does
    failure = plugin.registration_failure()
    if failure is not None:
        raise VortexSGLangError(f"vortex-sglang could not install its hooks: {failure}")
    if {"-h", "--help"} & set(argv):
        return None
    flags = _server_flags(argv)
    value: str | None = getattr(flags, "vortex_config", None)
    if value is None:
        return None
    VortexConfig.coerce(value)  # a bad JSON or field: the one-line error now, not a traceback from the module
    if module in IN_PROCESS_RANKS and int(getattr(flags, "tp_size", 1) or 1) > 1:
        raise CommandError(f"{module} runs tensor-parallel ranks in processes that do not load SGLang's plugins, "
                           "so they would decode densely: use --tp-size 1 there, or "
                           "sglang.benchmark.offline_throughput (its schedulers load them)")  # fmt: skip
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0].replace("``", "") + f"\n\nusage: {PROG} MODULE [ARGS...]")
        return 0 if argv else 2
    module, rest = argv[0], argv[1:]
    try:
        value = prepare(module, rest)
        sys.argv = [module, *rest]
        with plugin.vortex_cli_scope(value):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except (CommandError, ConfigFieldError, VortexSGLangError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
