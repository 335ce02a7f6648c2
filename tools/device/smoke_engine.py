"""Start sgl.Engine on a tiny random model, generate, and record timings (checks the GPU runner itself).

    bash tools/device/remote.sh py tools/device/smoke_engine.py triton flashinfer
    bash tools/device/remote.sh py tools/device/smoke_engine.py flashinfer --vortex '{"module_name": "..."}'

One Engine per backend, one after the other (start triton first: flashinfer JIT-compiles its kernels at the
first generate). ``--vortex`` passes ``vortex=<json>`` to the Engine, which only works once the vortex-sglang
plugin is installed. Writes $VORTEX_OUT/smoke.json (one record per backend).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback


def run_one(backend: str, args: argparse.Namespace) -> dict:
    import sglang as sgl

    res: dict = {"backend": backend, "graph": args.graph}
    kw = dict(
        model_path=args.model,
        skip_tokenizer_init=True,
        page_size=args.page_size,
        attention_backend=backend,
        disable_overlap_schedule=True,
        mem_fraction_static=0.5,
        log_level="info",
    )
    if args.graph == "nograph":
        kw["disable_cuda_graph"] = True
    else:
        kw["cuda_graph_max_bs_decode"] = 4
        kw["disable_prefill_cuda_graph"] = args.graph == "decode"
    if args.vortex:
        kw["vortex"] = json.loads(args.vortex)
    t = time.time()
    engine = sgl.Engine(**kw)
    res["engine_start_s"] = round(time.time() - t, 1)
    try:
        sp = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
        prompts = [list(range(1, 21)), [5, 6, 7], list(range(100, 100 + args.long))]
        for i in range(2):  # the first generate includes JIT compilation
            t = time.time()
            outs = engine.generate(input_ids=prompts, sampling_params=sp)
            res[f"gen{i + 1}_s"] = round(time.time() - t, 2)
        res["output_ids"] = [o["output_ids"] for o in outs]
    finally:
        t = time.time()
        engine.shutdown()
        res["shutdown_s"] = round(time.time() - t, 1)
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("backends", nargs="*", default=["triton"])
    p.add_argument("--model", default=os.environ.get("VORTEX_TINY_MODEL", "/tmp/models/tiny"))
    p.add_argument(
        "--graph",
        choices=["decode", "all", "nograph"],
        default="decode",
        help="decode: decode CUDA graphs only (default); all: prefill graphs too; nograph: eager",
    )
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--long", type=int, default=200, help="length of the third prompt")
    p.add_argument("--vortex", default=None, help="VortexConfig as JSON (needs the plugin)")
    args = p.parse_args()

    t = time.time()
    import sglang  # noqa: F401

    records = {"import_s": round(time.time() - t, 1), "runs": []}
    for backend in args.backends:
        try:
            records["runs"].append(run_one(backend, args))
        except Exception:
            records["runs"].append({"backend": backend, "error": traceback.format_exc()[-3000:]})
        print("SMOKE " + json.dumps(records["runs"][-1])[:2000], flush=True)
    out = os.environ.get("VORTEX_OUT")
    if out:
        with open(os.path.join(out, "smoke.json"), "w") as f:
            json.dump(records, f, indent=1)
    if any("error" in r for r in records["runs"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
