"""Block selection (``topK`` / ``approxTopK``) and the budget rule.

The plain-PyTorch reference is checked against an independent sort-based top-k; the Triton kernel must equal the
reference bit for bit, in exact and approximate mode, on ragged batches with edge rows.

Batches are built on the host (seeded CPU generators, so both devices see the same numbers) and moved to
``DEVICE``: CUDA when present (the compiled kernel), else the CPU, where the repository's conftest has switched
Triton's interpreter on. CPU tensors on a CUDA machine would reach the compiled kernel without the interpreter
and raise ``TritonUnavailableError``.
"""

from __future__ import annotations

import itertools
import math
import random
import struct

import pytest
import torch
from torch import Tensor

from vortex_torch.kernels.select import (
    default_budget,
    order_key,
    select_blocks,
    select_blocks_reference,
    select_blocks_triton,
    select_middle,
    selection_indptr,
    tolerated_slots,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# -- batch builders ---------------------------------------------------------------------------------------


def _scores(kind: str, n: int, gen: torch.Generator) -> Tensor:
    """``[n] fp32`` scores of one flavour: randn, heavy ties, special values, or near-equal floats."""
    if kind == "randn":
        return torch.randn(n, generator=gen)
    if kind == "ties":
        return torch.randint(0, 4, (n,), generator=gen).float()
    if kind == "special":
        pool = torch.tensor(
            [-math.inf, -1e30, math.nan, -math.nan, math.inf, -0.0, 0.0, 1e-45, -1e-45, 1.0, -1.0, 3.0]
        )
        return pool[torch.randint(0, pool.numel(), (n,), generator=gen)]
    if kind == "near_equal":  # all within a few ulps of 1.0: only the last mantissa bits differ
        ulps = torch.randint(0, 6, (n,), generator=gen, dtype=torch.int32)
        return (torch.ones(n).view(torch.int32) + ulps).view(torch.float32)
    raise ValueError(kind)


def _indptr(lengths: list[int]) -> Tensor:
    """``[R] -> [R+1] int32`` exclusive cumsum, on the host."""
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def _budget(n: int, bos: int, eos: int, rng: random.Random) -> int:
    """A valid budget for a row of ``n`` blocks: whole row, k = 0, k = max, or random."""
    if n <= bos + eos:
        return n
    return rng.choice([n, bos + eos, n - 1, rng.randint(bos + eos, n - 1)])


CSR = tuple[Tensor, Tensor, Tensor]  # dense_indptr [R+1], dense_indices [nnz], sel_indptr [R+1]


def _batch(lengths: list[int], kind: str, bos: int, eos: int, seed: int) -> tuple[Tensor, CSR]:
    """``(score [nnz] fp32, (dense_indptr, dense_indices, sel_indptr))`` of a ragged batch with valid
    random budgets and unique, shuffled block ids (a selected id names its position unambiguously)."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    dense_indptr = _indptr(lengths)
    nnz = int(dense_indptr[-1])
    dense_indices = (torch.randperm(nnz, generator=gen) + 7).to(torch.int32)
    score = torch.cat([_scores(kind, n, gen) for n in lengths]) if nnz else torch.empty(0)
    budget = torch.tensor([_budget(n, bos, eos, rng) for n in lengths], dtype=torch.int32)
    csr = (dense_indptr.to(DEVICE), dense_indices.to(DEVICE), selection_indptr(budget).to(DEVICE))
    return score.to(DEVICE), csr


# ragged lengths covering: empty row, n < bos+eos, n == bos+eos, n just above, mid-size rows
EDGE_LENGTHS = [0, 1, 2, 3, 4, 5, 9, 17, 40, 1, 70, 23]


def _brute_force(
    score: Tensor, dense_indptr: Tensor, dense_indices: Tensor, sel_indptr: Tensor, bos: int, eos: int
) -> Tensor:
    """Independent exact top-k: Python sort by (is NaN, -score, position) on the middle of each row."""
    vals = score.float().reshape(-1).tolist()

    def rank(i: int) -> tuple[bool, float, int]:  # sort key of flat index i: NaN last, then high score first
        nan = math.isnan(vals[i])
        return (nan, 0.0 if nan else -vals[i], i)

    ids = dense_indices.tolist()
    d, s = dense_indptr.tolist(), sel_indptr.tolist()
    out: list[int] = []
    for r in range(len(d) - 1):
        n, b = d[r + 1] - d[r], s[r + 1] - s[r]
        if b == n:
            keep = set(range(n))
        else:
            ranked = sorted(range(d[r] + bos, d[r] + n - eos), key=rank)  # flat indices of the middle
            top = {i - d[r] for i in ranked[: b - bos - eos]}
            keep = set(range(bos)) | set(range(n - eos, n)) | top
        out += [ids[d[r] + p] for p in sorted(keep)]
    return torch.tensor(out, dtype=torch.int32, device=score.device)


def _row_sets(sel: Tensor, sel_indptr: Tensor) -> list[set[int]]:
    s = sel_indptr.tolist()
    v = sel.tolist()
    return [set(v[s[r] : s[r + 1]]) for r in range(len(s) - 1)]


# -- keys and budget -----------------------------------------------------------------------------------


def test_order_key_ranks_like_floats() -> None:
    ordered = [-math.inf, -1e30, -2.0, -1.0, -1e-45, 0.0, 1e-45, 1e-38, 1.0, 1.0 + 2**-23, 1e30, math.inf]
    keys = order_key(torch.tensor(ordered)).tolist()
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    nan_keys = order_key(torch.tensor([math.nan, -math.nan])).tolist()
    assert all(k < keys[0] for k in nan_keys), "NaN must rank below -inf"
    assert order_key(torch.tensor([-0.0])).item() == order_key(torch.tensor([0.0])).item()
    bf = torch.tensor(ordered).to(torch.bfloat16)
    assert order_key(bf).tolist() == order_key(bf.float()).tolist()


@pytest.mark.parametrize(
    "topk_val,topk_ratio,bos,eos", [(4, 0.0, 1, 2), (0, 0.25, 0, 1), (3, 0.5, 2, 2), (10, 1.0, 1, 1)]
)
def test_default_budget(topk_val: int, topk_ratio: float, bos: int, eos: int) -> None:
    ns = [0, 1, 2, 3, 5, 7, 8, 10, 16, 33, 100, 2048, 8192]
    got = default_budget(torch.tensor(ns, dtype=torch.int32), topk_val, topk_ratio, bos, eos)
    want = [min(n, max(topk_val + bos + eos, math.floor(n * topk_ratio))) for n in ns]
    assert got.dtype == torch.int32 and got.tolist() == want
    for n, b in zip(ns, want, strict=True):
        assert b == n or b >= bos + eos
    indptr = selection_indptr(got)
    assert indptr.dtype == torch.int32 and indptr.tolist() == _indptr(want).tolist()


def test_budget_edges() -> None:
    assert default_budget(torch.zeros(0, dtype=torch.int32), 4, 0.1, 1, 1).tolist() == []
    assert selection_indptr(torch.zeros(0, dtype=torch.int32)).tolist() == [0]
    # int64 input, ratio rounding follows Python's floor of the float product
    got = default_budget(torch.tensor([10, 1000, 999], dtype=torch.int64), 0, 0.3, 0, 1)
    assert got.dtype == torch.int32 and got.tolist() == [math.floor(n * 0.3) if math.floor(n * 0.3) > 1 else 1
                                                         for n in (10, 1000, 999)]  # fmt: skip
    with pytest.raises(ValueError):
        default_budget(torch.tensor([4]), -1, 0.0, 1, 1)


# -- the reference against an independent top-k ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["randn", "ties", "special", "near_equal"])
@pytest.mark.parametrize("bos,eos", [(1, 2), (0, 1), (2, 1)])
def test_reference_matches_brute_force(kind: str, bos: int, eos: int) -> None:
    for seed in range(3):
        score, csr = _batch(EDGE_LENGTHS, kind, bos, eos, seed)
        torch.testing.assert_close(
            select_blocks_reference(score, *csr, bos, eos), _brute_force(score, *csr, bos, eos)
        )


def _spec_search(scores: list[float], k: int, ratio: float) -> set[int]:
    """The approx rule transcribed literally, no shortcut: sorted unsigned keys, 32 bits MSB first, stop
    once ``owed = k - c <= floor(ratio * k)``, fill from the bin by position. Independent of ``order_key``."""

    def ukey(x: float) -> int:
        if math.isnan(x):
            return 0
        (b,) = struct.unpack("<I", struct.pack("<f", x + 0.0))  # + 0.0: -0.0 -> +0.0
        return b ^ 0xFFFFFFFF if b >> 31 else b | 0x80000000

    u = [ukey(x) for x in scores]
    lo, hi = 0, 2**32
    for bit in range(31, -1, -1):
        c = sum(v >= hi for v in u)
        if k - c <= math.floor(ratio * k):
            break
        mid = lo + (1 << bit)
        if sum(v >= mid for v in u) >= k:
            lo = mid
        else:
            hi = mid
    c = sum(v >= hi for v in u)
    in_bin = [p for p, v in enumerate(u) if lo <= v < hi]
    return {p for p, v in enumerate(u) if v >= hi} | set(in_bin[: k - c])


def test_select_middle_equals_literal_spec() -> None:
    """The reference (with its shortcuts) selects what the literal rule selects, exact and approximate."""
    gen = torch.Generator().manual_seed(1)
    for kind in ["randn", "ties", "near_equal", "special"]:
        scores = _scores(kind, 40, gen)
        keys = order_key(scores)
        for ratio in [0.0, 0.1, 0.3, 0.6]:
            for k in range(0, 41, 3):
                got = set(torch.nonzero(select_middle(keys, k, tolerated_slots(k, ratio))).flatten().tolist())
                assert got == _spec_search(scores.tolist(), k, ratio), (kind, ratio, k)


def test_select_middle_approx_guarantee_exhaustive() -> None:
    """Reference search alone: exactly k picks and recall >= 1 - tol_k/k for every k, many tolerances."""
    gen = torch.Generator().manual_seed(0)
    for kind in ["randn", "ties", "near_equal", "special"]:
        keys = order_key(_scores(kind, 96, gen))
        exact_all = [set(torch.nonzero(select_middle(keys, k)).flatten().tolist()) for k in range(97)]
        for ratio in [0.05, 0.1, 0.3, 0.5, 0.9]:
            for k in range(1, 97):
                sel = select_middle(keys, k, tolerated_slots(k, ratio))
                assert int(sel.sum()) == k
                picked = set(torch.nonzero(sel).flatten().tolist())
                assert len(picked & exact_all[k]) / k >= 1 - ratio - 1e-12


# -- Triton == reference ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tolerate_ratio", [0.0, 0.3])
@pytest.mark.parametrize("bos,eos", [(1, 2), (0, 1)])
@pytest.mark.parametrize("bits_per_pass", [1, 2])
def test_triton_matches_reference(
    dtype: torch.dtype, tolerate_ratio: float, bos: int, eos: int, bits_per_pass: int
) -> None:
    """Bit for bit the reference, bit by bit or two bits per count pass (fp16 keys leave an odd number of bits
    to decide: 19, the last one bitwise); approx searches bit by bit either way."""
    for seed, kind in enumerate(["randn", "ties", "special", "near_equal"]):
        score, csr = _batch(EDGE_LENGTHS, kind, bos, eos, seed)
        score = score.to(dtype)
        want = select_blocks_reference(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio)
        got = select_blocks_triton(
            score, *csr, bos, eos, tolerate_ratio=tolerate_ratio, bits_per_pass=bits_per_pass
        )
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if tolerate_ratio == 0.0:
            torch.testing.assert_close(got, _brute_force(score, *csr, bos, eos), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tolerate_ratio", [0.0, 0.25])
@pytest.mark.parametrize(
    "lengths,tiling",
    [
        ([3, 512, 513, 1500, 2048, 2049, 4096, 40], {"max_blocks_per_row": 4096}),
        ([3, 512, 513, 1024, 1025, 3000, 40], {"tile_size": 1024}),
    ],
    ids=["register-tile-4096", "loop-tile-1024"],
)
def test_rows_searched_in_the_tile_of_their_length(
    dtype: torch.dtype, tolerate_ratio: float, lengths: list[int], tiling: dict[str, int]
) -> None:
    """A launch's tile is sized by the longest row it may see (``max_blocks_per_row``, as the decode path sizes
    it by the longest context), yet each row is searched in the smallest register tile that holds it: <= 512
    blocks, half the tile, or the tile. With the looped tiling (a 1024-key loop tile) rows up to one tile stay
    in registers too and only longer ones loop. Rows on both sides of every edge, in one launch, select what the
    reference selects."""
    bos, eos = 1, 1
    for seed, kind in enumerate(["randn", "ties"]):
        score, csr = _batch(lengths, kind, bos, eos, seed)
        score = score.to(dtype)
        want = select_blocks_reference(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio)
        got = select_blocks_triton(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio, **tiling)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if tolerate_ratio == 0.0:  # two bits per pass: 10-bit int32 counters up to 512 keys, 21-bit int64 above
            got2 = select_blocks_triton(score, *csr, bos, eos, bits_per_pass=2, **tiling)
            torch.testing.assert_close(got2, want, rtol=0, atol=0)


@pytest.mark.parametrize("n", [512, 514, 4096])
def test_two_bits_per_pass_counts_a_full_tile(n: int) -> None:
    """Every key counted at a pass's thresholds (scores a few ulps apart, no bos/eos): each packed field reaches
    the tile's size (512 in the int32 tile's 10 bits, 4096 in an int64 one's 21) without spilling into the
    next; and scores differing only in their lowest bits (the search's last pairs decide them)."""
    dense_indptr = _indptr([n]).to(DEVICE)
    dense_indices = torch.arange(n, dtype=torch.int32, device=DEVICE)
    ulps = (torch.arange(n) % 4).to(torch.int32)
    for k in (1, n // 2, n - 1):
        sel_indptr = selection_indptr(torch.tensor([k], dtype=torch.int32)).to(DEVICE)
        csr = (dense_indptr, dense_indices, sel_indptr)
        # scores a few ulps apart: over 1.0 (unsigned key 0xBF800000) the top bit pair is 10, over 3.0
        # (0xC0400000) it is 11 and bits 23-22 are 01, so each of the three packed fields sums every key in
        # some pass, and a field cut short moves the bin off the largest ulps (equal scores would hide it: a
        # wrong bin then still keeps the first k positions, as ties do)
        for base in (1.0, 3.0):
            score = (torch.full((n,), base).view(torch.int32) + ulps).view(torch.float32).to(DEVICE)
            want = select_blocks_reference(score, *csr, 0, 0)
            got = select_blocks_triton(score, *csr, 0, 0, bits_per_pass=2, max_blocks_per_row=n)
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("tolerate_ratio", [0.0, 0.25])
def test_triton_multi_tile_path(tolerate_ratio: float) -> None:
    """Rows longer than the tile: count passes and compaction loop over 16-wide tiles."""
    bos, eos = 1, 2
    for seed, kind in enumerate(["randn", "special", "ties"]):
        score, csr = _batch([0, 2, 15, 16, 17, 40, 77], kind, bos, eos, seed)
        want = select_blocks_reference(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio)
        got = select_blocks_triton(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio, tile_size=16)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_triton_shapes_out_and_sync_free_call() -> None:
    """``[nnz,1,1]`` fp16 scores, preallocated ``out`` and ``max_blocks_per_row``; ``select_blocks`` dispatch."""
    bos, eos = 1, 1
    lengths = [12, 0, 30, 3, 31]
    score, (dense_indptr, dense_indices, _) = _batch(lengths, "randn", bos, eos, 5)
    budget = default_budget(torch.tensor(lengths, dtype=torch.int32), 6, 0.25, bos, eos)  # short rows: b = n
    sel_indptr = selection_indptr(budget).to(DEVICE)
    score = score.to(torch.float16).reshape(-1, 1, 1)
    want = select_blocks_reference(score, dense_indptr, dense_indices, sel_indptr, bos, eos)
    out = torch.full((int(sel_indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    got = select_blocks_triton(
        score, dense_indptr, dense_indices, sel_indptr, bos, eos, out=out, max_blocks_per_row=64
    )
    assert got is out
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(select_blocks(score, dense_indptr, dense_indices, sel_indptr, bos, eos), want)


def test_invalid_arguments() -> None:
    score, csr = _batch([5, 6], "randn", 1, 1, 0)
    for fn in (select_blocks_reference, select_blocks_triton):
        with pytest.raises(ValueError):
            fn(score, *csr, 1, 1, tolerate_ratio=1.0)
        with pytest.raises(ValueError):
            fn(score, *csr, 1, 1, tolerate_ratio=-0.1)
    with pytest.raises(TypeError):
        select_blocks_triton(score, csr[0].long(), csr[1], csr[2], 1, 1)
    with pytest.raises(ValueError, match="bits_per_pass must be 1 or 2"):
        select_blocks_triton(score, *csr, 1, 1, bits_per_pass=4)


# -- approxTopK guarantee, adversarial inputs ----------------------------------------------------------------


def _adversarial(n: int, seed: int) -> list[Tensor]:
    """Rows built to make the bitwise search stop inside a crowded bin."""
    gen = torch.Generator().manual_seed(seed)
    one = torch.ones(n).view(torch.int32)
    return [
        (one + torch.randint(0, 3, (n,), generator=gen, dtype=torch.int32)).view(torch.float32),  # 3 ulps
        (one + torch.arange(n, dtype=torch.int32).flip(0)).view(torch.float32),  # distinct, 1 ulp apart, desc
        # ascending: filling the bin by position picks its smallest elements first
        (one + torch.arange(n, dtype=torch.int32)).view(torch.float32),
        torch.full((n,), 2.5),  # all equal
        torch.where(torch.rand(n, generator=gen) < 0.5, torch.tensor(-math.inf), torch.tensor(1e-30)),
        torch.randn(n, generator=gen) * 1e-3 + 7.0,
    ]


@pytest.mark.parametrize("tolerate_ratio", [0.1, 0.25, 0.5])
def test_approx_recall_bound_adversarial(tolerate_ratio: float) -> None:
    bos, eos, n = 1, 2, 64
    rows = _adversarial(n, 0)
    score = torch.cat(rows).to(DEVICE)
    lengths = [n] * len(rows)
    dense_indptr = _indptr(lengths).to(DEVICE)
    dense_indices = torch.arange(score.numel(), dtype=torch.int32, device=DEVICE)
    ks = [1, 7, 30, 60]
    some_inexact = False
    for k in ks:
        sel_indptr = selection_indptr(
            torch.full((len(rows),), k + bos + eos, dtype=torch.int32, device=DEVICE)
        )
        csr = (dense_indptr, dense_indices, sel_indptr)
        approx = select_blocks_triton(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio)
        torch.testing.assert_close(
            approx, select_blocks_reference(score, *csr, bos, eos, tolerate_ratio=tolerate_ratio), rtol=0, atol=0
        )
        exact = _brute_force(score, *csr, bos, eos)
        for got, true in zip(_row_sets(approx, sel_indptr), _row_sets(exact, sel_indptr), strict=True):
            assert len(got) == k + bos + eos  # exactly k middle blocks (head/tail are disjoint from them)
            recall = (len(got & true) - bos - eos) / k
            assert recall >= 1 - tolerate_ratio - 1e-12
            some_inexact |= got != true
    assert some_inexact, "the early stop should trade some recall on these inputs"


# -- on a real GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tolerate_ratio", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_typical_size(tolerate_ratio: float, dtype: torch.dtype) -> None:
    """R=256 rows, n=2048 blocks, k=128 (plus ragged short rows and one n=8192 row), vs the reference."""
    bos, eos, rows = 1, 2, 256
    gen = torch.Generator().manual_seed(0)
    lengths = [2048] * (rows - 8) + [1, 3, 100, 131, 132, 500, 4000, 8192]
    budget = default_budget(torch.tensor(lengths, dtype=torch.int32), 128, 0.0, bos, eos)
    dense_indptr = _indptr(lengths)
    score = torch.randn(int(dense_indptr[-1]), generator=gen)
    score[::7] = score[::14].repeat_interleave(2)[: score[::7].numel()]  # ties
    dense_indices = torch.randperm(score.numel(), generator=gen).to(torch.int32)
    sel_indptr = selection_indptr(budget)
    args = (score.to(dtype).cuda(), dense_indptr.cuda(), dense_indices.cuda(), sel_indptr.cuda(), bos, eos)
    out = torch.empty(int(sel_indptr[-1]), dtype=torch.int32, device="cuda")
    got = select_blocks(*args, tolerate_ratio=tolerate_ratio, out=out, max_blocks_per_row=8192)
    want = select_blocks_reference(*args, tolerate_ratio=tolerate_ratio)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # also the looped path for the long row
    got_tiled = select_blocks_triton(*args, tolerate_ratio=tolerate_ratio, tile_size=1024)
    torch.testing.assert_close(got_tiled, want, rtol=0, atol=0)
    # and two bits per count pass (exact only: approx searches bit by bit whatever it is asked)
    got_pairs = select_blocks_triton(*args, tolerate_ratio=tolerate_ratio, max_blocks_per_row=8192, bits_per_pass=2)
    torch.testing.assert_close(got_pairs, want, rtol=0, atol=0)
