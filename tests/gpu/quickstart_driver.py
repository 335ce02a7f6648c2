"""Run the quick start's launch script verbatim, then more workloads on the engine it built.

    python tests/gpu/quickstart_driver.py OUT.json

``examples/quickstart.py`` is the documentation's launch script, character for character, except for two
strings replaced here: the model path (-> ``$VORTEX_TINY_MODEL``) and the flow file
(-> ``examples/custom_sparse_attention.py``, the documentation's flow, verbatim). It is executed with
``runpy`` like ``python quickstart.py`` would, from a main-guarded driver (SGLang spawns processes, which
re-import the main module). Afterwards the driver uses the script's ``llm`` for a mixed-length batch (sparse
rows), a radix-cache hit and a repeat of the script's prompt, and writes everything to ``OUT.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_harness():
    spec = importlib.util.spec_from_file_location("vortex_gpu_harness", HERE / "_harness.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vortex_gpu_harness"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(out_json: str) -> None:
    h = load_harness()
    model = os.environ["VORTEX_TINY_MODEL"]
    source = h.QUICKSTART.read_text()
    replaced = source.replace('"Qwen/Qwen3-0.6B"', json.dumps(model)).replace(
        '"path/to/custom_sparse_attention.py"', json.dumps(str(h.FLOW_FILE))
    )
    assert replaced.count(json.dumps(model)) == 1 and replaced.count(json.dumps(str(h.FLOW_FILE))) == 1
    script = Path(tempfile.mkdtemp()) / "quickstart.py"
    script.write_text(replaced)

    t0 = time.time()
    ns = runpy.run_path(str(script), run_name="quickstart")
    results: dict = {"script_s": round(time.time() - t0, 1), "text": ns["out"][0]["text"]}
    llm = ns["llm"]
    try:
        mixed = h.prompts(h.MIXED_LENGTHS)
        results["mixed"] = [g.to_json() for g in h.generate(llm, mixed)]
        hit = h.with_shared_prefix(mixed[3], 1024, 200)
        results["prefix"] = [g.to_json() for g in h.generate(llm, [hit])]
        again = llm.generate(["The capital of France is"], {"temperature": 0.0, "max_new_tokens": 32})
        results["text_again"] = again[0]["text"]
        results["server_args"] = {
            "page_size": llm.server_args.page_size,
            "disable_overlap_schedule": llm.server_args.disable_overlap_schedule,
            "disable_prefill_cuda_graph": llm.server_args.disable_prefill_cuda_graph,
            "context_length": llm.server_args.context_length,
            "vortex": dict(llm.server_args._vortex_config or {}),
        }
    finally:
        llm.shutdown()
    Path(out_json).write_text(json.dumps(results, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
