"""Input checks shared by the sparse decode references and kernels (``sparse_decode`` for GQA,
``sparse_decode_mla``): metadata only, so they never read device memory and never synchronise."""

from __future__ import annotations

import torch

QUERY_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_query_dtype(q: torch.Tensor) -> None:
    if q.dtype not in QUERY_DTYPES:
        raise ValueError(f"q must be bf16, fp16 or fp32, got {q.dtype}")


def check_selection(
    indptr: torch.Tensor, indices: torch.Tensor, last_block_len: torch.Tensor, num_rows: int
) -> None:
    """The CSR block selection of ``num_rows`` rows: ``indptr [R + 1]``, ``indices [nnz]``, ``last_block_len [R]``,
    all int32 (or int64)."""
    if indptr.dim() != 1 or indptr.shape[0] != num_rows + 1:
        raise ValueError(f"indptr must be [R + 1] = [{num_rows + 1}], got {tuple(indptr.shape)}")
    if last_block_len.dim() != 1 or last_block_len.shape[0] != num_rows:
        raise ValueError(f"last_block_len must be [R] = [{num_rows}], got {tuple(last_block_len.shape)}")
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D [nnz], got {tuple(indices.shape)}")
    for name, t in (("indptr", indptr), ("indices", indices), ("last_block_len", last_block_len)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 (or int64), got {t.dtype}")


def check_out(out: torch.Tensor | None, shape: tuple[int, ...], q: torch.Tensor) -> None:
    """A caller's output buffer: ``shape`` in ``q``'s dtype, on ``q``'s device (or None)."""
    if out is not None and (tuple(out.shape) != shape or out.dtype != q.dtype or out.device != q.device):
        raise ValueError(
            f"out must be {shape} {q.dtype} on {q.device}, got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
