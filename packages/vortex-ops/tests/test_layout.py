"""``PoolLayout``: block ids over SGLang's native ``[num_slots, H_kv, D]`` K/V buffers (design §2)."""

from __future__ import annotations

import pytest
import torch

from vortex_torch.abs.layout import DenseBlocks, PoolLayout

SHAPES = [(16, 16, 1), (16, 16, 8), (32, 8, 3), (64, 16, 2), (8, 2, 5)]  # (page_size, block_size, H_kv)


@pytest.mark.parametrize(("page_size", "block_size", "heads"), SHAPES)
def test_block_ids_round_trip(page_size: int, block_size: int, heads: int) -> None:
    """Every (slot, head) of a pool maps to one block, and the block maps back to its page, head and slots."""
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=heads)
    num_pages = 3
    slots = torch.arange(num_pages * page_size)
    ids = layout.block_id(slots[:, None], torch.arange(heads)[None, :])  # [S, H]
    assert ids.unique().numel() == layout.num_blocks(num_pages) == int(ids.max()) + 1
    assert torch.equal(layout.block_page(ids), (slots // page_size)[:, None].expand_as(ids))
    assert torch.equal(layout.block_head(ids), torch.arange(heads)[None, :].expand_as(ids))
    assert torch.equal(layout.block_sub(ids), ((slots % page_size) // block_size)[:, None].expand_as(ids))
    covered = layout.block_token_slots(ids.reshape(-1))  # [S * H, BS]
    assert covered.dtype == torch.int64 and covered.shape == (ids.numel(), block_size)
    t = (slots % block_size)[:, None].expand_as(ids).reshape(-1)
    assert torch.equal(covered[torch.arange(ids.numel()), t], slots[:, None].expand_as(ids).reshape(-1))
    # a block's slots are consecutive and all in one page
    assert torch.equal(covered - covered[:, :1], torch.arange(block_size).expand_as(covered))
    assert torch.equal(covered[:, 0] // page_size, covered[:, -1] // page_size)


@pytest.mark.parametrize(("page_size", "block_size", "heads"), SHAPES)
def test_kv_offsets_and_gather_follow_the_formula(page_size: int, block_size: int, heads: int) -> None:
    layout = PoolLayout(page_size=page_size, block_size=block_size, num_kv_heads=heads)
    num_pages, d = 4, 6
    buf = torch.randn(num_pages * page_size, heads, d)
    ids = torch.randperm(layout.num_blocks(num_pages))[:7].to(torch.int32)  # scattered, any order
    offs = layout.kv_offsets(ids, d)  # [N, BS]
    assert offs.dtype == torch.int64 and offs.shape == (ids.numel(), block_size)
    bpp = page_size // block_size
    for i, b in enumerate(ids.tolist()):
        page, head, sub = b // (heads * bpp), (b // bpp) % heads, b % bpp
        for t in range(block_size):
            want = page * (page_size * heads * d) + head * d + (sub * block_size + t) * (heads * d)
            assert int(offs[i, t]) == want
    got = layout.gather_blocks(buf, ids)  # [N, BS, D]
    flat = buf.reshape(-1)
    assert torch.equal(got, flat[offs[..., None] + torch.arange(d)])
    # strided views (a wider allocation) gather the same values
    wide = torch.cat([buf, torch.full_like(buf, float("nan"))], dim=-1)[..., :d]
    assert torch.equal(layout.gather_blocks(wide, ids), got)
    with pytest.raises(ValueError, match="H_kv"):
        layout.gather_blocks(buf[:, :1] if heads > 1 else buf.expand(-1, 2, -1), ids)


def test_dense_blocks_read_back_the_tokens_in_position_order() -> None:
    layout = PoolLayout(page_size=32, block_size=8, num_kv_heads=3)
    pages = [4, 1, 6]  # scattered pages of one request
    slots = torch.cat([torch.arange(p * 32, p * 32 + 32) for p in pages])[:75]
    buf = torch.randn(7 * 32, 3, 4)
    dense = DenseBlocks.from_token_slots(layout, [slots])
    assert dense.num_rows == 3 and dense.last_block_len.tolist() == [3, 3, 3]
    for h in range(3):
        ids = dense.indices[dense.indptr[h] : dense.indptr[h + 1]]
        tokens = layout.gather_blocks(buf, ids).reshape(-1, 4)[:75]  # the row's tokens, in order
        assert torch.equal(tokens, buf[slots, h])


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="power of two"):
        PoolLayout(page_size=12, block_size=6, num_kv_heads=1)
    with pytest.raises(ValueError, match="multiple of block_size"):
        PoolLayout(page_size=24, block_size=16, num_kv_heads=1)
    with pytest.raises(ValueError, match="num_kv_heads"):
        PoolLayout(page_size=16, block_size=16, num_kv_heads=0)
