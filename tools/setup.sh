#!/usr/bin/env bash
# Create or refresh the development environment `.venv` at the repository root:
#   1. torch, pinned, FIRST: the packages only ask for torch>=2.11,<2.15, and with no torch installed pip
#      would satisfy that with a multi-GB CUDA build. On the CPU machines torch==2.13.0 is a CPU wheel on
#      local disk; once it is installed, the range is satisfied and pip installs no other torch.
#   2. triton, pinned;
#   3. the development tools listed in pyproject.toml ([tool.hatch.envs.default] dependencies);
#   4. the four packages of packages/, editable;
#   5. SGLang 0.5.17's Python side (tools/install_sglang_cpu.sh, --no-deps at pinned versions, torch kept), so
#      the vortex-sglang tests marked `sglang` run against the real SGLang classes. VORTEX_SKIP_SGLANG=1 skips it.
# Re-running is a no-op (well under a second) while python, this script, install_sglang_cpu.sh and every
# pyproject.toml are unchanged.
# Usage: bash tools/setup.sh        (PYTHON=python3.12 bash tools/setup.sh to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
vpy=$venv/bin/python
stamp=$venv/.vortex-setup.sha256

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python >= 3.11 needed" >&2
  exit 1
fi
want=$({ "$python" -VV; echo "skip_sglang=${VORTEX_SKIP_SGLANG:-0}"; cat tools/setup.sh tools/install_sglang_cpu.sh pyproject.toml packages/*/pyproject.toml; } | sha256sum)
if [ -x "$vpy" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: $venv is up to date"
  exit 0
fi

if [ -x "$vpy" ] && [ "$("$vpy" -VV)" != "$("$python" -VV)" ]; then
  echo "setup: $venv was made by another Python; recreating it"
  rm -rf "$venv"
fi
[ -x "$vpy" ] || "$python" -m venv "$venv"
rm -f "$stamp"
# pip install, quiet, without the local package mirror's "Location ... is ignored" noise.
pip_install() {
  "$vpy" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}

# The tool list, split into torch, triton and the rest (one requirement a line).
mapfile -t reqs < <("$vpy" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["tool"]["hatch"]["envs"]["default"]["dependencies"]
order = lambda d: 0 if d.startswith("torch") else 1 if d.startswith("triton") else 2
print("\n".join(sorted(deps, key=order)))')
torch_req=${reqs[0]}
triton_req=${reqs[1]}
case "$torch_req $triton_req" in
  torch*" "triton*) ;;
  *) echo "setup: torch or triton missing from [tool.hatch.envs.default] dependencies" >&2; exit 1 ;;
esac

# Refuse to download torch on a machine without an NVIDIA GPU: that would be a CUDA build of several GB.
torch_url=$(pip_install --dry-run --no-deps --report - "$torch_req" | "$vpy" -c '
import json, sys
todo = json.load(sys.stdin)["install"]
print(todo[0]["download_info"]["url"] if todo else "installed")')
case "$torch_url" in
  installed | file:*) ;;
  *)
    if ! command -v nvidia-smi >/dev/null && [ "${VORTEX_ALLOW_TORCH_DOWNLOAD:-0}" != 1 ]; then
      echo "setup: $torch_req is not on local disk and pip would download $torch_url (a CUDA build)." >&2
      echo "setup: install a CPU torch into $venv yourself, or set VORTEX_ALLOW_TORCH_DOWNLOAD=1." >&2
      exit 1
    fi
    ;;
esac

echo "setup: [1/5] $torch_req"
pip_install "$torch_req"
echo "setup: [2/5] $triton_req"
pip_install "$triton_req"
echo "setup: [3/5] development tools"
pip_install "${reqs[@]:2}"
echo "setup: [4/5] packages (editable)"
pip_install --no-build-isolation \
  -e packages/vortex-ops \
  -e 'packages/vortex-flow[hf]' \
  -e packages/vortex-sglang \
  -e packages/vortex-flows-contrib

if [ "${VORTEX_SKIP_SGLANG:-0}" = 1 ]; then
  echo "setup: [5/5] SGLang skipped (VORTEX_SKIP_SGLANG=1): tests marked sglang will be skipped"
else
  echo "setup: [5/5] SGLang's Python side (tools/install_sglang_cpu.sh)"
  PYTHON="$vpy" bash tools/install_sglang_cpu.sh
fi

"$vpy" -c 'import torch, vortex_torch as v; print("setup: torch", torch.__version__, "vortex_torch", v.__version__)'
echo "$want" >"$stamp"
echo "setup: done; activate with: source $venv/bin/activate"
