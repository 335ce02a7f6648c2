"""Synthetic Q/K/V streams for the reference runtime: random batches, planted needles, and flow quality metrics.

* :func:`run_synthetic` prefills random K/V for a batch of mixed lengths and runs decode steps with random
  queries, returning sparse and dense outputs and every selection;
* :func:`make_needle_context` hides a few keys aligned with the query in random noise, so a flow that scores
  blocks sensibly must select the needles' blocks;
* :func:`measure_flow` (what ``vortex check`` reports) measures needle recall and the attention error against
  dense attention at a given budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..flow import vFlow
from ..user_code import is_mla_flow
from .config import RuntimeConfig
from .engine import AttentionImpl, ReferenceRuntime, Selection, StepPlan


def _runtime(
    flow: vFlow,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    group_size: int,
    config: RuntimeConfig,
    num_pages: int,
    kv_dtype: torch.dtype,
    qk_rope_head_dim: int,
    **kwargs: Any,
) -> ReferenceRuntime:
    """A runtime for ``flow``: a :class:`ReferenceRuntime`, or for a vFlowMLA an ``MLAReferenceRuntime`` with one
    latent head of width ``head_dim`` (``kv_lora_rank = head_dim - qk_rope_head_dim``) and ``group_size`` query
    heads (``num_kv_heads`` is ignored: MLA has one latent head)."""
    if is_mla_flow(flow):
        from .mla import MLAReferenceRuntime

        return MLAReferenceRuntime(
            flow, num_layers, group_size, head_dim - qk_rope_head_dim, qk_rope_head_dim, config, num_pages,
            kv_dtype, **kwargs,
        )  # fmt: skip
    return ReferenceRuntime(
        flow, num_layers, num_kv_heads, head_dim, group_size, config, num_pages, kv_dtype, **kwargs
    )


def _pages_needed(seq_lens: Sequence[int], page_size: int) -> int:
    """Pages for every request at once, plus the reserved page 0 and one spare page per request."""
    return 1 + sum(-(-n // page_size) + 1 for n in seq_lens)


@dataclass
class SyntheticRun:
    """What :func:`run_synthetic` produced.

    ``queries``, ``outputs``, ``dense_outputs``, ``selections`` are indexed ``[step][layer]`` (tensors
    ``[B, H_q, D]``); ``keys[layer][b]`` / ``values[layer][b]`` are the whole K/V stream written for request
    ``b`` (``[seq_len, H_kv, D]`` fp32, prefill then one token per step), for checks independent of the pool.
    """

    runtime: ReferenceRuntime
    rids: list[int]
    plans: list[StepPlan]
    queries: list[list[torch.Tensor]]
    outputs: list[list[torch.Tensor]]
    dense_outputs: list[list[torch.Tensor]]
    selections: list[list[Selection]]
    keys: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]


def run_synthetic(
    flow: vFlow,
    seq_lens: Sequence[int],
    decode_steps: int,
    *,
    num_layers: int = 2,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    group_size: int = 2,
    config: RuntimeConfig | None = None,
    num_pages: int | None = None,
    kv_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attention: AttentionImpl = "reference",
    shuffle_pages_seed: int | None = None,
    runtime: ReferenceRuntime | None = None,
    qk_rope_head_dim: int = 16,
) -> SyntheticRun:
    """Prefill ``len(seq_lens)`` requests with random K/V (``seq_lens[b]`` tokens each, all layers), then run
    ``decode_steps`` decode steps, each appending one random token per request and attending with a random
    ``q [B, H_q, D]`` in every layer.

    A step follows the serving order: ``reserve`` one slot per request, ``plan`` once, then per layer
    ``append_kv`` the new token and ``decode_attention``. ``dense_attention`` on the same query is recorded
    alongside, so callers can compare. Pass ``runtime`` to reuse one (its shape wins over the keywords).

    For a vFlowMLA the model is MLA: one latent head of width ``head_dim`` whose last ``qk_rope_head_dim``
    columns are the RoPE part, ``group_size`` query heads, outputs ``[B, H_q, head_dim - qk_rope_head_dim]``;
    ``keys`` hold the latents and ``values`` are unused.
    """
    cfg = config if config is not None else RuntimeConfig()
    if runtime is None:
        pages = num_pages or _pages_needed([n + decode_steps for n in seq_lens], cfg.page_size)
        runtime = _runtime(
            flow, num_layers, num_kv_heads, head_dim, group_size, cfg, pages, kv_dtype, qk_rope_head_dim,
            attention=attention, shuffle_pages_seed=shuffle_pages_seed,
        )  # fmt: skip
    rt = runtime
    mla = "v" not in rt.kv_fields
    nl, hk, d, hq = rt.num_layers, rt.num_kv_heads, rt.head_dim, rt.num_kv_heads * rt.group_size
    gen = torch.Generator().manual_seed(seed)
    base = max((r for r in rt.pool.requests() if isinstance(r, int)), default=-1) + 1  # fresh integer rids
    rids = [base + i for i in range(len(seq_lens))]
    for rid in rids:
        rt.add_request(rid)
    total = sum(seq_lens)
    keys: list[list[torch.Tensor]] = []
    values: list[list[torch.Tensor]] = []
    for layer in range(nl):
        k = torch.randn(total, hk, d, generator=gen)
        v = torch.randn(total, hk, d, generator=gen)
        rt.append_kv(layer, rids, k, None if mla else v, list(seq_lens))
        keys.append(list(k.split(list(seq_lens))))
        values.append(list(v.split(list(seq_lens))))

    run = SyntheticRun(
        runtime=rt, rids=rids, plans=[], queries=[], outputs=[], dense_outputs=[], selections=[],
        keys=keys, values=values,
    )  # fmt: skip
    ones = [1] * len(rids)
    for _ in range(decode_steps):
        rt.reserve(rids, ones)
        plan = rt.plan(rids)
        qs, outs, dense, sels = [], [], [], []
        for layer in range(nl):
            k = torch.randn(len(rids), hk, d, generator=gen)
            v = torch.randn(len(rids), hk, d, generator=gen)
            rt.append_kv(layer, rids, k, None if mla else v, ones)
            for b in range(len(rids)):
                keys[layer][b] = torch.cat([keys[layer][b], k[b : b + 1]])
                values[layer][b] = torch.cat([values[layer][b], v[b : b + 1]])
            q = torch.randn(len(rids), hq, d, generator=gen)
            qs.append(q)
            outs.append(rt.decode_attention(layer, q, plan))
            sels.append(rt.last_selection[layer])
            dense.append(rt.dense_attention(layer, q, plan))
        run.plans.append(plan)
        run.queries.append(qs)
        run.outputs.append(outs)
        run.dense_outputs.append(dense)
        run.selections.append(sels)
    return run


@dataclass
class NeedleContext:
    """One row's synthetic context: ``q [G, D]``, ``k [seq_len, D]``, ``v [seq_len, D]`` (fp32) and the token
    positions of the planted needles (ascending)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    needle_positions: list[int]
    block_size: int

    @property
    def needle_blocks(self) -> list[int]:
        """Distinct block positions holding a needle, ascending."""
        return sorted({p // self.block_size for p in self.needle_positions})


def make_needle_context(
    seq_len: int,
    head_dim: int,
    num_needles: int,
    group_size: int,
    seed: int,
    *,
    block_size: int = 16,
    strength: float = 4.0,
    query_scale: float = 3.0,
    edge_blocks: int = 1,
    direction_dims: int | None = None,
) -> NeedleContext:
    """Hide ``num_needles`` keys aligned with the query among ``N(0, I)`` keys.

    A random unit direction ``u`` is drawn; every query head is ``query_scale * u`` plus small noise, and each
    needle key is a hay key plus ``strength * sqrt(D) * u``. A needle's logit ``q.k / sqrt(D)`` is thus about
    ``query_scale * strength`` (12 by default, so the needles hold most of the dense attention mass even at 32k tokens) while hay logits are ~``N(0, (query_scale / sqrt(D))^2)``, and the
    mean key of a needle's block stands ``strength * sqrt(D) / block_size`` above the hay blocks along ``u``
    (several standard deviations for the defaults). Needles avoid the first and last ``edge_blocks`` blocks,
    which bos/eos keep anyway, so finding them is the flow's merit. Positions are distinct but two needles may
    share a block. ``direction_dims`` confines ``u`` to the first that many dims (an MLA latent's ``kv_c`` part).
    """
    n_blocks = -(-seq_len // block_size)
    lo, hi = edge_blocks * block_size, (n_blocks - edge_blocks) * block_size
    if hi - lo < num_needles:
        raise ValueError(
            f"seq_len={seq_len} has only {max(hi - lo, 0)} token positions outside the first/last {edge_blocks} "
            f"block(s) of {block_size}: too short for {num_needles} needles"
        )
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(head_dim, generator=gen)
    if direction_dims is not None:
        u[direction_dims:] = 0.0
    u = u / u.norm()
    k = torch.randn(seq_len, head_dim, generator=gen)
    v = torch.randn(seq_len, head_dim, generator=gen)
    q = query_scale * u + 0.1 * torch.randn(group_size, head_dim, generator=gen)  # [G, D]
    pos = (lo + torch.randperm(hi - lo, generator=gen)[:num_needles]).sort().values
    k[pos] += strength * math.sqrt(head_dim) * u
    return NeedleContext(q=q, k=k, v=v, needle_positions=pos.tolist(), block_size=block_size)


def measure_flow(
    flow: vFlow | str,
    seq_lens: Sequence[int] = (1024, 4096),
    budget_fraction: float = 1 / 16,
    *,
    num_needles: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 128,
    group_size: int = 4,
    config: RuntimeConfig | None = None,
    kv_dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    attention: AttentionImpl = "reference",
    qk_rope_head_dim: int = 64,
) -> dict[str, Any]:
    """Needle recall and attention error of ``flow`` at a budget of ``budget_fraction`` of each row's blocks.

    One request per entry of ``seq_lens``, each of its ``num_kv_heads`` rows with its own needle context
    (:func:`make_needle_context`); one decode step of one layer. The budget rule is set to
    ``topk_val=0, topk_ratio=budget_fraction`` (so a row keeps ``max(bos + eos, floor(n * budget_fraction))``
    blocks); block size, page size, bos/eos, aux dtype and executor come from ``config`` (default
    :class:`RuntimeConfig`). ``flow`` is an instance or a registered name.

    Returns a dict:

    * ``needle_recall``: needle blocks selected / needle blocks, over all rows (1.0 = every needle found);
      ``needle_recall_max`` is the best any flow can reach at this budget (a row whose middle budget is
      smaller than its number of needle blocks cannot select them all);
    * ``attn_rel_error``: mean over rows of ``||o_sparse - o_dense|| / ||o_dense||`` (``[G, D]`` per row), and
      ``attn_rel_error_max``;
    * ``pages_selected`` / ``pages_total``: blocks attended vs blocks cached over all rows (Vortex blocks,
      which the original project calls pages), ``selected_fraction`` their ratio;
    * ``per_seq``: the same per request, plus the setup (``block_size``, ``budget_fraction``, ...).

    A vFlowMLA is measured on an MLA layer: one latent head of width ``head_dim`` (the last ``qk_rope_head_dim``
    columns are the RoPE part), ``group_size`` query heads (``num_kv_heads`` is ignored). The needles are
    content, not position: their direction lies in the ``kv_c`` columns, so a RoPE-unaware flow can find them.
    """
    if isinstance(flow, str):
        from ..loader import build_vflow

        flow = build_vflow(flow)
    if not 0.0 < budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction}")
    cfg = replace(config or RuntimeConfig(), topk_val=0, topk_ratio=float(budget_fraction), layers_skip=())
    mla = is_mla_flow(flow)
    bs, g, hk = cfg.block_size, group_size, 1 if mla else num_kv_heads
    rt = _runtime(
        flow, 1, hk, head_dim, g, cfg, _pages_needed(seq_lens, cfg.page_size), kv_dtype, qk_rope_head_dim,
        attention=attention,
    )  # fmt: skip
    content_dims = head_dim - qk_rope_head_dim if mla else head_dim
    rids = list(range(len(seq_lens)))
    ctxs: list[list[NeedleContext]] = []
    for b, n in enumerate(seq_lens):
        rt.add_request(rids[b])
        ctxs.append([
            make_needle_context(
                n, head_dim, num_needles, g, seed * 100_003 + b * hk + h, block_size=bs, direction_dims=content_dims
            )
            for h in range(hk)
        ])  # fmt: skip
    k = torch.cat([torch.stack([c.k for c in row], dim=1) for row in ctxs])  # [sum(L), H_kv, D]
    v = torch.cat([torch.stack([c.v for c in row], dim=1) for row in ctxs])
    rt.append_kv(0, rids, k, None if mla else v, list(seq_lens))
    plan = rt.plan(rids)
    q = torch.stack([torch.cat([c.q for c in row]) for row in ctxs])  # [B, H_kv * G, D]
    o_sparse = rt.decode_attention(0, q.to(kv_dtype), plan).float()
    o_dense = rt.dense_attention(0, q.to(kv_dtype), plan).float()
    sel = rt.last_selection[0]
    budget = plan.budget.tolist()

    per_seq: list[dict[str, Any]] = []
    hits = needles = best = 0
    errors: list[float] = []
    for b, n in enumerate(seq_lens):
        s_hits = s_needles = s_best = 0
        s_err: list[float] = []
        for h in range(hk):
            want = set(ctxs[b][h].needle_blocks)
            s_hits += len(want & set(sel.row(b, h)))
            s_needles += len(want)
            r = plan.row(b, h)
            # needles sit in the middle, which holds budget - bos - eos selected blocks (all when b == n)
            middle = budget[r] if budget[r] >= plan.num_blocks(b) else budget[r] - cfg.bos - cfg.eos
            s_best += min(len(want), middle)
            os_, od = o_sparse[b, h * g : (h + 1) * g], o_dense[b, h * g : (h + 1) * g]  # [G, D] (MLA: [H_q, Dv])
            s_err.append(float((os_ - od).norm() / od.norm().clamp_min(1e-12)))
        hits, needles, best = hits + s_hits, needles + s_needles, best + s_best
        errors += s_err
        per_seq.append({
            "seq_len": n,
            "blocks": plan.num_blocks(b),
            "budget": budget[plan.row(b, 0)],
            "needle_recall": s_hits / s_needles,
            "needle_recall_max": s_best / s_needles,
            "attn_rel_error": sum(s_err) / len(s_err),
        })  # fmt: skip
    selected, total = int(plan.budget.sum()), plan.dense.nnz
    return {
        "flow": getattr(flow, "name", "") or type(flow).__name__,
        "needle_recall": hits / needles,
        "needle_recall_max": best / needles,
        "needle_blocks_hit": hits,
        "needle_blocks_total": needles,
        "attn_rel_error": sum(errors) / len(errors),
        "attn_rel_error_max": max(errors),
        "pages_selected": selected,
        "pages_total": total,
        "selected_fraction": selected / total,
        "budget_fraction": float(budget_fraction),
        "block_size": bs,
        "num_needles": num_needles,
        "head_dim": head_dim,
        "group_size": g,
        "num_kv_heads": hk,
        "mla": mla,
        "per_seq": per_seq,
    }
