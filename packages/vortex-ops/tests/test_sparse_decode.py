"""Sparse paged decode attention: Triton kernel vs the plain-PyTorch reference vs masked dense attention.

Shapes are small and ragged on purpose (partial last blocks, single-block and empty rows, odd G, D = 80,
pages holding several blocks, 1 to 3 KV heads) so the Triton interpreter stays fast on CPU while every masking
and addressing path of the kernel is exercised. K/V live in SGLang's native ``[num_slots, H_kv, D]`` buffers;
the dense reference here reads blocks with its own transcription of the design §2 offset formula.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.kernels import fp8
from vortex_torch.kernels.sparse_decode import (
    sparse_decode_attention,
    sparse_decode_attention_reference,
    triton_kernel,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NAN = float("nan")

# (relative RMSE, max abs error) allowed against an fp32/fp64 reference: the output is rounded once to its
# dtype (bf16: 2^-9 relative), the softmax weights stay fp32 (test_output_is_rounded_once).
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (6e-3, 2e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Compare in fp64 with the tolerance of ``dtype``; the message gives relative RMSE and max-abs error."""
    a, e = actual.double().cpu(), expected.double().cpu()
    assert not torch.isnan(a).any(), f"{what}: NaN in output (unwritten element?)"
    finite = torch.isfinite(e)
    assert torch.equal(torch.isfinite(a), finite) and torch.equal(a[~finite], e[~finite]), (
        f"{what}: infinities differ"
    )
    a, e = a[finite], e[finite]
    if e.numel() == 0:
        return
    err = a - e
    rel_rmse = (err.square().mean().sqrt() / e.square().mean().sqrt().clamp_min(1e-12)).item()
    max_abs = err.abs().max().item()
    rmse_tol, abs_tol = TOL[dtype]
    assert rel_rmse <= rmse_tol and max_abs <= abs_tol, (
        f"{what}: rel RMSE {rel_rmse:.3e} (tol {rmse_tol:.0e}), max abs {max_abs:.3e} (tol {abs_tol:.0e})"
    )


@dataclass
class Pool:
    """A KV pool and, per row, its dense block list in position order (block ids scattered in the pool).

    Row ``r`` is a (request, kv head) pair with head ``r % H_kv``: all of its blocks belong to that head.
    """

    q: torch.Tensor  # [R, G, D]
    k: torch.Tensor  # [num_slots, H_kv, D]
    v: torch.Tensor  # [num_slots, H_kv, D]
    layout: PoolLayout
    rows: list[list[int]]  # rows[r] = pool block ids of row r, position order
    last_len: torch.Tensor  # [R] int32

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    @property
    def sizes(self) -> dict[str, int]:
        """The ``page_size`` / ``block_size`` keywords of the kernels."""
        return {"page_size": self.layout.page_size, "block_size": self.layout.block_size}


def make_pool(
    row_blocks: list[int],
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
    *,
    page_size: int | None = None,
    num_kv_heads: int = 1,
) -> Pool:
    """Random pool: ``row_blocks[r]`` blocks for row ``r`` (of head ``r % H_kv``), unused blocks of every
    head, random partial last blocks. Every slot of every head holds random K/V: reading a wrong one shows."""
    layout = PoolLayout(page_size=page_size or block_size, block_size=block_size, num_kv_heads=num_kv_heads)
    gen = torch.Generator().manual_seed(seed)
    heads = [r % num_kv_heads for r in range(len(row_blocks))]
    need = max(sum(n for n, h in zip(row_blocks, heads, strict=True) if h == g) for g in range(num_kv_heads))
    num_pages = -(-(need + 7) // layout.blocks_per_page)  # 7+ unused blocks per head
    free = []  # free[h]: the block ids of head h, shuffled
    for h in range(num_kv_heads):
        ids = layout.block_id(torch.arange(num_pages * layout.page_size)[::block_size], h)
        free.append(ids[torch.randperm(ids.numel(), generator=gen)].tolist())
    rows = []
    for n, h in zip(row_blocks, heads, strict=True):
        rows.append([free[h].pop() for _ in range(n)])
    last_len = torch.randint(1, block_size + 1, (len(row_blocks),), generator=gen, dtype=torch.int32)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)

    num_slots = num_pages * layout.page_size
    return Pool(
        q=rand(len(row_blocks), group, head_dim) * 2.0,  # sharper softmax than unit scale
        k=rand(num_slots, num_kv_heads, head_dim),
        v=rand(num_slots, num_kv_heads, head_dim),
        layout=layout,
        rows=rows,
        last_len=last_len.to(DEVICE),
    )


