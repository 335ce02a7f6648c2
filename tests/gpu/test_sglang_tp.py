"""Tensor parallelism (issue 12): Vortex inside SGLang at ``tp_size=2`` (needs 2 GPUs: the ``nvidia-h200-x2`` kind).

SGLang splits attention heads over the attention-TP ranks (``get_parallel().attn_tp_size``): with the harness's
tiny model (H_q 4, H_kv 2, D 64) each rank holds 2 query heads and 1 KV head (G 2), its own K/V pool for them and
its own attention backend. Vortex's geometry, aux fields, plan and selection are therefore per rank, computed from
that rank's heads only; the ranks exchange nothing Vortex computes. The model is ``$VORTEX_TINY_MODEL`` when its
heads split over 2 ranks, else a tiny model with 2 KV heads built here (CPU init, seconds).

Three engines at tp 2, one after the other, all on the flashinfer base with page size 16, overlap scheduler off:

1. ``plain``: stock SGLang, CUDA graphs up to batch 4;
2. ``full``: + Vortex with a budget covering every block and ``exact_attention=True`` (FlashInfer's own decode
   kernel over the selected, i.e. all, tokens: the strict setting of test_sglang_dense_equivalence), CUDA
   graphs up to batch 4. Every greedy token equals (1)'s and log-probs agree to 1e-3, on the harness's mixed
   (eager), small (CUDA graph) and prefix-hit workloads;
3. ``sparse``: + Vortex with the quick start's config (32-block budget, layer 0 dense), CUDA graphs up to batch 2
   only and ``VORTEX_DEBUG_DUMP`` set, so batches above 2 decode eagerly and every rank dumps its sparse steps
   under ``tp<rank>/`` (as test_sglang_sparse, there on one GPU). Every record of both ranks replays through the
   reference executor (``debug_dump.replay``) with that rank's geometry: selections equal to the reference's top-k
   (ties aside), aux fields and attention output close. The two ranks dumped the same steps with the same plan
   (rows, budgets) but their own heads' queries.

CUDA graph vs eager at tp 2: in each engine, prompts decoded in a captured batch agree with their eager decode in
the batch of 6, up to near-ties (graph and eager decode split the KV differently, stock FlashInfer too).

NVLink multicast stays off: ``tools/device/remote.sh`` exports ``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` and ``NVSHMEM_DISABLE_NVLS=1``; every engine here sets them again before it
starts (the scheduler processes inherit them; SGLang keeps a set ``NCCL_NVLS_ENABLE`` unless ``enable_nccl_nvls``
or ``enable_symm_mem`` is on, and its custom all-reduce takes a multicast address only from torch symmetric
memory, which the second variable disables), passes none of SGLang's multicast options, and a test checks both
after every engine start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vortex_gpu_harness import (
    FULL_BUDGET_VORTEX,
    MIXED_LENGTHS,
    QUICKSTART_VORTEX,
    ROOT,
    Gen,
    assert_all_close,
    assert_full_budget_matches,
    assert_replays_clean,
    engine,
    fresh_dir,
    full_budget_workloads,
    generate,
    prompts,
    skip_reason,
    tiny_model,
    with_shared_prefix,
)

TP = 2
#: eager decode steps each rank dumps (the prefix-hit batch's 3, then the mixed batch's first 9)
DUMP_STEPS = 12
#: NVLink multicast off in NCCL, PyTorch symmetric memory and NVSHMEM (tools/device/remote.sh exports the same)
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
#: SGLang options that turn multicast (NVLS / symmetric memory) on: never passed here
MULTICAST_OPTIONS = ("enable_nccl_nvls", "enable_symm_mem", "enable_torch_symm_mem")


def tp_skip_reason() -> str | None:
    """Why the TP suite cannot run here (the harness's reasons, then fewer than ``TP`` GPUs), or None."""
    reason = skip_reason()
    if reason is not None:
        return reason
    import torch

    if torch.cuda.device_count() < TP:
        return (
            f"needs {TP} GPUs for tp_size={TP} (the nvidia-h200-x2 kind), {torch.cuda.device_count()} visible"
        )
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sglang,
    pytest.mark.skipif(tp_skip_reason() is not None, reason=str(tp_skip_reason())),
]


@dataclass(frozen=True)
class RankGeometry:
    """The attention geometry of one TP rank, as SGLang splits the model (``ModelConfig.get_num_kv_heads``)."""

    q_heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


