"""``vortex=`` and ``--vortex-config`` on SGLang's real ``ServerArgs`` (CPU): accepted forms, what is forced,
pickling into the scheduler, and one clear error naming the field for every invalid setting, raised while
``ServerArgs`` is built, i.e. in the main process before the scheduler (and any GPU memory) exists."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vortex_torch.engine.sgl.config import VortexConfig, VortexConfigError
from vortex_torch.engine.sgl.plugin import VortexServerConfig, config_of

pytestmark = pytest.mark.sglang


def test_vortex_kwarg_accepts_object_dict_and_json(
    make_server_args: Callable[..., Any], flow_config: dict[str, Any]
) -> None:
    fields = {**flow_config, "topk_val": 7, "layers_skip": [0]}
    forms = [VortexConfig(**fields), dict(fields), json.dumps(fields)]
    configs = [config_of(make_server_args(vortex=form)) for form in forms]
    assert configs[0] == configs[1] == configs[2] == VortexConfig(**fields)


def test_vortex_forces_what_it_needs(
    make_server_args: Callable[..., Any], flow_config: dict[str, Any]
) -> None:
    sa = make_server_args(vortex={**flow_config, "block_size": 16, "max_seq_lens": 4096})
    assert isinstance(sa._vortex_config, VortexServerConfig)
    assert sa.page_size == 16  # unset -> one block per page
    assert sa.attention_backend == "flashinfer"  # VortexConfig.attention_backend
    assert sa.disable_overlap_schedule is True
    assert sa.disable_prefill_cuda_graph is True
    assert sa.context_length == 4096  # max_seq_lens caps what SGLang admits
    sa = make_server_args(
        vortex={**flow_config, "block_size": 8}, page_size=32, disable_overlap_schedule=True
    )
    assert sa.page_size == 32


def test_without_vortex_nothing_changes(
    make_server_args: Callable[..., Any], cli_args: Callable[..., Any]
) -> None:
    plain = make_server_args()
    assert plain._vortex_config is None and config_of(plain) is None
    assert plain.page_size == 1 and plain.disable_overlap_schedule is False
    assert cli_args()._vortex_config is None


def test_cli_flag(cli_args: Callable[..., Any], flow_config: dict[str, Any]) -> None:
    sa = cli_args("--vortex-config", json.dumps({**flow_config, "topk_val": 5, "layers_skip": [1]}))
    cfg = config_of(sa)
    assert cfg is not None and cfg.topk_val == 5 and cfg.layers_skip == [1]
    assert sa.page_size == 16 and sa.disable_overlap_schedule is True and sa.attention_backend == "flashinfer"
    with pytest.raises(VortexConfigError, match="not valid JSON"):
        cli_args("--vortex-config", "{topk_val: 5")


def test_cli_help_lists_the_flag(sgl: Any) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sgl.ServerArgs.add_cli_args(parser)
    assert "--vortex-config" in parser.format_help()


def test_legacy_flat_kwargs(make_server_args: Callable[..., Any], flow_config: dict[str, Any]) -> None:
    sa = make_server_args(enable_vortex_sparsity=True, vortex_module_path=flow_config["module_path"],
                          vortex_module_name=flow_config["module_name"], vortex_topk_val=9)  # fmt: skip
    cfg = config_of(sa)
    assert cfg is not None and cfg.topk_val == 9


def test_config_survives_pickling(
    make_server_args: Callable[..., Any], flow_config: dict[str, Any], tmp_path: Path
) -> None:
    sa = make_server_args(vortex={**flow_config, "topk_val": 11})
    for clone in (pickle.loads(pickle.dumps(sa)), copy.deepcopy(sa)):
        assert isinstance(clone._vortex_config, VortexServerConfig)
        assert config_of(clone) == config_of(sa)
    # a fresh process (as SGLang's spawned scheduler): unpickling registers the hooks before load_plugins()
    path = tmp_path / "server_args.pkl"
    path.write_bytes(pickle.dumps(sa))
    code = textwrap.dedent(
        f"""
        import pickle
        sa = pickle.loads(open({str(path)!r}, "rb").read())
        from vortex_torch.engine.sgl import plugin
        print("registered", plugin._registered, "topk", sa._vortex_config["topk_val"])
        """
    )
    env = {
        **__import__("os").environ,
        "VORTEX_DISABLE_PLUGIN_AUTOLOAD": "1",
    }  # no `import vortex_torch` adapter
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "registered True topk 11" in proc.stdout


ERRORS: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    # (VortexConfig fields, other ServerArgs kwargs, field named by the error)
    ({"block_size": 12}, {}, "block_size"),  # not a power of two
    ({"block_size": 16}, {"page_size": 24}, "block_size"),  # page size not a multiple of the block size
    ({"block_reserved_eos": 0}, {}, "block_reserved_eos"),
    ({"module_name": "no_such_flow"}, {}, "module_name"),  # unknown flow
    ({"layers_skip": [0, 2]}, {}, "layers_skip"),  # the tiny model has 2 layers
    ({"module_path": "/nonexistent/my_flow.py"}, {}, "module_path"),  # missing module file
    ({}, {"disable_overlap_schedule": False}, "disable_overlap_schedule"),  # overlap schedule on
    ({}, {"attention_backend": "triton"}, "attention_backend"),  # VortexConfig says flashinfer
    ({"attention_backend": "triton"}, {"attention_backend": "flashinfer"}, "attention_backend"),
    ({"dtype": "int4"}, {}, "dtype"),
    ({"topk_ratio": -0.5}, {}, "topk_ratio"),
    ({}, {"kv_cache_dtype": "fp4_e2m1"}, "kv_cache_dtype"),  # block-scaled fp4: not read by Vortex
    ({}, {"enable_mixed_chunk": True}, "enable_mixed_chunk"),
    ({}, {"tp_size": 2, "dcp_size": 2}, "dcp_size"),  # a request's K/V split over ranks
    ({}, {"tp_size": 2, "attn_cp_size": 2}, "attn_cp_size"),
]
if not torch.cuda.is_available():  # programmatic dependent launch needs a Hopper GPU (tested on one in tests/gpu)
    ERRORS.append(({"enable_pdl": True}, {}, "enable_pdl"))


@pytest.mark.parametrize(
    ("fields", "kwargs", "field"), ERRORS, ids=[e[2] + str(i) for i, e in enumerate(ERRORS)]
)
def test_invalid_settings_raise_one_clear_error(
    make_server_args: Callable[..., Any], flow_config: dict[str, Any], fields: dict[str, Any], kwargs: dict[str, Any],
    field: str,
) -> None:  # fmt: skip
    with pytest.raises(VortexConfigError) as info:
        make_server_args(vortex={**flow_config, **fields}, **kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize(("kv", "dtype"), [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_kv_cache_is_accepted(
    make_server_args: Callable[..., Any], flow_config: dict[str, Any], kv: str, dtype: torch.dtype
) -> None:
    """fp8 KV caches with per-layer scales are read by every Vortex kernel: the check passes and the flow is
    traced for fp8 K/V (its generated kernels multiply K/V loads by the layer's scale)."""
    from vortex_torch.engine.sgl.flow_spec import prepare_flow
    from vortex_torch.engine.sgl.server_rules import model_geometry

    sa = make_server_args(vortex=flow_config, kv_cache_dtype=kv)
    geo = model_geometry(sa)
    assert geo.kv_dtype == dtype
    prepared = prepare_flow(config_of(sa), head_dim=geo.head_dim, group_size=geo.group_size, kv_dtype=geo.kv_dtype)
    assert prepared.geometry.kv_dtype == dtype
    assert not torch.cuda.is_initialized()


SAVE_FLOW = textwrap.dedent(
    """
    from vortex_torch.flow import vFlow, register
    from vortex_torch.indexer import GeMM, Mean, topK, Load, Save, Add
    from vortex_torch.cache import Mean as CMean, Fill

    @register("stateful_test_flow")
    class Stateful(vFlow):
        def __init__(self):
            super().__init__()
            self.mean, self.gemm, self.load, self.add, self.save = Mean(dim=1), GeMM(), Load(), Add(), Save()
            self.out = topK()
            self.centroid, self.reset = CMean(dim=1), Fill(0.0)

        def forward_indexer(self, q, o, cache, ctx):
            s = self.gemm(self.mean(q, ctx=ctx), cache["centroids"], ctx=ctx)
            total = self.add(self.load(cache["running"], ctx=ctx), s, ctx=ctx)
            self.save(total, cache["running"], ctx=ctx)
            self.out(total, o, ctx=ctx)

        def forward_cache(self, cache, loc, ctx):
            self.centroid(cache["k"], cache["centroids"], loc=loc, ctx=ctx)
            self.reset(cache["running"], loc=loc, ctx=ctx)

        def create_cache(self, block_size, head_dim):
            return {"centroids": (1, head_dim), "running": (1, 1)}
    """
)


def test_save_flow_needs_radix_cache_off(make_server_args: Callable[..., Any], tmp_path: Path) -> None:
    flow = tmp_path / "stateful_test_flow.py"
    flow.write_text(SAVE_FLOW)
    cfg = {"module_path": str(flow), "module_name": "stateful_test_flow"}
    with pytest.raises(VortexConfigError) as info:
        make_server_args(vortex=cfg)
    assert info.value.field == "disable_radix_cache"
    sa = make_server_args(vortex=cfg, disable_radix_cache=True)
    assert config_of(sa) is not None


def unpicklable_policy() -> Callable[..., torch.Tensor]:
    return lambda n, topk_val, topk_ratio, bos, eos: torch.clamp(n, max=topk_val + bos + eos)


def test_schedule_policy_must_reach_the_scheduler(
    make_server_args: Callable[..., Any], flow_config: dict[str, Any]
) -> None:
    with pytest.raises(VortexConfigError) as info:
        make_server_args(vortex={**flow_config, "schedule_policy": unpicklable_policy()})
    assert info.value.field == "schedule_policy"
    sa = make_server_args(vortex={**flow_config, "schedule_policy": "vortex_sgl_testlib:budget_policy"})
    assert config_of(sa) is not None


def test_pdl_device_check_reads_the_driver_without_touching_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """``enable_pdl``'s engine-start check asks the driver (libcuda) for the GPU's compute capability, so the main
    process never initialises CUDA; a pre-Hopper or missing GPU is one error naming the field."""
    import ctypes
    from types import SimpleNamespace

    from vortex_torch.engine.sgl import server_rules

    caps = {0: (9, 0), 1: (8, 0)}  # an H200 and an A100

    class FakeDriver:
        def cuInit(self, flags: int) -> int:
            return 0

        def cuDeviceGet(self, ref: Any, ordinal: int) -> int:
            ref._obj.value = ordinal
            return 0 if ordinal in caps else 101  # CUDA_ERROR_INVALID_DEVICE

        def cuDeviceGetAttribute(self, ref: Any, attr: int, dev: Any) -> int:
            ref._obj.value = caps[dev.value][attr - 75]
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver())
    assert server_rules.cuda_capability(0) == (9, 0) and server_rules.cuda_capability(7) is None
    server_rules._check_pdl_device(SimpleNamespace(base_gpu_id=0))
    with pytest.raises(VortexConfigError, match=r"enable_pdl: .*GPU 1 has 8\.0\. Set enable_pdl=False"):
        server_rules._check_pdl_device(SimpleNamespace(base_gpu_id=1))
    with pytest.raises(VortexConfigError, match="GPU 3 is not visible"):
        server_rules._check_pdl_device(SimpleNamespace(base_gpu_id=3))
    assert not torch.cuda.is_initialized()

    def no_driver(name: str) -> Any:
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    assert server_rules.cuda_capability(0) is None
