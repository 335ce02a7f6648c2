#!/usr/bin/env bash
# The one command to run on the lent GPU machine, from the repo root (see tools/device/README.md):
#
#   bash tools/device/remote.sh suite [pytest args...]     pytest -m gpu over the repo (junit.xml)
#   bash tools/device/remote.sh bench NAME [args...]       python tools/bench/NAME.py args
#   bash tools/device/remote.sh py SCRIPT [args...]        any python script (e.g. tools/device/smoke_engine.py)
#   bash tools/device/remote.sh sanitize [pytest args...]  compute-sanitizer memcheck, then racecheck, over the
#                                                          kernel tests (sanitize-{memcheck,racecheck}.{txt,xml})
#
# Carry [".sglpack", ".devcarry"]. Steps: unpack .sglpack into /tmp/site; install .devcarry's wheels into
# /tmp/vtx-site (packages without a wheel: their src/ on PYTHONPATH plus a generated .dist-info holding their
# entry points); build the random-weight Qwen3 models named in VORTEX_MODELS under /tmp/models; run the
# sub-command under a deadline; write $OUT/{remote.log, summary.json, result.md} (+ junit.xml for suite).
# At most 8 files come back from $OUT: sub-commands may add 4 (they get VORTEX_OUT=$OUT).
#
# Environment (all optional):
#   VORTEX_MODELS     comma list of models to build: tiny, qwen3-8b-l4, qwen3-8b-l8, dsv2-lite-l1, none
#                     (default: tiny)
#   VORTEX_BUDGET_S   seconds this whole command may take (default 570; keep it under the run's timeout_s)
#   VORTEX_REV        the commit under test, for result.md (the device copy has no .git)
#   VORTEX_ALLOW_STALE=1  accept .devcarry wheels built from an older packages/ tree
#   VORTEX_SANITIZE_S seconds for both sanitizer runs together (default 240; memcheck gets 45%, racecheck the rest)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 3   # the repo root, wherever it was called from
OUT=${OUT:-/tmp/vortex-out}
mkdir -p "$OUT"
LOG=$OUT/remote.log
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
BUDGET=${VORTEX_BUDGET_S:-570}
SUB=${1:-suite}
[ $# -gt 0 ] && shift
CMDLINE="bash tools/device/remote.sh $SUB${*:+ $*}"
STAGES=""
stage() { STAGES+="$1=$2 "; echo "[remote] $1: $2 s"; }
die() { echo "[remote] ERROR: $*"; RC=${RC:-3}; finish; }

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MAX_JOBS=${MAX_JOBS:-16}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VORTEX_OUT=$OUT VORTEX_MODELS_DIR=/tmp/models
PY=python3

finish() {
    # summary.json + result.md from what ran; keeps the log under the 16 MiB file limit.
    RC=${RC:-0}
    "$PY" - "$OUT" "$SUB" "$RC" "$SECONDS" "${CMDLINE:-}" "$STAGES" <<'PY' || true
import datetime, json, os, re, subprocess, sys
import xml.etree.ElementTree as ET

out, sub, rc, secs, cmdline = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
stages = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", sys.argv[6])}

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""

def version(mod):
    return sh(f"python3 -c 'import importlib.metadata as m; print(m.version(\"{mod}\"))' 2>/dev/null") or "-"

rev = os.environ.get("VORTEX_REV") or sh("git rev-parse --short HEAD 2>/dev/null") or "unknown (set VORTEX_REV)"
summary = {
    "subcommand": sub, "command": cmdline, "rc": rc, "wall_s": secs, "stages_s": stages,
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "rev": rev,
    "gpu": sh("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1"),
    "torch": version("torch"), "sglang": version("sglang"), "flashinfer": version("flashinfer-python"),
    "sglang_kernel": version("sglang-kernel"), "triton": version("triton"), "python": sys.version.split()[0],
}
counts, failures = None, []
junit = os.path.join(out, "junit.xml")
if os.path.exists(junit):
    try:
        root = ET.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
        counts = c
        for tc in root.iter("testcase"):
            for kind in ("failure", "error"):
                el = tc.find(kind)
                if el is not None:
                    msg = (el.get("message") or "").strip().splitlines()
                    failures.append(f"{tc.get('classname')}::{tc.get('name')} [{kind}] {msg[0][:200] if msg else ''}")
    except Exception as e:  # a truncated junit.xml (timeout) must not lose the summary
        summary["junit_error"] = repr(e)
summary["counts"] = counts
summary["failures"] = failures
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)

if counts is not None:
    verdict = (f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
               f"{counts['skipped']} skipped")
else:
    verdict = "no junit (not a suite run, or it was cut off)"
if sub == "suite" and rc == 5:
    verdict += " - pytest collected no gpu tests (rc 5)"
lines = [
    f"# GPU run: {sub} ({summary['date_utc'][:10]})", "",
    f"- command: `{cmdline}`",
    f"- rev: {rev}",
    f"- device: {summary['gpu'] or '?'}; python {summary['python']}, torch {summary['torch']}, "
    f"sglang {summary['sglang']}, flashinfer {summary['flashinfer']}, sglang-kernel {summary['sglang_kernel']}, "
    f"triton {summary['triton']}",
    f"- date: {summary['date_utc']}",
    f"- result: rc={rc}; {verdict}",
    f"- time: {secs} s in all; stages " + ", ".join(f"{k} {v} s" for k, v in stages.items()),
]
if failures:
    lines += ["", "## Failures", ""] + [f"- `{f}`" for f in failures[:50]]
for tool in ("memcheck", "racecheck"):  # the sanitize sub-command's summaries
    path = os.path.join(out, f"sanitize-{tool}.txt")
    if os.path.exists(path):
        lines += ["", f"## compute-sanitizer {tool}", "", "```", open(path).read()[:4000].rstrip(), "```"]
open(os.path.join(out, "result.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
    # 16 MiB per returned file: keep the head and the tail of a huge log.
    if [ -f "$LOG" ] && [ "$(stat -c %s "$LOG")" -gt 15000000 ]; then
        { head -c 2000000 "$LOG"; printf '\n[remote] ... log cut here ...\n'; tail -c 12000000 "$LOG"; } > "$LOG.cut"
        mv "$LOG.cut" "$LOG"
    fi
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$RC"
}

echo "[remote] $(date -u +%FT%TZ) sub=$SUB args=$* budget=${BUDGET}s host=$(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/[remote] gpu: /'

# 1. SGLang bundle -> /tmp/site (kept when a warm machine already has the same bundle).
t=$SECONDS
[ -f .sglpack/site.tar.xz ] || die "no .sglpack/site.tar.xz: build it with tools/device/build_sglang_pack.sh and carry .sglpack"
STAMP=$(cat .sglpack/MANIFEST 2>/dev/null | md5sum | cut -c1-12)-$(stat -c %s .sglpack/site.tar.xz)
if [ "$(cat /tmp/site/.vortex-stamp 2>/dev/null)" != "$STAMP" ]; then
    rm -rf /tmp/site && mkdir -p /tmp/site
    tar -xJf .sglpack/site.tar.xz -C /tmp/site || die "untar site.tar.xz failed"
    if [ -f .sglpack/extra.tar.xz ]; then tar -xJf .sglpack/extra.tar.xz -C /tmp/site || die "untar extra.tar.xz failed"; fi
    echo "$STAMP" > /tmp/site/.vortex-stamp
fi
stage untar $((SECONDS - t))

# 2. Our packages: wheels from .devcarry (entry points included), else src/ + a generated .dist-info.
t=$SECONDS
VTX_PATH=$("$PY" - <<'PY'
import glob, hashlib, json, os, pathlib, shutil, subprocess, sys, tomllib

def src_hash(pkg):
    # Same definition as tools/device/build_devcarry.sh.
    h = hashlib.sha256()
    files = [pkg / "pyproject.toml"] + sorted(p for p in (pkg / "src").rglob("*") if p.is_file())
    for f in files:
        if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()

log = lambda m: print(f"[remote] {m}", file=sys.stderr)
manifest = {}
if os.path.exists(".devcarry/manifest.json"):
    manifest = json.load(open(".devcarry/manifest.json"))
allow_stale = os.environ.get("VORTEX_ALLOW_STALE") == "1"
wheels, paths = [], []
shim = pathlib.Path("/tmp/vtx-shim")
shutil.rmtree(shim, ignore_errors=True)
shutil.rmtree("/tmp/vtx-site", ignore_errors=True)
for pkg in sorted(pathlib.Path("packages").iterdir()):
    if not pkg.is_dir():
        continue
    m = manifest.get(pkg.name)
    if m and os.path.exists(f".devcarry/{m['wheel']}"):
        if m["src_sha256"] != src_hash(pkg):
            msg = f"{pkg.name}: .devcarry/{m['wheel']} is stale (packages/{pkg.name} changed since): run tools/device/build_devcarry.sh"
            if not allow_stale:
                log("ERROR: " + msg)
                sys.exit(4)
            log("WARNING: " + msg)
        wheels.append(f".devcarry/{m['wheel']}")
        log(f"{pkg.name}: wheel {m['wheel']}")
        continue
    if (pkg / "src").is_dir():
        paths.append(str((pkg / "src").resolve()))
    pp = pkg / "pyproject.toml"
    if pp.is_file():
        proj = tomllib.loads(pp.read_text()).get("project", {})
        name = proj.get("name", pkg.name)
        ver = proj.get("version", "0+src")
        d = shim / f"{name.replace('-', '_')}-{ver}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n")
        eps = dict(proj.get("entry-points", {}))
        if proj.get("scripts"):
            eps["console_scripts"] = proj["scripts"]
        (d / "entry_points.txt").write_text(
            "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in t.items()) + "\n" for g, t in eps.items()))
        log(f"{pkg.name}: src/ on PYTHONPATH + generated {d.name} ({sum(len(t) for t in eps.values())} entry points)")
    else:
        log(f"{pkg.name}: src/ on PYTHONPATH (no pyproject.toml, no entry points)")
if wheels:
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", "/tmp/vtx-site", *wheels], stdout=sys.stderr)
    if r.returncode:
        log("pip failed; unpacking the wheels instead")
        import zipfile
        for w in wheels:
            zipfile.ZipFile(w).extractall("/tmp/vtx-site")
    paths.insert(0, "/tmp/vtx-site")
if shim.exists():
    paths.append(str(shim))
print(":".join(paths))
PY
)
rc=$?
[ $rc -eq 0 ] || { RC=$rc; die "installing our packages failed"; }
export PYTHONPATH=${VTX_PATH:+$VTX_PATH:}/tmp/site${PYTHONPATH:+:$PYTHONPATH}
echo "[remote] PYTHONPATH=$PYTHONPATH"
stage install $((SECONDS - t))

# 3. Models (random weights; no network there).
t=$SECONDS
IFS=',' read -ra MODELS <<< "${VORTEX_MODELS:-tiny}"
for m in "${MODELS[@]}"; do
    case "$m" in
        none|"") continue ;;
        tiny) margs=(--preset tiny) ;;
        qwen3-8b-l*) margs=(--preset qwen3-8b --layers "${m#qwen3-8b-l}") ;;
        dsv2-lite-l*) margs=(--preset deepseek-v2-lite --layers "${m#dsv2-lite-l}") ;;
        *) die "unknown model '$m' in VORTEX_MODELS (tiny, qwen3-8b-l<N>, dsv2-lite-l<N>, none)" ;;
    esac
    if [ ! -f "/tmp/models/$m/vortex_tiny.json" ] || [ ! -f "/tmp/models/$m/tokenizer.json" ]; then
        "$PY" tools/device/mk_tiny.py "${margs[@]}" "/tmp/models/$m" || die "mk_tiny $m failed"
    fi
