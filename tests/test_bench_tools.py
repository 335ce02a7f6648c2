"""The tools that produce the numbers the docs show: flows_bench.py times dense FlashInfer on separate K and V
(the same pool the sparse step reads) and records the HBM floor; gen_flow_index.py run on a CPU keeps the
committed GPU column."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_tool(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_tool(ROOT / "tools" / "bench" / "flows_bench.py")
index = load_tool(ROOT / "tools" / "gen_flow_index.py")


class FakeFlashInfer:
    """Records what the dense baseline hands to FlashInfer's batch decode wrapper."""

    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def BatchDecodeWithPagedKVCacheWrapper(self, ws: torch.Tensor, layout: str, **kw: Any) -> Any:  # noqa: N802
        calls = self.calls
        calls["layout"] = layout
        return SimpleNamespace(
            plan=lambda *a, **k: calls.update(plan=a),
            run=lambda q, kv: calls.update(q=q, kv=kv),
        )


def test_dense_flashinfer_reads_separate_k_and_v_of_the_sparse_pool() -> None:
    batch, pages_per_req, bs, hkv, d = 2, 3, 16, 2, 8
    k = torch.randn((batch * pages_per_req + 1) * bs, hkv, d)
    v = torch.randn_like(k)
    fi = FakeFlashInfer()
    step = bench.dense_flashinfer_step(fi, k, v, torch.randn(batch, 4 * hkv, d), batch=batch,
                                       pages_per_request=pages_per_req, block_size=bs, num_q_heads=4 * hkv)  # fmt: skip
    step()
    k_pages, v_pages = fi.calls["kv"]
    assert fi.calls["layout"] == "NHD"
    assert k_pages.shape == v_pages.shape == (batch * pages_per_req + 1, bs, hkv, d)
    assert k_pages.data_ptr() == k.data_ptr() and v_pages.data_ptr() == v.data_ptr()  # views of the pool
    assert k_pages.data_ptr() != v_pages.data_ptr(), "K and V must be different tensors"
    indptr, indices = fi.calls["plan"][:2]
    assert indptr.tolist() == [0, 3, 6] and indices.tolist() == list(range(1, 7))  # page 0 is never used


def test_floor_flags_a_dense_time_that_reads_half_the_bytes() -> None:
    # the 2026-11-25 run: 32k x batch 32, 8 KV heads, D 128, bf16; copy bandwidth 3008.3 GB/s
    floor = bench.floor_us(bench.dense_bytes(32, 32768, 8, 128), 3008.3)
    assert bench.dense_bytes(32, 32768, 8, 128) == 2**32
    assert floor == pytest.approx(1427.7, abs=0.1)
    assert bench.below_floor(704.5, floor)  # K passed as V: half the bytes, an impossible time
    assert not bench.below_floor(1399.9, floor)  # the indexer bench's dense FlashInfer: plausible
    assert bench.sparse_step_bytes(10, 4, 256, 16, 128) == 10 * 256 + 4 * 16 * 128 * 2 * 2


GPU_RUN = {
    "device": "GPU X", "date": "2030-01-01", "setup": {"ctx": 32768, "batch": 32},
    "copy_bandwidth_gbs": 3000.0, "dense_kv": bench.DENSE_KV, "dense_flashinfer_us": 1500.0,
    "dense_floor_us": 1431.7, "dense_flashinfer_below_floor": False,
    "flows": {"block_sparse_attention": {"step_us": 180.0, "kernels_per_layer": 2, "step_floor_us": 120.0}},
}  # fmt: skip


def test_gpu_text_hides_a_dense_time_from_a_run_that_read_k_as_v() -> None:
    committed = index.latest_gpu_results()
    assert committed is not None and "dense_kv" not in committed  # the 2026-11-25 run, before the fix
    text = index.gpu_step_text(committed, "block_sparse_attention")
    assert text.startswith("184.6 µs/layer (2 indexer kernels; dense FlashInfer: to be re-measured")
    assert "704.5" not in text
    fixed = index.gpu_step_text(GPU_RUN, "block_sparse_attention")
    assert fixed == ("180.0 µs/layer (2 indexer kernels, HBM floor 120.0 µs; dense FlashInfer 1500.0 µs, HBM floor "
                     "1431.7 µs; GPU X, 2030-01-01, 32k x batch 32)")  # fmt: skip
    assert "1500.0" not in index.gpu_step_text({**GPU_RUN, "dense_flashinfer_below_floor": True}, "block_sparse_attention")
    assert index.gpu_step_text(GPU_RUN, "streaming_llm") is None
    assert index.gpu_column("streaming_llm", GPU_RUN, {"gpu_step_time": "kept"}) == "kept"
    assert index.gpu_column("streaming_llm", None, None) == index.NOT_MEASURED


@pytest.fixture
def contrib_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The contrib package's READMEs and RESULTS.md files in a scratch copy the generator writes to."""
    src = index.CONTRIB
    dst = tmp_path / "vortex-flows-contrib"
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.endswith(".py") or n == "tests"])
    monkeypatch.setattr(index, "CONTRIB", dst)
    monkeypatch.setattr(index, "SRC", dst / "src" / "vortex_flows_contrib")
    return dst


def _results(contrib: Path, flow: str) -> dict[str, Any]:
    text = (contrib / "src" / "vortex_flows_contrib" / flow / "RESULTS.md").read_text()
    match = index.RESULTS_JSON.search(text)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.mark.slow
@pytest.mark.parametrize("gpu_dir", ["committed", "empty"])
def test_cpu_regeneration_keeps_the_gpu_column(contrib_copy: Path, tmp_path: Path, gpu_dir: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    flow = "block_sparse_attention"
    before = _results(contrib_copy, flow)["gpu_step_time"]
    assert "µs/layer" in before
    if gpu_dir == "empty":  # no GPU JSON: the value RESULTS.md had stays
        (tmp_path / "gpu").mkdir()
        monkeypatch.setattr(index, "GPU_RESULTS", tmp_path / "gpu")
        expected = before
    else:  # the committed GPU JSON: its number, rendered by today's rules
        committed = index.latest_gpu_results()
        assert committed is not None
        expected = index.gpu_step_text(committed, flow)
    assert index.main(["--flows", flow, "--context", "2048"]) == 0
    after = _results(contrib_copy, flow)
    assert after["setup"]["context"] == 2048  # it did measure
    assert after["gpu_step_time"] == expected
    row = next(line for line in (contrib_copy / "README.md").read_text().splitlines() if f"[`{flow}`]" in line)
    assert row.endswith(f"| {expected} |")
