"""Plain-PyTorch reference of block selection: this file DEFINES what ``topK`` / ``approxTopK`` select.

Shapes (``R`` rows, ``nnz`` dense blocks over all rows, ``S = sel_indptr[-1]`` selected blocks):

* ``score [nnz]`` (or ``[nnz, 1, 1]``) fp32/bf16/fp16, one score per dense block, aligned with
  ``dense_indices``.
* ``dense_indptr [R+1] int32``, ``dense_indices [nnz] int32``: position ``p`` of row ``r`` is block
  ``dense_indices[dense_indptr[r] + p]``; ``n_r = dense_indptr[r+1] - dense_indptr[r]``.
* ``sel_indptr [R+1] int32``: ``b_r = sel_indptr[r+1] - sel_indptr[r]`` is row ``r``'s budget, with
  ``b_r <= n_r`` and (``b_r == n_r`` or ``b_r >= bos + eos``).
* result ``[S] int32``: the selected block ids of every row, each row in ascending position order.

Semantics of one row (``n = n_r``, ``b = b_r``):

1. ``b == n``: the whole row is selected.
2. otherwise positions ``[0, bos)`` and ``[n - eos, n)`` are always selected, and from the middle positions
   ``[bos, n - eos)`` exactly ``k = b - bos - eos`` are selected by the threshold search below.

Scores are ranked through :func:`order_key`, an order-preserving map of the fp32 value onto an unsigned
32-bit integer ``u`` (bf16/fp16 are widened to fp32 first, exactly). ``-inf`` and ``-1e30`` are ordinary
values, ``-0.0`` ranks equal to ``+0.0`` and every NaN ranks below everything, ``-inf`` included.

Threshold search (:func:`select_middle`), most significant bit first. The state is a *bin*
``[lo, hi)`` of key values that holds the k-th largest key, ``c = #{u >= hi}`` (the elements strictly above
the bin, all of which belong to the top k) and ``owed = k - c`` (the slots the bin still has to fill;
``1 <= owed <= #bin`` while ``k >= 1``). Starting from ``[0, 2**32)``, each step halves the bin with one
count pass. The search stops as soon as one of these holds (checked before every step):

* ``owed <= tol_k`` where ``tol_k = floor(tolerate_ratio * k)`` (fp64 product, like Python's
  ``math.floor(tolerate_ratio * k)``): the approximate stop. Exact mode has ``tolerate_ratio = 0``, so
  ``tol_k = 0 < owed`` and this never fires;
* ``#{u >= lo} == k``: the bin holds exactly ``owed`` elements. This is only a shortcut: every later stop
  would select the same set ``{u >= lo}``, so it never changes the output;
* all 32 bits are decided: the bin is the single key value of the k-th largest element. (The kernel stops
  after bit 16 for bf16 and bit 13 for fp16 scores, whose widened keys have those low bits fixed: the bin
  already holds one value, and the skipped passes could change neither ``c`` nor ``#{u >= lo}``.)

Then the ``c`` elements above the bin are selected, and the ``owed`` bin elements of lowest position.

Consequences, which the tests check:

* exact mode (``tolerate_ratio == 0``) is the true top k of the middle, ties broken by lower position;
* approximate mode (``0 < tolerate_ratio < 1``) selects exactly ``k`` middle positions, and all ``c``
  elements above the bin are in every true top k (they are strictly larger than every bin element, and the
  k-th largest lies in the bin), so ``recall = |selected & true_topk| / k >= c / k = 1 - owed / k
  >= 1 - tol_k / k >= 1 - tolerate_ratio``, whatever the scores (many near-equal ones included).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def order_key(score: Tensor) -> Tensor:
    """Map scores onto signed int32 keys whose integer order is the ranking order of the scores.

    ``score [...]`` fp32/bf16/fp16 -> ``[...] int32``. The unsigned key of the module docstring is
    ``u = key + 2**31``. Positive floats keep their bit pattern; negative floats flip their 31 low bits (a
    larger magnitude gives a smaller key); ``-0.0`` is mapped to ``+0.0`` first, and NaN (any sign or
    payload) to ``INT32_MIN``, below ``-inf`` (whose key is ``INT32_MIN + 0x7FFFFF``). Works on integer
    bits only, so denormals are never flushed.
    """
    bits = score.to(torch.float32).contiguous().view(torch.int32)
    bits = torch.where(bits == INT32_MIN, torch.zeros_like(bits), bits)  # -0.0 -> +0.0
    key = torch.where(bits < 0, bits ^ INT32_MAX, bits)
    is_nan = (bits & INT32_MAX) > 0x7F800000
    return torch.where(is_nan, torch.full_like(key, INT32_MIN), key)


def tolerated_slots(k: int, tolerate_ratio: float) -> int:
    """``tol_k = floor(tolerate_ratio * k)``: how many owed slots the approximate search may fill blindly."""
    return math.floor(float(tolerate_ratio) * k)


def select_middle(keys: Tensor, k: int, tol_k: int = 0) -> Tensor:
    """Threshold search over one row's middle: ``keys [m] int32`` (from :func:`order_key`) -> ``[m] bool``.

    Selects exactly ``k`` (``0 <= k <= m``) entries; see the module docstring for the algorithm and its
    guarantee. ``tol_k = 0`` is exact top-k with ties broken by lower position.
    """
    m = keys.numel()
    if not 0 <= k <= m:
        raise ValueError(f"k={k} outside [0, {m}]")
    u = keys.to(torch.int64) + 2**31  # [m] unsigned 32-bit key, in [0, 2**32)
    lo, hi = 0, 2**32  # the bin [lo, hi) holds the k-th largest key
    c, n_ge_lo = 0, m  # c = #{u >= hi}, n_ge_lo = #{u >= lo}
    for bit in range(31, -1, -1):
        if k - c <= tol_k or n_ge_lo == k:
            break
        mid = lo + (1 << bit)
        cnt = int((u >= mid).sum())
        if cnt >= k:  # the k-th largest is in the upper half
            lo, n_ge_lo = mid, cnt
        else:  # lower half; the upper half is all selected
            hi, c = mid, cnt
    owed = k - c
    in_bin = (u >= lo) & (u < hi)
    return (u >= hi) | (in_bin & (torch.cumsum(in_bin.to(torch.int64), 0) <= owed))


def select_blocks_reference(
    score: Tensor,
    dense_indptr: Tensor,
    dense_indices: Tensor,
    sel_indptr: Tensor,
    bos: int,
    eos: int,
    *,
    tolerate_ratio: float = 0.0,
    out: Tensor | None = None,
    max_blocks_per_row: int | None = None,
) -> Tensor:
    """Reference selection, one row at a time (host loop, syncs freely).

    ``score [nnz]`` or ``[nnz, 1, 1]``, ``dense_indptr [R+1]``, ``dense_indices [nnz]``, ``sel_indptr [R+1]``
    -> ``out [sel_indptr[-1]] int32`` (written in place when given). ``max_blocks_per_row`` is accepted for
    signature parity with the kernel and ignored. ``0 <= tolerate_ratio < 1``; 0 is exact ``topK``.
    """
    del max_blocks_per_row
    if not 0.0 <= tolerate_ratio < 1.0:
        raise ValueError(f"tolerate_ratio must be in [0, 1), got {tolerate_ratio}")
    if bos < 0 or eos < 0:
        raise ValueError(f"bos={bos} and eos={eos} must be >= 0")
    keys = order_key(score.reshape(-1))  # [nnz] int32
    d_ptr = dense_indptr.tolist()
    s_ptr = sel_indptr.tolist()
    if out is None:
        out = torch.empty(s_ptr[-1], dtype=torch.int32, device=dense_indices.device)
    for r in range(len(d_ptr) - 1):
        n, b = d_ptr[r + 1] - d_ptr[r], s_ptr[r + 1] - s_ptr[r]
        ids = dense_indices[d_ptr[r] : d_ptr[r + 1]]  # [n]
        if b == n:
            chosen = ids
        else:
            if b > n or b < bos + eos:
                raise ValueError(f"row {r}: budget {b} invalid for n={n}, bos={bos}, eos={eos}")
            k = b - bos - eos
            keep = torch.ones(n, dtype=torch.bool, device=ids.device)  # [n]
            keep[bos : n - eos] = select_middle(
                keys[d_ptr[r] + bos : d_ptr[r + 1] - eos], k, tolerated_slots(k, tolerate_ratio)
            )
            chosen = ids[keep]
        out[s_ptr[r] : s_ptr[r + 1]] = chosen.to(torch.int32)
    return out