done
export VORTEX_TINY_MODEL=/tmp/models/tiny
stage models $((SECONDS - t))

# 4a. sanitize: compute-sanitizer over the kernel tests (small ragged shapes), memcheck then racecheck, each
#     under its own time limit, so that the pair fits VORTEX_SANITIZE_S (racecheck is the slow one).
#     memcheck runs with PyTorch's caching allocator off: every tensor is then its own cudaMalloc, so an access
#     past a tensor's end is caught instead of landing in a neighbour inside the same cached segment. Graph
#     captures cannot allocate that way, so memcheck deselects the CUDA-graph tests (racecheck keeps them).
#     CUDA API errors are not reported: Triton and PyTorch probe the driver with calls that fail on purpose.
SAN_MEMCHECK=(packages/vortex-ops/tests packages/vortex-flow/tests/test_compiler.py -m "not slow"
              -k "not graph and not sm90")
SAN_RACECHECK=(packages/vortex-ops/tests/test_select.py packages/vortex-ops/tests/test_sparse_decode.py
               packages/vortex-ops/tests/test_token_table.py packages/vortex-flow/tests/test_compiler.py -m "not slow"
               -k "triton_matches_reference or multi_tile or test_matches_reference or split_counts or triton_and_reference or compiled_equals_reference or cuda_graph")

