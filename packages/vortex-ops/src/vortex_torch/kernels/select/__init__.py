"""Block selection: the flow ops ``topK()`` / ``approxTopK(tolerate_ratio)`` and the budget rule.

:func:`select_blocks` runs the Triton kernel on CUDA tensors (and on CPU under ``TRITON_INTERPRET=1``),
otherwise the plain-PyTorch reference; :mod:`.reference` defines the semantics both follow exactly.
"""

from __future__ import annotations

from torch import Tensor

from .._interpreter_compat import use_triton
from .budget import default_budget, selection_indptr
from .reference import order_key, select_blocks_reference, select_middle, tolerated_slots
from .triton_kernel import select_blocks_triton


def select_blocks(
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
    """Keep each row's first ``bos``, last ``eos`` and top ``k = b_r - bos - eos`` middle blocks.

    ``score [nnz]`` (or ``[nnz, 1, 1]``) fp32/bf16/fp16, ``dense_indptr [R+1] int32``, ``dense_indices [nnz]
    int32``, ``sel_indptr [R+1] int32`` -> ``out [sel_indptr[-1]] int32``: each row's selected block ids in
    ascending position order; a row with ``b_r == n_r`` is copied whole. Requires ``b_r <= n_r`` and
    (``b_r == n_r`` or ``b_r >= bos + eos``).

    ``tolerate_ratio == 0``: exact top-k, ties to the lower position, NaN below everything.
    ``0 < tolerate_ratio < 1`` (``approxTopK``): the threshold search may stop early; still exactly ``k``
    middle blocks, and ``recall = |selected & true_topk| / k >= 1 - tolerate_ratio`` for any scores.
    Pass ``out`` and ``max_blocks_per_row`` (``>= max n_r``) to avoid every host sync (CUDA graphs).
    """
    if use_triton(score):
        return select_blocks_triton(
            score, dense_indptr, dense_indices, sel_indptr, bos, eos,
            tolerate_ratio=tolerate_ratio, out=out, max_blocks_per_row=max_blocks_per_row,
        )  # fmt: skip
    return select_blocks_reference(
        score, dense_indptr, dense_indices, sel_indptr, bos, eos,
        tolerate_ratio=tolerate_ratio, out=out, max_blocks_per_row=max_blocks_per_row,
    )  # fmt: skip


__all__ = [
    "default_budget",
    "order_key",
    "select_blocks",
    "select_blocks_reference",
    "select_blocks_triton",
    "select_middle",
    "selection_indptr",
    "tolerated_slots",
]
