#!/bin/bash
# Build the carried SGLang bundle (.sglpack/) for the lent GPU machine:
# python3 3.12, x86_64, torch 2.11.0+cu130, transformers 5.17 preinstalled, no network there.
# Runs on any x86_64 host with pip and PyPI access; Python 3.12 is NOT needed here (pip --target with
# --python-version). ~470 MB downloaded, ~2.5 min; writes site.tar.xz (~42 MiB) + extra.tar.xz (~1.5 MiB).
#
# usage (repo root):  bash tools/device/build_sglang_pack.sh [OUTDIR]       (default .sglpack, git-ignored)
# Derived from the tested recipe in shared/device/ (same pins, same slimming).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/.sglpack}"); W=${SGLPACK_WORK:-/tmp/sglpack-work}
PIP=${PIP:-python3 -m pip}
mkdir -p "$OUT" "$W/whl" "$W/extra"
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp
 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64
 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64
 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
 --platform manylinux1_x86_64"
# Needed to import sglang + run sgl.Engine (each one proven needed except the last 4, which are tiny).
CORE="sglang==0.5.17 sglang-kernel==0.4.5 flashinfer-python==0.6.15.post1
 transformers==5.12.1 tokenizers==0.22.2 apache-tvm-ffi==0.1.11 xgrammar==0.2.1
 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 opentelemetry-api==1.45.2
 pyzmq==27.3.0 orjson==3.13.0 msgspec==0.22.0 pybase64==1.5.1 setproctitle==1.3.8
 partial-json-parser==0.2.1.1.post7 openai==2.6.1 distro==1.9.0 sniffio==1.3.1
 compressed-tensors==0.20.0 loguru==0.7.3 gguf==0.19.0 dill==0.4.1
 python-multipart==0.0.34 interegular==0.3.3 jiter==0.19.0 typing-extensions==4.16.0"
# Extra, only for `python -m sglang.launch_server` (HTTP server) tests.
HTTP="jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
 rpds-py==2026.9.1 soundfile==0.13.1 cffi==2.1.1 pycparser==3.12"
$PIP download -q --no-deps $PLAT -d "$W/whl" $CORE
$PIP download -q --no-deps $PLAT -d "$W/extra" $HTTP
rm -rf "$W/site" "$W/site2"
$PIP install -q --no-deps --no-index --no-compile $PLAT --target "$W/site" "$W"/whl/*.whl
$PIP install -q --no-deps --no-index --no-compile $PLAT --target "$W/site2" "$W"/extra/*.whl
cd "$W/site"
# Slim (none of these is loaded for triton/flashinfer attention on sm90):
#  sgl_kernel: FA3 (flash_ops, 1.1 GB), FlashMLA, sm100 common_ops, InfLLM ops (lazy-loaded);
#  xgrammar static lib; sglang diffusion package and Rust HTTP/gRPC/multimodal natives
#  (only used with SGLANG_RUST_SERVER / grpc / inkling); console scripts.
rm -rf sgl_kernel/flash_ops.abi3.so sgl_kernel/flashmla_ops.abi3.so sgl_kernel/sm100 \
  sgl_kernel/infllm_ops*.so xgrammar/lib/libxgrammar.a sglang/multimodal_gen \
  sglang/srt/server/_core*.so sglang/srt/grpc/_core*.so sglang/srt/multimodal/_core*.so bin
# IPython is not on the GPU image; sglang/utils.py imports IPython.display at top level.
mkdir -p IPython
printf '%s\n' '# stand-in: sglang.utils only needs IPython.display.HTML/display (notebook helpers)' \
    '# matplotlib probes an imported IPython: a modern version, not inside a shell, leaves the stand-in alone' \
    'version_info = (8, 24, 0, "stand-in")' 'def get_ipython():' '    return None' > IPython/__init__.py
cat > IPython/display.py <<'PY'
class HTML:
    def __init__(self, data=None, *a, **k):
        self.data = data

    def _repr_html_(self):
        return self.data


def display(*objs, **kwargs):
    for o in objs:
        print(getattr(o, "data", o))
PY
find . -name __pycache__ -prune -exec rm -rf {} +
tar -cf - . | xz -T0 -9 > "$OUT/site.tar.xz"
cd "$W/site2" && rm -rf bin && tar -cf - . | xz -T0 -9 > "$OUT/extra.tar.xz"
# What the bundle holds, for remote.sh's log.
{ echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) by tools/device/build_sglang_pack.sh"
  for p in $CORE $HTTP; do echo "$p"; done; } > "$OUT/MANIFEST"
ls -l "$OUT"
