"""What the split-KV sparse decode kernels (``sparse_decode`` for GQA, ``sparse_decode_mla``) share: the
split-count rule and, beside it, the in-kernel cut of a row into split chunks and loop steps
(:func:`split_token_range`, :func:`step_tokens`); the caller-owned split workspace; the launch arguments that
do not depend on the kernel's math (precision constexprs, fp8 scale pointers).

The kernels' math stays in their packages: their tiles differ. Both step through a row's selected tokens in
tiles of ``tile_tokens`` (a power of two >= 16), whatever the block size: a tile holds several whole blocks or
part of one, so a large block never makes a tile too big for registers and shared memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
import triton
import triton.language as tl

from .fp8 import Scale, is_fp8, scale_tensor

MIN_ITERS_PER_SPLIT = 2  # a split shorter than this costs more in launch/merge than it gains
MAX_SPLITS = 64
MIN_TILE_TOKENS = 16  # tl.dot's smallest N and K
PROGRAMS_PER_SM = 4  # GQA: enough resident programs per SM to keep HBM busy

_W = TypeVar("_W", bound="SplitWorkspace")


def next_pow2(x: int, at_least: int = 1) -> int:
    return max(at_least, 1 << max(0, x - 1).bit_length())


def check_tile_tokens(tile_tokens: int) -> int:
    """``tile_tokens`` if it is a power of two >= :data:`MIN_TILE_TOKENS`, else ``ValueError``."""
    if isinstance(tile_tokens, bool) or not isinstance(tile_tokens, int) or tile_tokens < MIN_TILE_TOKENS or (
        tile_tokens & (tile_tokens - 1)
    ):
        raise ValueError(f"tile_tokens must be a power of two >= {MIN_TILE_TOKENS}, got {tile_tokens!r}")
    return tile_tokens


def split_count(
    programs_per_split: int,
    max_blocks_per_row: int,
    block_size: int,
    tile_tokens: int,
    device: torch.device,
    programs_per_sm: int = PROGRAMS_PER_SM,
) -> int:
    """Splits per row: enough programs to fill the GPU (``programs_per_sm`` per SM; ``programs_per_split``
    programs per split index: rows, or rows x head blocks), but chunks of >= ``MIN_ITERS_PER_SPLIT`` loop steps
    of ``tile_tokens`` tokens. On a GPU with at least one program per SM without splitting, none: a split then
    only adds the merge's round trip through the workspace (H200, 256 rows of a 32k context, budget 2048, same
    tiles: 69.8 µs with 1 split, 73.1 with the 3 that filling 4 programs per SM gave, 76.4 with 6; a second
    sweep 71.1 / 74.2 / 78.1; results/gpu/2026-12-04-decode-step-bench.json and -fused-2warps.json).

    Depends on shapes and the device only, so a fixed ``max_blocks_per_row`` gives a fixed launch config.
    """
    if device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        if programs_per_split >= num_sms:
            return 1
        target = programs_per_sm * num_sms
    else:
        target = 8  # Triton interpreter: small, so that tests exercise the split + merge path
    want = triton.cdiv(target, max(programs_per_split, 1))
    cap = triton.cdiv(max_blocks_per_row * block_size, MIN_ITERS_PER_SPLIT * tile_tokens)
    return int(max(1, min(want, cap, MAX_SPLITS)))


@triton.jit
def split_token_range(num_blocks, last_len, split, num_splits, BS: tl.constexpr, BLOCK_N: tl.constexpr):
    """``[lo, hi)``: the tokens of a row's selection that split ``split`` of ``num_splits`` attends, as
    positions in the row's selected tokens (token ``t`` is token ``t % BS`` of the row's ``t // BS``-th block).

    Chunks are cut on whole loop steps of ``BLOCK_N`` tokens (whole blocks when a step holds several), so only
    the row's final step is ragged; the row's last block holds ``last_len`` (1..BS) tokens, so the chunk that
    ends there ends ``BS - last_len`` tokens early. Every step ``range(lo, hi, BLOCK_N)`` starts on a valid token
    (its online-softmax max is finite). Trailing splits of a short row get ``lo == hi`` (nothing to do).
    """
    STEP_BLOCKS: tl.constexpr = (BLOCK_N + BS - 1) // BS  # whole blocks a step is cut at (1 if BS >= BLOCK_N)
    per_split = tl.cdiv(tl.cdiv(num_blocks, num_splits), STEP_BLOCKS) * STEP_BLOCKS
    lo = tl.minimum(split * per_split, num_blocks)
    hi = tl.minimum(lo + per_split, num_blocks)
    hi_tok = tl.where(hi == num_blocks, hi * BS - BS + last_len, hi * BS)
    return lo * BS, tl.maximum(hi_tok, lo * BS)


@triton.jit
def step_tokens(step, hi, BS: tl.constexpr, BLOCK_N: tl.constexpr):
    """The ``BLOCK_N`` tokens of the loop step starting at token ``step`` of a row's selection (a step of
    :func:`split_token_range`'s ``range(lo, hi, BLOCK_N)``): per lane, the row-local block, the token's offset
    in that block and whether it is before ``hi``. ``step`` is a multiple of ``BS`` when a step holds whole
    blocks, of ``BLOCK_N`` when it is part of one, so block and offset split into a per-lane constant and a
    scalar of the step."""
    lanes = tl.arange(0, BLOCK_N)
    blk = step // BS + lanes // BS  # [BLOCK_N]
    tok_in_blk = step % BS + lanes % BS  # [BLOCK_N]
    return blk, tok_in_blk, blk * BS + tok_in_blk < hi


def max_row_blocks(indptr: torch.Tensor) -> int:
    """The longest row of a CSR selection (reads ``indptr``: a host sync, not CUDA-graph capturable)."""
    return int((indptr[1:] - indptr[:-1]).max().item())


@dataclass
class SplitWorkspace:
    """Caller-owned scratch of a split-KV launch (FlashInfer's rule: workspaces belong to the caller, so the
    decode path allocates nothing and CUDA graphs see fixed addresses).

    ``mid_o [max_rows, max_splits, heads, width] fp32`` and ``mid_lse [max_rows, max_splits, heads] fp32`` hold
    each split's partial result; ``counter [max_rows * counters_per_row] int32`` counts the finished splits of
    a (virtual) row and is 0 between launches (the merging program re-arms it).
    """

    mid_o: torch.Tensor
    mid_lse: torch.Tensor
    counter: torch.Tensor

    #: names of ``mid_o``'s dims in error messages
    DIMS: ClassVar[str] = "(rows, splits, heads, width)"

    @classmethod
    def _new(
        cls: type[_W],
        max_rows: int,
        max_splits: int,
        heads: int,
        width: int,
        device: torch.device | str,
        counters_per_row: int,
    ) -> _W:
        rows, splits = max(1, max_rows), max(1, max_splits)
        return cls(
            mid_o=torch.empty(rows, splits, heads, width, dtype=torch.float32, device=device),
            mid_lse=torch.empty(rows, splits, heads, dtype=torch.float32, device=device),
            counter=torch.zeros(rows * counters_per_row, dtype=torch.int32, device=device),
        )

    def fits(self, rows: int, splits: int, heads: int, width: int) -> bool:
        r, s, h, d = self.mid_o.shape
        return rows <= r and splits <= s and heads == h and width == d

    def require(self, rows: int, splits: int, heads: int, width: int) -> None:
        """Raise ``ValueError`` unless :meth:`fits`."""
        if not self.fits(rows, splits, heads, width):
            raise ValueError(
                f"workspace of {tuple(self.mid_o.shape)} {self.DIMS} is too small for {(rows, splits, heads, width)}"
            )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.mid_o, self.mid_lse, self.counter))


def precision_meta(q_dtype: torch.dtype, exact: bool) -> dict[str, object]:
    """The kernels' precision constexprs: ``ieee`` dots for fp32 ``q``; else tf32 scores and, with ``exact``,
    fp32 softmax weights through ``p @ v`` (tf32x3)."""
    fp32 = q_dtype == torch.float32
    return dict(
        DOT_PRECISION="ieee" if fp32 else "tf32",
        PV_PRECISION="ieee" if fp32 else "tf32x3",
        P_FP32=bool(exact) or fp32,
    )


def log2_scale(sm_scale: float) -> float:
    """The softmax scale the kernels multiply scores by (they exponentiate with ``exp2``)."""
    return sm_scale * math.log2(math.e)


def fp8_scale_args(
    kv_dtype: torch.dtype,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    dummy: torch.Tensor,
    what: str,
) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """``(KV_FP8, k_scale pointer, v_scale pointer)`` of a launch: for fp8 ``kv_dtype`` the two ``[1]`` fp32
    tensors (required; ``what`` names the cache in the error), else ``dummy`` twice (never read)."""
    kv_fp8 = is_fp8(kv_dtype)
    if not kv_fp8:
        return False, dummy, dummy
    if k_scale is None or v_scale is None:
        raise ValueError(
            f"{what} need k_scale and v_scale ([1] fp32 tensors; fp8.scale_tensor(None) for 1.0)"
        )
    return True, k_scale, v_scale


def device_scales(
    kv_dtype: torch.dtype, k_scale: Scale, v_scale: Scale, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The public entry points' scales as ``[1]`` fp32 device tensors for an fp8 cache; ``(None, None)`` else."""
    if is_fp8(kv_dtype):
        return scale_tensor(k_scale, device), scale_tensor(v_scale, device)
    return None, None
