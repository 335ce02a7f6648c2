"""The plugin against SGLang's real plugin machinery (CPU): discovered through the ``sglang.srt.plugins``
entry point, registered exactly once however often it is triggered, every hook applied and flag-aware."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from vortex_torch.engine.sgl import plugin
from vortex_torch.engine.sgl.config import VortexConfig
from vortex_torch.engine.sgl.plugin import VortexServerConfig

pytestmark = pytest.mark.sglang


def run_python(*parts: str, **env: str) -> dict[str, Any]:
    """Run the code ``parts`` (each dedented) in a fresh interpreter; it prints one JSON line last."""
    code = "\n".join(textwrap.dedent(p) for p in parts)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


COUNT_HOOKS = """
    from sglang.srt.plugins.hook_registry import HookRegistry
    from vortex_torch.engine.sgl import plugin
    ours = {t: sum(1 for _k, h, _s in HookRegistry._hooks.get(t, []) if getattr(h, "__module__", "") == plugin.__name__)
            for t, _h, _k in plugin.hooks()}
    def chain(fn):
        n = 0
        while fn is not None:
            n += getattr(fn, "__module__", "") == plugin.__name__ or any(
                getattr(c, "cell_contents", None) in [h for _t, h, _k in plugin.hooks()]
                for c in (getattr(fn, "__closure__", None) or ()))
            fn = getattr(fn, "__wrapped__", None)
        return n
    from sglang.srt.server_args import ServerArgs
    wrapped = {"__init__": chain(ServerArgs.__init__), "from_cli_args": chain(ServerArgs.__dict__["from_cli_args"].__func__),
               "add_cli_args": chain(ServerArgs.__dict__["add_cli_args"].__func__)}
