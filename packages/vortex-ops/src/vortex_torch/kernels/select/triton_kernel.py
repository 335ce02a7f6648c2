"""Triton block selection (``topK`` / ``approxTopK``): one program per row, bitwise threshold search.

It computes exactly what :mod:`.reference` defines (same keys, same search, same stopping rule, so the same
output). Per row (program):

1. load the row's middle scores ``[bos, n - eos)`` and map them to int32 order keys (``_order_key``);
2. binary-search the threshold bin bit by bit, MSB first: one count pass ``#{key >= mid}`` per bit, at most
   32 of them (16 for bf16, 19 for fp16 scores), stopping early as in the reference. (A search deciding four
   bits per pass, 16 thresholds counted at once, gave the same output but was 2.2x slower on the H200:
   29.8 vs 13.8 us for 256 rows of 2048 blocks, 17.7 vs 10.5 us for 8 rows;
   ``results/gpu/2026-12-05-decode-step-bench.json``, select_only rows; removed). ``bits_per_pass=2`` (an
   exact ``topK`` whose row is in registers; not the default until timed) decides two bits per count pass with
   ONE reduction: the three counts ``#{key >= m}`` at the pass's thresholds are packed into one integer per
   key (10-bit fields in int32 for a tile of at most 512 keys, 21-bit fields in int64 above) and summed once,
   so the search makes half the CTA-wide reductions of the bitwise one at ~3x its (register-only) compares.
   It ends where two bitwise passes would have (:func:`_threshold_pairs`); an exact selection does not
   depend on where the search stops, so the output is the same;
3. stable compaction in position order: every position that is head/tail, above the bin, or one of the first
   ``owed`` bin elements, is written at ``out_start + exclusive_cumsum(selected)``.

The reference works on unsigned keys ``u = key + 2**31``; here the signed int32 ``key`` is kept, which has
the same order (flipping the top bit is an order isomorphism between unsigned and signed). Setting bit ``j``
of ``u`` is XOR-ing bit ``j`` of ``key`` (for ``j == 31`` it clears the sign bit), so ``mid = lo ^ (1 << j)``
never overflows. The bin ``[lo, hi)`` of the reference is kept as ``[lo, top]`` with ``top = hi - 1`` so
that ``hi = 2**32`` needs no 33rd bit.

Tiling: when the longest row fits one power-of-two tile (``<= MAX_SINGLE_TILE``), the keys stay in
registers for all count passes (``SINGLE_TILE``). ``BLOCK_N`` is sized by the longest row a launch may see (the
decode path fixes it from the context length, for CUDA graphs), so each row is searched in the smallest of three
register tiles that holds it: ``SMALL_TILE`` (512) blocks, ``BLOCK_N / 2``, or ``BLOCK_N``; a count pass then
costs what the row's length needs, not what the longest context would (a 2k-token row at block 16 is 128 keys,
searched in a 512-wide tile rather than the 4096-wide one of a 40k-token context). When the longest row does
not fit one tile, ``BLOCK_N`` is the loop tile: rows up to it are still searched in registers, and only longer
ones loop over ``BLOCK_N`` tiles in each pass (the re-reads hit L2), carrying running counts through the
compaction.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._interpreter_compat import require_launchable
from .._sync import dependent_launch_prologue, pdl_launch_options

MAX_SINGLE_TILE = 8192  # 128k context at block 16: a whole row's keys in registers
LOOP_TILE = 4096  # tile of the looped path for longer rows
_MIN_TILE = 16
# fp32 mantissa bits that a widened score of this dtype always has at 0 (23 - its own mantissa bits)
LOW_BIT = {torch.float32: 0, torch.float16: 13, torch.bfloat16: 16}

_I32_MIN: tl.constexpr = tl.constexpr(-2147483648)
_I32_MAX: tl.constexpr = tl.constexpr(2147483647)
#: a row of at most this many blocks is searched in a register tile of its own size, not the launch's
#: BLOCK_N (sized by the longest row the batch may have): the count passes' work follows the row's length
SMALL_TILE: tl.constexpr = tl.constexpr(512)


@triton.jit
def _order_key(x):
    """``x [BLOCK_N] fp32 -> [BLOCK_N] int32`` order-preserving key (see ``reference.order_key``).

    Integer ops on the raw bits only, so a flush-to-zero float path can never merge denormals.
    """
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(bits == _I32_MIN, 0, bits)  # -0.0 -> +0.0: equal floats get equal keys
    key = tl.where(bits < 0, bits ^ _I32_MAX, bits)  # negative: larger magnitude -> smaller key
    is_nan = (bits & _I32_MAX) > 0x7F800000
    return tl.where(is_nan, _I32_MIN, key)  # NaN below -inf


@triton.jit
def _tile_keys(score_ptr, indices_ptr, row_start, pos, mid_lo, mid_hi, GATHER: tl.constexpr):
    """Keys of one tile: ``pos [BLOCK_N]`` positions in the row -> ``(keys [BLOCK_N] int32, in_mid [BLOCK_N])``.

    Positions outside the middle ``[mid_lo, mid_hi)`` get ``INT32_MIN``, which no count pass counts
    (every ``mid`` tested is ``> INT32_MIN``); they are excluded from the bin through ``in_mid``.
    ``GATHER``: the scores are a per-block field read at the row's block ids (``score[indices[pos]]``), not
    a ragged array aligned with them. Loads go through L2 (``.cg``): in a fused indexer other programs wrote
    the scores just before.
    """
    in_mid = (pos >= mid_lo) & (pos < mid_hi)
    if GATHER:
        at = tl.load(indices_ptr + row_start + pos, mask=in_mid, other=0).to(tl.int64)
    else:
        at = row_start + pos
    x = tl.load(score_ptr + at, mask=in_mid, other=0.0, cache_modifier=".cg").to(tl.float32)
    return tl.where(in_mid, _order_key(x), _I32_MIN), in_mid


@triton.jit
def _count_ge_tiled(score_ptr, indices_ptr, row_start, n, mid_lo, mid_hi, mid, BLOCK_N: tl.constexpr,
                    GATHER: tl.constexpr):  # fmt: skip
    """``#{middle keys >= mid}`` of a row longer than one tile, re-reading its scores tile by tile."""
    cnt = tl.zeros([], dtype=tl.int32)
    start = tl.zeros([], dtype=tl.int32)
    while start < n:  # not `for range(0, n, ...)`: the interpreter cannot index with a loaded scalar
        keys, _ = _tile_keys(score_ptr, indices_ptr, row_start, start + tl.arange(0, BLOCK_N), mid_lo, mid_hi,
                             GATHER)  # fmt: skip
        cnt += tl.sum((keys >= mid).to(tl.int32), axis=0)
        start += BLOCK_N
    return cnt


