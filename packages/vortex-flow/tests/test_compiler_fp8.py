"""fp8 in the flow compiler: an fp8 KV cache read with its per-layer scales, and aux fields stored in fp8.

* fp8 K/V (SGLang's ``--kv-cache-dtype fp8_*``) hold ``value / scale``; ``fields["k_scale"]`` / ``fields["v_scale"]``
  (``[1]`` fp32) are the layer's scales. The reference executor on the fp8 cache must equal the reference executor
  on the dequantised fp32 cache exactly, and the generated kernels (cache update, decode-step cache update,
  indexer: fused and row-wise kernels that read K/V) must match the reference.
* fp8 aux fields (``Geometry.dtype``): stores saturate at the fp8 maximum in both executors.

Pools are ragged (rows of 1 to 13 blocks, partial last blocks, scattered pages of two blocks, two KV heads).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vortex_torch.abs import Geometry, PoolLayout
from vortex_torch.abs.errors import FlowRuleError
from vortex_torch.abs.layout import DenseBlocks
from vortex_torch.flow.compiler.base import SelectionSpec
from vortex_torch.flow.compiler.reference import ReferenceExecutor
from vortex_torch.flow.compiler.triton_executor import TritonExecutor
from vortex_torch.flow.trace import trace_flow
from vortex_torch.kernels import fp8
from vortex_torch.kernels.select import default_budget, selection_indptr

_spec = importlib.util.spec_from_file_location("flows_for_tests", Path(__file__).with_name("flows_for_tests.py"))
assert _spec is not None and _spec.loader is not None
flows_for_tests = sys.modules.get("flows_for_tests") or importlib.util.module_from_spec(_spec)
if "flows_for_tests" not in sys.modules:
    sys.modules["flows_for_tests"] = flows_for_tests
    _spec.loader.exec_module(flows_for_tests)
FLOWS = flows_for_tests.FLOWS

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BS, PAGE, D, G, H = 4, 8, 24, 3, 2
SEQ_LENS = (1, 6, 23, 50)
K_SCALE, V_SCALE = 0.02, 0.05
#: flows whose cache update and indexer read K/V through every kind of generated kernel: fused cache ops
#: (centroid, binary, subblock, cache_ops), fused indexer GeMMs over K (heads, shape), row-wise dim=0 ops and
#: Conv1d directly on K/V (heads)
KV_FLOWS = ["centroid", "binary", "subblock", "cache_ops", "heads", "shape"]


@dataclass
class Pool:
    layout: PoolLayout
    num_blocks: int
    k: torch.Tensor  # [num_slots, H, D] fp32 values
    v: torch.Tensor
    dense: DenseBlocks
    selection: SelectionSpec
    q: torch.Tensor
    block_ids: torch.Tensor
    last_slots: torch.Tensor  # the last token slot of every complete block of the rows (a decode step's locs)


def make_pool(seed: int = 5, kv_amp: float = 1.0) -> Pool:
    gen = torch.Generator().manual_seed(seed)
    layout = PoolLayout(page_size=PAGE, block_size=BS, num_kv_heads=H)
    pages = [-(-n // PAGE) for n in SEQ_LENS]
    num_pages = sum(pages) + 3
    order = torch.randperm(num_pages, generator=gen).tolist()
    slots = []
    for n, n_pages in zip(SEQ_LENS, pages, strict=True):
        mine, order = order[:n_pages], order[n_pages:]
        slots.append(torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in mine])[:n])
    dense = DenseBlocks.from_token_slots(layout, slots)
    nb = layout.num_blocks(num_pages)
    k = torch.randn(num_pages * PAGE, H, D, generator=gen) * kv_amp
    v = torch.randn(num_pages * PAGE, H, D, generator=gen) * kv_amp
    budget = default_budget(dense.lengths(), 2, 0.25, 1, 1)
    sel = SelectionSpec(selection_indptr(budget).to(DEVICE), 1, 1)
    q = torch.randn(dense.num_rows, G, D, generator=gen)
    ids = torch.randperm(nb, generator=gen)[: nb - 5].to(torch.int32)
    last = torch.cat([s[BS - 1 :: BS] for s in slots])
    dense = DenseBlocks(*(getattr(dense, f).to(DEVICE) for f in ("indptr", "indices", "last_block_len", "row_of", "pos")))
    return Pool(layout, nb, k.to(DEVICE), v.to(DEVICE), dense, sel, q.to(DEVICE), ids.to(DEVICE), last.to(DEVICE))


def aux_fields(spec: dict[str, tuple[int, int]], n: int, dtype: torch.dtype, seed: int = 9) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, r, c, generator=gen).to(dtype).to(DEVICE) for name, (r, c) in sorted(spec.items())}


def fp8_cache(pool: Pool, kv_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The fp8 K/V (value / scale) with their scales, and the same values dequantised (fp32)."""
    k8 = fp8.saturate_cast(pool.k / K_SCALE, kv_dtype)
    v8 = fp8.saturate_cast(pool.v / V_SCALE, kv_dtype)
    return {
        "k": k8, "v": v8,
        "k_scale": fp8.scale_tensor(K_SCALE, DEVICE), "v_scale": fp8.scale_tensor(V_SCALE, DEVICE),
    }  # fmt: skip


