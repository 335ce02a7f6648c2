#!/usr/bin/env bash
# Lint, type-check and test the whole monorepo in .venv (made by tools/setup.sh).
# Usage: bash tools/test.sh [pytest arguments]    e.g.  bash tools/test.sh -m "not slow" -x
# Every step runs even when an earlier one fails; the exit code is non-zero if any failed.
# Without CUDA, tests marked `gpu` are deselected (a `-m` of your own replaces that).
# pytest's exit code 5 (no test collected, or all deselected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."

py=${VORTEX_PYTHON:-.venv/bin/python}   # `hatch run test` sets it to the hatch environment's python
command -v "$py" >/dev/null || { echo "test: $py not found; run tools/setup.sh first" >&2; exit 2; }
failed=()

echo "== ruff check"
"$py" -m ruff check . || failed+=(ruff)

echo "== mypy (packages/*/src; settings in pyproject.toml)"
"$py" -m mypy || failed+=(mypy)

# Without CUDA: the gpu tests deselected, the rest on one worker per core (pytest-xdist, at most 8; on a
# 2-core machine 15.5 min in one process, 7.6-8.9 with two, 2026-12-05). With CUDA in one process: GPU tests start
# SGLang engines, one GPU's worth each. Arguments of yours come after ours, so `-n 0` runs in one process.
opts=()
if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  opts=(-m "not gpu" -n auto --maxprocesses 8)
fi

echo "== pytest"
"$py" -m pytest "${opts[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest ran no test (exit code 5)" >&2
  failed+=("pytest (no test ran)")
elif [ "$rc" -ne 0 ]; then
  failed+=(pytest)
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: all passed"
