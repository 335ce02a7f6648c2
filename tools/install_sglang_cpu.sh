#!/usr/bin/env bash
# Install stock SGLang 0.5.17 into a CPU-only Python so that its *Python* side imports:
# ServerArgs / prepare_server_args, the plugin loader (sglang.srt.plugins, HookRegistry), the attention
# backend registry, the KV pools and configurators, ModelRunner, Scheduler and sgl.Engine's module.
# Nothing here can run a model (no CUDA, no flashinfer, no sgl-kernel); that is what tools/device/ is for.
#
# usage:  PYTHON=/path/to/python bash tools/install_sglang_cpu.sh      (default: .venv/bin/python)
#
# * Everything is installed with --no-deps at pinned versions, so the target's torch (2.13.0+cpu here;
#   sglang 0.5.17 pins torch==2.11.0) and its other packages are never replaced by pip's resolver.
#   The list is the minimal set found by importing the modules above one by one (docs/sglang-integration.md §8).
# * Two stand-ins go into <site-packages>/_vortex_cpu_standins, appended to sys.path by a .pth file, so a
#   real package installed later wins:
#     IPython     sglang/utils.py imports IPython.display at top level (the GPU pack uses the same stand-in);
#     torchvision sglang/srt/utils/common.py imports torchvision.io.decode_jpeg at top level, and PyPI only
#                 has CUDA builds of torchvision, which fail against a CPU torch ("operator torchvision::nms
#                 does not exist"). Any attribute of the stand-in resolves; calling one raises.
# * Idempotent: a completed run leaves a stamp; the next run checks it and sglang's version (~1 s) and
#   returns. VORTEX_SGLANG_FORCE=1 reinstalls.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
SGLANG_VERSION=0.5.17
TORCH_VERSION=2.13.0

if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    echo "install_sglang_cpu: no python at '$PY' (set PYTHON=...)" >&2
    exit 2
fi

check() {
    "$PY" - "$SGLANG_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys, warnings
warnings.simplefilter("ignore")
assert md.version("sglang") == sys.argv[1]
import sglang.srt.server_args, sglang.srt.plugins, sglang.srt.layers.attention.attention_registry  # noqa
import sglang.srt.entrypoints.engine  # noqa
PY
}

SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
STAND=$SITE/_vortex_cpu_standins
STAMP="sglang=$SGLANG_VERSION script=$(md5sum "${BASH_SOURCE[0]}" | cut -c1-12)"
# Fast path (~1 s): this script already completed here and sglang's metadata still says so.
if [ -z "${VORTEX_SGLANG_FORCE:-}" ] && [ "$(cat "$STAND/INSTALLED" 2>/dev/null)" = "$STAMP" ] \
    && "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('sglang') != '$SGLANG_VERSION')" 2>/dev/null; then
    echo "install_sglang_cpu: sglang $SGLANG_VERSION already installed for $PY"
    exit 0
fi

t0=$(date +%s)
# quiet: without the local package mirror's "Location ... is ignored" noise (as tools/setup.sh does)
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

# torch: keep whatever the target has; only a bare interpreter gets the CPU build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    pip_install "torch==$TORCH_VERSION"
fi

