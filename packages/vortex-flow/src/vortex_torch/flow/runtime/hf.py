"""End-to-end greedy decoding of a Hugging Face causal LM whose decode attention runs through the reference
runtime (the ``hf`` extra: ``pip install vortex-flow[hf]``).

The model keeps its own weights, RoPE and layer code; only the attention function is replaced. It is
registered with ``transformers.AttentionInterface`` as ``"vortex"`` and receives each layer's
``query [B, H_q, T, D]``, ``key/value [B, H_kv, S, D]`` after RoPE (and after HF's cache update, if HF keeps
one). It writes the tokens our pool does not hold yet (tracked per layer and request by the runtime), then:

* prefill (no step plan): dense causal attention of the new queries over the request's tokens read back
  from the pool, so prefill K/V go through the pool and fire ``forward_cache`` for every completed block;
* decode (a :class:`StepPlan` built once per step): :meth:`ReferenceRuntime.decode_attention`.

``transformers`` is imported lazily, inside the functions, so the rest of ``vortex_torch.flow`` never needs it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from ..flow import vFlow
from .config import RuntimeConfig
from .engine import ReferenceRuntime, StepPlan
from .pool import RequestId

#: the ``attn_implementation`` name the Vortex attention function is registered under
ATTN_IMPLEMENTATION = "vortex"

TINY_QWEN3: dict[str, Any] = {
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 4096,
}


@dataclass
class _Binding:
    """What the attention function needs to know about the current forward pass.

    ``rids[b]`` is the request of batch row ``b``; ``seq_lens[b]`` its token count once this forward's tokens
    are in; ``plan`` is the decode step's plan, or ``None`` for a prefill forward.
    """

    runtime: ReferenceRuntime
    rids: list[RequestId]
    seq_lens: list[int]
    plan: StepPlan | None


# A context variable, not a model attribute: the attention function finds the active runtime without
# mutating the model, and concurrent generations in different threads/tasks do not see each other's state.
_ACTIVE: ContextVar[_Binding | None] = ContextVar("vortex_hf_binding", default=None)
_rid_counter = itertools.count()


def register_vortex_attention() -> None:
    """Register :func:`vortex_attention` as ``attn_implementation="vortex"`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, vortex_attention)


def vortex_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HF attention function: ``query [B, H_q, T, D]``, ``key/value [B, H_kv, S, D]`` -> ``([B, T, H_q, D], None)``.

    Outside :func:`greedy_generate` (no active runtime) it falls back to HF's SDPA attention, so a model left
    on ``"vortex"`` still works. Inside, ``attention_mask`` is ignored: transformers builds none for custom
    implementations, and causality comes from the per-request token counts.
    """
    binding = _ACTIVE.get()
    if binding is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rt, layer = binding.runtime, int(module.layer_idx)
    bsz, _, t, _ = query.shape
    if bsz != len(binding.rids):
        raise RuntimeError(f"vortex attention: batch of {bsz} but {len(binding.rids)} requests are bound")
    news, ks, vs = [], [], []
    for b, (rid, total) in enumerate(zip(binding.rids, binding.seq_lens, strict=True)):
        new = total - rt.num_stored(layer, rid)
        if not 0 <= new <= min(t, key.shape[2]):
            raise RuntimeError(
                f"vortex attention, layer {layer}: request {rid!r} should gain {new} tokens but the forward has "
                f"{t} query / {key.shape[2]} key positions"
            )
        news.append(new)
        # left padding puts a request's real tokens last, so its new ones are the last `new` key positions
        ks.append(key[b, :, key.shape[2] - new :].transpose(0, 1))  # [new, H_kv, D]
        vs.append(value[b, :, value.shape[2] - new :].transpose(0, 1))
    rt.append_kv(layer, binding.rids, torch.cat(ks), torch.cat(vs), news)

    if binding.plan is None:
        return _prefill_attention(rt, layer, query, binding, news, scaling), None
    if t != 1:
        raise NotImplementedError(f"vortex decode attention takes one query token per request, got {t}")
    o = rt.decode_attention(layer, query[:, :, 0], binding.plan, sm_scale=scaling)  # [B, H_q, D]
    return o.to(device=query.device, dtype=query.dtype).unsqueeze(1), None


def _prefill_attention(
    rt: ReferenceRuntime,
    layer: int,
    query: torch.Tensor,
    binding: _Binding,
    news: list[int],
    scaling: float | None,
) -> torch.Tensor:
    """Dense causal attention of each request's ``news[b]`` new queries over all of its pooled tokens.

    ``query [B, H_q, T, D]`` -> ``[B, T, H_q, D]`` (padded query positions get zeros). Reading K/V back from
    the pool (not from HF's tensors) makes prefill go through the pool layout too, and lets chunked prefill
    work without an HF cache. fp32 math, like the reference decode attention.
    """
    bsz, hq, t, d = query.shape
    g = rt.group_size
    scale = scaling if scaling is not None else d**-0.5
    out = torch.zeros(bsz, t, hq, d, dtype=query.dtype, device=query.device)
    for b, (rid, n) in enumerate(zip(binding.rids, news, strict=True)):
        if n == 0:
            continue
        k, v = rt.gather_kv(layer, rid)  # [L, H_kv, D]
        k = k.float().transpose(0, 1).repeat_interleave(g, dim=0).to(query.device)  # [H_q, L, D]
        v = v.float().transpose(0, 1).repeat_interleave(g, dim=0).to(query.device)
        o = causal_attention(query[b, :, t - n :].float(), k, v, scale)  # [H_q, n, D]
        out[b, t - n :] = o.transpose(0, 1).to(query.dtype)
    return out


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of the last ``n`` positions of a sequence over all ``L`` of its positions, causal.

    ``q [H, n, D]``, ``k [H, L, D]`` or ``[L, D]`` (shared by the heads), ``v [H, L, Dv]`` or ``[L, Dv]``
    -> ``[H, n, Dv]``; query ``i`` sits at position ``L - n + i`` and sees positions ``<= L - n + i``.
    """
    n, length = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) * scale  # [H, n, L]
    q_pos = torch.arange(length - n, length, device=q.device)
    future = torch.arange(length, device=q.device)[None, :] > q_pos[:, None]  # [n, L]
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


def _model_shape(config: Any) -> tuple[int, int, int, int]:
    """``(num_layers, H_kv, D, G)`` of an HF decoder config."""
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), kv, head_dim, heads // kv


def runtime_for_model(
    model: Any,
    flow: vFlow,
    config: RuntimeConfig | None = None,
    num_pages: int = 256,
    kv_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> ReferenceRuntime:
    """A :class:`ReferenceRuntime` shaped like ``model`` (layers, KV heads, head dim, group size).

    ``kv_dtype`` defaults to the model's dtype; ``kwargs`` go to :class:`ReferenceRuntime`.
    """
    layers, kv, head_dim, g = _model_shape(model.config)
    return ReferenceRuntime(
        flow, layers, kv, head_dim, g, config or RuntimeConfig(), num_pages, kv_dtype or model.dtype, **kwargs
    )


def _check_shape(model: Any, rt: ReferenceRuntime) -> None:
    want = _model_shape(model.config)
    have = (rt.num_layers, rt.num_kv_heads, rt.head_dim, rt.group_size)
    if want != have:
        raise ValueError(
            f"runtime shape (layers, H_kv, D, G) = {have} does not match the model's {want}; build it with "
            "runtime_for_model(model, flow, config)"
        )


def _forward_argmax(model: Any, binding: _Binding, ids: torch.Tensor, positions: torch.Tensor) -> list[int]:
    """One forward with ``binding`` active -> greedy next token of every batch row."""
    token = _ACTIVE.set(binding)
    try:
        # use_cache=False: our pool is the KV cache; an HF cache would only duplicate it
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits  # [B, T, V]
    finally:
        _ACTIVE.reset(token)
    return logits[:, -1].argmax(dim=-1).tolist()


def greedy_generate(
    model: Any,
    runtime: ReferenceRuntime,
    input_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy-decode ``max_new_tokens`` tokens for each prompt (mixed lengths) with Vortex decode attention.

    Each prompt is prefilled in its own forward (batch 1, no padding); then every decode step runs the whole
    batch in one forward: ``reserve`` one slot per request, ``plan`` once, and every layer's attention uses
    that plan. No early stop at EOS. The model's ``attn_implementation`` is restored afterwards and the
    requests are released. Returns the generated tokens (without the prompts).
    """
    if any(len(ids) == 0 for ids in input_ids):
        raise ValueError("greedy_generate: every prompt needs at least one token")
    _check_shape(model, runtime)
    register_vortex_attention()
    routed = functools.partial(using_attn_implementation, model, ATTN_IMPLEMENTATION)
    return greedy_decode(model, runtime, input_ids, max_new_tokens, "greedy", routed)


@contextlib.contextmanager
def using_attn_implementation(model: Any, name: str) -> Iterator[None]:
    """Inside the block ``model`` runs with ``attn_implementation=name``; the previous one is restored after."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def greedy_decode(
    model: Any,
    rt: ReferenceRuntime,
    input_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    tag: str,
    attention: Callable[[], AbstractContextManager[None]],
) -> list[list[int]]:
    """The greedy loop of :func:`greedy_generate` and ``greedy_generate_mla``, with the model's attention routed
    to ``rt`` inside ``attention()``: each prompt prefilled alone, then one batched forward per decode step
    (``reserve``, ``plan`` once, every layer uses that plan). Requests are named ``(tag, serial, i)`` and
    released at the end. Returns the generated tokens."""
    device = next(model.parameters()).device
    serial = next(_rid_counter)
    rids: list[RequestId] = [(tag, serial, i) for i in range(len(input_ids))]
    out: list[list[int]] = [[] for _ in input_ids]
    if max_new_tokens <= 0:
        return out
    try:
        with torch.no_grad(), attention():
            lens = [len(ids) for ids in input_ids]
            for i, ids in enumerate(input_ids):
                rt.add_request(rids[i])
                rt.reserve([rids[i]], [lens[i]])
                ids_t = torch.tensor([list(ids)], device=device)
                pos = torch.arange(lens[i], device=device)[None]
                out[i] += _forward_argmax(model, _Binding(rt, [rids[i]], [lens[i]], None), ids_t, pos)
            for _ in range(max_new_tokens - 1):
                rt.reserve(rids, [1] * len(rids))
                plan = rt.plan(rids)
                lens = [n + 1 for n in lens]
                ids_t = torch.tensor([[o[-1]] for o in out], device=device)  # [B, 1]
                pos = torch.tensor([[n - 1] for n in lens], device=device)  # the new token's position
                nxt = _forward_argmax(model, _Binding(rt, rids, lens, plan), ids_t, pos)
                for o, tok in zip(out, nxt, strict=True):
                    o.append(tok)
    finally:
        for rid in rids:
            if rt.pool.has_request(rid):
                rt.release(rid)
    return out


def hf_greedy_reference(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    attn_implementation: str = "eager",
) -> list[list[int]]:
    """Plain-HF greedy decoding (no Vortex) of each prompt on its own, recomputing the whole sequence every
    step: the simplest possible baseline for :func:`greedy_generate`."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.no_grad(), using_attn_implementation(model, attn_implementation):
        for ids in input_ids:
            seq = list(ids)
            for _ in range(max_new_tokens):
                logits = model(input_ids=torch.tensor([seq], device=device), use_cache=False).logits
                seq.append(int(logits[0, -1].argmax()))
            out.append(seq[len(ids) :])
    return out


def make_tiny_qwen3(
    path: str | None = None,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    **overrides: Any,
) -> Any:
    """A Qwen3 causal LM for tests: random weights from :data:`TINY_QWEN3` (+ ``overrides``), seeded, no
    download; or, with ``path``, ``AutoModelForCausalLM.from_pretrained(path)`` (a local checkpoint).

    Returned in eval mode. The global RNG state is left untouched.
    """
    from transformers import AutoModelForCausalLM, Qwen3Config

    if path is not None:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, **overrides
        )
    else:
        config = Qwen3Config(**{**TINY_QWEN3, **overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=attn_implementation, dtype=dtype
            )
    return model.eval()
