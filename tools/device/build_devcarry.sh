#!/usr/bin/env bash
# Build our packages as wheels into .devcarry/ (git-ignored) for tools/device/remote.sh.
#
# usage (repo root):  bash tools/device/build_devcarry.sh          PYTHON=... to pick the interpreter
#
# Every packages/<dir>/ with a pyproject.toml becomes one pure-Python wheel (pip wheel --no-deps
# --no-build-isolation when $PYTHON has hatchling, else pip's isolated build). Wheels carry
# .dist-info/entry_points.txt, which is what makes `sglang.srt.plugins` / `vortex_flow.flows` entry points
# visible on the GPU machine. .devcarry/manifest.json records, per package, the wheel and a hash of
# pyproject.toml + src/; remote.sh refuses a wheel whose package changed since (a stale carry).
# Packages without a pyproject.toml are skipped: remote.sh puts their src/ on PYTHONPATH instead.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=$(command -v python3); fi
cd "$ROOT"
rm -rf .devcarry && mkdir -p .devcarry
"$PY" - <<'PY'
import hashlib, json, os, pathlib, subprocess, sys

def src_hash(pkg: pathlib.Path) -> str:
    # Same definition as in remote.sh: sorted relative paths + bytes of pyproject.toml and src/**.
    h = hashlib.sha256()
    files = [pkg / "pyproject.toml"] + sorted(p for p in (pkg / "src").rglob("*") if p.is_file())
    for f in files:
        if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()

try:
    import hatchling  # noqa: F401
    have_hatchling = True
except ImportError:
    have_hatchling = False

manifest = {}
for pkg in sorted(pathlib.Path("packages").iterdir()):
    if not (pkg / "pyproject.toml").is_file():
        print(f"build_devcarry: {pkg.name}: no pyproject.toml, remote.sh will use its src/")
        continue
    before = set(os.listdir(".devcarry"))
    # Build in this interpreter when it has the backend (fast, offline); else let pip isolate the build.
    isolation = ["--no-build-isolation"] if have_hatchling else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                    "-w", ".devcarry", str(pkg)], check=True)
    new = sorted(set(os.listdir(".devcarry")) - before)
    wheels = [w for w in new if w.endswith(".whl")]
    assert len(wheels) == 1, (pkg, new)
    manifest[pkg.name] = {"wheel": wheels[0], "src_sha256": src_hash(pkg)}
    print(f"build_devcarry: {pkg.name} -> .devcarry/{wheels[0]}")
json.dump(manifest, open(".devcarry/manifest.json", "w"), indent=1, sort_keys=True)
PY
du -sh .devcarry