"""


def test_entry_point_registers_every_hook_exactly_once() -> None:
    out = run_python(
        """
        import importlib.metadata as md
        eps = [e.value for e in md.entry_points(group="sglang.srt.plugins") if e.name == "vortex"]
        from sglang.srt.plugins import load_plugins
        load_plugins(); load_plugins()                      # SGLang's own guard
        from vortex_torch.engine.sgl import plugin, adapter
        plugin.register(); plugin.register(); adapter.install()   # and ours
        from sglang.srt.plugins.hook_registry import HookRegistry
        HookRegistry.apply_hooks()
        """,
        COUNT_HOOKS,
        """
        import json
        print(json.dumps({"eps": eps, "ours": ours, "wrapped": wrapped, "failure": plugin.registration_failure(),
                          "patched": sorted(t for t, _h, _k in plugin.hooks() if t in HookRegistry._patched)}))
        """,
        SGLANG_PLUGINS="vortex",
    )
    assert out["eps"] == ["vortex_torch.engine.sgl.plugin:register"]
    assert out["failure"] is None
    assert set(out["ours"].values()) == {1}, out["ours"]
    assert out["patched"] == sorted(t for t, _h, _k in plugin.hooks())
    assert out["wrapped"] == {"__init__": 1, "from_cli_args": 1, "add_cli_args": 1}


def test_import_vortex_torch_arms_registration_before_sglang_loads_plugins() -> None:
    out = run_python(
        """
        import sys
        import vortex_torch                                  # the quick start's `import vortex_torch`
        from vortex_torch.engine.sgl import adapter, plugin
        armed = adapter._trigger is not None and "sglang.srt.plugins" not in sys.modules
        import sglang                                        # importing SGLang's plugin API fires the trigger
        registered_on_import = plugin._registered
        from sglang.srt.plugins import load_plugins
        load_plugins()
        """,
        COUNT_HOOKS,
        """
        import json
        print(json.dumps({"armed": armed, "registered": registered_on_import, "ours": ours,
                          "trigger_left": adapter._trigger is not None}))
        """,
        # the entry point filtered out: only the adapter can register, and the hooks still get applied
        SGLANG_PLUGINS="none-of-them",
    )
    assert out["armed"] and out["registered"] and not out["trigger_left"]
    assert set(out["ours"].values()) == {1}


def test_wrong_sglang_version_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin.importlib.metadata, "version", lambda name: "0.5.12")
    monkeypatch.delenv(plugin.SKIP_VERSION_CHECK_ENV, raising=False)
    with pytest.raises(plugin.VortexSGLangError, match=r"sglang==0\.5\.17 only .* found sglang 0\.5\.12"):
        plugin.check_sglang_version()


def test_cell_size_hook_adds_the_aux_fields(sgl: Any, monkeypatch: pytest.MonkeyPatch, make_server_args: Any,
                                            flow_config: dict[str, Any]) -> None:  # fmt: skip
    from sglang.srt.model_executor import pool_configurator
    from sglang.srt.runtime_context import get_parallel  # noqa: F401  (patched below)

    sa = make_server_args(vortex={**flow_config, "layers_skip": [0]})
    one_rank = SimpleNamespace(attn_tp_size=1)
    monkeypatch.setattr("sglang.srt.runtime_context.get_parallel", lambda: one_rank)
    monkeypatch.setattr(pool_configurator, "get_parallel", lambda: one_rank)
    kvc = SimpleNamespace(
        server_args=sa, model_config=sa.get_model_config(), kv_cache_dtype=torch.bfloat16, use_mla_backend=False,
        is_draft_worker=False,
        layer_info=SimpleNamespace(start_layer=0, end_layer=2, num_effective_layers=2), spec_algorithm=None,
    )  # fmt: skip
    dense = 2 * (64 + 64) * 2 * 2  # H_kv * (D_k + D_v) * layers * bf16
    aux = 2 * 1 * (1 * 64 * 2) // 16  # H_kv * sparse layers * centroid bytes per block / block_size
    hooked = pool_configurator.DefaultPoolConfigurator._compute_cell_size
    configurator = SimpleNamespace(kv_cache_dtype_str="auto")
    assert hooked(configurator, kvc, 2) == dense + aux
    plain = SimpleNamespace(**{**vars(kvc), "server_args": make_server_args()})
    assert hooked(configurator, plain, 2) == dense


def test_fused_set_kv_buffer_is_off_under_vortex(sgl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sglang.srt.model_executor import forward_context
    from sglang.srt.models import utils as model_utils

    assert getattr(model_utils.enable_fused_set_kv_buffer, "__wrapped__", None) is not None
    monkeypatch.setattr(forward_context, "get_attn_backend", lambda: SimpleNamespace(vortex_backend=True))
    assert plugin._around_enable_fused_set_kv_buffer(lambda fb: True, object()) is False
    monkeypatch.setattr(forward_context, "get_attn_backend", lambda: SimpleNamespace())
    assert plugin._around_enable_fused_set_kv_buffer(lambda fb: "stock", object()) == "stock"


def test_backend_factory_is_flag_aware(
    sgl: Any, monkeypatch: pytest.MonkeyPatch, flow_config: dict[str, Any]
) -> None:
    from sglang.srt.layers.attention import attention_registry
    from sglang.srt.model_executor.model_runner_components import attention_backend_setup as setup

    from vortex_torch.engine.sgl import factory

    made: list[tuple[str, Any]] = []
    monkeypatch.setitem(attention_registry.ATTENTION_BACKENDS, "triton", lambda runner: ("stock", runner))
    monkeypatch.setattr(
        factory, "create_backend", lambda name, runner, cfg: made.append((name, cfg)) or "vortex"
    )
    stock_runner = SimpleNamespace(server_args=SimpleNamespace(_vortex_config=None))
    assert setup._build_full_attention_backend_from_str(
        model_runner=stock_runner, backend_str="triton", init_new_workspace=False
    ) == ("stock", stock_runner)
    cfg = VortexConfig(**flow_config, attention_backend="triton")
    runner = SimpleNamespace(server_args=SimpleNamespace(_vortex_config=VortexServerConfig(cfg.to_dict())),
                             is_draft_worker=False)  # fmt: skip
    assert (
        setup._build_full_attention_backend_from_str(
            model_runner=runner, backend_str="triton", init_new_workspace=True
        )
        == "vortex"
    )
    assert made == [("triton", cfg)] and runner.init_new_workspace is True


def test_backend_classes_import_on_cpu(sgl: Any) -> None:
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    from vortex_torch.engine.sgl.backend import (
        VortexBackendMixin,
        VortexFlashInferBackend,
        VortexTritonBackend,
    )

    for cls, parent in (
        (VortexFlashInferBackend, FlashInferAttnBackend),
        (VortexTritonBackend, TritonAttnBackend),
    ):
        assert cls.__mro__[1] is VortexBackendMixin and issubclass(cls, parent)
        for name in ("forward_decode", "forward_extend", "init_forward_metadata", "init_forward_metadata_out_graph",
                     "init_cuda_graph_state"):  # fmt: skip
            assert getattr(cls, name) is getattr(VortexBackendMixin, name), name
        assert cls.vortex_backend is True