def dequantised(cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"k": cache["k"].float() * K_SCALE, "v": cache["v"].float() * V_SCALE}


def select(ex: object, pool: Pool, fields: dict[str, torch.Tensor]) -> list[int]:
    out = torch.full((pool.selection.total,), -1, dtype=torch.int32, device=DEVICE)
    ex.run(pool.q, fields, pool.dense, pool.selection, out)  # type: ignore[attr-defined]
    return out.tolist()


def clone(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in fields.items()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("vortex_cache_fp8"))


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("flow_name", KV_FLOWS)
def test_fp8_kv_compiled_equals_reference_equals_dequantised(flow_name: str, kv_dtype: torch.dtype, cache_dir: str) -> None:
    pool = make_pool()
    geo8 = Geometry(block_size=BS, head_dim=D, group_size=G, dtype=torch.float32, kv_dtype=kv_dtype)
    geo32 = Geometry(block_size=BS, head_dim=D, group_size=G, dtype=torch.float32, kv_dtype=torch.float32)
    traced8 = trace_flow(FLOWS[flow_name](), geo8)
    traced32 = trace_flow(FLOWS[flow_name](), geo32)
    kv8 = fp8_cache(pool, kv_dtype)
    aux = aux_fields(traced8.fields, pool.num_blocks, torch.float32)
    # the rule: the reference on the fp8 cache == the reference on the dequantised fp32 cache, exactly
    ref = ReferenceExecutor(traced8, pool.layout)
    want = {**kv8, **clone(aux)}
    ref.run_cache(want, pool.block_ids)
    deq = {**dequantised(kv8), **clone(aux)}
    ReferenceExecutor(traced32, pool.layout).run_cache(deq, pool.block_ids)
    for name in aux:
        torch.testing.assert_close(want[name], deq[name], rtol=0, atol=0, msg=f"{flow_name}: {name} (reference)")
    sel_ref = select(ref, pool, clone(want))
    assert sel_ref == select(ReferenceExecutor(traced32, pool.layout), pool, clone(deq))
    # the generated kernels == the reference (fp32 rounding order only)
    tri = TritonExecutor(traced8, pool.layout, block_chunk=8, cache_dir=cache_dir)
    got = {**kv8, **clone(aux)}
    tri.run_cache(got, pool.block_ids)
    for name in aux:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=f"{flow_name}: {name} (triton)")
    assert select(tri, pool, clone(want)) == sel_ref, f"{flow_name}: selections differ\n{tri.source}"
    # a decode step's cache update (the kernel finds the completed blocks from the token slots)
    step_ref, step_tri = {**kv8, **clone(aux)}, {**kv8, **clone(aux)}
    completed = pool.layout.block_id(pool.last_slots.cpu().repeat_interleave(H), torch.arange(H).repeat(len(pool.last_slots)))
    ref.run_cache(step_ref, completed.to(torch.int32).to(DEVICE))
    tri.run_cache_decode(step_tri, pool.last_slots)
    for name in aux:
        torch.testing.assert_close(step_tri[name], step_ref[name], rtol=1e-4, atol=1e-5, msg=f"{flow_name}: {name} (decode)")