@triton.jit
def _compact_tile(
    keys, in_mid, pos, n, lo, top, owed, bin_before, out_before,
    dense_indices_ptr, row_start, out_ptr, out_start, budget,
):  # fmt: skip
    """Write one tile's selected block ids; returns the updated running ``(bin_before, out_before)``.

    ``keys/in_mid/pos [BLOCK_N]``. ``bin_before``/``out_before``: bin elements / selected positions of the
    row's earlier tiles, so bin ranks and output slots continue across tiles in position order.
    """
    in_bin = in_mid & (keys >= lo) & (keys <= top)
    bin_rank = bin_before + tl.cumsum(in_bin.to(tl.int32), axis=0)  # inclusive rank among bin elements
    take = (keys > top) | (in_bin & (bin_rank <= owed))
    # head/tail (and the whole row when copying, where in_mid is all false) are always kept
    sel = (pos < n) & (~in_mid | take)
    sel_i = sel.to(tl.int32)
    slot = out_before + tl.cumsum(sel_i, axis=0) - sel_i  # exclusive: stable, ascending position
    ids = tl.load(dense_indices_ptr + row_start + pos, mask=sel, other=0)
    # `slot < budget` only matters for a budget that breaks the contract: never write into another row
    tl.store(out_ptr + out_start + slot, ids, mask=sel & (slot < budget))
    return bin_before + tl.sum(in_bin.to(tl.int32), axis=0), out_before + tl.sum(sel_i, axis=0)


