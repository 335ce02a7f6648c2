"""The vFlowMLA contract: ``create_cache(block_size, kv_lora_rank, qk_rope_head_dim)``, the provided
``cache["latent"]`` (no k/v; declaring any of the three is an error), the absorbed query ``[B, H_q, kv_lora_rank +
qk_rope_head_dim]``, and the same flow rules and file:line errors as vFlow. Each flow is a real ``.py`` file
loaded with ``build_vflow`` and traced for an ``MLAGeometry`` (DeepSeek-V2/V3: 512 + 64 = 576)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vortex_torch.abs.context import Geometry
from vortex_torch.abs.errors import FlowRuleError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.mla import MLAGeometry
from vortex_torch.flow import registry, vFlowMLA
from vortex_torch.flow.loader import build_vflow
from vortex_torch.flow.trace import TracedFlow, trace_flow

HEADER = """\
import torch
from vortex_torch.flow import vFlow, vFlowMLA, register
from vortex_torch import indexer as I
from vortex_torch import cache as C
"""
INIT = """\
self.mean = I.Mean(dim=1)
self.gemm = I.GeMM()
self.topk = I.topK()
self.cmean = C.Mean(dim=1)
"""
INDEXER = """\
q_mean = self.mean(q, ctx=ctx)
score = self.gemm(q_mean, cache["centroids"], ctx=ctx)
self.topk(score, o, ctx=ctx)
"""
CACHE = """\
self.cmean(cache["latent"], cache["centroids"], loc=loc, ctx=ctx)
"""
CREATE = """\
return {"centroids": (1, kv_lora_rank + qk_rope_head_dim)}
"""
SIG = "block_size, kv_lora_rank, qk_rope_head_dim"

DEEPSEEK = MLAGeometry.of(block_size=16, kv_lora_rank=512, qk_rope_head_dim=64, num_heads=16)


def _body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", " " * 8)


def mla_source(
    name: str,
    *,
    init: str = INIT,
    indexer: str = INDEXER,
    cache: str = CACHE,
    create: str = CREATE,
    sig: str = SIG,
    base: str = "vFlowMLA",
) -> str:
    return (
        HEADER
        + f"\n\n@register({name!r})\nclass Flow({base}):\n"
        + "    def __init__(self):\n        super().__init__()\n"
        + _body(init)
        + "\n    def forward_indexer(self, q, o, cache, ctx):\n"
        + _body(indexer)
        + "\n    def forward_cache(self, cache, loc, ctx):\n"
        + _body(cache)
        + f"\n    def create_cache(self, {sig}):\n"
        + _body(create)
    )


def write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "mla_flow.py"
    path.write_text(source)
    return path


def line_of(path: Path, needle: str) -> int:
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert hits, f"{needle!r} not in {path}"
    return hits[0]


def load_trace(path: Path, geometry: Geometry = DEEPSEEK) -> TracedFlow:
    return trace_flow(build_vflow("mla", str(path)), geometry)


def fails(tmp_path: Path, needle: str | None, *fragments: str, geometry: Geometry = DEEPSEEK, **parts: str) -> str:
    """Write an MLA flow with the given parts; tracing must raise a FlowRuleError naming the file (and the line
    holding ``needle``) with every fragment and a fix."""
    path = write(tmp_path, mla_source("mla", **parts))
    with pytest.raises(FlowRuleError) as info:
        load_trace(path, geometry)
    msg = str(info.value)
    where = f"{path.name}:{line_of(path, needle)}" if needle is not None else path.name
    assert where in msg, f"expected {where} in: {msg}"
    for frag in fragments:
        assert frag in msg, f"expected {frag!r} in: {msg}"
    assert "Fix" in msg, msg
    return msg


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VORTEX_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("VORTEX_FLOWS", raising=False)
    with registry.isolated(clear=True):
        yield


# -- the contract --------------------------------------------------------------------------------------------------
def test_good_mla_flow_traces_with_latent_and_absorbed_query(tmp_path: Path) -> None:
    path = write(tmp_path, mla_source("mla"))
    traced = load_trace(path)
    assert isinstance(traced.flow, vFlowMLA)
    assert traced.fields == {"centroids": (1, 576)}
    q = traced.indexer.entries["q"]
    assert (q.inner, q.format) == ((16, 576), FORMAT.BATCHED)  # [B, H_q, kv_lora_rank + qk_rope_head_dim]
    # the latent is the framework's K buffer (one head) under the author's name; there is no v
    latent = traced.cache.entries["k"]
    assert (latent.inner, latent.format, latent.label) == ((16, 576), FORMAT.PAGED, "latent")
    assert "v" not in traced.cache.entries and "v" not in traced.indexer.entries
    assert traced.cache.read_fields() == {"k"}
    assert [n.op.name for n in traced.indexer.nodes] == ["Mean", "GeMM", "topK"]
    assert not torch.cuda.is_initialized()


class _Probe(vFlowMLA):
    """A minimal MLA flow that records what create_cache receives."""

    def __init__(self) -> None:
        super().__init__()
        from vortex_torch import cache as C
        from vortex_torch import indexer as I

        self.mean, self.gemm, self.topk, self.cmean = I.Mean(dim=1), I.GeMM(), I.topK(), C.Mean(dim=1)
        self.seen: list[tuple[int, int, int]] = []

    def forward_indexer(self, q, o, cache, ctx):  # type: ignore[no-untyped-def]
        self.topk(self.gemm(self.mean(q, ctx=ctx), cache["c"], ctx=ctx), o, ctx=ctx)

    def forward_cache(self, cache, loc, ctx):  # type: ignore[no-untyped-def]
        self.cmean(cache["latent"], cache["c"], loc=loc, ctx=ctx)

    def create_cache(self, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int) -> dict[str, tuple[int, int]]:
        self.seen.append((block_size, kv_lora_rank, qk_rope_head_dim))
        return {"c": (1, kv_lora_rank + qk_rope_head_dim)}


def test_create_cache_gets_the_latent_split() -> None:
    """create_cache receives (block_size, kv_lora_rank, qk_rope_head_dim), not the latent width."""
    flow = _Probe()
    traced = trace_flow(flow, MLAGeometry.of(block_size=32, kv_lora_rank=96, qk_rope_head_dim=32, num_heads=4))
    assert flow.seen[-1] == (32, 96, 32)
    assert traced.fields == {"c": (1, 128)}
    assert traced.cache.entries["k"].inner == (32, 128)
    assert traced.indexer.entries["q"].inner == (4, 128)


def test_initialize_and_meta_info() -> None:
    flow = _Probe()
    flow.initialize(16, 512, 64, torch.bfloat16, torch.bfloat16, torch.float32)
    assert flow.seen[-1] == (16, 512, 64)
    assert flow.framework_fields == ("latent",)
    meta = flow.get_cache_meta_info()
    assert meta == {"latent": ((16, 576), torch.bfloat16), "c": ((1, 576), torch.float32)}
    assert flow.get_token_ratio() == pytest.approx((16 * 576 * 2 + 576 * 4) / (16 * 576 * 2))
    assert flow.aux_bytes_per_block() == 576 * 4
    flow.initialize_for(MLAGeometry.of(block_size=32, kv_lora_rank=128, qk_rope_head_dim=32, num_heads=2))
    assert flow.get_cache_meta_info()["latent"] == ((32, 160), torch.bfloat16)
    with pytest.raises(TypeError, match="MLAGeometry"):
        flow.initialize_for(Geometry())


# -- errors: declared fields ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["latent", "k", "v"])
def test_declaring_a_framework_field_is_an_error(tmp_path: Path, field: str) -> None:
    msg = fails(
        tmp_path,
        f'"{field}": (block_size',
        f"create_cache declares {field!r}",
        create=f'return {{"centroids": (1, kv_lora_rank + qk_rope_head_dim), "{field}": (block_size, 576)}}\n',
    )
    assert ("provided automatically" if field == "latent" else "has no 'k' or 'v'") in msg


@pytest.mark.parametrize("field", ["k", "v"])
def test_reading_k_or_v_is_an_error(tmp_path: Path, field: str) -> None:
    fails(
        tmp_path,
        f'cache["{field}"]',
        f"reads cache[{field!r}]",
        "read cache['latent']",
        cache=f'self.cmean(cache["{field}"], cache["centroids"], loc=loc, ctx=ctx)\n',
    )


def test_writing_the_latent_is_an_error(tmp_path: Path) -> None:
    fails(
        tmp_path,
        'cache["latent"], loc=loc',
        "not k, v or an MLA flow's latent",
        init=INIT + "self.fill = C.Fill(0.0)\nself.cmax = C.Max(dim=1)\n",
        cache=CACHE + 'self.cmax(cache["latent"], cache["latent"], loc=loc, ctx=ctx)\n',
    )


def test_unused_field_names_the_latent(tmp_path: Path) -> None:
    fails(
        tmp_path,
        '"extra"',
        "never written",
        "cache['latent']",
        create='return {"centroids": (1, kv_lora_rank + qk_rope_head_dim), "extra": (1, 1)}\n',
    )


# -- errors: same rules as vFlow ------------------------------------------------------------------------------------
def test_native_torch_op_on_the_absorbed_query(tmp_path: Path) -> None:
    fails(tmp_path, "q.mean(dim=1)", "'.mean'", indexer="x = q.mean(dim=1)\n" + INDEXER)


def test_op_instance_twice(tmp_path: Path) -> None:
    fails(
        tmp_path,
        "q2 = self.mean",
        "called twice",
        indexer="q1 = self.mean(q, ctx=ctx)\nq2 = self.mean(q, ctx=ctx)\n" + INDEXER,
    )


def test_missing_topk(tmp_path: Path) -> None:
    fails(
        tmp_path,
        "def forward_indexer",
        "never selects blocks",
        indexer='self.gemm(self.mean(q, ctx=ctx), cache["centroids"], ctx=ctx)\n',
    )


# -- errors: the wrong kind of flow or model -------------------------------------------------------------------------
def test_mla_flow_with_a_gqa_create_cache_signature(tmp_path: Path) -> None:
    fails(
        tmp_path,
        "def create_cache",
        "is a vFlowMLA, whose create_cache takes (block_size, kv_lora_rank, qk_rope_head_dim)",
        sig="block_size, head_dim",
        create='return {"centroids": (1, head_dim)}\n',
    )


def test_gqa_flow_with_an_mla_create_cache_signature(tmp_path: Path) -> None:
    fails(
        tmp_path,
        "def create_cache",
        "is a vFlow, whose create_cache takes (block_size, head_dim)",
        "vFlowMLA",
        base="vFlow",
        cache='self.cmean(cache["k"], cache["centroids"], loc=loc, ctx=ctx)\n',
        geometry=Geometry(),
    )


def test_mla_flow_on_a_gqa_model(tmp_path: Path) -> None:
    fails(tmp_path, "@register", "is a vFlowMLA", "MHA/GQA", geometry=Geometry())


def test_gqa_flow_on_an_mla_model(tmp_path: Path) -> None:
    fails(
        tmp_path,
        "@register",
        "is a vFlow",
        "uses MLA",
        "write the flow as a vFlowMLA",
        base="vFlow",
        sig="block_size, head_dim",
        create='return {"centroids": (1, head_dim)}\n',
        cache='self.cmean(cache["k"], cache["centroids"], loc=loc, ctx=ctx)\n',
    )


def test_mla_geometry_validates() -> None:
    assert DEEPSEEK.kv_lora_rank == 512 and DEEPSEEK.head_dim == 576 and DEEPSEEK.group_size == 16
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        MLAGeometry(head_dim=64, qk_rope_head_dim=64)
    with pytest.raises(ValueError, match="kv_lora_rank > 0"):
        MLAGeometry.of(block_size=16, kv_lora_rank=0, qk_rope_head_dim=64, num_heads=1)
