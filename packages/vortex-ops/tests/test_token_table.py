"""Token table (selection -> per-token page ids for FlashInfer): Triton kernel vs the plain-PyTorch reference vs an
independent transcription (every token's slot read from a request's own slot list).

Ragged on purpose: empty rows, one-token rows, partial final blocks, pages holding several blocks, 1 to 3 KV
heads, selections that skip blocks.
"""

from __future__ import annotations

import pytest
import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.kernels.token_table import (
    block_token_table,
    block_token_table_reference,
    block_token_table_triton,
    token_counts,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def case(page: int, bs: int, heads: int, lens: list[int], seed: int) -> dict:
    """Requests of ``lens`` tokens on scattered pages; rows (request, head) keep a random subset of their
    blocks (always the last); the expected table from the requests' own token -> slot lists."""
    layout = PoolLayout(page_size=page, block_size=bs, num_kv_heads=heads)
    gen = torch.Generator().manual_seed(seed)
    pages = torch.randperm(sum(-(-n // page) for n in lens) + 5, generator=gen) + 1
    sel, expected, last, p0 = [], [], [], 0
    for n in lens:
        npg = -(-n // page)
        tok = torch.arange(n)
        slots = pages[p0 : p0 + npg][tok // page] * page + tok % page  # [n] slot of every token
        p0 += npg
        nblk = -(-n // bs)
        for h in range(heads):
            keep = [j for j in range(nblk) if j == nblk - 1 or torch.rand(1, generator=gen).item() < 0.6]
            if n == 0:
                keep = []
            sel.append([int(layout.block_id(slots[j * bs], h)) for j in keep])
            expected.append(
                [int(slots[t]) * heads + h for j in keep for t in range(j * bs, min(n, (j + 1) * bs))]
            )
            last.append(n - (nblk - 1) * bs if n else 1)
    counts = token_counts(torch.tensor([len(s) for s in sel]), torch.tensor(last), bs)
    assert counts.tolist() == [len(e) for e in expected]
    tok_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).int()
    sel_indptr = torch.tensor([0] + [len(s) for s in sel]).cumsum(0).int()
    return {
        "sel_indptr": sel_indptr.to(DEVICE),
        "sel_indices": torch.tensor([b for s in sel for b in s] + [7] * 5, dtype=torch.int32).to(DEVICE),
        "last_block_len": torch.tensor(last, dtype=torch.int32).to(DEVICE),
        "tok_indptr": tok_indptr.to(DEVICE),
        "expected": [b for e in expected for b in e],
        "max_sel": max((len(s) for s in sel), default=0),
        "sizes": {"page_size": page, "block_size": bs, "num_kv_heads": heads},
    }


CASES = [
    (16, 16, 2, [1, 17, 100, 0, 33, 250], 0),
    (32, 8, 3, [5, 64, 65, 200, 1], 1),
    (4, 4, 1, [3, 4, 9, 40], 2),
    (64, 16, 2, [700, 15, 16, 17], 3),
]


@pytest.mark.parametrize(("page", "bs", "heads", "lens", "seed"), CASES)
def test_triton_and_reference_match_the_definition(
    page: int, bs: int, heads: int, lens: list[int], seed: int
) -> None:
    c = case(page, bs, heads, lens, seed)
    args = (c["sel_indptr"], c["sel_indices"], c["last_block_len"], c["tok_indptr"])
    total = len(c["expected"])
    poison = -12345
    ref = block_token_table_reference(*args, torch.full((total + 3,), poison, dtype=torch.int32), **c["sizes"])
    fused = block_token_table_triton(
        *args, torch.full((total + 3,), poison, dtype=torch.int32, device=DEVICE), **c["sizes"],
        max_selected_per_row=c["max_sel"],
    )  # fmt: skip
    assert ref[:total].tolist() == c["expected"]
    assert fused.cpu()[:total].tolist() == c["expected"]
    assert (fused.cpu()[total:] == poison).all(), "wrote past the last row"
    via_dispatch = block_token_table(
        *args,
        torch.zeros(total, dtype=torch.int32, device=DEVICE),
        **c["sizes"],
        max_selected_per_row=c["max_sel"],
    )
    assert via_dispatch.cpu().tolist() == c["expected"]


def test_equals_kv_offsets_over_head_dim() -> None:
    """Entry = element offset of the token's K row / D: the strided one-token-page view FlashInfer reads."""
    layout = PoolLayout(page_size=32, block_size=8, num_kv_heads=2)
    blocks = torch.tensor([5, 2, 17, 30])
    table = block_token_table_reference(
        torch.tensor([0, 4]), blocks, torch.tensor([8]), torch.tensor([0, 32]), torch.zeros(32, dtype=torch.int32),
        page_size=32, block_size=8, num_kv_heads=2,
    )  # fmt: skip
    assert torch.equal(table.long(), (layout.kv_offsets(blocks, 64) // 64).reshape(-1))


def test_token_counts_and_mismatch_error() -> None:
    assert token_counts(torch.tensor([0, 1, 3]), torch.tensor([1, 5, 7]), 16).tolist() == [0, 5, 39]
    with pytest.raises(ValueError, match="row 0"):
        block_token_table_reference(
            torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([3]), torch.tensor([0, 5]),
            torch.zeros(8, dtype=torch.int32), page_size=4, block_size=4, num_kv_heads=1,
        )  # fmt: skip
