"""End-to-end greedy decoding of a Hugging Face DeepSeek-V2-style MLA model whose attention runs absorbed, over
the latent cache of an :class:`MLAReferenceRuntime` (the ``hf`` extra).

Hugging Face's ``DeepseekV2Attention`` decompresses the latent into per-head K/V before attention. Here each
attention module's ``forward`` is replaced (per instance, only inside :func:`greedy_generate_mla`) by the
absorbed form SGLang decodes with:

* latent of a token: ``[kv_a_layernorm(kv_c) | RoPE(k_pe)]`` (``kv_lora_rank + qk_rope_head_dim`` wide), written
  into the runtime's pool (which fires ``forward_cache`` for every block it completes);
* absorbed query of head ``h``: ``[q_nope_h · W_UK_h | RoPE(q_pe_h)]`` with ``W_UK_h`` the head's K rows of
  ``kv_b_proj`` (``[qk_nope_head_dim, kv_lora_rank]``), so ``<q, latent>`` equals HF's full logit;
* prefill: dense causal attention over the latents read back from the pool; decode: the runtime's
  :meth:`~MLAReferenceRuntime.decode_attention` (indexer -> selection -> sparse attention over latent blocks);
* output of head ``h``: ``o_latent_h · W_UV_hᵀ`` (``W_UV_h`` = the head's V rows of ``kv_b_proj``), then ``o_proj``.

``transformers`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..flow import vFlow
from .config import RuntimeConfig
from .hf import _ACTIVE, causal_attention, greedy_decode
from .mla import MLAReferenceRuntime

#: a tiny DeepSeek-V2-shaped config (MLA attention, a dense first layer then shared + routed experts)
TINY_DEEPSEEK_V2: dict[str, Any] = {
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 64,
    "q_lora_rank": None,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "head_dim": 16,
    "max_position_embeddings": 4096,
}


def make_tiny_deepseek_v2(seed: int = 0, *, dtype: torch.dtype = torch.float32, **overrides: Any) -> Any:
    """A DeepSeek-V2 causal LM with random weights from :data:`TINY_DEEPSEEK_V2` (+ ``overrides``), seeded, no
    download, in eval mode, eager attention. The global RNG state is left untouched."""
    from transformers import AutoModelForCausalLM, DeepseekV2Config

    config = DeepseekV2Config(**{**TINY_DEEPSEEK_V2, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    return model.eval()


def mla_shape(config: Any) -> tuple[int, int, int, int]:
    """``(num_layers, H_q, kv_lora_rank, qk_rope_head_dim)`` of an HF MLA config (DeepSeek-V2/V3)."""
    return (
        int(config.num_hidden_layers),
        int(config.num_attention_heads),
        int(config.kv_lora_rank),
        int(config.qk_rope_head_dim),
    )


def mla_runtime_for_model(
    model: Any,
    flow: vFlow,
    config: RuntimeConfig | None = None,
    num_pages: int = 256,
    kv_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> MLAReferenceRuntime:
    """An :class:`MLAReferenceRuntime` shaped like ``model`` (layers, heads, kv_lora_rank, qk_rope_head_dim);
    ``kv_dtype`` defaults to the model's dtype."""
    layers, heads, rank, rope = mla_shape(model.config)
    return MLAReferenceRuntime(
        flow, layers, heads, rank, rope, config or RuntimeConfig(), num_pages, kv_dtype or model.dtype, **kwargs
    )


