"""The budget rule (design §5) and the selection CSR offsets, vectorised and free of host syncs."""

from __future__ import annotations

import torch
from torch import Tensor


def default_budget(n_blocks: Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> Tensor:
    """``budget(n) = min(n, max(topk_val + bos + eos, floor(n * topk_ratio)))`` per row.

    ``n_blocks [R]`` integer (any device) -> ``[R] int32`` on the same device. ``floor(n * topk_ratio)`` is
    taken on the fp64 product, like Python's ``math.floor(n * topk_ratio)``. A budget below ``n`` is always
    ``>= bos + eos``, as :func:`select_blocks` requires.
    """
    if topk_val < 0 or topk_ratio < 0.0 or bos < 0 or eos < 0:
        raise ValueError(
            f"need topk_val, topk_ratio, bos, eos >= 0; got {topk_val}, {topk_ratio}, {bos}, {eos}"
        )
    n = n_blocks.to(torch.int64)  # [R]
    by_ratio = torch.floor(n.to(torch.float64) * float(topk_ratio)).to(torch.int64)  # [R]
    budget = torch.minimum(n, torch.clamp(by_ratio, min=topk_val + bos + eos))
    return budget.to(torch.int32)


def selection_indptr(budget: Tensor) -> Tensor:
    """``budget [R]`` -> ``[R+1] int32`` exclusive cumsum (``sel_indptr``), same device, no host sync."""
    indptr = torch.zeros(budget.numel() + 1, dtype=torch.int32, device=budget.device)
    torch.cumsum(budget.reshape(-1), dim=0, dtype=torch.int32, out=indptr[1:])
    return indptr