@triton.jit
def select_row(
    score_ptr,  # [nnz] fp32/bf16/fp16 aligned with dense_indices, or (GATHER) a per-block field [num_blocks]
    dense_indices_ptr,  # [nnz] int32
    out_ptr,  # [S] int32
    row_start,  # this row's first dense entry
    n,  # this row's block count
    out_start,  # this row's first selection slot
    budget,  # this row's budget b (<= n; b == n copies the row)
    bos,
    eos,
    tol_bits,  # fp64 bit pattern of tolerate_ratio as int64 (read only when APPROX)
    APPROX: tl.constexpr,
    LOW_BIT: tl.constexpr,  # key bits below it are fixed by the score dtype (bf16: 16, fp16: 13, fp32: 0)
    SINGLE_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GATHER: tl.constexpr,
    PAIRS: tl.constexpr = False,  # exact search only (never with APPROX): two bits per count pass
):
    """Select one row's blocks (the whole algorithm of the module docstring) into ``out[out_start:+budget]``.

    A device function, so that a fused indexer's last scoring program can select its row in the same launch
    (``vortex_torch.flow.compiler``) and :func:`select_blocks_triton` can run it one program per row.
    """
    copy_all = budget >= n
    k = tl.where(copy_all, 0, budget - bos - eos)  # middle slots to fill
    mid_lo = bos
    mid_hi = tl.where(copy_all, bos, n - eos)  # copying: empty middle, everything is "head/tail"
    if APPROX:
        # fp64 like the reference's Python float product; the bits travel as int64 because the
        # interpreter would narrow a float argument to fp32
        tol = tol_bits.to(tl.int64).to(tl.float64, bitcast=True)
        tol_k = (tol * k.to(tl.float64)).to(tl.int32)  # floor: the product is >= 0
    else:
        tol_k = 0

    # keys in registers, in the smallest tier that holds the row (the work follows n); with the looped tiling
    # only a row longer than one loop tile re-reads its scores in every count pass
    if n <= min(SMALL_TILE, BLOCK_N):
        _select_in_registers(score_ptr, dense_indices_ptr, out_ptr, row_start, n, out_start, budget, k, tol_k,
                             mid_lo, mid_hi, LOW_BIT, min(SMALL_TILE, BLOCK_N), GATHER, PAIRS)  # fmt: skip
    elif n <= BLOCK_N // 2:
        _select_in_registers(score_ptr, dense_indices_ptr, out_ptr, row_start, n, out_start, budget, k, tol_k,
                             mid_lo, mid_hi, LOW_BIT, BLOCK_N // 2, GATHER, PAIRS)  # fmt: skip
    elif n <= BLOCK_N:  # every row, with SINGLE_TILE (the launch's tile holds the longest)
        _select_in_registers(score_ptr, dense_indices_ptr, out_ptr, row_start, n, out_start, budget, k, tol_k,
                             mid_lo, mid_hi, LOW_BIT, BLOCK_N, GATHER, PAIRS)  # fmt: skip
    elif not SINGLE_TILE:  # (a constexpr: SINGLE_TILE kernels are compiled without the looped path)
        lo, top, c = _threshold(score_ptr, dense_indices_ptr, row_start, n, mid_lo, mid_hi, k, tol_k, LOW_BIT,
                                False, BLOCK_N, GATHER)  # fmt: skip
        # -- stable compaction in position order, tile by tile
        offs = tl.arange(0, BLOCK_N)
        bin_before = tl.zeros([], dtype=tl.int32)
        out_before = tl.zeros([], dtype=tl.int32)
        start = tl.zeros([], dtype=tl.int32)
        while start < n:
            pos = start + offs
            keys_t, in_mid_t = _tile_keys(score_ptr, dense_indices_ptr, row_start, pos, mid_lo, mid_hi, GATHER)
            bin_before, out_before = _compact_tile(
                keys_t, in_mid_t, pos, n, lo, top, k - c, bin_before, out_before,
                dense_indices_ptr, row_start, out_ptr, out_start, budget,
            )  # fmt: skip
            start += BLOCK_N


@triton.jit
def _select_in_registers(
    score_ptr, dense_indices_ptr, out_ptr, row_start, n, out_start, budget, k, tol_k, mid_lo, mid_hi,
    LOW_BIT: tl.constexpr, TILE: tl.constexpr, GATHER: tl.constexpr, PAIRS: tl.constexpr,
):  # fmt: skip
    """A row of ``n <= TILE`` blocks: its keys loaded once into a ``TILE``-wide register tile, the threshold
    search over them, then the compaction."""
    offs = tl.arange(0, TILE)
    keys, in_mid = _tile_keys(score_ptr, dense_indices_ptr, row_start, offs, mid_lo, mid_hi, GATHER)
    lo, top, c = _threshold(keys, dense_indices_ptr, row_start, n, mid_lo, mid_hi, k, tol_k, LOW_BIT, True, TILE,
                            GATHER, PAIRS)  # fmt: skip
    _compact_tile(
        keys, in_mid, offs, n, lo, top, k - c, tl.zeros([], dtype=tl.int32), tl.zeros([], dtype=tl.int32),
        dense_indices_ptr, row_start, out_ptr, out_start, budget,
    )  # fmt: skip


@triton.jit
def _count_ge_3(keys, m1, m2, m3, BLOCK_N: tl.constexpr):
    """``(#{keys >= m1}, #{keys >= m2}, #{keys >= m3})`` of ``keys [BLOCK_N]`` with one reduction: each key's
    three 0/1 counts packed into one integer's fields (10 bits each in int32 while ``BLOCK_N <= 512``: a
    count is at most 512 < 2**10; 21 bits each in int64 above), summed once, unpacked."""
    if BLOCK_N <= 512:
        packed = (keys >= m1).to(tl.int32) + ((keys >= m2).to(tl.int32) << 10) + ((keys >= m3).to(tl.int32) << 20)
        s = tl.sum(packed, axis=0)
        return s & 1023, (s >> 10) & 1023, s >> 20
    else:
        packed64 = (
            (keys >= m1).to(tl.int64) + ((keys >= m2).to(tl.int64) << 21) + ((keys >= m3).to(tl.int64) << 42)
        )
        s64 = tl.sum(packed64, axis=0)
        return (s64 & 0x1FFFFF).to(tl.int32), ((s64 >> 21) & 0x1FFFFF).to(tl.int32), (s64 >> 42).to(tl.int32)


@triton.jit
def _threshold_pairs(keys, k, lo, top, c, n_ge, bit, LOW_BIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Exact search only: the bitwise search's state ``(lo, top, c, n_ge, bit)`` advanced two bits per count
    pass while two bits are left above ``LOW_BIT``, to exactly where two bitwise passes take it: with the bin's
    bits ``bit`` and ``bit - 1`` still 0 in the unsigned key, its thresholds ``m1 < m2 < m3`` set ``01``,
    ``10``, ``11`` there; the bitwise search first halves at ``m2``, then at ``m3`` (upper half) or ``m1``.
    The ``n_ge == k`` stop is only checked every second bit: passes past it leave an exact selection as it is
    (module docstring, 2.)."""
    one = tl.full([], 1, tl.int32)
    while (bit - 1 >= LOW_BIT) & (n_ge != k):
        m2 = lo ^ (one << bit)
        m1 = lo ^ (one << (bit - 1))
        m3 = m2 ^ (one << (bit - 1))
        cnt1, cnt2, cnt3 = _count_ge_3(keys, m1, m2, m3, BLOCK_N)
        up1, up2, up3 = cnt1 >= k, cnt2 >= k, cnt3 >= k  # up3 implies up2 implies up1
        top = tl.where(up3, top, tl.where(up2, m3 - 1, tl.where(up1, m2 - 1, m1 - 1)))
        c = tl.where(up3, c, tl.where(up2, cnt3, tl.where(up1, cnt2, cnt1)))
        lo = tl.where(up3, m3, tl.where(up2, m2, tl.where(up1, m1, lo)))
        n_ge = tl.where(up3, cnt3, tl.where(up2, cnt2, tl.where(up1, cnt1, n_ge)))
        bit -= 2
    return lo, top, c, n_ge, bit


@triton.jit
def _threshold(
    keys_or_scores, dense_indices_ptr, row_start, n, mid_lo, mid_hi, k, tol_k,
    LOW_BIT: tl.constexpr, IN_REGISTERS: tl.constexpr, BLOCK_N: tl.constexpr, GATHER: tl.constexpr,
    PAIRS: tl.constexpr = False,
):  # fmt: skip
    """The threshold search (module docstring, 2.) -> ``(lo, top, c)``: the bin ``[lo, top]`` holds the k-th
    largest middle key and ``c = #{key > top}``. ``keys_or_scores``: the row's keys ``[BLOCK_N]`` when
    ``IN_REGISTERS``, else the score pointer, re-read tile by tile in every count pass. ``PAIRS`` (exact
    search, keys in registers): two bits per count pass (:func:`_threshold_pairs`), the last odd bit bitwise."""
    lo = tl.full([], _I32_MIN, tl.int32)
    top = tl.full([], _I32_MAX, tl.int32)
    c = tl.zeros([], dtype=tl.int32)
    n_ge = tl.maximum(mid_hi - mid_lo, 0)  # n_ge = #{key >= lo}
    bit = tl.full([], 31, tl.int32)
    one = tl.full([], 1, tl.int32)
    if PAIRS:
        lo, top, c, n_ge, bit = _threshold_pairs(keys_or_scores, k, lo, top, c, n_ge, bit, LOW_BIT, BLOCK_N)
    # Once bits 31..LOW_BIT are decided the bin holds a single score value (a bf16/fp16 score widened to
    # fp32 has its low mantissa bits all 0, so its key's low bits are all 0 or all 1 by sign): the
    # remaining passes of the reference change neither c nor n_ge, and skipping them keeps its output.
    while (bit >= LOW_BIT) & (k - c > tol_k) & (n_ge != k):
        mid = lo ^ (one << bit)  # set bit `bit` of the unsigned key (bit 31: clear the sign bit)
        if IN_REGISTERS:
            cnt = tl.sum((keys_or_scores >= mid).to(tl.int32), axis=0)
        else:
            cnt = _count_ge_tiled(keys_or_scores, dense_indices_ptr, row_start, n, mid_lo, mid_hi, mid, BLOCK_N,
                                  GATHER)  # fmt: skip
        upper = cnt >= k  # the k-th largest is in the upper half
        top = tl.where(upper, top, mid - 1)  # mid > INT32_MIN, no overflow
        c = tl.where(upper, c, cnt)
        lo = tl.where(upper, mid, lo)
        n_ge = tl.where(upper, cnt, n_ge)
        bit -= 1
    return lo, top, c


@triton.jit
def _select_blocks_kernel(
    score_ptr,  # [nnz] fp32/bf16/fp16 (or GATHER: [num_blocks])
    dense_indptr_ptr,  # [R+1] int32
    dense_indices_ptr,  # [nnz] int32
    sel_indptr_ptr,  # [R+1] int32
    out_ptr,  # [S] int32
    bos,
    eos,
    tol_bits: tl.int64,  # fp64 bit pattern of tolerate_ratio (read only when APPROX)
    APPROX: tl.constexpr,
    LOW_BIT: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GATHER: tl.constexpr,
    PAIRS: tl.constexpr,  # two bits per count pass (exact search only)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (wait for the previous kernel)
):
    dependent_launch_prologue(PDL)
    row = tl.program_id(0)
    row_start = tl.load(dense_indptr_ptr + row)
    out_start = tl.load(sel_indptr_ptr + row)
    select_row(
        score_ptr, dense_indices_ptr, out_ptr, row_start, tl.load(dense_indptr_ptr + row + 1) - row_start,
        out_start, tl.load(sel_indptr_ptr + row + 1) - out_start, bos, eos, tol_bits,
        APPROX, LOW_BIT, SINGLE_TILE, BLOCK_N, GATHER, PAIRS,
    )  # fmt: skip


def _num_warps(block_n: int) -> int:
    """Warps per row program: ~16 keys per thread for the big tiles (2048 -> 4, 8192 -> 16)."""
    return max(1, min(16, block_n // 512))


def select_tiling(max_blocks_per_row: int, num_warps: int | None = None) -> tuple[int, bool]:
    """``(BLOCK_N, SINGLE_TILE)`` for rows of at most ``max_blocks_per_row`` blocks.

    A row that fits one power-of-two tile of at most ``MAX_SINGLE_TILE`` keys (and, when the caller fixes
    ``num_warps``, at most 64 keys per thread, so the keys stay in registers) keeps them in registers for every
    count pass; a longer row loops over tiles of ``LOOP_TILE`` (capped the same way).
    """
    cap = MAX_SINGLE_TILE if num_warps is None else min(MAX_SINGLE_TILE, 64 * 32 * num_warps)
    tile = max(_MIN_TILE, triton.next_power_of_2(max(1, max_blocks_per_row)))
    if tile <= cap:
        return tile, True
    return min(LOOP_TILE, cap), False


def tolerance_bits(tolerate_ratio: float) -> tuple[bool, int]:
    """``(APPROX, tol_bits)``: whether the approximate stop can fire, and ``tolerate_ratio``'s fp64 bits."""
    if not 0.0 <= tolerate_ratio < 1.0:
        raise ValueError(f"tolerate_ratio must be in [0, 1), got {tolerate_ratio}")
    # tolerate_ratio < 2**-31 gives tol_k = floor(ratio * k) = 0 for every int32 k: exactly the exact search
    approx = tolerate_ratio >= 2.0**-31
    return approx, (struct.unpack("<q", struct.pack("<d", float(tolerate_ratio)))[0] if approx else 0)


def select_blocks_triton(
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
    tile_size: int | None = None,
    gather: bool = False,
    num_warps: int | None = None,
    bits_per_pass: int = 1,
    enable_pdl: bool = False,
) -> Tensor:
    """Select each row's blocks (see :mod:`.reference` for the exact semantics and the approx guarantee).

    ``score [nnz]`` or ``[nnz, 1, 1]`` fp32/bf16/fp16, ``dense_indptr [R+1] int32``, ``dense_indices [nnz]
    int32``, ``sel_indptr [R+1] int32`` -> ``out [sel_indptr[-1]] int32``, each row's block ids in ascending
    position order. All on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``). ``gather=True``: ``score
    [num_blocks]`` is a per-block field, the score of dense entry ``i`` is ``score[dense_indices[i]]``.

    ``max_blocks_per_row`` (``>= max n_r``) picks the tile without reading ``dense_indptr`` on the host; with
    it and ``out`` given the call never syncs and can be captured in a CUDA graph. ``tile_size`` (a power of
    two) forces the looped multi-tile path, for tests. ``0 <= tolerate_ratio < 1``; 0 is exact ``topK``.
    ``num_warps`` per row program: default ~16 keys per thread. ``bits_per_pass``: 1 (bit by bit, the
    default) or 2 (two bits per count pass for an exact ``topK`` of a row in registers; the same output, not yet
    timed on a GPU; ``approxTopK`` and rows longer than one register tile search bit by bit either way).
    ``enable_pdl``: launch with Hopper programmatic dependent launch (sm_90+ only; an error elsewhere).
    """
    require_launchable(_select_blocks_kernel, score, "select_blocks_triton", "select_blocks_reference")
    approx, tol_bits = tolerance_bits(tolerate_ratio)
    if bits_per_pass not in (1, 2):
        raise ValueError(f"bits_per_pass must be 1 or 2, got {bits_per_pass!r}")
    if bos < 0 or eos < 0:
        raise ValueError(f"bos={bos} and eos={eos} must be >= 0")
    if score.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"score must be fp32/bf16/fp16, got {score.dtype}")
    for name, t in (
        ("dense_indptr", dense_indptr),
        ("dense_indices", dense_indices),
        ("sel_indptr", sel_indptr),
    ):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int32 tensor, got {t.dtype} {tuple(t.shape)}")
    flat = score.reshape(-1)
    if not gather and flat.numel() != dense_indices.numel():
        raise ValueError(f"score has {flat.numel()} entries, dense_indices {dense_indices.numel()}")
    flat = flat.contiguous()
    n_rows = dense_indptr.numel() - 1
    if sel_indptr.numel() != n_rows + 1:
        raise ValueError("dense_indptr and sel_indptr must both be [R+1]")
    if out is None:
        out = torch.empty(int(sel_indptr[-1]), dtype=torch.int32, device=score.device)  # host sync
    elif out.dtype != torch.int32 or not out.is_contiguous():
        raise TypeError("out must be a contiguous int32 tensor")
    if n_rows == 0:
        return out
    if max_blocks_per_row is None:
        max_blocks_per_row = int((dense_indptr[1:] - dense_indptr[:-1]).max())  # host sync
    if tile_size is not None:
        if tile_size & (tile_size - 1):
            raise ValueError(f"tile_size must be a power of two, got {tile_size}")
        block_n, single = tile_size, tile_size >= max_blocks_per_row
    else:
        block_n, single = select_tiling(max_blocks_per_row)
    _select_blocks_kernel[(n_rows,)](
        flat, dense_indptr, dense_indices, sel_indptr, out, bos, eos, tol_bits,
        APPROX=approx, LOW_BIT=LOW_BIT[score.dtype], SINGLE_TILE=single, BLOCK_N=block_n, GATHER=gather,
        PAIRS=bits_per_pass == 2 and not approx, PDL=enable_pdl, num_warps=num_warps or _num_warps(block_n),
        **pdl_launch_options(enable_pdl, score.device, "select_blocks_triton"),
    )  # fmt: skip
    return out