# Pure-Python (or self-contained binary) packages sglang's modules import at module level, with the
# packages *their* imports need. Pinned to what was tested (torch 2.13.0+cpu, Python 3.11).
PINS=(
    "sglang==$SGLANG_VERSION"
    # sglang.srt.utils.common / server_args
    numpy==2.4.6 orjson==3.13.0 psutil==7.2.2 pybase64==1.5.1 packaging==26.3 pillow==13.0.0
    requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.2
    triton==3.6.0 starlette==1.10.0 anyio==4.16.0 sniffio==1.3.1 tqdm==4.70.1
    pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
    typing-extensions==4.16.0 msgspec==0.22.0 pyzmq==27.3.0 dill==0.4.1
    # sglang.lang (imported by `import sglang`)
    aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0
    multidict==7.2.1 propcache==0.5.4 yarl==1.25.1
    # transformers checks its own requirements at import time
    transformers==5.12.1 tokenizers==0.22.2 huggingface-hub==1.33.0 safetensors==0.8.0 regex==2026.11.19
    pyyaml==6.0.4 httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 filelock==4.2.12 fsspec==2026.9.0
    # configs / function-call parsers / quantization registry
    openai==2.6.1 distro==1.9.0 jiter==0.19.0 partial-json-parser==0.2.1.1.post7
    xgrammar==0.2.1 apache-tvm-ffi==0.1.11 sentencepiece==0.2.3 einops==0.8.2
    compressed-tensors==0.20.0 loguru==0.7.3 gguf==0.19.0
    # scheduler / engine / encode server modules
    setproctitle==1.3.8 uvicorn==0.54.0 click==8.5.1 fastapi==0.165.0 annotated-doc==0.0.7
    opentelemetry-api==1.45.2 uvloop==0.23.0
)
pip_install --no-deps "${PINS[@]}"

# Stand-ins (see header).
mkdir -p "$STAND/IPython" "$STAND/torchvision/transforms/v2" "$STAND/torchvision/ops"
echo "$STAND" > "$SITE/_vortex_cpu_standins.pth"

cat > "$STAND/IPython/__init__.py" <<'PY'
"""Stand-in (vortex tools/install_sglang_cpu.sh): sglang.utils only needs IPython.display.HTML/display."""

# matplotlib probes an imported IPython (FigureCanvasBase._fix_ipython_backend2gui, pyplot's display hook):
# a modern version and "not inside an IPython shell" make it leave the stand-in alone
version_info = (8, 24, 0, "stand-in")


def get_ipython():
    return None
PY
cat > "$STAND/IPython/display.py" <<'PY'
class HTML:
    def __init__(self, data=None, *args, **kwargs):
        self.data = data

    def _repr_html_(self):
        return self.data


def display(*objs, **kwargs):
    for o in objs:
        print(getattr(o, "data", o))
PY
cat > "$STAND/torchvision/_stub.py" <<'PY'
"""Stand-in for torchvision in the CPU test env (vortex tools/install_sglang_cpu.sh).

Any attribute of a stand-in module resolves to a placeholder; calling a placeholder raises.
"""


class _Stub:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Stub(f"{self._name}.{item}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{self._name}: torchvision is a stand-in in the CPU test env")

    def __repr__(self):
        return f"<torchvision stand-in {self._name}>"


def module_getattr(module_name):
    def __getattr__(item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Stub(f"{module_name}.{item}")

    return __getattr__
PY
for m in "" io transforms transforms/functional transforms/v2 transforms/v2/functional ops ops/boxes; do
    if [ -z "$m" ]; then f=$STAND/torchvision/__init__.py; dotted=torchvision
    elif [ -d "$STAND/torchvision/$m" ]; then f=$STAND/torchvision/$m/__init__.py; dotted=torchvision.${m//\//.}
    else f=$STAND/torchvision/$m.py; dotted=torchvision.${m//\//.}; fi
    printf '# stand-in, see torchvision/_stub.py\nfrom torchvision._stub import module_getattr\n\n__getattr__ = module_getattr("%s")\n' \
        "$dotted" > "$f"
done
echo '__version__ = "0.0.0+vortex.standin"' >> "$STAND/torchvision/__init__.py"

if ! check; then
    echo "install_sglang_cpu: sglang still does not import; the failing import:" >&2
    "$PY" -c "import sglang.srt.server_args, sglang.srt.plugins, sglang.srt.entrypoints.engine" >&2 || true
    exit 1
fi
echo "$STAMP" > "$STAND/INSTALLED"
echo "install_sglang_cpu: sglang $SGLANG_VERSION importable with $PY ($(( $(date +%s) - t0 ))s)"
