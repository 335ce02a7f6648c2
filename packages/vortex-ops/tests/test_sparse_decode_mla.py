"""Sparse paged MLA decode attention: the Triton kernel vs the plain-PyTorch reference vs dense attention with the
selection applied as a mask.

The latent pool is SGLang's MLA buffer ``[num_slots, 1, kv_lora_rank + qk_rope_head_dim]``; requests own
scattered pages; shapes are small and ragged on purpose (partial last blocks, rows shorter than the budget, an
empty row, mixed lengths, heads over two head blocks, non-power-of-two kv_lora_rank / rope widths, pages of
several blocks) so the Triton interpreter stays fast while every masking and addressing path runs. The dense
reference reads tokens by position from the request's slot list, not through block ids.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from vortex_torch.abs.layout import PoolLayout
from vortex_torch.kernels import fp8
from vortex_torch.kernels.sparse_decode_mla import (
    SparseMLADecodeWorkspace,
    sparse_mla_decode,
    sparse_mla_decode_reference,
)
from vortex_torch.kernels.sparse_decode_mla import triton_kernel as tk

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


@dataclass
class LatentPool:
    latent: torch.Tensor  # [num_slots, 1, D]
    slots: list[torch.Tensor]  # per request: token slots in position order
    layout: PoolLayout

    def blocks(self, r: int) -> torch.Tensor:
        """Block ids of request ``r`` in position order."""
        return self.layout.block_id(self.slots[r][:: self.layout.block_size], 0)


def make_pool(lengths: list[int], width: int, page: int, block: int, dtype: torch.dtype, seed: int) -> LatentPool:
    g = torch.Generator().manual_seed(seed)
    pages_needed = [math.ceil(n / page) for n in lengths]
    num_pages = 1 + sum(pages_needed) + 3
    perm = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()  # page 0 reserved, pages scattered
    latent = torch.randn(num_pages * page, 1, width, generator=g).to(dtype)
    slots = []
    for n, need in zip(lengths, pages_needed, strict=True):
        mine = torch.tensor([perm.pop() for _ in range(need)], dtype=torch.int64)
        pos = torch.arange(n)
        slots.append(mine[pos // page] * page + pos % page)
    return LatentPool(latent.to(DEVICE), slots, PoolLayout(page_size=page, block_size=block, num_kv_heads=1))


def select(pool: LatentPool, lengths: list[int], budget: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """A random selection per row (ascending, always ending in the final block), as CSR of block ids."""
    g = torch.Generator().manual_seed(seed)
    indptr, ids, chosen = [0], [], []
    bs = pool.layout.block_size
    for r, n in enumerate(lengths):
        nb = math.ceil(n / bs)
        if nb == 0:
            chosen.append([])
            indptr.append(indptr[-1])
            continue
        if nb <= budget:
            pos = list(range(nb))
        else:
            pos = [*sorted(torch.randperm(nb - 1, generator=g)[: budget - 1].tolist()), nb - 1]
        chosen.append(pos)
        ids += pool.blocks(r)[pos].tolist()
        indptr.append(indptr[-1] + len(pos))
    return (
        torch.tensor(indptr, dtype=torch.int32, device=DEVICE),
        torch.tensor(ids, dtype=torch.int32, device=DEVICE),
        chosen,
    )


def dense_masked(
    q: torch.Tensor, pool: LatentPool, lengths: list[int], chosen: list[list[int]], dv: int, scale: float
) -> torch.Tensor:
    """Dense attention over each request's tokens (by position), masked to the selected blocks; fp64."""
    bs = pool.layout.block_size
    out = torch.zeros(q.shape[0], q.shape[1], dv, dtype=torch.float64)
    for r, n in enumerate(lengths):
        if not chosen[r]:
            continue
        lat = pool.latent[pool.slots[r], 0].double().cpu()  # [n, D]
        s = (q[r].double().cpu() @ lat.T) * scale  # [H, n]
        keep = torch.zeros(n, dtype=torch.bool)
        for p in chosen[r]:
            keep[p * bs : (p + 1) * bs] = True
        s[:, ~keep] = float("-inf")
        out[r] = torch.softmax(s, -1) @ lat[:, :dv]
    return out


