"""VortexConfig without SGLang: the three accepted forms, field-named errors, flow loading, and the modules that
must import (and stay inert) where SGLang is not installed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch.engine.sgl import plugin
from vortex_torch.engine.sgl.config import INT32_MAX, VortexConfig, VortexConfigError
from vortex_torch.engine.sgl.flow_spec import clear_cache, prepare_flow
from vortex_torch.flow import registry
from vortex_torch.flow.runtime import RuntimeConfig, RuntimeConfigError

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
    c = VortexConfig(module_name="block_sparse_attention")  # an installed flow: module_path=None finds it
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
        # bools are not ints
        ({"topk_val": True}, "topk_val"),
        ({"block_size": True}, "block_size"),
        ({"block_reserved_bos": False}, "block_reserved_bos"),
        ({"max_topk_val": True}, "max_topk_val"),
        ({"max_seq_lens": True}, "max_seq_lens"),
        ({"topk_ratio": True}, "topk_ratio"),
        ({"layers_skip": [True]}, "layers_skip"),
        ({"workload_chunk_size": True}, "workload_chunk_size"),
        ({"use_tensor_core": 1}, "use_tensor_core"),
        ({"enable_pdl": 1}, "enable_pdl"),
        ({"enable_pdl": True, "impl_backend": "reference"}, "enable_pdl"),  # no Triton kernels to launch
        ({"sparse_decode_min_tokens": -1}, "sparse_decode_min_tokens"),
        ({"sparse_decode_min_tokens": True}, "sparse_decode_min_tokens"),  # a bool is not a length
        ({"sparse_decode_min_tokens": 4096.0}, "sparse_decode_min_tokens"),
        # upper bounds: budgets and lengths are int32 on the device
        ({"topk_val": INT32_MAX + 1}, "topk_val"),
        ({"topk_val": INT32_MAX - 1}, "topk_val"),  # + bos + eos overflows
        ({"block_size": 2**40}, "block_size"),
        ({"max_seq_lens": 2**31}, "max_seq_lens"),
        ({"max_topk_val": 2**40}, "max_topk_val"),
        ({"max_topk_val": 31}, "max_topk_val"),  # < topk_val + bos + eos = 32
        ({"max_seq_lens": 8}, "max_seq_lens"),  # shorter than one block
        ({"max_seq_lens": 0}, "max_seq_lens"),
        ({"topk_val": 2.0}, "topk_val"),
        ({"topk_ratio": float("nan")}, "topk_ratio"),
        ({"topk_ratio": "0.5"}, "topk_ratio"),
        ({"layers_skip": [-1]}, "layers_skip"),
        ({"layers_skip": "0"}, "layers_skip"),
        ({"workload_chunk_size": 48}, "workload_chunk_size"),
        ({"dtype": None}, "dtype"),
        ({"impl_backend": "cuda"}, "impl_backend"),
        ({"schedule_policy": "no_colon"}, "schedule_policy"),
        ({"schedule_policy": "mod:"}, "schedule_policy"),
        ({"schedule_policy": 5}, "schedule_policy"),
        ({"flow_kwargs": {1: 2}}, "flow_kwargs"),
        ({"flow_kwargs": [1]}, "flow_kwargs"),
        ({"module_name": ""}, "module_name"),
        ({"module_name": 3}, "module_name"),
        ({"module_path": 3}, "module_path"),
        ({"module_path": str(ROOT / "README.md")}, "module_path"),  # not a .py
        ({"compilation_cache_dir": FLOW_FILE}, "compilation_cache_dir"),  # a file, not a directory
        ({"compilation_cache_dir": FLOW_FILE + "/sub"}, "compilation_cache_dir"),  # under a file
        ({"compilation_cache_dir": ""}, "compilation_cache_dir"),
        ({"compilation_cache_dir": 7}, "compilation_cache_dir"),
        # module_name resolved where that is cheap: the file's @register names, or the installed flows
        ({"module_name": "no_such_flow"}, "module_name"),
        ({"module_path": None, "module_name": "no_such_flow"}, "module_name"),
    ],
)
def test_invalid_values_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(VortexConfigError) as info:
        VortexConfig.coerce({**BASE, **fields})
    assert info.value.field == field
    assert str(info.value).startswith(f"VortexConfig.{field}: ")
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block_size", 12),
        ("block_size", True),
        ("topk_val", -1),
        ("topk_val", 2.0),
        ("topk_val", INT32_MAX - 1),  # + bos + eos overflows
        ("topk_ratio", 1.5),
        ("topk_ratio", "0.5"),
        ("block_reserved_bos", -1),
        ("block_reserved_eos", 0),
    ],
)
def test_shared_fields_fail_alike_in_both_configs(field: str, value: Any) -> None:
    """RuntimeConfig (reference runtime) and VortexConfig (SGLang) check their common fields with one function:
    the same value is refused by both, with the same text after the class name."""
    with pytest.raises(RuntimeConfigError) as runtime:
        RuntimeConfig(**{field: value})
    with pytest.raises(VortexConfigError) as sglang:
        VortexConfig(**BASE, **{field: value})
    assert runtime.value.field == sglang.value.field == field
    assert isinstance(runtime.value, ValueError) and isinstance(sglang.value, ValueError)
    prefix_r, prefix_s = f"RuntimeConfig.{field}: ", f"VortexConfig.{field}: "
    assert str(runtime.value).startswith(prefix_r) and str(sglang.value).startswith(prefix_s)
    assert str(runtime.value).removeprefix(prefix_r) == str(sglang.value).removeprefix(prefix_s)


def test_unknown_module_name_says_what_the_file_registers() -> None:
    with pytest.raises(VortexConfigError) as info:
        VortexConfig(module_path=FLOW_FILE, module_name="custom_sparse_attn")
    message = str(info.value)
    assert "custom_sparse_attention.py registers 'custom_sparse_attention', not 'custom_sparse_attn'" in message
    assert "Did you mean 'custom_sparse_attention'?" in message


def test_module_name_of_an_installed_flow_needs_no_path() -> None:
    assert VortexConfig(module_name="quest_sparse_attention").module_path is None
    # a file plus an installed flow's name is what prepare_flow accepts too (the file may be a helper)
    VortexConfig(module_path=FLOW_FILE, module_name="quest_sparse_attention")


def test_a_computed_register_name_is_left_to_prepare_flow(tmp_path: Path) -> None:
    flow = tmp_path / "computed_name.py"
    flow.write_text(Path(FLOW_FILE).read_text().replace('@register("custom_sparse_attention")',
                                                        '@register("computed_" + "flow")'))  # fmt: skip
    cfg = VortexConfig(module_path=str(flow), module_name="anything")  # cannot be told without running the file
    with registry.isolated(), pytest.raises(VortexConfigError) as info:
        prepare_flow(cfg, head_dim=32, group_size=1, kv_dtype=torch.float32)
    assert info.value.field == "module_name"
    assert "That file registers 'computed_flow'" in str(info.value)


def test_valid_edges_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    VortexConfig(**BASE, max_topk_val=32)  # == topk_val + bos + eos
    VortexConfig(**BASE, topk_val=0, block_reserved_bos=0, max_topk_val=1, max_seq_lens=16, topk_ratio=1)
    missing = tmp_path / "not" / "yet"  # created on first use
    assert VortexConfig(**BASE, compilation_cache_dir=str(missing)).compilation_cache_dir == str(missing)
    assert VortexConfig(**BASE, layers_skip=(0, 2)).layers_skip == [0, 2]  # a tuple is taken as a list
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = VortexConfig(**BASE, compilation_cache_dir="~/kernels")  # the loader and codegen do not expand ~
    assert cfg.compilation_cache_dir == str(tmp_path / "kernels")
    assert VortexConfig.coerce(cfg.to_json()) == cfg


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: no unwritable directory to test with")
def test_unwritable_cache_dir_is_rejected(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for path in (locked, locked / "sub"):
        with pytest.raises(VortexConfigError, match="compilation_cache_dir") as info:
            VortexConfig(**BASE, compilation_cache_dir=str(path))
        assert "writable" in str(info.value)


def test_field_changed_after_construction_is_caught_at_engine_start() -> None:
    cfg = VortexConfig(**BASE)
    cfg.topk_val = -3
    for start in (VortexConfig.coerce, plugin._payload,
                  lambda c: prepare_flow(c, head_dim=32, group_size=1, kv_dtype=torch.float32)):  # fmt: skip
        with pytest.raises(VortexConfigError) as info:
            start(cfg)
        assert info.value.field == "topk_val"
    cfg.topk_val = 4
    assert plugin._payload(cfg)["topk_val"] == 4


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


def _policy(n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    return n // 2


#: one valid change of every VortexConfig field, from the config made by `_kwargs_flow`
CHANGES: dict[str, Any] = {
    "topk_val": 5, "max_topk_val": 64, "layers_skip": [1], "block_reserved_bos": 2, "block_reserved_eos": 2,
    "max_seq_lens": 4096, "workload_chunk_size": 64, "dtype": "float32", "module_path": "<copy>",
    "module_name": "block_sparse_attention", "block_size": 32, "topk_ratio": 0.5, "compilation_cache_dir": "<tmp>",
    "schedule_policy": _policy, "attention_backend": "triton", "impl_backend": "reference", "use_tensor_core": True, "exact_attention": True,
    "flow_kwargs": {"unused": 1}, "enable_pdl": True, "sparse_decode_min_tokens": 4096,
}  # fmt: skip


def _kwargs_flow(tmp_path: Path, name: str) -> str:
    """The quick-start flow as ``cfg_key_flow``, with a constructor keyword (so flow_kwargs can change)."""
    path = tmp_path / name
    text = Path(FLOW_FILE).read_text().replace("def __init__(self):", "def __init__(self, unused: int = 0):")
    path.write_text(text.replace('@register("custom_sparse_attention")', '@register("cfg_key_flow")'))
    return str(path)


def _prepare(cfg: VortexConfig) -> Any:
    with registry.isolated():  # a.py and b.py both register cfg_key_flow: one file per registry
        return prepare_flow(cfg, head_dim=32, group_size=2, kv_dtype=torch.float32)


def test_prepared_flow_cache_is_keyed_by_every_field(tmp_path: Path) -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(VortexConfig)}, "a field without a change to try"
    clear_cache()
    base = VortexConfig(module_path=_kwargs_flow(tmp_path, "a.py"), module_name="cfg_key_flow")
    first = _prepare(base)
    assert _prepare(dataclasses.replace(base)) is first  # equal values: the cached object
    paths = {"<copy>": _kwargs_flow(tmp_path, "b.py"), "<tmp>": str(tmp_path / "kernels")}
    for name, change in CHANGES.items():
        value = paths.get(change, change) if isinstance(change, str) else change
        changed = dataclasses.replace(base, **{name: value})
        prepared = _prepare(changed)
        assert prepared is not first, f"changing {name} returned the flow prepared for the old config"
        assert getattr(prepared.config, name) == value, name
        assert _prepare(changed) is prepared


def test_prepared_flow_keeps_its_own_copy_of_the_config() -> None:
    clear_cache()
    cfg = VortexConfig(**BASE, layers_skip=[0])
    prepared = prepare_flow(cfg, head_dim=32, group_size=1, kv_dtype=torch.float32)
    cfg.topk_val = 3
    cfg.layers_skip.append(1)  # type: ignore[union-attr]
    assert (prepared.config.topk_val, prepared.config.layers_skip) == (30, [0])
    again = prepare_flow(cfg, head_dim=32, group_size=1, kv_dtype=torch.float32)
    assert again is not prepared and again.config.topk_val == 3


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


@pytest.mark.parametrize(
    ("heads", "kv_heads", "tp", "want"),
    [(32, 8, 1, (8, 4, 128)), (32, 8, 4, (2, 4, 128)), (32, 8, 16, (1, 2, 128)), (12, 8, 1, None)],
)
def test_rank_heads_is_the_per_rank_geometry(heads: int, kv_heads: int, tp: int, want: Any) -> None:
    """(H_kv, G, D) of one attention-TP rank, KV heads replicated past TP = H_kv as SGLang's ModelConfig does."""
    from types import SimpleNamespace

    from vortex_torch.engine.sgl.server_rules import VortexServerArgsError, rank_heads

    mc = SimpleNamespace(num_attention_heads=heads, head_dim=128,
                         get_num_kv_heads=lambda tp_size: max(1, kv_heads // tp_size))  # fmt: skip
    if want is None:
        with pytest.raises(VortexServerArgsError) as info:
            rank_heads(mc, tp)
        assert info.value.field == "tp_size"
    else:
        assert rank_heads(mc, tp) == want


def test_compatibility_only_fields_are_accepted_and_read_nowhere() -> None:
    """workload_chunk_size / use_tensor_core load from an original-project config, and no module of
    packages/*/src but config.py (which validates them) names them."""
    import ast

    from vortex_torch.engine.sgl.config import COMPATIBILITY_ONLY

    assert set(COMPATIBILITY_ONLY) <= {f.name for f in dataclasses.fields(VortexConfig)}
    VortexConfig(**BASE, workload_chunk_size=64, use_tensor_core=True)
    readers = []
    for path in sorted(ROOT.glob("packages/*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            attr = node.attr if isinstance(node, ast.Attribute) else None  # cfg.use_tensor_core
            text = node.value if isinstance(node, ast.Constant) else None  # getattr(cfg, "use_tensor_core")
            if attr in COMPATIBILITY_ONLY or text in COMPATIBILITY_ONLY:
                readers.append(path.name)
    assert readers and set(readers) == {"config.py"}