def test_fp8_kv_without_its_scale_names_the_fix(cache_dir: str) -> None:
    pool = make_pool()
    geo = Geometry(block_size=BS, head_dim=D, group_size=G, dtype=torch.float32, kv_dtype=torch.float8_e4m3fn)
    traced = trace_flow(FLOWS["centroid"](), geo)
    kv8 = fp8_cache(pool, torch.float8_e4m3fn)
    fields = {"k": kv8["k"], "v": kv8["v"], **aux_fields(traced.fields, pool.num_blocks, torch.float32)}
    for ex in (ReferenceExecutor(traced, pool.layout), TritonExecutor(traced, pool.layout, cache_dir=cache_dir)):
        with pytest.raises(ValueError, match=r"fields\['k_scale'\], a \[1\] float32 tensor"):
            ex.run_cache(fields, pool.block_ids)
        bad = {**fields, "k_scale": torch.ones(2, device=DEVICE)}
        with pytest.raises(ValueError, match=r"must be a \[1\] float32 tensor"):
            ex.run_cache(bad, pool.block_ids)


def test_a_field_named_like_a_kv_scale_is_a_flow_rule_error() -> None:
    flow = flows_for_tests.SpecFlow(
        "bad", lambda _bs, d: {"k_scale": (1, d)}, flows_for_tests.centroid, flows_for_tests._centroid_indexer
    )
    with pytest.raises(FlowRuleError, match="fp8 KV cache's dequantisation scale"):
        trace_flow(flow, Geometry(block_size=BS, head_dim=D, group_size=G))


