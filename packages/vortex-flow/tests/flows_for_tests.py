"""Small flows that together call every indexer and cache op, for the compiler tests (test_compiler.py).

A :class:`SpecFlow` is assembled from three functions instead of a subclass per flow: the aux fields for a
``(block_size, head_dim)``, the body of ``forward_cache`` and the body of ``forward_indexer`` (which returns
the score). Ops are created at their call site, so every instance serves one call. With ``probe=True`` the
flow also Saves its score into a ``probe`` field, so a test can compare the scores themselves, not only the
selection they lead to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, vFlow

Fields = Callable[[int, int], CacheSpec]
CacheBody = Callable[[dict[str, vTensor], Any, ContextBase], None]
IndexerBody = Callable[[vTensor, dict[str, vTensor], ContextBase], vTensor]


class SpecFlow(vFlow):
    """A flow made of a field spec, a cache body and an indexer body (returning the ``[S, 1, 1]`` score)."""

    def __init__(
        self,
        label: str,
        fields: Fields,
        cache_body: CacheBody,
        indexer_body: IndexerBody,
        *,
        probe: bool = True,
        tolerate_ratio: float | None = None,
    ) -> None:
        super().__init__()
        self.label = label
        self.fields = fields
        self.cache_body = cache_body
        self.indexer_body = indexer_body
        self.probe = probe
        self.tolerate_ratio = tolerate_ratio

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        spec = dict(self.fields(block_size, head_dim))
        if self.probe:
            spec["probe"] = (1, 1)
        return spec

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.cache_body(cache, loc, ctx)
        if self.probe:
            cx.Fill(0.0)(cache["probe"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        score = self.indexer_body(q, cache, ctx)
        if self.probe:
            ix.Save()(score, cache["probe"], ctx=ctx)
            ix.Load()(cache["probe"], ctx=ctx)  # dead: it only makes the field count as read
        if self.tolerate_ratio is None:
            ix.topK()(score, o, ctx=ctx)
        else:
            ix.approxTopK(self.tolerate_ratio)(score, o, ctx=ctx)


# -- small helpers for flow bodies -----------------------------------------------------------------------------


def total(ctx: ContextBase, *terms: tuple[float, vTensor]) -> vTensor:
    """``sum(w * t)`` of ``[S, 1, 1]``-broadcastable terms with ``Add(alpha, beta)``."""
    (w0, acc), *rest = terms
    acc = ix.Add_Mul(beta=w0)(acc, ctx=ctx)
    for w, t in rest:
        acc = ix.Add(alpha=1.0, beta=w)(acc, t, ctx=ctx)
    return acc


def qmean(q: vTensor, ctx: ContextBase) -> vTensor:
    return ix.Mean(dim=1)(q, ctx=ctx)


def centroid(cache: dict[str, vTensor], loc: Any, ctx: ContextBase, name: str = "c") -> None:
    cx.Mean(dim=1)(cache["k"], cache[name], loc=loc, ctx=ctx)


def one_d(_bs: int, d: int) -> CacheSpec:
    return {"c": (1, d)}


def scalar(t: vTensor, ctx: ContextBase) -> vTensor:
    """``[S, a, b] -> [S, 1, 1]`` by Max over both inner axes."""
    return ix.Max(dim=1)(ix.Max(dim=2)(t, ctx=ctx), ctx=ctx)


# -- the flows ------------------------------------------------------------------------------------------------


def _centroid_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    return ix.GeMV()(qmean(q, ctx), cache["c"], ctx=ctx)


def _unary_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    s = ix.GeMV()(qmean(q, ctx), cache["c"], ctx=ctx)
    return total(
        ctx,
        (1.0, ix.Relu(alpha=0.1, beta=-0.5)(s, ctx=ctx)),
        (0.7, ix.Sigmoid()(s, ctx=ctx)),
        (-0.3, ix.Silu(alpha=0.2, beta=-1.5)(s, ctx=ctx)),
        (0.2, ix.Add_Mul(alpha=0.3, beta=2.0)(s, ctx=ctx)),
        (0.5, ix.Abs(alpha=-0.1)(s, ctx=ctx)),
        (0.4, ix.Log(alpha=1.0)(ix.Abs()(s, ctx=ctx), ctx=ctx)),
        (0.1, ix.Exp(beta=0.5)(s, ctx=ctx)),
        (0.05, ix.Relu()(s, ctx=ctx)),
        (0.3, ix.Relu(alpha=-math.inf)(s, ctx=ctx)),  # identity; the parameter is not a finite literal
    )


def _binary_fields(_bs: int, d: int) -> CacheSpec:
    return {"c": (1, d), "m": (1, d)}


def _binary_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    centroid(cache, loc, ctx)
    cx.Max(dim=1)(cache["k"], cache["m"], loc=loc, ctx=ctx)


def _binary_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    x = ix.Multiply()(qm, cache["c"], ctx=ctx)  # BATCHED x PAGED -> [S, 1, D]
    y = ix.Maximum()(ix.Multiply()(qm, cache["m"], ctx=ctx), x, ctx=ctx)
    z = ix.Minimum()(x, ix.Add(alpha=0.7, beta=-1.3)(qm, cache["m"], ctx=ctx), ctx=ctx)
    return ix.Sum(dim=2)(ix.Add(alpha=1.0, beta=0.5)(y, z, ctx=ctx), ctx=ctx)


def _where_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    s1 = ix.GeMV()(qm, cache["c"], ctx=ctx)
    s2 = ix.GeMV()(qm, cache["m"], ctx=ctx)
    top = ix.Maximum()(s1, s2, ctx=ctx)
    qs = ix.Sum(dim=2)(qm, ctx=ctx)  # BATCHED [B, 1, 1]
    masks = [
        ix.WhereEqual()(s1, top, ctx=ctx),
        ix.WhereNotEqual()(s2, top, ctx=ctx),
        ix.WhereGreater()(s1, ix.Add_Mul(alpha=0.2)(s2, ctx=ctx), ctx=ctx),
        ix.WhereGreaterEqual()(s2, qs, ctx=ctx),
        ix.WhereLess()(qs, s1, ctx=ctx),
        ix.WhereLessEqual()(s1, ix.Add_Mul(alpha=-0.3)(s2, ctx=ctx), ctx=ctx),
    ]
    # each mask is 0 or -1e30: scaled by 1e-31 it shifts the score by -0.1 per failed predicate
    return total(ctx, (1.0, s1), *((1e-31, m) for m in masks))


def no_fields(_bs: int, _d: int) -> CacheSpec:
    return {}


def no_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    del cache, loc, ctx


def _heads_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    x = ix.GeMM()(q, cache["k"], ctx=ctx)  # [S, block_size, G]: Nx = G > 1, Ny = block_size > 1
    return total(
        ctx,
        (1.0, ix.Max(dim=1)(ix.Sum(dim=2)(x, ctx=ctx), ctx=ctx)),
        (0.5, ix.Min(dim=2)(ix.Mean(dim=1)(x, ctx=ctx), ctx=ctx)),
        (0.25, ix.L2Norm(dim=1)(ix.L2Norm(dim=2)(x, ctx=ctx), ctx=ctx)),
        (-0.5, ix.Mean(dim=1)(ix.Max(dim=2)(x, ctx=ctx), ctx=ctx)),
        (0.3, ix.Sum(dim=2)(ix.Min(dim=1)(x, ctx=ctx), ctx=ctx)),
        (0.2, ix.Mean(dim=2)(ix.Max(dim=1)(x, ctx=ctx), ctx=ctx)),
        (0.1, ix.Sum(dim=1)(ix.Min(dim=2)(x, ctx=ctx), ctx=ctx)),
        # row-wise kernels reading the native K/V buffers directly
        (0.2, scalar(ix.GeMM()(q, ix.Max(dim=0)(cache["k"], ctx=ctx), ctx=ctx), ctx)),  # BATCHED [B, 1, 1]
        (0.3, scalar(ix.GeMM()(q, ix.Conv1d([0.5, 0.25])(cache["v"], ctx=ctx), ctx=ctx), ctx)),
    )


def _subblock_fields(bs: int, d: int) -> CacheSpec:
    return {"sub": (bs // 2, d), "mx": (1, d), "mn": (bs, d // 4), "l2": (bs, d // 8), "l2r": (bs // 2, d)}


def _subblock_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    cx.MeanInterleave(dim=1, k=2)(cache["k"], cache["sub"], loc=loc, ctx=ctx)
    cx.MaxInterleave(dim=1, k=ctx.block_size)(cache["k"], cache["mx"], loc=loc, ctx=ctx)
    cx.MinInterleave(dim=2, k=4)(cache["v"], cache["mn"], loc=loc, ctx=ctx)  # head_dim 24: not a power of two
    cx.L2NormInterleave(dim=2, k=8)(cache["k"], cache["l2"], loc=loc, ctx=ctx)
    cx.L2NormInterleave(dim=1, k=2)(cache["v"], cache["l2r"], loc=loc, ctx=ctx)


def _subblock_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    sub = ix.GeMM()(q, cache["sub"], ctx=ctx)  # sub-block centroids: [S, block_size / 2, G]
    return total(
        ctx,
        (1.0, scalar(sub, ctx)),
        (0.5, ix.GeMV()(qm, cache["mx"], ctx=ctx)),
        (0.3, ix.Max(dim=1)(ix.Mean(dim=2)(cache["mn"], ctx=ctx), ctx=ctx)),
        (-0.2, ix.Min(dim=1)(ix.Sum(dim=2)(cache["l2"], ctx=ctx), ctx=ctx)),
        (0.1, ix.Mean(dim=1)(ix.GeMM()(qm, cache["l2r"], ctx=ctx), ctx=ctx)),
    )


def _cache_ops_fields(bs: int, d: int) -> CacheSpec:
    return {
        "mx": (1, d), "mn": (bs, 1), "l2": (1, d), "rs": (1, bs), "ew": (1, d), "gm": (1, bs), "msk": (1, d),
        "msk1": (1, d), "wm": (1, d), "rw": (1, d), "fl": (1, d), "fl2": (1, d), "acc": (1, d), "mx2": (bs, 1), "tw": (1, d),
    }  # fmt: skip


def _cache_ops_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    k, v = cache["k"], cache["v"]
    cx.Max(dim=1)(k, cache["mx"], loc=loc, ctx=ctx)
    cx.Min(dim=2)(v, cache["mn"], loc=loc, ctx=ctx)
    cx.Max(dim=2)(v, cache["mx2"], loc=loc, ctx=ctx)
    cx.Mean(dim=1)(k, cache["tw"], loc=loc, ctx=ctx)  # written twice: the second write reads the first
    cx.Multiply()(cache["tw"], cache["tw"], cache["tw"], loc=loc, ctx=ctx)
    cx.L2Norm(dim=1)(k, cache["l2"], loc=loc, ctx=ctx)
    cx.Reshape(-1, 1, ctx.block_size)(cx.L2Norm(dim=2)(k, loc=loc, ctx=ctx), cache["rs"], loc=loc, ctx=ctx)
    e = cx.Multiply()(k, v, loc=loc, ctx=ctx)
    e = cx.Add(alpha=0.5, beta=-2.0)(e, k, loc=loc, ctx=ctx)
    e = cx.Maximum()(e, v, loc=loc, ctx=ctx)
    e = cx.Minimum()(e, cx.Sigmoid()(k, loc=loc, ctx=ctx), loc=loc, ctx=ctx)
    e = cx.Relu(alpha=-0.2)(e, loc=loc, ctx=ctx)
    e = cx.Silu()(e, loc=loc, ctx=ctx)
    e = cx.Add_Mul(alpha=1.0, beta=0.5)(e, loc=loc, ctx=ctx)
    e = cx.Log(alpha=0.5)(cx.Abs()(e, loc=loc, ctx=ctx), loc=loc, ctx=ctx)
    e = cx.Exp(beta=0.3)(e, loc=loc, ctx=ctx)
    cx.Mean(dim=1)(e, cache["ew"], loc=loc, ctx=ctx)
    cx.Mean(dim=1)(cx.GeMM()(k, v, loc=loc, ctx=ctx), cache["gm"], loc=loc, ctx=ctx)  # v @ kᵀ: [bs, bs]
    ms = cx.MaskSlice(1, 5, dim=2, alpha=2.0, beta=0.5)(k, loc=loc, ctx=ctx)
    cx.Mean(dim=1)(cx.Multiply()(ms, k, loc=loc, ctx=ctx), cache["msk"], loc=loc, ctx=ctx)
    ms1 = cx.MaskSlice(0, 1, dim=1, alpha=-1.0, beta=1.0)(v, loc=loc, ctx=ctx)
    cx.Max(dim=1)(cx.Multiply()(ms1, v, loc=loc, ctx=ctx), cache["msk1"], loc=loc, ctx=ctx)
    top = cx.Max(dim=1)(k, loc=loc, ctx=ctx)
    masks = [
        cx.WhereEqual()(k, top, loc=loc, ctx=ctx),
        cx.WhereNotEqual()(v, k, loc=loc, ctx=ctx),
        cx.WhereGreater()(k, v, loc=loc, ctx=ctx),
        cx.WhereGreaterEqual()(v, top, loc=loc, ctx=ctx),
        cx.WhereLess()(k, v, loc=loc, ctx=ctx),
        cx.WhereLessEqual()(k, top, loc=loc, ctx=ctx),
    ]
    acc = masks[0]
    for m in masks[1:]:
        acc = cx.Add(alpha=1.0, beta=1.0)(acc, m, loc=loc, ctx=ctx)
    cx.Max(dim=1)(acc, cache["wm"], loc=loc, ctx=ctx)
    # fields read after they were written in this forward_cache: they read the stored (rounded) values
    cx.Multiply()(cache["mx"], cache["l2"], cache["rw"], loc=loc, ctx=ctx)
    cx.Fill(0.25)(cache["fl"], loc=loc, ctx=ctx)
    cx.Add(alpha=1.0, beta=-3.0)(cache["fl"], cache["mx"], cache["fl2"], loc=loc, ctx=ctx)
    # a field updated from its previous value (read, then overwritten in the same kernel)
    cx.Maximum()(cache["acc"], cx.Min(dim=1)(cache["v"], loc=loc, ctx=ctx), cache["acc"], loc=loc, ctx=ctx)


def _cache_ops_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)

    def dot(name: str) -> vTensor:
        return ix.GeMV()(qm, cache[name], ctx=ctx)

    return total(
        ctx,
        (1.0, dot("mx")),
        (0.5, ix.Sum(dim=1)(cache["mn"], ctx=ctx)),
        (0.3, dot("l2")),
        (0.2, ix.Max(dim=2)(cache["rs"], ctx=ctx)),
        (0.4, dot("ew")),
        (0.1, ix.Mean(dim=2)(cache["gm"], ctx=ctx)),
        (0.6, dot("msk")),
        (-0.2, dot("msk1")),
        (1e-31, ix.Max(dim=2)(cache["wm"], ctx=ctx)),
        (0.05, dot("rw")),
        (0.3, ix.GeMV()(qm, ix.Add()(cache["fl"], cache["fl2"], ctx=ctx), ctx=ctx)),
        (0.2, dot("acc")),
        (0.4, ix.Mean(dim=1)(cache["mx2"], ctx=ctx)),
        (-0.3, dot("tw")),
    )


def _dim0_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    s = ix.GeMV()(qm, cache["c"], ctx=ctx)  # [S, 1, 1]
    mx = ix.Max(dim=0)(s, ctx=ctx)  # RAGGED -> BATCHED
    mn = ix.Min(dim=0)(s, ctx=ctx)
    rng = ix.Add(alpha=1.0, beta=-1.0)(mx, mn, ctx=ctx)  # BATCHED only: its own row-wise kernel
    sm = ix.Softmax(dim=0, scale=2.0)(s, ctx=ctx)
    mc = ix.Mean(dim=0)(cache["c"], ctx=ctx)  # straight from a PAGED field
    sc = ix.Sum(dim=0)(cache["c"], ctx=ctx)
    l2c = ix.L2Norm(dim=0)(cache["c"], ctx=ctx)
    wide = ix.Max(dim=0)(ix.Multiply()(qm, cache["c"], ctx=ctx), ctx=ctx)  # [B, 1, D], D padded
    low = ix.Min(dim=0)(ix.Multiply()(qm, cache["c"], ctx=ctx), ctx=ctx)
    centred = ix.Add(alpha=1.0, beta=-1.0)(s, mx, ctx=ctx)  # BATCHED broadcast into a RAGGED expression
    return total(
        ctx,
        (1.0, ix.Multiply()(centred, rng, ctx=ctx)),
        (0.5, sm),
        (0.3, ix.GeMV()(mc, cache["c"], ctx=ctx)),
        (0.1, ix.GeMV()(ix.Multiply()(sc, l2c, ctx=ctx), cache["c"], ctx=ctx)),
        (0.2, ix.GeMV()(ix.Add()(wide, low, ctx=ctx), cache["c"], ctx=ctx)),
        (0.05, ix.Mean(dim=0)(s, ctx=ctx)),
    )


def _softmax_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    x = ix.GeMM()(q, cache["k"], ctx=ctx)  # [S, bs, G]
    s = ix.GeMV()(qmean(q, ctx), cache["c"], ctx=ctx)
    return total(
        ctx,
        (1.0, scalar(x, ctx)),
        (0.5, scalar(ix.Softmax(dim=2, scale=0.5)(x, ctx=ctx), ctx)),
        (0.5, scalar(ix.Softmax(dim=1)(x, ctx=ctx), ctx)),
        (0.3, scalar(ix.Normalize(dim=1)(ix.Exp(beta=0.3)(x, ctx=ctx), ctx=ctx), ctx)),
        (0.3, scalar(ix.Normalize(dim=2)(ix.Exp(beta=-0.2)(x, ctx=ctx), ctx=ctx), ctx)),
        (0.5, ix.Normalize(dim=0)(ix.Exp(beta=0.5)(s, ctx=ctx), ctx=ctx)),
        (0.2, ix.Softmax(dim=0)(s, ctx=ctx)),
        (0.1, scalar(ix.Normalize(dim=0)(ix.Exp()(x, ctx=ctx), ctx=ctx), ctx)),
    )


def _conv_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    d, g, bs = ctx.head_dim, ctx.group_size, ctx.block_size
    s = ix.GeMV()(qm, cache["c"], ctx=ctx)
    x = ix.Multiply()(qm, cache["c"], ctx=ctx)  # [S, 1, D]
    y = ix.GeMM()(q, cache["k"], ctx=ctx)  # [S, bs, G]
    w_d = [[[((t * 7 + j) % 5 - 2) / 4 for j in range(d)]] for t in range(3)]  # [3, 1, D]
    w_g = [[[0.5 + j for j in range(g)]]]  # [1, 1, G]: broadcasts over bs, indexed over a padded G
    w_bs = [[[1.0 - i / bs] for i in range(bs)], [[i / bs - 0.5] for i in range(bs)]]  # [2, bs, 1]
    return total(
        ctx,
        (1.0, ix.Conv1d([0.25, 0.5, 0.25])(s, ctx=ctx)),  # K=3, [K]
        (0.5, ix.Conv1d([[[1.5]]])(s, ctx=ctx)),  # K=1, [K, 1, 1]
        (0.3, ix.Sum(dim=2)(ix.Conv1d(w_d)(x, ctx=ctx), ctx=ctx)),
        (0.2, scalar(ix.Conv1d(w_g)(y, ctx=ctx), ctx)),
        (0.2, scalar(ix.Conv1d(w_bs)(y, ctx=ctx), ctx)),  # even K: taps at s and s + 1
        (0.4, ix.GeMV()(qm, ix.Conv1d([0.5, 1.0, -0.5])(cache["c"], ctx=ctx), ctx=ctx)),  # PAGED input
    )


def _shape_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    bs = ctx.block_size
    x = ix.GeMM()(q, cache["k"], ctx=ctx)  # [S, bs, G]
    tr = ix.Transpose()(x, ctx=ctx)  # [S, G, bs]
    p = ix.Max(dim=2)(x, ctx=ctx)  # [S, bs, 1]
    row = ix.Reshape(-1, 1, bs)(p, ctx=ctx)  # [S, 1, bs]
    u = ix.Reshape(-1, bs // 2, 2)(row, ctx=ctx)  # [S, bs/2, 2]
    um = ix.Max(dim=1)(u, ctx=ctx)  # [S, 1, 2]
    k1 = ix.Kron(dim=1)(ix.Max(dim=1)(x, ctx=ctx), x, ctx=ctx)  # [S, bs, G], G broadcast (not a power of two)
    k2 = ix.Kron(dim=2)(u, um, ctx=ctx)  # [S, bs/2, 4]
    k12 = ix.Kron(dim=(1, 2))(um, u, ctx=ctx)  # [S, bs/2, 4]
    qb = ix.Max(dim=1)(ix.Sum(dim=2)(q, ctx=ctx), ctx=ctx)  # BATCHED [B, 1, 1]
    kb = ix.Kron(dim=(1, 2))(qb, u, ctx=ctx)  # BATCHED x RAGGED: [S, bs/2, 2]
    ms1 = ix.MaskSlice(1, 3, dim=1, alpha=1.0, beta=0.25)(x, ctx=ctx)
    ms2 = ix.MaskSlice(0, 2, dim=2, alpha=-1.0, beta=2.0)(x, ctx=ctx)
    qmask = ix.MaskSlice(2, 7, dim=2)(q, ctx=ctx)  # BATCHED
    qx = ix.GeMM()(ix.Multiply()(q, qmask, ctx=ctx), cache["k"], ctx=ctx)
    return total(
        ctx,
        (1.0, ix.Mean(dim=1)(ix.Max(dim=2)(tr, ctx=ctx), ctx=ctx)),
        (0.5, ix.Min(dim=2)(row, ctx=ctx)),
        (0.2, scalar(k1, ctx)),
        (0.3, scalar(k2, ctx)),
        (-0.3, ix.Sum(dim=2)(ix.Sum(dim=1)(k12, ctx=ctx), ctx=ctx)),
        (0.1, scalar(kb, ctx)),
        (0.4, scalar(ix.Multiply()(x, ms1, ctx=ctx), ctx)),
        (0.2, scalar(ix.Multiply()(x, ms2, ctx=ctx), ctx)),
        (0.5, scalar(qx, ctx)),
    )


def _state_fields(_bs: int, d: int) -> CacheSpec:
    return {"c": (1, d), "acc": (1, 1), "hist": (1, d)}


def _state_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    centroid(cache, loc, ctx)
    cx.Fill(0.0)(cache["acc"], loc=loc, ctx=ctx)
    cx.Fill(-1.0)(cache["hist"], loc=loc, ctx=ctx)


def _state_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    prev = ix.Load()(cache["acc"], ctx=ctx)
    s = ix.GeMV()(qm, cache["c"], ctx=ctx)
    new = ix.Add(alpha=0.5, beta=1.0)(prev, s, ctx=ctx)
    ix.Save()(new, cache["acc"], ctx=ctx)
    x = ix.Multiply()(qm, cache["c"], ctx=ctx)
    ix.Save()(x, cache["hist"], ctx=ctx)  # overridden by the Save below: the last Save of a field wins
    h = ix.Maximum()(ix.Load()(cache["hist"], ctx=ctx), x, ctx=ctx)
    ix.Save()(h, cache["hist"], ctx=ctx)
    sm = ix.Softmax(dim=0)(prev, ctx=ctx)  # a Load output read by another kernel
    return total(ctx, (1.0, new), (0.5, sm), (0.2, ix.GeMV()(qm, h, ctx=ctx)))


def _approx_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    s = ix.GeMV()(qmean(q, ctx), cache["c"], ctx=ctx)
    return ix.Relu()(ix.Add_Mul(alpha=-0.3)(s, ctx=ctx), ctx=ctx)  # many exact zeros: ties by position


def _field_score_fields(_bs: int, _d: int) -> CacheSpec:
    return {"s": (1, 1)}


def _field_score_cache(cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
    cx.Mean(dim=2)(cx.Max(dim=1)(cache["k"], loc=loc, ctx=ctx), cache["s"], loc=loc, ctx=ctx)


def _field_score_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    return cache["s"]


def _dead_indexer(q: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> vTensor:
    qm = qmean(q, ctx)
    score = ix.GeMV()(qm, cache["c"], ctx=ctx)
    ix.Softmax(dim=0)(score, ctx=ctx)  # dead (its own kernel if it were live)
    ix.Exp()(ix.Max(dim=0)(score, ctx=ctx), ctx=ctx)  # dead
    ix.Sum(dim=2)(qm, ctx=ctx)  # dead
    return score


FLOWS: dict[str, Callable[[], SpecFlow]] = {
    "centroid": lambda: SpecFlow("centroid", one_d, centroid, _centroid_indexer),
    "unary": lambda: SpecFlow("unary", one_d, centroid, _unary_indexer),
    "binary": lambda: SpecFlow("binary", _binary_fields, _binary_cache, _binary_indexer),
    "where": lambda: SpecFlow("where", _binary_fields, _binary_cache, _where_indexer),
    "heads": lambda: SpecFlow("heads", no_fields, no_cache, _heads_indexer),
    "subblock": lambda: SpecFlow("subblock", _subblock_fields, _subblock_cache, _subblock_indexer),
    "cache_ops": lambda: SpecFlow("cache_ops", _cache_ops_fields, _cache_ops_cache, _cache_ops_indexer),
    "dim0": lambda: SpecFlow("dim0", one_d, centroid, _dim0_indexer),
    "softmax": lambda: SpecFlow("softmax", one_d, centroid, _softmax_indexer),
    "conv": lambda: SpecFlow("conv", one_d, centroid, _conv_indexer),
    "shape": lambda: SpecFlow("shape", no_fields, no_cache, _shape_indexer),
    "state": lambda: SpecFlow("state", _state_fields, _state_cache, _state_indexer),
    "approx": lambda: SpecFlow("approx", one_d, centroid, _approx_indexer, tolerate_ratio=0.5),
    "field_score": lambda: SpecFlow(
        "field_score", _field_score_fields, _field_score_cache, _field_score_indexer, probe=False
    ),
    "dead": lambda: SpecFlow("dead", one_d, centroid, _dead_indexer, probe=False),
}