def _config(model: str) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((Path(model) / "config.json").read_text())
    return cfg


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``$VORTEX_TINY_MODEL`` when its query and KV heads split over ``TP`` ranks, else a tiny model with ``TP`` KV
    heads (and the same vocabulary, which :func:`prompts` draws from)."""
    cfg = _config(tiny_model())
    if cfg["num_attention_heads"] % TP == 0 and cfg["num_key_value_heads"] % TP == 0:
        return tiny_model()
    out = tmp_path_factory.mktemp("tp") / f"tiny-kv{TP}"
    subprocess.run([sys.executable, str(ROOT / "tools" / "device" / "mk_tiny.py"), "--preset", "tiny",
                    "--kv-heads", str(TP), "--vocab", str(cfg["vocab_size"]), "--device", "cpu", str(out)],
                   check=True)  # fmt: skip
    return str(out)


@pytest.fixture(scope="module")
def rank_geometry(tp_model: str) -> RankGeometry:
    cfg = _config(tp_model)
    h_q, h_kv = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"])
    assert h_q % TP == 0 and h_kv % TP == 0, (
        f"{tp_model}: {h_q} query / {h_kv} KV heads do not split over {TP}"
    )
    return RankGeometry(h_q // TP, h_kv // TP, int(cfg.get("head_dim") or cfg["hidden_size"] // h_q))


@contextlib.contextmanager
def tp_engine(model: str, out: dict[str, Any], **kwargs: Any) -> Iterator[Any]:
    """An engine of ``model`` at ``tp_size=TP`` on the flashinfer base, NVLink multicast off; records what the
    multicast check reads (the environment and the resolved options, after SGLang set its environment) in
    ``out["multicast"]``."""
    assert not set(MULTICAST_OPTIONS) & set(kwargs), "this suite never turns NVLink multicast on"
    os.environ.update(NO_MULTICAST)  # inherited by the scheduler processes SGLang starts
    with engine(model_path=model, tp_size=TP, attention_backend="flashinfer", dtype="bfloat16", page_size=16,
                disable_overlap_schedule=True, **kwargs) as eng:  # fmt: skip
        sa = eng.server_args
        out["multicast"] = {
            "tp_size": int(sa.tp_size),
            "env": {k: os.environ.get(k) for k in NO_MULTICAST},
            "options": {k: bool(getattr(sa, k, False)) for k in MULTICAST_OPTIONS},
        }
        yield eng


@pytest.fixture(scope="module")
def plain_run(tp_model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # prefill CUDA graphs off: the same prefill path as under Vortex (which forces it)
    with tp_engine(tp_model, out, cuda_graph_max_bs_decode=4, disable_prefill_cuda_graph=True) as eng:
        out.update(full_budget_workloads(eng))
    return out


@pytest.fixture(scope="module")
def full_run(tp_model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    vortex = {
        **FULL_BUDGET_VORTEX,
        "attention_backend": "flashinfer",
        "dtype": "bfloat16",
        "exact_attention": True,
    }
    with tp_engine(tp_model, out, cuda_graph_max_bs_decode=4, vortex=vortex) as eng:
        out.update(full_budget_workloads(eng))
    return out


@pytest.fixture(scope="module")
def sparse_run(tp_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vortex_torch.engine.sgl.debug_dump import DUMP_ENV, DUMP_STEPS_ENV

    # not under $VORTEX_OUT: at most 8 files come back from the GPU machine
    dump_dir = fresh_dir(tmp_path_factory.mktemp("vortex-tp") / "dump")
    os.environ[DUMP_ENV], os.environ[DUMP_STEPS_ENV] = str(dump_dir), str(DUMP_STEPS)  # read by every rank
    mixed = prompts(MIXED_LENGTHS)
    out: dict[str, Any] = {"dump_dir": dump_dir}
    try:
        with tp_engine(tp_model, out, cuda_graph_max_bs_decode=2, vortex=QUICKSTART_VORTEX) as eng:
            # prefill only: its pages enter the radix cache
            out["warm"] = generate(eng, [mixed[3]], max_new=1)
            # bs 3, the first prompt sharing 1024 tokens with the previous one: eager, dumped
            hit = with_shared_prefix(mixed[3], 1024, 150)
            out["prefix"] = generate(eng, [hit, *prompts([600, 800], seed=5)], max_new=4)
            out["mixed"] = generate(eng, mixed)  # bs 6: eager, dumped
            out["graph"] = generate(eng, mixed[2:4])  # bs 2: CUDA graph
    finally:
        os.environ.pop(DUMP_ENV, None)
        os.environ.pop(DUMP_STEPS_ENV, None)
    return out


# -- (a) full budget at tp 2 == plain SGLang at tp 2 ------------------------------------------------------------------
def test_full_budget_at_tp2_matches_plain_sglang_at_tp2(
    plain_run: dict[str, Any], full_run: dict[str, Any]
) -> None:
    assert_full_budget_matches(
        "tp2 bf16-flashinfer-exact", plain_run, full_run, logprob_atol=1e-3, strict=True
    )
    for res in (plain_run, full_run):
        assert res["prefix"][0].cached_tokens >= 1024
        assert all(g.cached_tokens > 0 for g in res["small"])  # the second batch hits the first one's prompts


# -- (b) sparse at tp 2: each rank's selections == the reference's for that rank's heads -----------------------------
def _records_by_rank(dump_dir: Path) -> dict[str, list[dict[str, Any]]]:
    from vortex_torch.engine.sgl.debug_dump import load_records

    ranks = sorted(p.name for p in dump_dir.iterdir() if p.is_dir())
    assert ranks == [f"tp{r}" for r in range(TP)], f"expected one dump directory per rank, found {ranks}"
    return {rank: load_records(str(dump_dir / rank)) for rank in ranks}


def test_sparse_tp2_every_rank_replays_clean_through_the_reference(
    sparse_run: dict[str, Any], rank_geometry: RankGeometry
) -> None:
    geo = rank_geometry
    for rank, records in _records_by_rank(sparse_run["dump_dir"]).items():
        for rec in records:
            # the rank's own geometry: its KV heads, G query heads per KV head, one row per (request, KV head)
            rows, group, dim = rec["q"].shape
            assert (rec["num_kv_heads"], group, dim) == (geo.kv_heads, geo.group, geo.head_dim), (
                f"{rank} step {rec['step']}: H_kv, G, D = {rec['num_kv_heads']}, {group}, {dim}, expected the "
                f"rank's {geo.kv_heads}, {geo.group}, {geo.head_dim}"
            )
            assert rows == rec["seq_lens"].numel() * geo.kv_heads
        assert_replays_clean(records, rank, DUMP_STEPS)


def test_sparse_tp2_ranks_decode_the_same_steps_with_their_own_heads(sparse_run: dict[str, Any]) -> None:
    import torch

    by_rank = {
        rank: {(r["step"], r["layer"]): r for r in records}
        for rank, records in _records_by_rank(sparse_run["dump_dir"]).items()
    }
    rank0, *others = by_rank.values()
    for other in others:
        assert set(other) == set(rank0), "every rank dumps the same (step, layer) records"
        for key, a in rank0.items():
            b = other[key]
            for name in ("seq_lens", "dense_indptr", "last_block_len", "budget", "sel_indptr"):
                assert torch.equal(a[name], b[name]), (
                    f"{key}: {name} differs between ranks (one batch, one plan)"
                )
            assert a["q"].shape == b["q"].shape
            assert not torch.equal(a["q"], b["q"]), (
                f"{key}: two ranks hold the same queries (not their own heads)"
            )


def test_sparse_tp2_prefix_hit_was_served_from_the_cache(sparse_run: dict[str, Any]) -> None:
    assert sparse_run["prefix"][0].cached_tokens >= 1024


# -- (c) CUDA graph vs eager at tp 2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["plain_run", "full_run"])
def test_graph_and_eager_decode_agree_at_tp2(run: str, request: pytest.FixtureRequest) -> None:
    res = request.getfixturevalue(run)
    assert_all_close(res["mixed"][1:4], res["small"], f"tp2 {run}: eager (bs 6) vs CUDA graph (bs 3)")


def test_sparse_graph_and_eager_decode_agree_at_tp2(sparse_run: dict[str, Any]) -> None:
    mixed: list[Gen] = sparse_run["mixed"]
    assert_all_close(mixed[2:4], sparse_run["graph"], "tp2 sparse: eager (bs 6) vs CUDA graph (bs 2)")
    assert all(len(g.tokens) == 24 for g in mixed)


# -- NVLink multicast ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["plain_run", "full_run", "sparse_run"])
def test_engines_ran_at_tp2_with_nvlink_multicast_off(run: str, request: pytest.FixtureRequest) -> None:
    seen = request.getfixturevalue(run)["multicast"]
    assert seen["tp_size"] == TP
    assert seen["env"] == NO_MULTICAST, f"{run}: the environment after the engine started: {seen['env']}"
    assert not any(seen["options"].values()), f"{run}: SGLang multicast options on: {seen['options']}"