def last_lens(lengths: list[int], bs: int) -> torch.Tensor:
    return torch.tensor([(n - 1) % bs + 1 if n else 1 for n in lengths], dtype=torch.int32, device=DEVICE)


CASES = [
    # lengths, heads, kv_lora_rank, rope, page, block, budget
    ([37, 9, 64, 1], 4, 32, 16, 16, 4, 3),  # partial last blocks, a 1-token row, a row shorter than the budget
    ([100, 0, 33], 20, 48, 24, 8, 8, 5),  # an empty row; 20 heads = two head blocks; non-pow2 widths
    ([257, 130, 16, 75], 16, 64, 8, 32, 8, 40),  # mixed, page of 4 blocks, one row fully inside the budget
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_and_masked_dense(case: tuple, dtype: torch.dtype) -> None:  # type: ignore[type-arg]
    lengths, heads, dv, dr, page, block, budget = case
    pool = make_pool(lengths, dv + dr, page, block, dtype, seed=len(lengths) + heads)
    indptr, ids, chosen = select(pool, lengths, budget, seed=heads)
    q = torch.randn(len(lengths), heads, dv + dr, generator=torch.Generator().manual_seed(7)).to(dtype).to(DEVICE)
    lbl = last_lens(lengths, block)
    scale = 1.0 / math.sqrt(dv // 2 + dr)  # an MLA scale: not 1/sqrt(D)
    kw = dict(page_size=page, block_size=block, v_head_dim=dv, sm_scale=scale)
    ref, ref_lse = sparse_mla_decode_reference(q, pool.latent, indptr, ids, lbl, return_lse=True, **kw)
    out, lse = sparse_mla_decode(q, pool.latent, indptr, ids, lbl, return_lse=True, **kw)
    dense = dense_masked(q, pool, lengths, chosen, dv, scale)
    assert out.shape == (len(lengths), heads, dv) and out.dtype == dtype
    tol = TOL[dtype]
    assert (ref.double().cpu() - dense).abs().max() <= tol, "reference != masked dense"
    assert (out.double().cpu() - dense).abs().max() <= tol, "triton != masked dense"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert torch.allclose(lse[finite], ref_lse[finite], atol=1e-3)
    for r, n in enumerate(lengths):
        if n == 0:
            assert (out[r] == 0).all() and torch.isinf(lse[r]).all()


def test_full_selection_is_dense_attention() -> None:
    """Every block selected: exactly MLA's dense decode, softmax(q·latentᵀ)·kv_c over all tokens."""
    lengths = [45, 17]
    pool = make_pool(lengths, 40, 16, 8, torch.float32, seed=3)
    indptr, ids, chosen = select(pool, lengths, budget=100, seed=0)
    q = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = sparse_mla_decode(q, pool.latent, indptr, ids, last_lens(lengths, 8), page_size=16, block_size=8,
                            v_head_dim=32, sm_scale=0.3)  # fmt: skip
    for r, n in enumerate(lengths):
        lat = pool.latent[pool.slots[r], 0].double().cpu()
        want = torch.softmax(q[r].double().cpu() @ lat.T * 0.3, -1) @ lat[:, :32]
        assert torch.allclose(out[r].double().cpu(), want, atol=2e-5), r
        assert chosen[r] == list(range(math.ceil(n / 8)))


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_explicit_split_counts_and_workspace(splits: int) -> None:
    """Any split count gives the same result (the in-launch merge), with a caller-owned workspace reused."""
    lengths = [90, 31, 7]
    pool = make_pool(lengths, 24, 8, 4, torch.float32, seed=11)
    indptr, ids, _ = select(pool, lengths, budget=9, seed=2)
    q = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    lbl = last_lens(lengths, 4)
    ref = sparse_mla_decode_reference(q, pool.latent, indptr, ids, lbl, page_size=8, block_size=4, v_head_dim=16)
    ws = SparseMLADecodeWorkspace.allocate(4, 8, 5, 16, DEVICE)
    for _ in range(2):  # the counters are re-armed by the merging program
        out = torch.full((3, 5, 16), float("nan"), device=DEVICE)
        tk.launch(q, pool.latent, indptr, ids, lbl, 1 / math.sqrt(24), out, None, splits, page_size=8, block_size=4,
                  v_head_dim=16, workspace=ws, tile_tokens=16)  # fmt: skip
        assert torch.allclose(out, ref, atol=2e-5)
    assert (ws.counter == 0).all()


@pytest.mark.parametrize("splits", [1, 3])
def test_tiles_smaller_than_a_block(splits: int) -> None:
    """Blocks of 64 tokens read in 16-token steps: last blocks ending inside the first, second and last step,
    a 1-token row and a row shorter than the budget, against dense attention masked to the selected blocks."""
    lengths = [64 * 5 + 7, 64 * 3 + 20, 1, 64 * 2 + 64, 64 + 33]
    pool = make_pool(lengths, 40, 128, 64, torch.float32, seed=5)
    indptr, ids, chosen = select(pool, lengths, budget=3, seed=1)
    q = torch.randn(len(lengths), 3, 40, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    out = torch.full((len(lengths), 3, 32), float("nan"), device=DEVICE)
    tk.launch(q, pool.latent, indptr, ids, last_lens(lengths, 64), 0.2, out, None, splits, page_size=128,
              block_size=64, v_head_dim=32, tile_tokens=16)  # fmt: skip
    dense = dense_masked(q, pool, lengths, chosen, 32, 0.2)
    assert (out.double().cpu() - dense).abs().max() <= TOL[torch.float32]


def test_default_tiles() -> None:
    """64 latent tokens per step at kv_lora_rank 512, 16 with exact (fp32 p through tf32x3: smaller tiles keep
    registers from spilling), never below tl.dot's 16; the split count follows the tile."""
    assert tk.default_tile_tokens(512) == 64 and tk.default_tile_tokens(512, exact=True) == 16
    assert tk.default_tile_tokens(64) == 64 and tk.default_tile_tokens(4096) == 16
    cpu = torch.device("cpu")  # 2 fake SMs: 8 programs wanted, chunks of >= 2 steps
    assert tk.default_num_splits(1, 16, 8, 16, 512, cpu) == 1  # 128 tokens = 2 steps of 64
    assert tk.default_num_splits(1, 16, 8, 16, 512, cpu, exact=True) == 4  # 8 steps of 16


def test_split_rule_on_an_h200(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU of 132 SMs (an H200, faked), budget 2048 at block 16 (128 blocks per row): MLA aims at about one
    program per SM (16 rows: 9 splits, the sweep's best was 8; 1 row: capped at 16, chunks of 2 steps), GQA at
    4 (8 rows: capped at 8; 256 rows fill the GPU unsplit) -- results/gpu/2026-12-05-decode-step-bench-mla.json."""
    from vortex_torch.kernels.sparse_decode import triton_kernel as gqa

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: SimpleNamespace(multi_processor_count=132))
    gpu = torch.device("cuda")
    assert tk.default_num_splits(16, 16, 128, 16, 512, gpu) == 9
    assert tk.default_num_splits(1, 16, 128, 16, 512, gpu) == 16
    assert gqa.default_num_splits(8, 128, 16, 128, gpu) == 8
    assert gqa.default_num_splits(256, 128, 16, 128, gpu) == 1


def test_bad_inputs_name_the_problem() -> None:
    pool = make_pool([8], 40, 8, 8, torch.float32, seed=0)
    indptr, ids, _ = select(pool, [8], 1, 0)
    q = torch.randn(1, 2, 40, device=DEVICE)
    kw = dict(page_size=8, block_size=8)
    with pytest.raises(ValueError, match="latent width mismatch"):
        sparse_mla_decode_reference(q[..., :32], pool.latent, indptr, ids, last_lens([8], 8), v_head_dim=16, **kw)
    with pytest.raises(ValueError, match="v_head_dim"):
        sparse_mla_decode(q, pool.latent, indptr, ids, last_lens([8], 8), v_head_dim=41, **kw)
    with pytest.raises(ValueError, match="out must be"):
        sparse_mla_decode(q, pool.latent, indptr, ids, last_lens([8], 8), v_head_dim=32,
                          out=torch.empty(1, 2, 40, device=DEVICE), **kw)  # fmt: skip


# -- fp8 latent cache (SGLang's --kv-cache-dtype fp8_e4m3 / fp8_e5m2) ---------------------------------------------
FP8_RMSE = {torch.float8_e4m3fn: 0.06, torch.float8_e5m2: 0.12}


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("case", CASES[:2])
def test_fp8_latents_kernel_matches_reference_and_dense(case: tuple, kv_dtype: torch.dtype) -> None:  # type: ignore[type-arg]
    """fp8 latents holding ``latent / k_scale``: kernel == reference == masked dense over the dequantised latents
    (keys x k_scale, values x v_scale), and within fp8 tolerance of attention over the unquantised latents."""
    lengths, heads, dv, dr, page, block, budget = case
    pool = make_pool(lengths, dv + dr, page, block, torch.bfloat16, seed=5 + heads)
    k_scale, v_scale = 0.3, 0.45  # different on purpose: the kernel must apply each where it belongs
    lat8 = fp8.saturate_cast(pool.latent.float() / k_scale, kv_dtype)
    indptr, ids, chosen = select(pool, lengths, budget, seed=heads)
    q = torch.randn(len(lengths), heads, dv + dr, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    q = q.to(DEVICE)
    lbl = last_lens(lengths, block)
    scale = 1.0 / math.sqrt(dv // 2 + dr)
    kw = dict(page_size=page, block_size=block, v_head_dim=dv, sm_scale=scale, k_scale=k_scale, v_scale=v_scale)
    ref, ref_lse = sparse_mla_decode_reference(q, lat8, indptr, ids, lbl, return_lse=True, **kw)
    out, lse = sparse_mla_decode(q, lat8, indptr, ids, lbl, return_lse=True, **kw)
    out_t = sparse_mla_decode(q, lat8, indptr, ids, lbl, exact=False,
                              **{**kw, "k_scale": torch.tensor(k_scale), "v_scale": torch.tensor([v_scale])})
    out3 = torch.empty_like(out)
    tk.launch(q, lat8, indptr, ids, lbl, scale, out3, None, 3, page_size=page, block_size=block, v_head_dim=dv,
              k_scale=fp8.scale_tensor(k_scale, DEVICE), v_scale=fp8.scale_tensor(v_scale, DEVICE))
    # masked dense over the dequantised latents: keys scaled by k_scale, values by v_scale
    deq = lat8.float()
    key_pool = dataclasses.replace(pool, latent=deq * k_scale)
    dense_k = dense_masked(q, key_pool, lengths, chosen, dv, scale)  # values scaled by k_scale here
    dense = dense_k * (v_scale / k_scale)
    tol = TOL[torch.bfloat16]
    for what, o in (("reference", ref), ("triton", out), ("triton exact=False", out_t), ("triton 3 splits", out3)):
        err = (o.double().cpu() - dense).abs().max()
        assert err <= tol, f"{what} != masked dense over the dequantised latents ({kv_dtype}): {err:.3e}"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert torch.allclose(lse[finite], ref_lse[finite], atol=1e-3)
    # within fp8 tolerance of attention over the unquantised latents (values rescaled the same way)
    orig = dense_masked(q, dataclasses.replace(pool, latent=pool.latent.float()), lengths, chosen, dv, scale)
    orig = orig * (v_scale / k_scale)
    rows = [r for r, n in enumerate(lengths) if n]
    err = (out.double().cpu()[rows] - orig[rows]).square().mean().sqrt() / orig[rows].square().mean().sqrt()
    assert err < FP8_RMSE[kv_dtype], f"{kv_dtype}: rel RMSE {err:.3f} against the unquantised latents"


def test_fp8_latent_errors_name_the_fix() -> None:
    pool = make_pool([9], 24, 8, 4, torch.float32, seed=0)
    q = torch.randn(1, 2, 24, device=DEVICE)
    indptr, ids, _ = select(pool, [9], 3, seed=0)
    lat16 = pool.latent.to(torch.float16)
    with pytest.raises(ValueError, match="float8_e4m3fn / float8_e5m2"):
        sparse_mla_decode(q, lat16, indptr, ids, last_lens([9], 4), page_size=8, block_size=4, v_head_dim=16)
    out = torch.empty(1, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="need k_scale and v_scale"):
        tk.launch(q, pool.latent.to(torch.float8_e4m3fn), indptr, ids, last_lens([9], 4), 0.2, out, None, 1,
                  page_size=8, block_size=4, v_head_dim=16)