run_limited() {  # LIMIT_S CMD...: CMD under `timeout` (SIGINT at LIMIT_S, so pytest still writes junit.xml;
    # SIGKILL 15 s later); returns its exit code. `timeout` puts CMD in a process group of its own (SGLang's
    # subprocesses go with it), out of reach of a signal sent to this script's group: it runs in the background
    # and a trap passes a TERM/INT sent to this script (an outer `timeout`, the run tool's limit) on to it.
    # Killing this shell alone left pytest running: on 2026-12-05 an overlap suite cut by an outer
    # `timeout 210` ran 6 minutes beside the next bench, sharing its GPU.
    local limit=$1 child rc
    shift
    timeout --signal=INT --kill-after=15 "$limit" "$@" &
    child=$!
    trap "echo '[remote] stopped from outside: interrupting the command'; kill -INT $child 2>/dev/null" TERM INT
    wait "$child"
    rc=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done  # a trap ends `wait` early
    trap - TERM INT
    return $rc
}

sanitize_tool() {  # TOOL LIMIT_S PYTEST_ARGS...: one compute-sanitizer run; writes $OUT/sanitize-TOOL.{txt,xml}
    local tool=$1 limit=$2 t=$SECONDS rc
    shift 2
    local envs=() log=/tmp/sanitize-$tool.log
    [ "$tool" = memcheck ] && envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    local cmd=("$SANITIZER" --tool "$tool" --target-processes all --report-api-errors no --print-limit 100
               --error-exitcode 86 "$PY" -m pytest -q -ra -p no:cacheprovider -o junit_family=xunit2
               --junitxml="$OUT/sanitize-$tool.xml" "$@")
    echo "[remote] sanitize $tool (limit ${limit}s): ${cmd[*]}"
    # into the log, not through `| tee`: a pipeline would put the command out of reach of run_limited's trap
    run_limited "$limit" env ${envs[@]+"${envs[@]}"} "${cmd[@]}" > "$log" 2>&1
    rc=$?
    cat "$log"
    "$PY" - "$tool" "$rc" "$((SECONDS - t))" "$limit" "$log" "$OUT" "${envs[*]:-} ${cmd[*]}" <<'PY'
import os, re, sys
import xml.etree.ElementTree as ET

tool, rc, secs, limit, log, out, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], *sys.argv[5:]
text = open(log, errors="replace").read()
lines = text.splitlines()
# one summary per process the sanitizer followed: "ERROR SUMMARY: 3 errors", "RACECHECK SUMMARY: 2 hazards
# displayed (1 error, 1 warning)"
summaries = [ln.strip("= ").strip() for ln in lines if re.search(r"(ERROR|RACECHECK|LEAK) SUMMARY", ln)]
errors = sum(int(m) for s in summaries for m in re.findall(r"ERROR SUMMARY: (\d+) error", s))
errors += sum(int(m) for s in summaries for m in re.findall(r"RACECHECK SUMMARY: .*?\((\d+) error", s))
warnings = sum(int(m) for s in summaries for m in re.findall(r"(\d+) warning", s))
counts = "no junit (pytest did not start or was killed)"
xml = os.path.join(out, f"sanitize-{tool}.xml")
if os.path.exists(xml):
    try:
        root = ET.parse(xml).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        counts = (f"{c['tests'] - c['failures'] - c['errors'] - c['skipped']} passed, {c['failures']} failed, "
                  f"{c['errors']} errors, {c['skipped']} skipped")
    except Exception as e:  # cut off mid-write
        counts = f"junit unreadable: {e!r}"