def absorbed_weights(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_UK [H, qk_nope_head_dim, kv_lora_rank], W_UV [H, v_head_dim, kv_lora_rank])`` of an attention module,
    split from ``kv_b_proj.weight [H * (qk_nope_head_dim + v_head_dim), kv_lora_rank]``."""
    w = module.kv_b_proj.weight.view(module.num_heads, module.qk_nope_head_dim + module.v_head_dim, -1)
    return w[:, : module.qk_nope_head_dim], w[:, module.qk_nope_head_dim :]


def _mla_forward(
    module: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    past_key_values: Any = None,
    position_embeddings: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Absorbed MLA attention of one ``DeepseekV2Attention`` over the bound runtime's latent pool.

    ``hidden_states [B, T, hidden]`` -> ``([B, T, hidden], None)``; ``position_embeddings`` are HF's RoPE
    factors (``freqs_cis``) for the T positions.
    """
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import apply_rotary_emb

    binding = _ACTIVE.get()
    if binding is None:
        raise RuntimeError("absorbed MLA attention runs only inside greedy_generate_mla")
    rt = binding.runtime
    assert isinstance(rt, MLAReferenceRuntime)
    layer = int(module.layer_idx)
    bsz, t = hidden_states.shape[:2]
    heads, dn, dr, rank = module.num_heads, module.qk_nope_head_dim, module.qk_rope_head_dim, module.kv_lora_rank
    if module.q_lora_rank is None:
        q = module.q_proj(hidden_states)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden_states)))
    q = q.view(bsz, t, heads, dn + dr).transpose(1, 2)  # [B, H, T, dn + dr]
    q_nope, q_pe = torch.split(q, [dn, dr], dim=-1)
    kv_c, k_pe = torch.split(module.kv_a_proj_with_mqa(hidden_states), [rank, dr], dim=-1)
    assert position_embeddings is not None
    q_pe, k_pe = apply_rotary_emb(q_pe, k_pe.view(bsz, 1, t, dr), position_embeddings.to(q_pe.device))
    latent = torch.cat([module.kv_a_layernorm(kv_c), k_pe[:, 0]], dim=-1)  # [B, T, rank + dr]
    w_uk, w_uv = absorbed_weights(module)
    q_abs = torch.cat([torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk), q_pe], dim=-1)  # [B, H, T, rank + dr]

    news = []
    for b, (rid, total) in enumerate(zip(binding.rids, binding.seq_lens, strict=True)):
        new = total - rt.num_stored(layer, rid)
        if not 0 <= new <= t:
            raise RuntimeError(f"MLA attention, layer {layer}: request {rid!r} should gain {new} of {t} tokens")
        news.append(new)
        del b
    rt.append_latent(layer, binding.rids, torch.cat([latent[b, t - n :] for b, n in enumerate(news)]), news)

    if binding.plan is None:  # prefill: dense causal attention over the pooled latents
        o_lat = torch.zeros(bsz, heads, t, rank, dtype=torch.float32, device=hidden_states.device)
        for b, (rid, n) in enumerate(zip(binding.rids, news, strict=True)):
            if n == 0:
                continue
            lat = rt.gather_latent(layer, rid).float().to(hidden_states.device)  # [L, rank + dr]
            o_lat[b, :, t - n :] = causal_attention(q_abs[b, :, t - n :].float(), lat, lat[:, :rank], module.scaling)
    else:
        if t != 1:
            raise NotImplementedError(f"MLA decode takes one query token per request, got {t}")
        o_dec = rt.decode_attention(layer, q_abs[:, :, 0], binding.plan, sm_scale=module.scaling)  # [B, H, rank]
        o_lat = o_dec.float().to(hidden_states.device)[:, :, None]
    o = torch.einsum("bhtr,hvr->bthv", o_lat.to(w_uv.dtype), w_uv)  # [B, T, H, v_head_dim]
    return module.o_proj(o.reshape(bsz, t, heads * module.v_head_dim).to(hidden_states.dtype)), None


@contextlib.contextmanager
def absorbed_attention(model: Any) -> Iterator[None]:
    """Inside the block, every ``DeepseekV2Attention`` of ``model`` runs :func:`_mla_forward`."""
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Attention

    mods = [m for m in model.modules() if isinstance(m, DeepseekV2Attention)]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no DeepseekV2Attention module (not a DeepSeek-V2 MLA model)")
    for m in mods:
        m.forward = types.MethodType(_mla_forward, m)
    try:
        yield
    finally:
        for m in mods:
            del m.forward


def greedy_generate_mla(
    model: Any,
    runtime: MLAReferenceRuntime,
    input_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy-decode ``max_new_tokens`` tokens per prompt (mixed lengths) with absorbed MLA attention over the
    runtime's latent cache: each prompt prefilled alone, then one batched forward per decode step (``reserve``,
    ``plan`` once, every layer decodes with that plan). Returns the generated tokens; requests are released."""
    if any(len(ids) == 0 for ids in input_ids):
        raise ValueError("greedy_generate_mla: every prompt needs at least one token")
    want = mla_shape(model.config)
    have = (runtime.num_layers, runtime.group_size, runtime.kv_lora_rank, runtime.qk_rope_head_dim)
    if want != have:
        raise ValueError(
            f"runtime shape (layers, H_q, kv_lora_rank, qk_rope_head_dim) = {have} does not match the model's "
            f"{want}; build it with mla_runtime_for_model(model, flow, config)"
        )
    return greedy_decode(model, runtime, input_ids, max_new_tokens, "greedy_mla", functools.partial(absorbed_attention, model))
