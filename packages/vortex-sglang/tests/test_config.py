"""VortexConfig without SGLang: the three accepted forms, field-named errors, flow loading, and the modules that
must import (and stay inert) where SGLang is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch.engine.sgl.config import VortexConfig, VortexConfigError
from vortex_torch.engine.sgl.flow_spec import clear_cache, prepare_flow

ROOT = Path(__file__).resolve().parents[3]
FLOW_FILE = str(ROOT / "examples" / "custom_sparse_attention.py")
BASE = {"module_path": FLOW_FILE, "module_name": "custom_sparse_attention"}


def test_accepts_object_dict_and_json() -> None:
    obj = VortexConfig(**BASE, topk_val=7, layers_skip=[0])
    from_dict = VortexConfig.coerce({**BASE, "topk_val": 7, "layers_skip": [0]})
    from_json = VortexConfig.coerce(json.dumps({**BASE, "topk_val": 7, "layers_skip": [0]}))
    assert VortexConfig.coerce(obj) is obj
    assert obj == from_dict == from_json
    assert VortexConfig.coerce(obj.to_json()) == obj


def test_defaults_are_the_originals() -> None:
    c = VortexConfig(module_name="x")
    assert (c.topk_val, c.max_topk_val, c.layers_skip, c.block_reserved_bos, c.block_reserved_eos) == (
        30,
        None,
        [],
        1,
        1,
    )
    assert (c.max_seq_lens, c.workload_chunk_size, c.dtype, c.block_size, c.topk_ratio) == (
        -1,
        32,
        "bfloat16",
        16,
        0.0,
    )
    assert (c.attention_backend, c.impl_backend, c.use_tensor_core, c.schedule_policy) == (
        "flashinfer",
        "triton",
        False,
        None,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"block_size": 12}, "block_size"),
        ({"block_size": 0}, "block_size"),
        ({"block_reserved_eos": 0}, "block_reserved_eos"),
        ({"block_reserved_bos": -1}, "block_reserved_bos"),
        ({"topk_ratio": 1.5}, "topk_ratio"),
        ({"dtype": "int8"}, "dtype"),
        ({"module_path": "/nonexistent/flow.py"}, "module_path"),
        ({"module_name": None}, "module_name"),
        ({"attention_backend": "fa3"}, "attention_backend"),
        ({"not_a_field": 1}, "not_a_field"),
    ],
)
def test_invalid_values_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(VortexConfigError) as info:
        VortexConfig.coerce({**BASE, **fields})
    assert info.value.field == field
    assert f"VortexConfig.{field}" in str(info.value)


def test_bad_json_is_one_clear_error() -> None:
    with pytest.raises(VortexConfigError, match="not valid JSON"):
        VortexConfig.coerce("{topk_val: 3")


def test_model_dependent_checks() -> None:
    cfg = VortexConfig(**BASE, block_size=16, layers_skip=[0, 5])
    with pytest.raises(VortexConfigError) as info:
        cfg.validate_for_model(page_size=24, num_layers=8)
    assert info.value.field == "block_size"
    with pytest.raises(VortexConfigError) as info:
        cfg.validate_for_model(page_size=32, num_layers=4)
    assert info.value.field == "layers_skip"
    cfg.validate_for_model(page_size=32, num_layers=6)


def test_prepare_flow_loads_and_traces() -> None:
    clear_cache()
    cfg = VortexConfig(**BASE, block_size=16, layers_skip=[0])
    prepared = prepare_flow(cfg, head_dim=64, group_size=2, kv_dtype=torch.bfloat16)
    assert prepared.fields == {"centroids": (1, 64)}
    assert not prepared.uses_save
    assert prepared.sparse_layers(0, 3) == [1, 2]
    assert prepared.aux_bytes_per_block() == 64 * 2
    assert prepared.aux_bytes_per_token(num_kv_heads=2, num_sparse_layers=2) == 2 * 2 * 128 // 16
    assert prepare_flow(cfg, head_dim=64, group_size=2, kv_dtype=torch.bfloat16) is prepared  # cached


def test_unknown_flow_names_module_name() -> None:
    with pytest.raises(VortexConfigError) as info:
        prepare_flow(VortexConfig(module_path=FLOW_FILE, module_name="no_such_flow"), head_dim=64, group_size=2,
                     kv_dtype=torch.bfloat16)  # fmt: skip
    assert info.value.field == "module_name"
    assert "custom_sparse_attention" in str(info.value)  # what the file did register


def test_broken_flow_file_names_module_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken_flow.py"
    bad.write_text("def oops(:\n")
    with pytest.raises(VortexConfigError) as info:
        prepare_flow(VortexConfig(module_path=str(bad), module_name="x"), head_dim=64, group_size=2,
                     kv_dtype=torch.bfloat16)  # fmt: skip
    assert info.value.field == "module_path"
    assert "syntax error" in str(info.value)


def test_flow_rule_violation_names_module_name(tmp_path: Path) -> None:
    flow = tmp_path / "native_op_flow.py"
    flow.write_text(
        textwrap.dedent(
            """
            import torch
            from vortex_torch.flow import vFlow, register
            from vortex_torch.indexer import topK

            @register("native_op_flow")
            class NativeOp(vFlow):
                def __init__(self):
                    super().__init__()
                    self.out = topK()

                def forward_indexer(self, q, o, cache, ctx):
                    self.out(torch.relu(q), o, ctx=ctx)

                def forward_cache(self, cache, loc, ctx):
                    pass

                def create_cache(self, block_size, head_dim):
                    return {}
            """
        )
    )
    with pytest.raises(VortexConfigError) as info:
        prepare_flow(VortexConfig(module_path=str(flow), module_name="native_op_flow"), head_dim=64, group_size=2,
                     kv_dtype=torch.bfloat16)  # fmt: skip
    assert info.value.field == "module_name"
    assert "native_op_flow.py" in str(info.value)


UNLOWERED_FLOW = textwrap.dedent(
    """
    from vortex_torch.flow import vFlow, register
    from vortex_torch.indexer import GeMM, Mean, topK
    from vortex_torch.cache import Mean as CMean
    from vortex_torch.indexer.elementwise import Relu


    class NoTriton(Relu):
        triton_expr = None  # as if vortex-ops shipped an op without a Triton lowering


    @register("unlowered_flow")
    class UnloweredFlow(vFlow):
        def __init__(self):
            super().__init__()
            self.mean, self.gemm, self.odd, self.out = Mean(dim=1), GeMM(), NoTriton(), topK()
            self.reduction = CMean(dim=1)

        def forward_indexer(self, q, o, cache, ctx):
            score = self.gemm(self.mean(q, ctx=ctx), cache["c"], ctx=ctx)
            self.out(self.odd(score, ctx=ctx), o, ctx=ctx)

        def forward_cache(self, cache, loc, ctx):
            self.reduction(cache["k"], cache["c"], loc=loc, ctx=ctx)

        def create_cache(self, block_size, head_dim):
            return {"c": (1, head_dim)}
    """
)


def test_an_op_the_backend_cannot_run_fails_at_load(tmp_path: Path) -> None:
    flow = tmp_path / "unlowered_flow.py"
    flow.write_text(UNLOWERED_FLOW)
    clear_cache()
    cfg = {"module_path": str(flow), "module_name": "unlowered_flow"}
    with pytest.raises(VortexConfigError) as info:
        prepare_flow(VortexConfig(**cfg), head_dim=32, group_size=1, kv_dtype=torch.float32)
    assert info.value.field == "impl_backend"
    line = UNLOWERED_FLOW.splitlines().index("        self.out(self.odd(score, ctx=ctx), o, ctx=ctx)") + 1
    assert "NoTriton has no fused Triton lowering" in str(info.value)
    assert f"unlowered_flow.py:{line}" in str(info.value)
    # the reference interpreter runs it (the same config with the other backend is prepared anew)
    prepare_flow(VortexConfig(**cfg, impl_backend="reference"), head_dim=32, group_size=1, kv_dtype=torch.float32)


def test_schedule_policy_is_checked_at_config_time() -> None:
    cfg = VortexConfig(**BASE, schedule_policy=lambda n, k, r, b, e: n * 0.5)  # floats: not block counts
    with pytest.raises(VortexConfigError) as info:
        prepare_flow(cfg, head_dim=32, group_size=1, kv_dtype=torch.float32)
    assert info.value.field == "schedule_policy"


BLOCK_SGLANG = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockSGLang(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sglang" or name.startswith("sglang."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockSGLang())
    sys.modules["sglang"] = None  # importlib.util.find_spec("sglang") -> None: "not installed"
    """
)


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_config_imports_without_sglang() -> None:
    out = run_python(
        BLOCK_SGLANG
        + textwrap.dedent(
            f"""
            from vortex_torch.engine.sgl.config import VortexConfig, VortexConfigError
            from vortex_torch.engine.sgl.flow_spec import prepare_flow
            import torch
            cfg = VortexConfig.coerce({json.dumps(json.dumps({**BASE}))})
            prepared = prepare_flow(cfg, head_dim=64, group_size=2, kv_dtype=torch.bfloat16)
            try:
                VortexConfig(module_name="x", block_size=3)
            except VortexConfigError as exc:
                print("error", exc.field)
            print("fields", sorted(prepared.fields))
            print("sglang loaded", any(m == "sglang" or m.startswith("sglang.") for m, v in sys.modules.items() if v))
            """
        )
    )
    assert "error block_size" in out
    assert "fields ['centroids']" in out
    assert "sglang loaded False" in out


def test_import_vortex_torch_without_sglang_is_a_no_op() -> None:
    out = run_python(
        BLOCK_SGLANG
        + textwrap.dedent(
            """
            import vortex_torch
            from vortex_torch.engine.sgl import adapter
            adapter.install()
            print("trigger", adapter._trigger is not None)
            print("sglang loaded", any(m == "sglang" or m.startswith("sglang.") for m, v in sys.modules.items() if v))
            """
        )
    )
    assert "trigger False" in out
    assert "sglang loaded False" in out