final = [ln for ln in lines if re.match(r"^(=+ )?.*\b(passed|failed|errors?|no tests ran|interrupted)\b.* in [\d.]+s", ln)]
blocked = [ln for ln in lines if re.search(r"Device not supported|Target application terminated before|"
                                           r"Unable to|Error: |cannot be found", ln)]
if not summaries:
    verdict = "NOT RUN: the sanitizer printed no summary" + (f" ({blocked[0].strip()[:200]})" if blocked else "")
elif errors:
    verdict = f"ERRORS: {errors} sanitizer errors"
else:
    verdict = "clean" + (f" ({warnings} warnings)" if warnings else "")
report = [
    f"tool: {tool}",
    f"verdict: {verdict}",
    f"tests: {counts}" + (f"  [{final[-1].strip('= ')}]" if final else ""),
    f"time: {secs} s of a {limit} s limit; exit {rc}" + (" (cut off by the limit)" if rc in (124, 130, 137) else ""),
    f"command: {cmd.strip()}",
    "summaries: " + ("; ".join(summaries) if summaries else "none"),
]
reports = [ln for ln in lines if ln.startswith("========= ") and not re.search(r"SUMMARY", ln)]
if reports:
    report += ["", f"first sanitizer report lines ({len(reports)} in all):", *reports[:60]]