@pytest.mark.parametrize("aux_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("flow_name", ["centroid", "binary", "subblock", "state"])
def test_fp8_aux_fields_saturate_and_match_the_reference(flow_name: str, aux_dtype: torch.dtype, cache_dir: str) -> None:
    """Aux fields in fp8: both executors store ``clamp(value, ±max)`` rounded to nearest; keys large enough that
    some summaries (e.g. a block's max) exceed e4m3's 448."""
    pool = make_pool(seed=3, kv_amp=150.0)
    geo = Geometry(block_size=BS, head_dim=D, group_size=G, dtype=aux_dtype, kv_dtype=torch.float32)
    traced = trace_flow(FLOWS[flow_name](), geo)
    base = {"k": pool.k, "v": pool.v, **aux_fields(traced.fields, pool.num_blocks, aux_dtype)}
    want, got = clone(base), clone(base)
    ReferenceExecutor(traced, pool.layout).run_cache(want, pool.block_ids)
    tri = TritonExecutor(traced, pool.layout, block_chunk=8, cache_dir=cache_dir)
    tri.run_cache(got, pool.block_ids)
    top = fp8.FP8_MAX[aux_dtype]
    saturated = False
    for name in traced.fields:
        w, g = want[name].float(), got[name].float()
        assert torch.isfinite(g).all() and g.abs().max() <= top, f"{name}: not saturated"
        saturated |= bool((w.abs() == top).any())
        # both round to nearest even (the interpreter is patched to, as a GPU does): only fp32 results that sit
        # at a rounding boundary (different summation order) may differ, by one fp8 step
        step = 0.25 if aux_dtype == torch.float8_e4m3fn else 0.5
        torch.testing.assert_close(g, w, rtol=step, atol=2**-6, msg=f"{flow_name}: {name}")
        assert (g != w).float().mean() <= 0.01, f"{flow_name}: {name}: {(g != w).float().mean():.1%} differ"
    if aux_dtype == torch.float8_e4m3fn and flow_name == "binary":
        assert saturated, "the test should exercise saturation (a block's max key above 448)"
    # the same stored summaries give the same selection
    assert select(tri, pool, clone(want)) == select(ReferenceExecutor(traced, pool.layout), pool, clone(want))


_COMPILE_FOR_SM90 = """
import importlib.util, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

for path, kernels in json.loads(sys.argv[1]).items():
    spec = importlib.util.spec_from_file_location("generated", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, sig in kernels.items():
        fn = getattr(mod, name)
        consts = {"BS": 16, "BS0": 64, "FENCE": True, "APPROX": True, "LOW_BIT": 0, "SINGLE_TILE": True, "BLOCK_N": 64,
                  "GATHER": False}
        full = {a: sig.get(a, "constexpr" if a in consts else "i32") for a in fn.arg_names}
        for a in ("indptr", "indices", "block_ids", "sel_indptr", "counter", "sel_out", "dense_indptr",
                  "dense_indices"):
            if a in full:
                full[a] = "*i32"
        if "locs" in full:
            full["locs"] = "*i64"
        if "tol_bits" in full:
            full["tol_bits"] = "i64"
        cx = {a: v for a, v in consts.items() if a in full}
        triton.compile(ASTSource(fn, full, constexprs=cx), target=GPUTarget("cuda", 90, 32))
        print("compiled", name)
"""

_TRITON_TY = {torch.float8_e4m3fn: "*fp8e4nv", torch.float8_e5m2: "*fp8e5", torch.float32: "*fp32",
              torch.bfloat16: "*bf16"}  # fmt: skip


def _signature(args: list, kv: torch.dtype, aux: torch.dtype) -> dict[str, str]:  # type: ignore[type-arg]
    sig = {}
    for a in args:
        kind, _, key = a.source.partition(":")
        if kind == "entry":
            sig[a.name] = "*bf16" if key == "q" else _TRITON_TY[kv if key in ("k", "v") else aux]
        elif kind in ("buffer", "param", "scale"):
            sig[a.name] = "*fp32"
        else:
            sig[a.name] = "i32"
    return sig


@pytest.mark.parametrize(
    ("kv", "aux"),
    [(torch.float8_e4m3fn, torch.bfloat16), (torch.float8_e5m2, torch.float32), (torch.bfloat16, torch.float8_e4m3fn),
     (torch.float8_e4m3fn, torch.float8_e5m2)],
    ids=["kv_e4m3-aux_bf16", "kv_e5m2-aux_f32", "kv_bf16-aux_e4m3", "kv_e4m3-aux_e5m2"],
)  # fmt: skip
def test_fp8_generated_kernels_compile_for_sm90(kv: torch.dtype, aux: torch.dtype, tmp_path: Path) -> None:
    """Generated kernels with fp8 K/V (scale loads) and fp8 aux fields (``store_cast``'s compile-time branch),
    lowered to a cubin for an H100 without a GPU (one dtype pair a test, so that pytest-xdist's workers share
    the minutes it takes)."""
    import json
    import os
    import subprocess

    pytest.importorskip("triton.backends.nvidia.compiler")
    jobs: dict[str, dict[str, dict[str, str]]] = {}
    geo = Geometry(block_size=16, head_dim=24, group_size=3, dtype=aux, kv_dtype=kv)
    for name in ("centroid", "heads", "subblock", "state"):
        ex = TritonExecutor(trace_flow(FLOWS[name](), geo), PoolLayout(16, 16, 2), cache_dir=str(tmp_path))
        kernels = {k.name: _signature(k.args, kv, aux) for k in (ex.indexer, ex.cache_kernel, ex.cache_kernel_decode)
                   if k is not None}  # fmt: skip
        jobs.setdefault(ex.source_path, {}).update(kernels)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90, json.dumps(jobs)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.stdout.count("compiled ") == sum(len(v) for v in jobs.values())
