"""Which library modules read environment variables, and why: a new read has to be added to ``ALLOWED`` with
its reason, so kernel dispatch (or anything else) cannot quietly start depending on the environment again.

Kernel dispatch follows Triton's own decision (``vortex_torch.kernels.use_triton``), so ``TRITON_INTERPRET``
is touched by one module only: ``flow/backend.py``, the explicit switch the ``vortex check`` worker and a flow
author's ``conftest.py`` call, which is also the only module that writes the environment.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> (the variables it reads, why a variable rather than an argument)
ALLOWED: dict[str, tuple[tuple[str, ...], str]] = {
    "vortex_torch.flow.backend": (
        ("TRITON_INTERPRET",),
        "use_triton_interpreter_without_cuda(): the explicit switch, set before Triton is imported",
    ),
    "vortex_torch.flow.compiler.triton_executor": (
        ("VORTEX_COMPILATION_CACHE",),
        "default kernel cache directory when VortexConfig.compilation_cache_dir is None",
    ),
    "vortex_torch.flow.registry": (("VORTEX_FLOWS",), "operator's allow-list of installed flows"),
    "vortex_torch._plugins": (
        ("VORTEX_DISABLE_PLUGIN_AUTOLOAD",),
        "operator switch, read before SGLang starts",
    ),
    "vortex_torch.engine.sgl.debug_dump": (
        ("VORTEX_DEBUG_DUMP", "VORTEX_DEBUG_DUMP_STEPS"),
        "debugging switch of a running server (scheduler processes inherit it)",
    ),
    "vortex_torch.engine.sgl.plugin": (
        ("VORTEX_SGLANG_SKIP_VERSION_CHECK",),
        "operator override of a startup check",
    ),
    "vortex_torch.engine.sgl.server_rules": (
        ("VORTEX_ALLOW_OVERLAP_SCHEDULE",),
        "experimental operator switch (docs/sglang-integration.md §5)",
    ),
}
#: the only module that may write os.environ
WRITER = "vortex_torch.flow.backend"


def _is_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in {"environ", "getenv", "putenv"}
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def scan() -> dict[str, tuple[set[str], bool]]:
    """Module -> (the ``VORTEX_*`` / ``TRITON_*`` names it spells, whether it writes os.environ), for every
    module of packages/*/src that touches ``os.environ`` / ``os.getenv``."""
    out: dict[str, tuple[set[str], bool]] = {}
    for src in sorted(ROOT.glob("packages/*/src")):
        for path in sorted(src.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if not any(_is_environ(n) for n in ast.walk(tree)):
                continue
            parts = list(path.relative_to(src).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            names = {
                n.value
                for n in ast.walk(tree)
                if isinstance(n, ast.Constant)
                and isinstance(n.value, str)
                and n.value.startswith(("VORTEX_", "TRITON_"))
                and n.value.replace("_", "").isalnum()
            }
            writes = any(
                (
                    isinstance(n, ast.Subscript)
                    and isinstance(n.ctx, (ast.Store, ast.Del))
                    and _is_environ(n.value)
                )
                or (
                    isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute)
                    and n.func.attr in {"setdefault", "update", "pop", "clear", "__setitem__"}
                    and _is_environ(n.func.value)
                )
                or (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "putenv")
                for n in ast.walk(tree)
            )
            out[name] = (names, writes)
    return out


def test_the_scan_sees_reads_and_writes() -> None:
    found = scan()
    assert found[WRITER] == ({"TRITON_INTERPRET"}, True)
    assert found["vortex_torch.flow.registry"][1] is False


def test_every_environment_read_is_listed_with_its_reason() -> None:
    found = scan()
    assert sorted(found) == sorted(ALLOWED)
    for module, (names, _writes) in found.items():
        assert set(ALLOWED[module][0]) <= names, module


def test_only_the_backend_switch_touches_triton_interpret_or_writes_the_environment() -> None:
    found = scan()
    assert [m for m, (names, _) in found.items() if "TRITON_INTERPRET" in names] == [WRITER]
    assert [m for m, (_, writes) in found.items() if writes] == [WRITER]
