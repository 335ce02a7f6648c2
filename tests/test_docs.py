"""The reference docs a flow author reads are current and runnable.

* docs/ops.md is what tools/gen_op_reference.py generates from the op classes today (regenerate it with
  ``python tools/gen_op_reference.py`` after changing an op), and the generator refuses an op without an
  example or an example its op rejects;
* every ```python block of docs/api.md runs as written, as its own script from the repository root with
  nothing set in the environment (no TRITON_INTERPRET: the conftest sets it for this process, a user's does
  not have it), and prints what the doc says it does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from vortex_torch.abs.errors import FlowShapeError

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_op_reference", ROOT / "tools" / "gen_op_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_ops_reference_is_current() -> None:
    committed = (ROOT / "docs" / "ops.md").read_text()
    assert committed == gen.render(), "docs/ops.md is stale: run python tools/gen_op_reference.py"


def test_every_exported_op_has_a_section_with_signature_and_example() -> None:
    text = (ROOT / "docs" / "ops.md").read_text()
    for side in gen.SIDES:
        ops = gen.op_classes(side)
        assert len(ops) > 10
        for name, _ in ops:
            section = text.split(f"### {side}.{name}\n", 1)[1].split("\n### ", 1)[0]
            assert section.startswith(f"\n`{name}("), f"{side}.{name}: no signature line"
            assert f"self.{name.lower()}(" in section, f"{side}.{name}: no example"
            assert "→" in section, f"{side}.{name}: no input -> output line"


def test_generator_refuses_an_op_without_an_example(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = {side: dict(table) for side, table in gen.EXAMPLES.items()}
    del examples["indexer"]["GeMM"]
    monkeypatch.setattr(gen, "EXAMPLES", examples)
    with pytest.raises(SystemExit, match=r"vortex_torch\.indexer\.GeMM has no example"):
        gen.render()


def test_generator_refuses_an_example_the_op_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = {side: dict(table) for side, table in gen.EXAMPLES.items()}
    examples["indexer"]["GeMM"] = gen.Example("GeMM()", ("q_mean", 'cache["score"]'), "score")  # 128 vs 1
    monkeypatch.setattr(gen, "EXAMPLES", examples)
    with pytest.raises(FlowShapeError, match="contracts the last axis"):
        gen.render()


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown.read_text(), re.S | re.M)


#: (a string that identifies the snippet, a regex its output must match)
EXPECTED = [
    ("list_flows", r"CustomSparseAttention \{'k': \(16, 128\), 'v': \(16, 128\), 'centroids': \(1, 128\)\}\n\["),
    ("compile_check", r"kernels per layer: 2 \| compiled == reference: True\n"),
    ("measure_flow", r"needle recall 1\.000 \(best reachable 1\.000\)\nattention rel\. error 0\.\d+; blocks \d+/\d+\n"),
    ("FlowContractTests", r"6 passed"),
    ("VortexConfigError", r"\ntopk_val \| .*\nmodule_name \| .*\nmax_topk_val \| "),
    ("select_blocks_reference", r"\[0, 1, 3, 9, 10, 13, 14, 15\]\n"),
]


def test_api_md_expectations_cover_every_snippet() -> None:
    blocks = python_blocks(API)
    assert len(blocks) == len(EXPECTED)
    for block in blocks:
        assert sum(key in block for key, _ in EXPECTED) == 1, block[:200]


@pytest.mark.parametrize(("key", "expected"), EXPECTED, ids=[key for key, _ in EXPECTED])
def test_api_md_snippet_runs(key: str, expected: str, tmp_path: Path) -> None:
    (block,) = [b for b in python_blocks(API) if key in b]
    script = tmp_path / "snippet.py"
    script.write_text(block)
    env = {k: v for k, v in os.environ.items() if k not in {"TRITON_INTERPRET", "PYTHONPATH"}}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert re.search(expected, proc.stdout), proc.stdout


def test_vortex_config_table_lists_every_field_with_its_default() -> None:
    """packages/vortex-sglang/README.md's field table: one row per ``VortexConfig`` field, default as in the code."""
    import dataclasses

    from vortex_torch.engine.sgl.config import VortexConfig

    text = (ROOT / "packages" / "vortex-sglang" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, flags=re.M))
    fields = {f.name for f in dataclasses.fields(VortexConfig)}
    assert set(rows) == fields, f"missing {fields - set(rows)}, extra {set(rows) - fields}"
    default = VortexConfig(module_name="block_sparse_attention")  # an installed flow; every other field default
    for name in fields - {"module_name"}:  # module_name: "required"
        shown, value = rows[name].strip().strip("`"), getattr(default, name)
        assert shown == repr(value).replace("'", '"'), f"{name}: README says {shown}, the code {value!r}"
