"""Every hook vortex-sglang installs into stock SGLang 0.5.17, in one place (docs/sglang-integration.md §0).

:func:`register` is the ``sglang.srt.plugins`` entry point: SGLang's ``load_plugins()`` calls it in the main
process (``sgl.Engine``, ``launch_server``, ``sglang serve``) and in every scheduler (TP-rank) process, then
applies the hooks. It only records hooks (``HookRegistry.register``, nothing imported), is idempotent and cheap,
and logs loudly when it fails, since SGLang logs and swallows plugin exceptions.

The hooks (all inactive unless a ``VortexConfig`` was given, i.e. ``server_args._vortex_config`` is set):

==== =============================================================================== ====== ===============================
 #    target (sglang 0.5.17)                                                           kind   what it does
==== =============================================================================== ====== ===============================
 1    ``server_args.ServerArgs.add_cli_args``                                          AFTER  adds ``--vortex-config JSON``
 2    ``server_args.ServerArgs.from_cli_args``                                         AROUND carries it into construction
 3    ``server_args.ServerArgs.__init__``                                              AROUND accepts ``vortex=``, forces
                                                                                              page size / overlap off /
                                                                                              prefill graphs off, then checks
                                                                                              everything + loads the flow
 4    ``model_runner_components.attention_backend_setup``                              AROUND flashinfer / triton ->
      ``._build_full_attention_backend_from_str``                                             the Vortex subclasses
                                                                                              (MLA models: the
                                                                                              Vortex MLA ones)
 5    ``pool_configurator.DefaultPoolConfigurator._compute_cell_size``                 AFTER  + aux bytes per token
                                                                                              (MLA: one latent head)
 6    ``models.utils.enable_fused_set_kv_buffer``                                      AROUND ``False`` under Vortex
 7    ``runner.decode_cuda_graph_runner.DecodeCudaGraphRunner._capture_one_stream``    AROUND with sparse_decode_min_tokens:
                                                                                              captures every batch size
                                                                                              once per step mode
 8    ``runner.decode_cuda_graph_runner.DecodeCudaGraphRunner._make_graph_key``        AFTER  dense modes' keys get their
                                                                                              variant label
==== =============================================================================== ====== ===============================

Hook 4 stands for the map's "swap ``ATTENTION_BACKENDS['flashinfer'|'triton']``": the function is the only
reader of that dict for full-attention backends, and hooking it keeps :func:`register` import-free (swapping
the dict entries would import the attention registry, and with it most of SGLang, inside ``register``).
The aux fields need no pool subclass (map hook 7): they live beside the pool (:mod:`.aux_store`).
Hooks 7 and 8 (module paths under ``sglang.srt.model_executor``) act only for a Vortex backend with
``sparse_decode_min_tokens > 0``: the step's graph is chosen in replay-prep, where the backend decides its mode
from the host copy of the lengths (:mod:`.step_modes`), just before the runner builds the key it replays.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .config import ATTENTION_BACKENDS, VortexConfig
from .errors import VortexConfigError, VortexSGLangError

log = logging.getLogger("vortex_torch.engine.sgl")

SGLANG_VERSION = "0.5.17"
#: set to 1 to skip the SGLang version check (unsupported)
SKIP_VERSION_CHECK_ENV = "VORTEX_SGLANG_SKIP_VERSION_CHECK"
PLUGIN_NAME = "vortex"
DISTRIBUTION = "vortex-sglang"

_SA = "sglang.srt.server_args.ServerArgs"
_DGR = "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner"
TARGETS = {
    "add_cli_args": f"{_SA}.add_cli_args",
    "from_cli_args": f"{_SA}.from_cli_args",
    "init": f"{_SA}.__init__",
    "attention_backend": (
        "sglang.srt.model_executor.model_runner_components.attention_backend_setup."
        "_build_full_attention_backend_from_str"
    ),
    "cell_size": "sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size",
    "fused_set_kv": "sglang.srt.models.utils.enable_fused_set_kv_buffer",
    "graph_capture": f"{_DGR}._capture_one_stream",
    "graph_key": f"{_DGR}._make_graph_key",
}


# -- the config a ServerArgs carries -------------------------------------------------------------------------------
class VortexServerConfig(dict[str, Any]):
    """``server_args._vortex_config``: the ``VortexConfig`` fields as a plain dict.

    SGLang pickles ``ServerArgs`` into its scheduler and detokenizer processes. Unpickling this object first
    registers the Vortex hooks in that process (:func:`_restore_server_config`), so a scheduler gets them even
    when the ``sglang.srt.plugins`` entry point is not visible (e.g. sources on ``PYTHONPATH``);
    ``load_plugins()`` then applies them.
    """

    def __reduce__(self) -> tuple[Callable[..., VortexServerConfig], tuple[dict[str, Any]]]:
        return (_restore_server_config, (dict(self),))

    def config(self) -> VortexConfig:
        return VortexConfig.coerce(dict(self))


def _restore_server_config(data: dict[str, Any]) -> VortexServerConfig:
    try:
        register()
    except Exception:  # logged by register(); the backend factory reports the consequence
        pass
    return VortexServerConfig(data)


def config_of(server_args: Any) -> VortexConfig | None:
    """The ``VortexConfig`` of a (resolved) ``ServerArgs``, or None when Vortex is off."""
    raw = getattr(server_args, "_vortex_config", None)
    if not raw:
        return None
    return VortexConfig.coerce(dict(raw))


def _payload(config: VortexConfig) -> VortexServerConfig:
    """The config as the ``ServerArgs`` carries it to the scheduler processes, validated once more here: a
    ``VortexConfig`` object may have been edited after it was built, and what is sent must be what was checked
    (each scheduler validates it again when it rebuilds the config, see :meth:`VortexServerConfig.config`)."""
    config.validate()
    data = {name: getattr(config, name) for name in VortexConfig.__dataclass_fields__}
    data["layers_skip"] = list(config.layers_skip or [])
    data["flow_kwargs"] = dict(config.flow_kwargs)
    return VortexServerConfig(data)


# -- hooks 1-3: ServerArgs -------------------------------------------------------------------------------------
class _FromCli:
    """Marks a ``ServerArgs`` construction that comes from ``from_cli_args`` (and carries the flag's value)."""

    def __init__(self, value: str | None) -> None:
        self.value = value


_cli: contextvars.ContextVar[_FromCli | None] = contextvars.ContextVar("vortex_cli_config", default=None)


def _after_add_cli_args(result: Any, parser: Any, *args: Any, **kwargs: Any) -> None:
    if "--vortex-config" not in getattr(parser, "_option_string_actions", {}):
        parser.add_argument(
            "--vortex-config",
            type=str,
            default=None,
            help="Turn on Vortex sparse attention: a VortexConfig as JSON, e.g. "
            '\'{"module_name": "block_sparse_attention", "topk_val": 30}\' (vortex-sglang).',
        )


@contextlib.contextmanager
def vortex_cli_scope(value: str | None) -> Iterator[None]:
    """Inside: every ``ServerArgs`` built without ``vortex=`` of its own takes ``value`` as its
    ``--vortex-config`` and is treated as built from the command line (every field present). Hook 2 wraps
    ``from_cli_args`` in it; :mod:`.run` wraps a whole SGLang module, whose ``ServerArgs`` may be rebuilt from
    ``dataclasses.asdict`` (which drops the Vortex config: it is not a dataclass field)."""
    token = _cli.set(_FromCli(value))
    try:
        yield
    finally:
        _cli.reset(token)


def _around_from_cli_args(original: Callable[..., Any], cls: Any, args: Any) -> Any:
    with vortex_cli_scope(getattr(args, "vortex_config", None)):
        return original(cls, args)


def _pop_legacy_flat(kwargs: dict[str, Any]) -> VortexConfig | None:
    """Fold the original project's flat kwargs (``enable_vortex_sparsity=True, vortex_topk_val=...``)."""
    flat = {k: kwargs.pop(k) for k in [k for k in kwargs if k.startswith("vortex_") and k != "vortex_config"]}
    enabled = kwargs.pop("enable_vortex_sparsity", None)
    if enabled is False or not flat:  # enable_vortex_sparsity alone names no flow: Vortex stays off
        return None
    return VortexConfig.from_flat(flat)


def _around_server_args_init(original: Callable[..., Any], self: Any, *args: Any, **kwargs: Any) -> Any:
    raw = kwargs.pop("vortex", None)
    alias = kwargs.pop("vortex_config", None)
    raw = raw if raw is not None else alias
    cli = _cli.get()
    if raw is None and cli is not None:
        raw = cli.value
    if raw is None:
        raw = _pop_legacy_flat(kwargs)
    if raw is None or raw == "" or raw == {}:
        object.__setattr__(self, "_vortex_config", None)
        return original(self, *args, **kwargs)
    if _failure is not None:
        raise VortexSGLangError(
            f"vortex= was given but vortex-sglang could not install its hooks: {_failure}"
        )
    config = VortexConfig.coerce(raw)
    notes = server_rules().force_server_kwargs(config, kwargs, from_cli=cli is not None)
    object.__setattr__(self, "_vortex_config", _payload(config))
    result = original(self, *args, **kwargs)
    _check_hooks_applied()
    prepared = server_rules().check_server_args(self, config)
    log.info(
        "Vortex on: flow %r (%s), block_size=%d, page_size=%d, layers_skip=%s, aux fields %s; forced %s",
        config.module_name, config.module_path or "installed flows", config.block_size, self.page_size,
        config.layers_skip, dict(prepared.fields), ", ".join(notes) or "nothing",
    )  # fmt: skip
    return result


def server_rules() -> Any:
    from . import server_rules as rules

    return rules


# -- hook 4: attention backends ------------------------------------------------------------------------------------
def _around_build_attention_backend(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    model_runner = kwargs.get("model_runner", args[0] if args else None)
    backend_str = kwargs.get("backend_str", args[1] if len(args) > 1 else None)
    config = config_of(getattr(model_runner, "server_args", None))
    if config is None or model_runner is None or backend_str not in ATTENTION_BACKENDS:
        return original(*args, **kwargs)
    if getattr(model_runner, "is_draft_worker", False):
        raise VortexSGLangError("speculative decoding (a draft worker) is not supported with Vortex")
    model_runner.init_new_workspace = kwargs.get("init_new_workspace", False)
    from .factory import create_backend

    return create_backend(backend_str, model_runner, config)


# -- hook 5: KV-pool sizing ----------------------------------------------------------------------------------------
def _after_compute_cell_size(
    result: int, configurator: Any, kvc: Any, num_layers: int, *a: Any, **k: Any
) -> int | None:
    config = config_of(getattr(kvc, "server_args", None))
    if config is None:
        return None
    from sglang.srt.runtime_context import get_parallel

    from .flow_spec import prepare_flow

    mc = kvc.model_config
    attn_tp = get_parallel().attn_tp_size
    kv_dtype = kvc.kv_cache_dtype
    if getattr(kvc, "use_mla_backend", False):  # MLA: one latent head of kv_lora_rank + qk_rope_head_dim
        h_kv, rope = 1, int(mc.qk_rope_head_dim)
        prepared = prepare_flow(
            config, head_dim=int(mc.kv_lora_rank) + rope, group_size=mc.num_attention_heads // attn_tp,
            kv_dtype=kv_dtype, qk_rope_head_dim=rope,
        )  # fmt: skip
    else:
        h_kv, group, dim = server_rules().rank_heads(mc, attn_tp)
        prepared = prepare_flow(config, head_dim=dim, group_size=group, kv_dtype=kv_dtype)
    info = kvc.layer_info
    sparse = len(prepared.sparse_layers(info.start_layer, info.end_layer))
    extra = prepared.aux_bytes_per_token(h_kv, sparse)
    log.info("Vortex: KV cell size %d + %d aux bytes per token (%d sparse layers)", result, extra, sparse)
    return int(result) + extra


# -- hook 6: fused RoPE + K/V store off ----------------------------------------------------------------------------
def _around_enable_fused_set_kv_buffer(
    original: Callable[..., Any], forward_batch: Any, *a: Any, **k: Any
) -> Any:
    try:
        from sglang.srt.model_executor.forward_context import get_attn_backend

        if getattr(get_attn_backend(), "vortex_backend", False):
            return False  # K/V must go through set_kv_buffer, the one write the aux update follows
    except Exception:  # no forward context: not inside a Vortex forward
        pass
    return original(forward_batch, *a, **k)


# -- hooks 7 and 8: dense decode graphs (VortexConfig.sparse_decode_min_tokens) ----------------------------------
def _dense_capable_backend(runner: Any) -> Any:
    """The runner's attention backend when it is a Vortex backend with ``sparse_decode_min_tokens``, else None."""
    backend = getattr(runner, "attn_backend", None)
    if getattr(backend, "vortex_backend", False) and getattr(backend, "vortex_sparse_min_tokens", 0) > 0:
        return backend
    return None


def _around_capture_one_stream(original: Callable[..., Any], runner: Any, *args: Any, **kwargs: Any) -> Any:
    backend = _dense_capable_backend(runner)
    if backend is None:
        return original(runner, *args, **kwargs)
    from .step_modes import STEP_MODES

    try:
        for mode in STEP_MODES:
            backend.vortex_capture_mode = mode
            log.info(
                "Vortex: capturing the %s decode graphs (sparse_decode_min_tokens=%d: steps whose requests hold "
                "fewer tokens in all replay a dense one)", mode, backend.vortex_sparse_min_tokens,
            )  # fmt: skip
            original(runner, *args, **kwargs)
        backend.vortex_dense_graphs = True
    finally:
        backend.vortex_capture_mode = None
    return None


def _after_make_graph_key(key: Any, runner: Any, *a: Any, **k: Any) -> Any:
    backend = _dense_capable_backend(runner)
    label = None if backend is None else backend.vortex_graph_label()
    if label is None:
        return None  # SGLang's own key
    old = key.variant_label
    return dataclasses.replace(key, variant_label=label if old is None else f"{old}+{label}")


# -- registration --------------------------------------------------------------------------------------------------
_HOOKS: list[tuple[str, Callable[..., Any], str]] = [
    (TARGETS["add_cli_args"], _after_add_cli_args, "AFTER"),
    (TARGETS["from_cli_args"], _around_from_cli_args, "AROUND"),
    (TARGETS["init"], _around_server_args_init, "AROUND"),
    (TARGETS["attention_backend"], _around_build_attention_backend, "AROUND"),
    (TARGETS["cell_size"], _after_compute_cell_size, "AFTER"),
    (TARGETS["fused_set_kv"], _around_enable_fused_set_kv_buffer, "AROUND"),
    (TARGETS["graph_capture"], _around_capture_one_stream, "AROUND"),
    (TARGETS["graph_key"], _after_make_graph_key, "AFTER"),
]

_lock = threading.RLock()
_registered = False
_failure: str | None = None


def hooks() -> list[tuple[str, Callable[..., Any], str]]:
    """``(target, hook, kind)`` of every hook :func:`register` installs."""
    return list(_HOOKS)


def check_sglang_version() -> str:
    """The installed SGLang version; raises :class:`VortexSGLangError` unless it is the supported one."""
    try:
        found = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError as exc:
        raise VortexSGLangError(
            f"vortex-sglang needs sglang=={SGLANG_VERSION}, which is not installed: pip install 'sglang=={SGLANG_VERSION}' "
            "(or pip install 'vortex-sglang[sglang]')"
        ) from exc
    if found != SGLANG_VERSION and not os.environ.get(SKIP_VERSION_CHECK_ENV):
        raise VortexSGLangError(
            f"vortex-sglang supports sglang=={SGLANG_VERSION} only (its hooks target that release), found sglang "
            f"{found}: pip install 'sglang=={SGLANG_VERSION}', or set {SKIP_VERSION_CHECK_ENV}=1 to try anyway."
        )
    return found


def _shout(message: str) -> None:
    banner = "=" * 100
    text = f"\n{banner}\n[vortex-sglang] {message}\n{banner}\n"
    log.error(text)
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:
        pass


def register() -> None:
    """Record every Vortex hook with SGLang's ``HookRegistry`` (the ``sglang.srt.plugins`` entry point).

    Idempotent (once per process), imports nothing heavy; ``load_plugins()`` applies the hooks. On failure it
    logs a banner, keeps a fallback hook that makes ``ServerArgs(vortex=...)`` raise the reason, and re-raises.
    """
    global _registered, _failure
    with _lock:
        if _registered:
            return
        try:
            from sglang.srt.plugins.hook_registry import HookRegistry, HookSource, HookType
        except Exception as exc:
            _failure = f"cannot import SGLang's plugin API ({type(exc).__name__}: {exc})"
            _shout(f"registration failed: {_failure}")
            raise
        source = HookSource(plugin_name=PLUGIN_NAME, dist_name=DISTRIBUTION)
        try:
            check_sglang_version()
            for target, hook, kind in _HOOKS:
                HookRegistry.register(target, hook, HookType[kind], source=source)
        except Exception as exc:
            _failure = f"{type(exc).__name__}: {exc}"
            _shout(f"registration failed, Vortex is OFF in this process: {_failure}")
            # keep `vortex=` / --vortex-config failing loudly instead of a TypeError or a silent dense run
            if not any(
                h is _around_server_args_init for _, h, _s in HookRegistry._hooks.get(TARGETS["init"], [])
            ):
                HookRegistry.register(
                    TARGETS["add_cli_args"], _after_add_cli_args, HookType.AFTER, source=source
                )
                HookRegistry.register(
                    TARGETS["from_cli_args"], _around_from_cli_args, HookType.AROUND, source=source
                )
                HookRegistry.register(
                    TARGETS["init"], _around_server_args_init, HookType.AROUND, source=source
                )
            _registered = True
            raise
        _registered = True
        _failure = None
        log.debug("vortex-sglang: %d hooks registered", len(_HOOKS))


def _check_hooks_applied() -> None:
    """Every Vortex target must have been patched (``load_plugins`` ran after :func:`register`)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    missing = [t for t, _h, _k in _HOOKS if t not in HookRegistry._patched]
    if missing:
        raise VortexSGLangError(
            "vortex= was given but these Vortex hooks are not applied in this process: "
            f"{', '.join(missing)}. Call sglang.srt.plugins.load_plugins() (sgl.Engine and launch_server do) after "
            "vortex-sglang is installed, or HookRegistry.apply_hooks() after vortex_torch.engine.sgl.plugin.register()."
        )


def registration_failure() -> str | None:
    """Why :func:`register` failed in this process, or None."""
    return _failure


def _reset_for_tests() -> None:
    global _registered, _failure
    with _lock:
        _registered = False
        _failure = None


__all__ = [
    "SGLANG_VERSION",
    "TARGETS",
    "VortexConfigError",
    "VortexSGLangError",
    "VortexServerConfig",
    "check_sglang_version",
    "config_of",
    "hooks",
    "register",
    "registration_failure",
]