open(os.path.join(out, f"sanitize-{tool}.txt"), "w").write("\n".join(report) + "\n")
print("\n".join(f"[remote] sanitize {r}" for r in report[:6]))
sys.exit(0 if verdict.startswith("clean") and rc == 0 else 86 if errors else 1)
PY
}

if [ "$SUB" = sanitize ]; then
    SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
                /usr/local/cuda*/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
    [ -n "$SANITIZER" ] || die "compute-sanitizer not found (PATH, /usr/local/cuda*/)"
    if [ $# -gt 0 ]; then SAN_MEMCHECK=("$@"); SAN_RACECHECK=("$@"); fi   # a selection of yours, for both tools
    TOTAL=$((BUDGET - SECONDS - 20))
    [ "${VORTEX_SANITIZE_S:-240}" -lt "$TOTAL" ] && TOTAL=${VORTEX_SANITIZE_S:-240}
    [ $TOTAL -ge 60 ] || die "only ${TOTAL}s left for the sanitizer runs"
    t=$SECONDS
    T_SAN=$SECONDS
    sanitize_tool memcheck $((TOTAL * 45 / 100)) "${SAN_MEMCHECK[@]}"
    RC=$?
    stage memcheck $((SECONDS - t))
    t=$SECONDS
    sanitize_tool racecheck $((TOTAL - (SECONDS - T_SAN))) "${SAN_RACECHECK[@]}"   # memcheck's unused time too
    rc=$?
    [ $RC -eq 0 ] && RC=$rc
    stage racecheck $((SECONDS - t))
    finish
fi

# 4b. The sub-command, under what is left of the budget (run_limited).
case "$SUB" in
    suite) CMD=("$PY" -m pytest -m gpu -ra -p no:cacheprovider -o junit_family=xunit2 --junitxml="$OUT/junit.xml" "$@") ;;
    bench)
        [ $# -ge 1 ] || die "bench needs a NAME (tools/bench/NAME.py); have: $(ls tools/bench 2>/dev/null | tr '\n' ' ')"
        NAME=$1; shift
        [ -f "tools/bench/$NAME.py" ] || die "no tools/bench/$NAME.py; have: $(ls tools/bench 2>/dev/null | tr '\n' ' ')"
        CMD=("$PY" "tools/bench/$NAME.py" "$@") ;;
    py)
        [ $# -ge 1 ] || die "py needs a SCRIPT"
        CMD=("$PY" "$@") ;;
    *) die "unknown sub-command '$SUB' (suite, bench, py, sanitize)" ;;
esac
LEFT=$((BUDGET - SECONDS - 20))
[ $LEFT -ge 30 ] || die "only ${LEFT}s of the ${BUDGET}s budget left for the command"
echo "[remote] running (limit ${LEFT}s): ${CMD[*]}"
t=$SECONDS
run_limited "$LEFT" "${CMD[@]}"
RC=$?
[ $RC -eq 124 ] && echo "[remote] the command ran past ${LEFT}s and was interrupted"
stage command $((SECONDS - t))
finish
