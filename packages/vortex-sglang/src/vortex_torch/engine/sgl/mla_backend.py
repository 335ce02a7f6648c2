"""Vortex sparse decode for MLA models (DeepSeek-V2/V3, GLM) on SGLang's two MLA decode paths of 0.5.17:
``FlashInferMLAAttnBackend`` (``attention_backend="flashinfer"`` on an MLA model) and ``TritonAttnBackend`` in MLA
mode (``"triton"``).

Built on the GQA design (:mod:`.backend`'s mixin, whose per-batch logic it inherits unchanged): the step's plan is
one kernel launched by the first sparse layer inside the decode CUDA graph, no per-step host work; per sparse layer
the latent is written as the parent writes it (``set_mla_kv_buffer(k_nope, k_rope)`` when the model passes the RoPE
part separately, ``set_kv_buffer(latent, kv_c)`` otherwise), the generated cache-update kernel summarises the
blocks this token completes, then indexer -> top-k -> :func:`sparse_mla_decode` over the selected latent blocks
(:class:`.mla_core.VortexMLADecodeCore`). Prefill stays the parent's (DeepSeek's MHA prefill writes the latent
through the pool before ``attn_mha``; the mixin's ``forward_extend`` then summarises the completed blocks), as do
the layers in ``layers_skip``.

The aux fields live beside SGLang's ``MLATokenToKVPool`` (:class:`.aux_store.AuxFieldStore`, one latent head).

fp8 latents (``kv_cache_dtype="fp8_e4m3"`` / ``"fp8_e5m2"``, not DSA's block-scaled layout) are written and read
with the scales of the parent: SGLang's Triton MLA path stores ``latent / layer.k_scale`` and reads keys with
``k_scale_float`` and values with ``v_scale_float``; its FlashInfer MLA path stores and reads them unscaled (1.0).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from sglang.srt.layers.attention.flashinfer_mla_backend import FlashInferMLAAttnBackend
from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
from sglang.srt.runtime_context import get_parallel

from .backend import VortexBackendMixin
from .config import VortexConfig
from .errors import VortexSGLangError
from .flow_spec import prepare_flow
from .mla_core import VortexMLADecodeCore

log = logging.getLogger("vortex_torch.engine.sgl")


class VortexMLABackendMixin(VortexBackendMixin):
    """Sparse MLA decode on top of an SGLang MLA attention backend (put it first in the bases)."""

    def _vortex_setup(self, runner: Any, config: VortexConfig) -> None:
        pool = self.token_to_kv_pool
        if not hasattr(pool, "kv_lora_rank") or not hasattr(pool, "kv_buffer"):
            raise VortexSGLangError(
                f"Vortex's MLA path reads SGLang's MLATokenToKVPool latent buffer; got {type(pool).__name__}"
            )
        supported = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)
        if getattr(pool, "use_dsa", False) or pool.dtype not in supported:
            raise VortexSGLangError(
                f"Vortex's sparse MLA decode needs a bf16/fp16 or fp8 (fp8_e4m3 / fp8_e5m2) latent cache with one "
                f"scale per layer (got {pool.dtype}{', DSA' if getattr(pool, 'use_dsa', False) else ''}); set "
                "--kv-cache-dtype to auto, bfloat16, fp8_e4m3 or fp8_e5m2"
            )
        rank, rope = int(pool.kv_lora_rank), int(pool.qk_rope_head_dim)
        h_q = runner.model_config.num_attention_heads // get_parallel().attn_tp_size
        prepared = prepare_flow(config, head_dim=rank + rope, group_size=h_q, kv_dtype=pool.dtype, qk_rope_head_dim=rope)
        layout, layers = self._vortex_attach_layers(runner, config, prepared, 1)
        self.vortex_core = VortexMLADecodeCore(
            prepared, layout, context_len=int(runner.model_config.context_len), device=runner.device,
            kv_lora_rank=rank,
        )  # fmt: skip
        self._vortex_init_step_state(runner, layers)
        #: (H_q, H_kv = 1, G = H_q, latent width); kv_lora_rank and rope split kept apart
        self._vortex_heads = (h_q, 1, h_q, rank + rope)
        self._vortex_mla = (rank, rope)
        self._vortex_dumper = None
        log.info(
            "%s: MLA flow %r, %d sparse layers of %d, H_q=%d, latent %d + %d, page=%d, block=%d, <= %d blocks/row",
            type(self).__name__, config.module_name, len(layers), int(pool.layer_num), h_q, rank, rope,
            layout.page_size, layout.block_size, self.vortex_core.max_blocks_per_row,
        )  # fmt: skip

    def _vortex_fields(self, layer: Any) -> dict[str, torch.Tensor]:
        layer_id = int(layer.layer_id)
        return {
            "k": self.token_to_kv_pool.get_key_buffer(layer_id),
            **self.vortex_aux.fields(layer_id),
            **self._vortex_scale_fields(layer),
        }

    def _vortex_write_scale(self, layer: Any) -> Any:
        """What the parent divides the latent by before storing it (None: stored as is)."""
        return None

    def forward_decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
        save_kv_cache: bool = True, **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        plan = self._vortex_step_plan(layer)
        if plan is None:
            return self._vortex_dense_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        q_rope, k_rope = kwargs.get("q_rope"), kwargs.get("k_rope")
        loc = forward_batch.out_cache_loc
        if k is not None and save_kv_cache:
            write_mla_latent(self.token_to_kv_pool, layer, loc, k, v, k_rope, self._vortex_write_scale(layer))
        fields = self._vortex_fields(layer)
        h_q = self._vortex_heads[0]
        q_rows = absorbed_query_rows(q, q_rope, h_q, *self._vortex_mla)
        # [B, H_q, kv_lora_rank]; the cache update of the blocks this step completes is folded into scoring
        o = self.vortex_core.decode_layer(q_rows, fields, plan, layer.scaling, new_locs=loc)
        return o.reshape(-1, h_q * self._vortex_mla[0])


def write_mla_latent(
    pool: Any,
    layer: Any,
    loc: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    k_rope: torch.Tensor | None,
    scale: Any = None,
) -> None:
    """Write this step's latents as SGLang's MLA backends do: ``k [T, 1, kv_lora_rank]`` (kv_c) and ``k_rope [T, 1,
    qk_rope_head_dim]`` through ``set_mla_kv_buffer``, or the whole latent ``k [T, 1, D]`` (``v`` = kv_c) through
    ``set_kv_buffer``. ``scale``: the latent is stored divided by it (SGLang's Triton MLA path with
    ``layer.k_scale``; the pool itself takes no scale)."""
    if scale is not None:
        k = k / scale
        k_rope = None if k_rope is None else k_rope / scale
    if k_rope is not None:
        pool.set_mla_kv_buffer(layer, loc, k, k_rope)
    else:
        pool.set_kv_buffer(layer, loc, k, v)


def absorbed_query_rows(
    q: torch.Tensor, q_rope: torch.Tensor | None, num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int
) -> torch.Tensor:
    """The absorbed queries as Vortex rows ``[B, H_q, kv_lora_rank + qk_rope_head_dim]``: ``q`` is ``[T, H_q *
    kv_lora_rank]`` (``q_nope · W_UK``) with ``q_rope [T, H_q * qk_rope_head_dim]``, or the whole ``[T, H_q * D]``."""
    if q_rope is None:
        return q.reshape(-1, num_heads, kv_lora_rank + qk_rope_head_dim)
    return torch.cat(
        [q.reshape(-1, num_heads, kv_lora_rank), q_rope.reshape(-1, num_heads, qk_rope_head_dim).to(q.dtype)], dim=-1
    )


class VortexFlashInferMLABackend(VortexMLABackendMixin, FlashInferMLAAttnBackend):
    """SGLang's FlashInfer MLA backend for prefill and dense layers, Vortex sparse MLA decode for the flow's."""

    def _vortex_layer_scales(self, layer: Any) -> tuple[float, float]:
        return 1.0, 1.0  # FlashInfer MLA stores and reads fp8 latents unscaled (a plain cast)


class VortexTritonMLABackend(VortexMLABackendMixin, TritonAttnBackend):
    """SGLang's Triton backend (MLA mode) for prefill and dense layers, Vortex sparse MLA decode for the flow's."""

    def _vortex_write_scale(self, layer: Any) -> Any:
        return getattr(layer, "k_scale", None)  # as TritonAttnBackend.forward_decode (MLA): k.div_(layer.k_scale)


def create_mla_backend(backend_str: str, model_runner: Any, config: VortexConfig) -> VortexMLABackendMixin:
    """The Vortex backend of an MLA model for ``attention_backend`` "flashinfer" / "triton"."""
    if backend_str == "flashinfer":
        return VortexFlashInferMLABackend(model_runner, vortex_config=config)
    if backend_str == "triton":
        return VortexTritonMLABackend(model_runner, vortex_config=config)
    raise VortexSGLangError(f"no Vortex MLA backend for attention_backend={backend_str!r} (flashinfer, triton)")
