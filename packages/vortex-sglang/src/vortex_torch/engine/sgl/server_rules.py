"""What Vortex requires of SGLang's ``ServerArgs``, and the checks run before any GPU memory is allocated.

Two steps, both called by the ``ServerArgs.__init__`` hook of :mod:`.plugin` (main process, before the
scheduler processes start):

* :func:`force_server_kwargs` edits the constructor's keyword arguments *before* SGLang resolves them: page
  size, base attention backend, overlap scheduler off, prefill CUDA graphs off, context length capped at
  ``max_seq_lens``. Forcing is by assignment: the CLI path passes every field explicitly.
* :func:`check_server_args` runs on the resolved ``ServerArgs``: refuses the modes Vortex does not support,
  checks the config against the model (``VortexConfig.validate_for_model``) and loads and traces the flow for
  the model's geometry (:func:`~.flow_spec.prepare_flow`).

Every error is a :class:`VortexConfigError`; one about an SGLang setting is a :class:`VortexServerArgsError`
naming the ``ServerArgs`` field.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import torch

from .config import ATTENTION_BACKENDS, VortexConfig, VortexConfigError
from .flow_spec import ModelGeometry, PreparedFlow, prepare_flow

log = logging.getLogger("vortex_torch.engine.sgl")

#: set to 1 to keep SGLang's overlap scheduler on under Vortex (experimental; see docs/sglang-integration.md §5)
ALLOW_OVERLAP_ENV = "VORTEX_ALLOW_OVERLAP_SCHEDULE"
#: KV-cache dtypes the sparse kernels read: the model's 16/32-bit dtype, or fp8 with SGLang's per-layer scales
#: (``stored = value / k_scale``; the kernels dequantise in registers, vortex_torch.kernels.fp8)
KV_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


class VortexServerArgsError(VortexConfigError):
    """An SGLang server setting that Vortex cannot run with; ``field`` is the ``ServerArgs`` field."""

    def __init__(self, field_name: str, message: str) -> None:
        ValueError.__init__(self, f"ServerArgs.{field_name} (with vortex on): {message}")
        self.field = field_name


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def force_server_kwargs(config: VortexConfig, kwargs: dict[str, Any], *, from_cli: bool) -> list[str]:
    """Edit ``ServerArgs(**kwargs)`` in place for Vortex; returns what was changed (for the log).

    ``from_cli``: the kwargs come from ``prepare_server_args`` (every field present, defaults included), so a
    ``False`` there is argparse's default, not the user's choice.
    """
    notes: list[str] = []

    def force(key: str, value: Any, why: str) -> None:
        if kwargs.get(key) != value:
            notes.append(f"{key}={value!r} ({why})")
        kwargs[key] = value

    page = kwargs.get("page_size")
    if page is None:
        force("page_size", config.block_size, "page_size unset: one Vortex block per page")
    elif not isinstance(page, int) or page <= 0 or page % config.block_size:
        raise VortexConfigError(
            "block_size",
            f"SGLang page_size ({page!r}) must be a positive multiple of block_size ({config.block_size}); "
            f"use page_size={config.block_size} or {2 * config.block_size}, or change block_size",
        )

    for key in ("attention_backend", "decode_attention_backend", "prefill_attention_backend"):
        given = kwargs.get(key)
        if given is not None and given != config.attention_backend:
            raise VortexServerArgsError(
                key,
                f"is {given!r} but VortexConfig.attention_backend is {config.attention_backend!r}: Vortex runs on "
                f"the SGLang backend it names ({', '.join(ATTENTION_BACKENDS)}). Set both to the same value.",
            )
    if kwargs.get("attention_backend") is None:
        force("attention_backend", config.attention_backend, "VortexConfig.attention_backend")

    if kwargs.get("disable_overlap_schedule") is False and not from_cli and not _flag(ALLOW_OVERLAP_ENV):
        raise VortexServerArgsError(
            "disable_overlap_schedule",
            "must be True: Vortex's per-step decode metadata and aux-field updates are not yet verified under "
            "SGLang's overlap scheduler. Pass disable_overlap_schedule=True (or leave it unset), or set "
            f"{ALLOW_OVERLAP_ENV}=1 to try overlap scheduling (experimental).",
        )
    if not _flag(ALLOW_OVERLAP_ENV):
        force("disable_overlap_schedule", True, "overlap scheduler not supported yet")
    force("disable_prefill_cuda_graph", True, "prefill is dense and runs eagerly under Vortex")
    if config.impl_backend == "reference":
        force("disable_cuda_graph", True, "impl_backend='reference' synchronises with the host")

    if config.max_seq_lens > 0:
        ctx = kwargs.get("context_length")
        if ctx is None or ctx > config.max_seq_lens:
            force("context_length", config.max_seq_lens, "VortexConfig.max_seq_lens")
    return notes


def _refuse(server_args: Any, config: VortexConfig) -> None:
    sa = server_args
    checks: list[tuple[str, bool, str]] = [
        ("speculative_algorithm", sa.speculative_algorithm is not None,
         "speculative decoding moves K/V around set_kv_buffer (move_kv_cache); not supported with Vortex yet"),
        ("enable_hierarchical_cache", bool(getattr(sa, "enable_hierarchical_cache", False)),
         "HiCache loads K/V back without updating Vortex's aux fields; not supported yet"),
        ("disaggregation_mode", getattr(sa, "disaggregation_mode", "null") not in (None, "null"),
         "PD disaggregation transfers K/V without the aux fields; not supported yet"),
        ("enable_pdmux", bool(getattr(sa, "enable_pdmux", False)), "PD multiplexing is not supported with Vortex"),
        ("enable_two_batch_overlap", bool(getattr(sa, "enable_two_batch_overlap", False)),
         "two-batch overlap is not supported with Vortex yet"),
        ("enable_mixed_chunk", bool(getattr(sa, "enable_mixed_chunk", False)),
         "mixed prefill+decode batches would run those decode steps dense; not supported with Vortex"),
        ("enable_page_major_kv_layout", bool(getattr(sa, "enable_page_major_kv_layout", False)),
         "Vortex reads SGLang's default [slots, H_kv, D] K/V layout"),
        ("enable_lmcache", bool(getattr(sa, "enable_lmcache", False)),
         "LMCache restores K/V without the aux fields; not supported yet"),
        ("enable_unified_memory", bool(getattr(sa, "enable_unified_memory", False)),
         "the unified memory pool is not supported with Vortex"),
        # Vortex's plan assumes every token of a request is in this rank's pool
        ("dcp_size", int(getattr(sa, "dcp_size", 1) or 1) > 1,
         "decode context parallelism splits each request's K/V over ranks; Vortex's selection needs them all"),
        ("attn_cp_size", int(getattr(sa, "attn_cp_size", 1) or 1) > 1,
         "attention context parallelism splits each request's K/V over ranks; Vortex's selection needs them all"),
    ]  # fmt: skip
    for field_name, bad, why in checks:
        if bad:
            raise VortexServerArgsError(field_name, f"{why}. Turn it off to use Vortex.")
    if not sa.disable_overlap_schedule and not _flag(ALLOW_OVERLAP_ENV):
        raise VortexServerArgsError(
            "disable_overlap_schedule", f"resolved to False; Vortex needs True (or {ALLOW_OVERLAP_ENV}=1)"
        )
    if config.enable_pdl:
        _check_pdl_device(sa)
    prefill, decode = sa.get_attention_backends()
    for field_name, value in (("prefill_attention_backend", prefill), ("decode_attention_backend", decode)):
        if value != config.attention_backend:
            raise VortexServerArgsError(
                field_name,
                f"resolved to {value!r}; Vortex needs {config.attention_backend!r} "
                "(VortexConfig.attention_backend) for prefill and decode",
            )
    kv = str(getattr(sa, "kv_cache_dtype", "auto"))
    if kv not in KV_DTYPES:
        raise VortexServerArgsError(
            "kv_cache_dtype",
            f"{kv!r} is not supported: Vortex's sparse decode reads bf16/fp16/fp32 K/V, or fp8 with one scale per "
            "layer (block-scaled / fp4 / mxfp8 caches are not). Use 'auto', 'bfloat16', 'fp8_e4m3' or 'fp8_e5m2'.",
        )


def model_geometry(server_args: Any) -> ModelGeometry:
    """The attention geometry of one attention-TP rank, from the resolved ``ServerArgs``' model config."""
    sa = server_args
    mc = sa.get_model_config()
    from sglang.srt.configs.model_config import AttentionArch

    dp = sa.dp_size if getattr(sa, "enable_dp_attention", False) else 1
    attn_tp = max(1, sa.tp_size // max(1, dp))
    kv_dtype = KV_DTYPES.get(str(getattr(sa, "kv_cache_dtype", "auto"))) or mc.dtype
    if getattr(mc, "attention_arch", None) == AttentionArch.MLA:
        # DeepSeek-V2/V3, GLM: one latent head [kv_c | k_pe], absorbed queries (the flow must be a vFlowMLA)
        rank, rope = int(mc.kv_lora_rank), int(mc.qk_rope_head_dim)
        return ModelGeometry(
            num_layers=int(mc.num_hidden_layers),
            num_kv_heads=1,
            group_size=int(mc.num_attention_heads // attn_tp),
            head_dim=rank + rope,
            kv_dtype=kv_dtype,
            context_len=int(mc.context_len),
            qk_rope_head_dim=rope,
        )
    if getattr(mc, "is_encoder_decoder", False):
        raise VortexServerArgsError("model_path", "encoder-decoder models are not supported by Vortex")
    if getattr(mc, "is_hybrid_swa", False) or getattr(mc, "is_hybrid", False):
        raise VortexServerArgsError(
            "model_path", "hybrid (sliding-window / linear-attention) models are not supported yet"
        )
    if mc.v_head_dim != mc.head_dim:
        raise VortexServerArgsError(
            "model_path",
            f"Vortex needs equal K and V head dims, the model has {mc.head_dim} and {mc.v_head_dim}",
        )
    h_kv, group, dim = rank_heads(mc, attn_tp)
    return ModelGeometry(
        num_layers=int(mc.num_hidden_layers),
        num_kv_heads=h_kv,
        group_size=group,
        head_dim=dim,
        kv_dtype=kv_dtype,
        context_len=int(mc.context_len),
    )


def rank_heads(model_config: Any, attn_tp_size: int) -> tuple[int, int, int]:
    """``(H_kv, G, D)`` of one attention-TP rank of SGLang's ``ModelConfig``: KV heads of the rank (SGLang's
    own ``get_num_kv_heads``, which replicates KV heads when TP exceeds them), query heads per KV head and the
    head dim. The one derivation: :func:`model_geometry` (main process) and the KV-pool cell-size hook
    (scheduler processes) both call it."""
    h_kv = int(model_config.get_num_kv_heads(attn_tp_size))
    h_q = int(model_config.num_attention_heads) // attn_tp_size
    if h_q % h_kv:
        raise VortexServerArgsError("tp_size", f"{h_q} query heads per rank do not split over {h_kv} KV heads")
    return h_kv, h_q // h_kv, int(model_config.head_dim)


def cuda_capability(ordinal: int) -> tuple[int, int] | None:
    """Compute capability of CUDA device ``ordinal`` (as ``CUDA_VISIBLE_DEVICES`` numbers them), read through the
    driver API, or None when there is no such device or no driver. Creates no CUDA context and leaves torch's
    CUDA state uninitialised: the main process must not touch the GPU (SGLang's scheduler processes own it)."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev):
        return None
    return major.value, minor.value


def _check_pdl_device(server_args: Any) -> None:
    """``enable_pdl`` needs programmatic dependent launch: a CUDA GPU of compute capability 9.0 or newer."""
    gpu = int(getattr(server_args, "base_gpu_id", 0) or 0)
    cap = cuda_capability(gpu)
    if cap is None:
        raise VortexConfigError("enable_pdl", f"needs a CUDA GPU (Hopper or newer), and GPU {gpu} is not visible")
    if cap[0] < 9:
        raise VortexConfigError(
            "enable_pdl", f"programmatic dependent launch needs compute capability >= 9.0 (Hopper); GPU {gpu} has "
            f"{cap[0]}.{cap[1]}. Set enable_pdl=False"
        )  # fmt: skip


def check_server_args(server_args: Any, config: VortexConfig) -> PreparedFlow:
    """Validate a resolved ``ServerArgs`` for ``config``; returns the prepared (loaded, traced) flow.

    Raises :class:`VortexConfigError` / :class:`VortexServerArgsError`. Runs in the main process before the
    scheduler (and so before any GPU memory) exists.
    """
    _refuse(server_args, config)
    geo = model_geometry(server_args)
    config.validate_for_model(page_size=server_args.page_size, num_layers=geo.num_layers)
    prepared = prepare_flow(
        config, head_dim=geo.head_dim, group_size=geo.group_size, kv_dtype=geo.kv_dtype,
        qk_rope_head_dim=geo.qk_rope_head_dim,
    )  # fmt: skip
    stateful = prepared.uses_save or bool(getattr(prepared.traced.flow, "requires_radix_cache_off", False))
    if stateful and not server_args.disable_radix_cache:
        saved = ", ".join(sorted(prepared.traced.saved_fields)) or "declared requires_radix_cache_off"
        raise VortexServerArgsError(
            "disable_radix_cache",
            f"flow {config.module_name!r} keeps per-request indexer state ({saved}: Save), which a radix-cache "
            "prefix reused by another request would inherit. Pass disable_radix_cache=True.",
        )
    if config.schedule_policy is not None and callable(config.schedule_policy):
        try:
            pickle.dumps(config.schedule_policy)
        except Exception as exc:
            raise VortexConfigError(
                "schedule_policy",
                f"{config.schedule_policy!r} cannot be sent to SGLang's scheduler processes ({exc}). Define it as "
                "a top-level function of a module, or pass 'module:function' / '/path/file.py:function'.",
            ) from exc
    return prepared