def block_tokens(buffer: torch.Tensor, block: int, page_size: int, block_size: int) -> torch.Tensor:
    """``[block_size, D]`` K or V of ``block``, read at the design §2 offsets of the flat buffer."""
    _, heads, d = buffer.shape
    bpp = page_size // block_size
    page, head, sub = block // (heads * bpp), (block // bpp) % heads, block % bpp
    flat = buffer.reshape(-1)
    base = page * (page_size * heads * d) + head * d
    return torch.stack([flat[base + (sub * block_size + t) * heads * d :][:d] for t in range(block_size)])


def to_csr(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-id lists -> (indptr [R + 1] int32, indices [nnz] int32)."""
    indptr = torch.tensor([0] + [len(x) for x in lists], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    indices = torch.tensor([b for x in lists for b in x], dtype=torch.int32)
    return indptr.to(DEVICE), indices.to(DEVICE)


def select(pool: Pool, keep: float, seed: int) -> list[list[int]]:
    """Random selection: always a row's first and last block, each other one with probability ``keep``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for blocks in pool.rows:
        n = len(blocks)
        chosen = [i for i in range(n) if i in (0, n - 1) or torch.rand(1, generator=gen).item() < keep]
        out.append([blocks[i] for i in chosen])
    return out


def masked_dense(pool: Pool, selected: list[list[int]], sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain fp64 softmax attention over each row's full token sequence, masked to the selected blocks."""
    num_rows, group, head_dim = pool.q.shape
    bs, ps = pool.block_size, pool.layout.page_size
    o = torch.zeros(num_rows, group, head_dim, dtype=torch.float64)
    lse = torch.full((num_rows, group), -math.inf, dtype=torch.float64)
    for r, blocks in enumerate(pool.rows):
        if not blocks:
            continue
        num_tokens = (len(blocks) - 1) * bs + int(pool.last_len[r])
        k = torch.cat([block_tokens(pool.k.cpu(), b, ps, bs) for b in blocks])[:num_tokens].double()  # [T, D]
        v = torch.cat([block_tokens(pool.v.cpu(), b, ps, bs) for b in blocks])[:num_tokens].double()  # [T, D]
        chosen = set(selected[r])
        mask = torch.tensor([blocks[t // bs] in chosen for t in range(num_tokens)])  # [T] token kept?
        scores = (pool.q[r].cpu().double() @ k.T * sm_scale).masked_fill(~mask, -math.inf)  # [G, T]
        lse[r] = torch.logsumexp(scores, dim=-1)
        o[r] = torch.softmax(scores, dim=-1) @ v
    return o, lse


def nan_like(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN-poisoned (out [R, G, D], lse [R, G]) buffers: any element the kernel forgets stays NaN."""
    return torch.full_like(q, NAN), torch.full(q.shape[:2], NAN, dtype=torch.float32, device=q.device)


# Ragged rows: single-block rows, a long row, mixed lengths; (G, D, BS, page, H_kv, dtype) cover odd G,
# non-pow2 D, one or several blocks per page and 1 to 3 KV heads.
ROW_BLOCKS = [3, 1, 9, 1, 20, 6]
CASES = [
    (1, 16, 4, 4, 1, torch.float32),
    (3, 80, 4, 16, 2, torch.float32),
    (4, 64, 16, 16, 1, torch.float32),
    (3, 16, 16, 32, 3, torch.float32),
    (1, 64, 16, 64, 2, torch.bfloat16),
    (3, 80, 16, 16, 3, torch.bfloat16),
    (4, 16, 4, 8, 2, torch.bfloat16),
    (4, 64, 4, 4, 1, torch.float16),
]


@pytest.mark.parametrize(("group", "head_dim", "block_size", "page_size", "heads", "dtype"), CASES)
def test_matches_reference(
    group: int, head_dim: int, block_size: int, page_size: int, heads: int, dtype: torch.dtype
) -> None:
    seed = group * 1000 + head_dim + block_size + page_size + heads
    pool = make_pool(
        ROW_BLOCKS, group, head_dim, block_size, dtype, seed=seed, page_size=page_size, num_kv_heads=heads
    )
    indptr, indices = to_csr(select(pool, keep=0.6, seed=1))
    ref, ref_lse = sparse_decode_attention_reference(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, return_lse=True
    )
    tag = f"G={group} D={head_dim} BS={block_size} page={page_size} H_kv={heads} {dtype}"
    o = sparse_decode_attention(pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes)
    assert o.dtype == dtype and o.shape == pool.q.shape
    assert_close(o, ref, dtype, f"o, default splits, {tag}")
    # Forced split path: 3 splits per row, so 1-block rows also get empty splits to merge away.
    out, lse = nan_like(pool.q)
    triton_kernel.launch(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, head_dim**-0.5, out, lse, 3, **pool.sizes
    )
    assert_close(out, ref, dtype, f"o, 3 splits, {tag}")
    assert_close(lse, ref_lse, torch.float32, f"lse, 3 splits, {tag}")


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_page_larger_than_block(heads: int) -> None:
    """page 32 / block 8: four blocks of each head per page, interleaved with the other heads' tokens."""
    pool = make_pool(
        [5, 2, 11, 1, 7, 4], group=2, head_dim=32, block_size=8, dtype=torch.float32, seed=20 + heads,
        page_size=32, num_kv_heads=heads,
    )  # fmt: skip
    selected = select(pool, keep=0.5, seed=4)
    dense_o, dense_lse = masked_dense(pool, selected, 0.2)
    indptr, indices = to_csr(selected)
    ref_o = sparse_decode_attention_reference(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, sm_scale=0.2
    )
    assert_close(ref_o, dense_o, torch.float32, f"reference vs masked dense, H_kv={heads}")
    for num_splits in (1, 2):
        out, lse = nan_like(pool.q)
        triton_kernel.launch(
            pool.q, pool.k, pool.v, indptr, indices, pool.last_len, 0.2, out, lse, num_splits, **pool.sizes
        )
        assert_close(out, dense_o, torch.float32, f"o, H_kv={heads}, {num_splits} splits")
        assert_close(lse, dense_lse, torch.float32, f"lse, H_kv={heads}, {num_splits} splits")


@pytest.mark.parametrize(("block_size", "tile_tokens", "num_kv_heads"), [(32, 16, 1), (64, 16, 2), (64, 32, 1)])
def test_tiles_smaller_than_a_block(block_size: int, tile_tokens: int, num_kv_heads: int) -> None:
    """A loop step of part of one block (the tile never grows with the block): partial last blocks ending
    before, inside and after the first tile of the block, 1-block rows, splits cutting rows into whole blocks."""
    pool = make_pool(
        [1, 3, 1, 2, 5, 1], group=3, head_dim=16, block_size=block_size, dtype=torch.float32, seed=block_size,
        page_size=2 * block_size, num_kv_heads=num_kv_heads,
    )  # fmt: skip
    lens = [1, tile_tokens - 1, tile_tokens, tile_tokens + 1, block_size, block_size - 1]
    pool.last_len = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    selected = select(pool, keep=0.5, seed=6)
    dense_o, dense_lse = masked_dense(pool, selected, 0.3)
    indptr, indices = to_csr(selected)
    for num_splits in (1, 2, 3, 7):
        out, lse = nan_like(pool.q)
        triton_kernel.launch(
            pool.q, pool.k, pool.v, indptr, indices, pool.last_len, 0.3, out, lse, num_splits, **pool.sizes,
            tile_tokens=tile_tokens,
        )  # fmt: skip
        assert_close(out, dense_o, torch.float32, f"o, BS={block_size} tile={tile_tokens}, {num_splits} splits")
        assert_close(lse, dense_lse, torch.float32, f"lse, BS={block_size} tile={tile_tokens}, {num_splits} splits")


def test_default_tile_of_a_large_block() -> None:
    """block_size 256 at D = 16: the default tile is 128 tokens (half a block), not the block; bf16, default
    splits, against the reference."""
    pool = make_pool([2, 1, 3], group=2, head_dim=16, block_size=256, dtype=torch.bfloat16, seed=9)
    pool.last_len = torch.tensor([100, 256, 129], dtype=torch.int32, device=DEVICE)
    indptr, indices = to_csr(pool.rows)
    assert triton_kernel.default_tile_tokens(16) == 128
    ref = sparse_decode_attention_reference(pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes)
    out = sparse_decode_attention(pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes)
    assert_close(out, ref, torch.bfloat16, "o, BS=256")


def test_tile_tokens_is_checked() -> None:
    pool = make_pool([1], group=1, head_dim=16, block_size=16, dtype=torch.float32)
    indptr, indices = to_csr(pool.rows)
    out, lse = nan_like(pool.q)
    for bad in (8, 48, 0):
        with pytest.raises(ValueError, match="tile_tokens must be a power of two >= 16"):
            triton_kernel.launch(pool.q, pool.k, pool.v, indptr, indices, pool.last_len, 0.3, out, lse, 1,
                                 **pool.sizes, tile_tokens=bad)  # fmt: skip


@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
def test_split_counts_and_empty_rows(num_splits: int) -> None:
    """Any split count gives the same answer, also with more splits than blocks; empty rows give 0 / -inf."""
    pool = make_pool([0, 5, 1, 0, 12], group=3, head_dim=16, block_size=4, dtype=torch.float32, seed=7)
    indptr, indices = to_csr(pool.rows)
    out, lse = nan_like(pool.q)
    triton_kernel.launch(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, 0.25, out, lse, num_splits, **pool.sizes
    )
    ref, ref_lse = sparse_decode_attention_reference(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, sm_scale=0.25, return_lse=True
    )
    assert_close(out, ref, torch.float32, f"o, {num_splits} splits")
    assert_close(lse, ref_lse, torch.float32, f"lse, {num_splits} splits")
    for r in (0, 3):
        assert torch.all(out[r] == 0) and torch.all(lse[r] == -math.inf), f"empty row {r}"


@pytest.mark.parametrize(
    ("dtype", "num_splits"), [(torch.float32, 1), (torch.bfloat16, 1), (torch.bfloat16, 3)]
)
def test_sparse_equals_masked_dense(dtype: torch.dtype, num_splits: int) -> None:
    """The key property: attention over the selected CSR list == dense attention masked to those blocks."""
    pool = make_pool(
        [7, 1, 2, 13, 5], group=4, head_dim=64, block_size=4, dtype=dtype, seed=3, page_size=8, num_kv_heads=2
    )
    selected = select(pool, keep=0.4, seed=5)
    sm_scale = 0.1
    dense_o, dense_lse = masked_dense(pool, selected, sm_scale)
    indptr, indices = to_csr(selected)
    ref_o = sparse_decode_attention_reference(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, sm_scale=sm_scale
    )
    assert_close(ref_o, dense_o, dtype, "reference vs masked dense")
    out, lse = nan_like(pool.q)
    q, k, v, last = pool.q, pool.k, pool.v, pool.last_len
    triton_kernel.launch(q, k, v, indptr, indices, last, sm_scale, out, lse, num_splits, **pool.sizes)
    assert_close(out, dense_o, dtype, f"o vs masked dense, {num_splits} splits")
    lse_tol = torch.float32 if dtype == torch.float32 else torch.float16
    assert_close(lse, dense_lse, lse_tol, "lse vs masked dense")


@pytest.mark.parametrize("num_splits", [1, 3])
def test_output_is_rounded_once(num_splits: int) -> None:
    """bf16 in, bf16 out: the output is the exact attention rounded once, up to fp32 summation order.

    Nearly every element equals the fp64 result rounded to bf16, and none is more than one bf16 step away.
    (Rounding the softmax weights to bf16 before ``p @ v``, as flash attention does, fails both: some outputs
    end up more than one bf16 step away.)
    Vortex's Triton path (the triton base backend) is therefore as exact as bf16 output allows.
    """
    pool = make_pool([9, 3, 14, 6], group=4, head_dim=64, block_size=16, dtype=torch.bfloat16, seed=31)
    selected = select(pool, keep=0.7, seed=2)
    dense_o, _ = masked_dense(pool, selected, 0.125)
    expected = dense_o.to(torch.bfloat16)  # [R, G, D] exact result, rounded once
    indptr, indices = to_csr(selected)
    out, lse = nan_like(pool.q)
    triton_kernel.launch(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, 0.125, out, lse, num_splits, **pool.sizes
    )
    got = out.cpu()
    differs = got != expected
    ulp = (expected.double().abs().clamp_min(2**-126).log2().floor() - 7).exp2()  # bf16 step at |expected|
    assert ((got.double() - expected.double()).abs() <= ulp * 1.001).all(), "an output is off by > 1 bf16 ulp"
    assert differs.double().mean().item() <= 0.02, f"{differs.double().mean().item():.1%} outputs differ"


@pytest.mark.parametrize("block_size", [4, 16])
def test_select_all_equals_dense(block_size: int) -> None:
    """Selecting every block is plain (unmasked) dense attention."""
    pool = make_pool(
        [4, 1, 9], group=3, head_dim=80, block_size=block_size, dtype=torch.float32, seed=11, num_kv_heads=3
    )
    dense_o, dense_lse = masked_dense(pool, pool.rows, 1.0 / math.sqrt(80))
    indptr, indices = to_csr(pool.rows)
    out = torch.full_like(pool.q, NAN)
    o, lse = sparse_decode_attention(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, out=out, return_lse=True
    )
    assert o is out
    assert_close(o, dense_o, torch.float32, "o vs dense")
    assert_close(lse, dense_lse, torch.float32, "lse vs dense")


def test_out_buffer_lse_and_strided_q() -> None:
    """out= is written in place and returned; q and the K/V buffers may be strided views (D contiguous);
    max_blocks_per_row is only a hint."""
    pool = make_pool(
        [2, 6, 1], group=4, head_dim=16, block_size=16, dtype=torch.bfloat16, seed=2, page_size=32,
        num_kv_heads=2,
    )  # fmt: skip
    q_strided = pool.q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, [G, R, D] memory order
    assert not q_strided.is_contiguous()
    # K/V as views into larger allocations, with different slot and head strides: (64, 32, 1), (96, 16, 1)
    k_wide = torch.cat([pool.k, torch.full_like(pool.k, NAN)], dim=-1)[..., :16]
    v_wide = torch.cat([pool.v, *[torch.full_like(pool.v, NAN)] * 2], dim=1)[:, :2]
    assert k_wide.stride() == (64, 32, 1) and v_wide.stride() == (96, 16, 1)
    indptr, indices = to_csr(pool.rows)
    ref, ref_lse = sparse_decode_attention_reference(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, return_lse=True
    )
    for hint in (None, 1, 6, 1000):  # a wrong hint changes the split count, never the result
        out = torch.full_like(pool.q, NAN)
        o, lse = sparse_decode_attention(
            q_strided, k_wide, v_wide, indptr, indices, pool.last_len, **pool.sizes, out=out,
            max_blocks_per_row=hint, return_lse=True,
        )  # fmt: skip
        assert o is out and lse.dtype == torch.float32 and lse.shape == (3, 4)
        assert_close(o, ref, torch.bfloat16, f"o, hint={hint}")
        assert_close(lse, ref_lse, torch.float16, f"lse, hint={hint}")


def test_all_rows_empty() -> None:
    """nnz == 0 (every row empty): o = 0, lse = -inf, on both the single-pass and the split path."""
    pool = make_pool([0, 0], group=2, head_dim=16, block_size=4, dtype=torch.float32, num_kv_heads=2)
    indptr, indices = to_csr(pool.rows)
    assert indices.numel() == 0
    o, lse = sparse_decode_attention(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes, return_lse=True
    )
    assert torch.all(o == 0) and torch.all(lse == -math.inf)
    out, lse = nan_like(pool.q)
    triton_kernel.launch(
        pool.q, pool.k, pool.v, indptr, indices, pool.last_len, 0.25, out, lse, 2, **pool.sizes
    )
    assert torch.all(out == 0) and torch.all(lse == -math.inf)


def test_default_num_splits() -> None:
    """The split heuristic depends on shapes only and keeps chunks >= 2 loop steps."""
    cpu = torch.device("cpu")  # the heuristic pretends 2 SMs there, i.e. 8 programs fill the "GPU"
    assert triton_kernel.default_tile_tokens(128) == 128 and triton_kernel.default_tile_tokens(256) == 64
    assert triton_kernel.default_tile_tokens(128, exact=True) == 64 and triton_kernel.default_tile_tokens(512) == 32
    assert triton_kernel.default_tile_tokens(4096) == 16  # tl.dot's minimum
    assert triton_kernel.default_num_splits(64, 1000, 16, 128, cpu) == 1
    assert triton_kernel.default_num_splits(1, 1000, 16, 128, cpu) == 8
    assert triton_kernel.default_num_splits(1, 16, 16, 128, cpu) == 1  # 16 blocks = 2 steps of 8 blocks
    assert triton_kernel.default_num_splits(1, 17, 16, 128, cpu) == 2
    assert triton_kernel.default_num_splits(4, 0, 16, 128, cpu) == 1
    # blocks larger than the tile: a step is part of a block, so 2 blocks of 256 tokens are 4 steps of 128
    assert triton_kernel.default_num_splits(1, 2, 256, 128, cpu) == 2
    assert triton_kernel.default_num_splits(1, 1, 256, 128, cpu) == 1


def test_no_split_once_every_sm_has_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU (an H200's 132 SMs, faked) a batch with a program per SM is not split: at 256 rows one split
    measured faster than three. Below that, splits still fill 4 programs per SM, chunks of >= 2 loop steps."""
    props = type("Props", (), {"multi_processor_count": 132})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    gpu = torch.device("cuda")
    assert triton_kernel.default_num_splits(256, 128, 16, 128, gpu) == 1  # 32k x 32, budget 2048
    assert triton_kernel.default_num_splits(132, 128, 16, 128, gpu) == 1
    assert triton_kernel.default_num_splits(128, 128, 16, 128, gpu) == 5  # 32k x 16: cdiv(528, 128)
    assert triton_kernel.default_num_splits(8, 128, 16, 128, gpu) == 8  # 32k x 1: capped by 2 steps per chunk
    assert triton_kernel.default_num_splits(8, 4096, 16, 128, gpu) == 64  # MAX_SPLITS


def test_input_validation() -> None:
    pool = make_pool([2], group=2, head_dim=16, block_size=4, dtype=torch.float32)
    indptr, indices = to_csr(pool.rows)
    args = (indptr, indices, pool.last_len)
    with pytest.raises(ValueError, match="dtype"):
        sparse_decode_attention(pool.q.half(), pool.k, pool.v, *args, **pool.sizes)
    with pytest.raises(ValueError, match="indptr"):
        sparse_decode_attention(pool.q, pool.k, pool.v, indptr[:1], indices, pool.last_len, **pool.sizes)
    with pytest.raises(ValueError, match="out"):
        sparse_decode_attention(pool.q, pool.k, pool.v, *args, **pool.sizes, out=pool.q[:, :1])
    with pytest.raises(ValueError, match="num_slots, H_kv, D"):
        sparse_decode_attention(pool.q, pool.k[:, 0], pool.v[:, 0], *args, **pool.sizes)
    with pytest.raises(ValueError, match="page_size"):
        sparse_decode_attention(pool.q, pool.k, pool.v, *args, page_size=6, block_size=4)
    with pytest.raises(ValueError, match="power of two"):
        sparse_decode_attention_reference(pool.q, pool.k, pool.v, *args, page_size=12, block_size=6)
    k_strided_d = torch.randn(pool.k.shape[0], 1, 32)[..., ::2]
    with pytest.raises(ValueError, match="contiguous"):
        sparse_decode_attention(pool.q, k_strided_d, k_strided_d, *args, **pool.sizes)


# realistic GPU case: Qwen3-8B-like pool (H_kv = 8, D = 128), page 64 = 4 blocks of 16 per head
GPU_SIZES = {"page_size": 64, "block_size": 16}


def _realistic_case(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """R=256 rows (32 requests x 8 KV heads), G=4, D=128, 128 selected blocks per row, each a random block of
    the row's head in a 64k-block pool ([131072, 8, 128] K and V), bf16."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    num_rows, group, head_dim, heads, per_row = 256, 4, 128, 8, 128
    layout = PoolLayout(num_kv_heads=heads, **GPU_SIZES)
    num_pages = 65536 // (heads * layout.blocks_per_page)
    num_slots = num_pages * layout.page_size
    q = torch.randn(num_rows, group, head_dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    k = torch.randn(num_slots, heads, head_dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    v = torch.randn(num_slots, heads, head_dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    nnz = num_rows * per_row
    slots = torch.randint(0, num_slots, (nnz,), device="cuda", generator=gen)
    row_head = (torch.arange(nnz, device="cuda") // per_row) % heads
    indices = layout.block_id(slots, row_head).to(torch.int32)
    indptr = torch.arange(0, num_rows + 1, device="cuda", dtype=torch.int32) * per_row
    bs = layout.block_size
    last = torch.randint(1, bs + 1, (num_rows,), device="cuda", generator=gen, dtype=torch.int32)
    return q, k, v, indptr, indices, last


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_realistic_shape() -> None:
    q, k, v, indptr, indices, last = _realistic_case()
    ref, ref_lse = sparse_decode_attention_reference(q, k, v, indptr, indices, last, **GPU_SIZES, return_lse=True)
    o, lse = sparse_decode_attention(
        q, k, v, indptr, indices, last, **GPU_SIZES, max_blocks_per_row=128, return_lse=True
    )
    assert_close(o, ref, torch.bfloat16, "o, realistic shape")
    assert_close(lse, ref_lse, torch.float16, "lse, realistic shape")
    for num_splits in (1, 7):
        out, lse = nan_like(q)
        triton_kernel.launch(q, k, v, indptr, indices, last, 128**-0.5, out, lse, num_splits, **GPU_SIZES)
        assert_close(out, ref, torch.bfloat16, f"o, realistic shape, {num_splits} splits")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_no_host_sync_and_cuda_graph() -> None:
    """With max_blocks_per_row given the launch never syncs and can be captured in a CUDA graph."""
    q, k, v, indptr, indices, last = _realistic_case(seed=1)
    out = torch.empty_like(q)
    kw = {**GPU_SIZES, "out": out, "max_blocks_per_row": 128}
    sparse_decode_attention(q, k, v, indptr, indices, last, **kw)  # compile
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sparse_decode_attention(q, k, v, indptr, indices, last, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_decode_attention(q, k, v, indptr, indices, last, **kw)
    q.copy_(torch.randn_like(q))  # new inputs, replayed graph must see them
    out.fill_(NAN)
    graph.replay()
    torch.cuda.synchronize()
    ref = sparse_decode_attention_reference(q, k, v, indptr, indices, last, **GPU_SIZES)
    assert_close(out, ref, torch.bfloat16, "graph replay")


# -- fp8 KV cache (SGLang's --kv-cache-dtype fp8_e4m3 / fp8_e5m2) ------------------------------------------------
# K/V hold value / scale in fp8 with one scalar scale per layer; the kernel must use stored * scale. Checked on the
# ragged pools above: kernel == reference, both == masked dense attention over the dequantised cache (bf16 tolerance:
# dequantisation is exact), and both within fp8 tolerance of attention over the unquantised cache.

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
#: relative RMSE of attention over an fp8 cache against the unquantised one (e4m3: 3 mantissa bits, e5m2: 2)
FP8_RMSE = {torch.float8_e4m3fn: 0.06, torch.float8_e5m2: 0.12}


def quantize(pool: Pool, kv_dtype: torch.dtype, k_scale: float, v_scale: float) -> tuple[Pool, Pool]:
    """(fp8 pool holding ``k / k_scale`` and ``v / v_scale``, the same pool dequantised to fp32)."""
    k8 = fp8.saturate_cast(pool.k.float() / k_scale, kv_dtype)
    v8 = fp8.saturate_cast(pool.v.float() / v_scale, kv_dtype)
    deq = dataclasses.replace(pool, k=k8.float() * k_scale, v=v8.float() * v_scale, q=pool.q.float())
    return dataclasses.replace(pool, k=k8, v=v8), deq


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize(
    ("group", "head_dim", "block_size", "page_size", "heads", "dtype"),
    [(3, 80, 4, 16, 2, torch.bfloat16), (4, 64, 16, 32, 3, torch.float16), (1, 16, 4, 4, 1, torch.float32)],
)
def test_fp8_kernel_matches_reference_and_dense(
    kv_dtype: torch.dtype, group: int, head_dim: int, block_size: int, page_size: int, heads: int,
    dtype: torch.dtype,
) -> None:  # fmt: skip
    pool = make_pool(ROW_BLOCKS, group, head_dim, block_size, dtype, seed=7 + head_dim, page_size=page_size,
                     num_kv_heads=heads)  # fmt: skip
    k_scale, v_scale = 0.37, 1.9  # keys spread over ~[-11, 11] stored, values compressed: both scales matter
    p8, deq = quantize(pool, kv_dtype, k_scale, v_scale)
    selected = select(pool, keep=0.6, seed=3)
    indptr, indices = to_csr(selected)
    args = (p8.q, p8.k, p8.v, indptr, indices, p8.last_len)
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    ref, ref_lse = sparse_decode_attention_reference(*args, **pool.sizes, return_lse=True, **scales)
    tag = f"{kv_dtype} q {dtype} G={group} D={head_dim} BS={block_size} page={page_size} H_kv={heads}"
    # the rule: reference over fp8 == reference over the dequantised cache (same fp32 values)
    ref_deq = sparse_decode_attention_reference(
        deq.q.to(dtype), deq.k.to(torch.float32), deq.v.to(torch.float32), indptr, indices, p8.last_len,
        **pool.sizes,
    ) if dtype == torch.float32 else None  # fmt: skip
    if ref_deq is not None:
        torch.testing.assert_close(ref, ref_deq, rtol=0, atol=0)
    # kernel == reference: default splits, exact and FlashAttention rounding, float and tensor scales
    o = sparse_decode_attention(*args, **pool.sizes, **scales)
    assert o.dtype == dtype
    assert_close(o, ref, dtype, f"o, {tag}")
    tensor_scales = {"k_scale": torch.tensor(k_scale), "v_scale": torch.tensor([v_scale])}
    o_fast = sparse_decode_attention(*args, **pool.sizes, exact=False, **tensor_scales)
    assert_close(o_fast, ref, torch.bfloat16 if dtype != torch.float32 else dtype, f"o, exact=False, {tag}")
    out, lse = nan_like(p8.q)
    triton_kernel.launch(
        *args, head_dim**-0.5, out, lse, 3, **pool.sizes,
        k_scale=fp8.scale_tensor(k_scale, p8.q.device), v_scale=fp8.scale_tensor(v_scale, p8.q.device),
    )  # fmt: skip
    assert_close(out, ref, dtype, f"o, 3 splits, {tag}")
    assert_close(lse, ref_lse, torch.float32, f"lse, 3 splits, {tag}")
    # == masked dense attention over the dequantised cache (fp64)
    dense_o, dense_lse = masked_dense(deq, selected, head_dim**-0.5)
    assert_close(o, dense_o, dtype, f"o vs masked dense over the dequantised cache, {tag}")
    assert_close(lse, dense_lse, torch.float32, f"lse vs masked dense over the dequantised cache, {tag}")
    # within fp8 tolerance of attention over the unquantised cache
    orig_o, _ = masked_dense(dataclasses.replace(pool, k=pool.k.float(), v=pool.v.float()), selected, head_dim**-0.5)
    err = (o.double().cpu() - orig_o).square().mean().sqrt() / orig_o.square().mean().sqrt()
    assert err < FP8_RMSE[kv_dtype], f"{tag}: rel RMSE {err:.3f} against the unquantised cache"
    # and the scales are really applied: ignoring them gives a different answer
    wrong = sparse_decode_attention(*args, **pool.sizes)
    assert (wrong.float() - o.float()).abs().max() > 0.1


def test_fp8_scales_default_to_one_and_are_ignored_for_bf16() -> None:
    pool = make_pool([2, 5, 1], 2, 32, 4, torch.bfloat16, seed=11, page_size=8, num_kv_heads=2)
    indptr, indices = to_csr(select(pool, keep=0.5, seed=0))
    k8, v8 = pool.k.to(torch.float8_e4m3fn), pool.v.to(torch.float8_e4m3fn)
    one = sparse_decode_attention(pool.q, k8, v8, indptr, indices, pool.last_len, **pool.sizes)
    explicit = sparse_decode_attention(pool.q, k8, v8, indptr, indices, pool.last_len, **pool.sizes,
                                       k_scale=1.0, v_scale=1.0)  # fmt: skip
    torch.testing.assert_close(one, explicit, rtol=0, atol=0)
    bf = sparse_decode_attention(pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes)
    bf_scaled = sparse_decode_attention(pool.q, pool.k, pool.v, indptr, indices, pool.last_len, **pool.sizes,
                                        k_scale=3.0, v_scale=3.0)  # fmt: skip
    torch.testing.assert_close(bf, bf_scaled, rtol=0, atol=0)  # SGLang writes a 16-bit cache unscaled


def test_fp8_dtype_errors_name_the_fix() -> None:
    pool = make_pool([2, 3], 2, 16, 4, torch.bfloat16, seed=1)
    indptr, indices = to_csr(pool.rows)
    k8 = pool.k.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="both float8_e4m3fn / both float8_e5m2"):
        sparse_decode_attention_reference(pool.q, k8, pool.v, indptr, indices, pool.last_len, **pool.sizes)
    with pytest.raises(ValueError, match="both float8_e4m3fn / both float8_e5m2"):
        sparse_decode_attention(pool.q, k8, pool.v.to(torch.float8_e5m2), indptr, indices, pool.last_len,
                                **pool.sizes)  # fmt: skip
    with pytest.raises(ValueError, match="one scalar per layer"):
        sparse_decode_attention(pool.q, k8, k8, indptr, indices, pool.last_len, **pool.sizes,
                                k_scale=torch.ones(2))  # fmt: skip
    out = torch.empty_like(pool.q)
    with pytest.raises(ValueError, match="need k_scale and v_scale"):
        triton_kernel.launch(pool.q, k8, k8, indptr, indices, pool.last_len, 0.25, out, None, 1, **pool.sizes)


_COMPILE_FP8_FOR_SM90 = """
import sys
sys.path.insert(0, sys.argv[1])
from sm90_compile import compile_sm90
from vortex_torch.kernels.sparse_decode.triton_kernel import _split_kernel
from vortex_torch.kernels.sparse_decode_mla.triton_kernel import _mla_split_kernel

for fn in (_split_kernel, _mla_split_kernel):
    for kv in ("fp8e4nv", "fp8e5"):
        for p_fp32 in (True, False):
            compile_sm90(fn, kv=kv, KV_FP8=True, MERGE=False, PV_PRECISION="tf32x3", P_FP32=p_fp32)
            print("compiled", fn.__name__, kv, p_fp32)
"""


def test_fp8_kernels_compile_for_sm90() -> None:
    """The fp8 branches (fp8 loads widened to bf16, scales) lowered to a cubin for an H100 without a GPU: the
    interpreter accepts code the real compiler rejects."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_FP8_FOR_SM90, os.path.dirname(__file__)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("compiled ") == 8


@pytest.mark.parametrize("kv_fp8", [False, True])
@pytest.mark.parametrize("q_dtype", [torch.bfloat16, torch.float32])
def test_kernel_constexprs_are_the_ones_a_fused_indexer_passes_through(q_dtype: torch.dtype, kv_fp8: bool) -> None:
    """``ATTEND_CONSTEXPRS`` names what ``kernel_constexprs`` sets (vortex-flow's fused indexer declares and
    forwards them under these names): the same set, whatever the dtypes, and each a constexpr of attend_split."""
    import inspect

    from vortex_torch.abs.layout import PoolLayout
    from vortex_torch.kernels.sparse_decode.triton_kernel import (
        ATTEND_CONSTEXPRS,
        attend_split,
        kernel_constexprs,
    )

    cx = kernel_constexprs(4, 128, PoolLayout(page_size=16, block_size=16, num_kv_heads=8), q_dtype, kv_fp8, False)
    assert set(cx) == set(ATTEND_CONSTEXPRS) and len(ATTEND_CONSTEXPRS) == len(set(ATTEND_CONSTEXPRS))
    params = inspect.signature(attend_split.fn).parameters.values()  # a JITFunction or, here, its interpreter twin
    assert set(ATTEND_CONSTEXPRS) <= {p.name for p in params if str(p.annotation).endswith("constexpr")}
