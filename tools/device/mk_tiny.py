"""Build a random-weight Qwen3 checkpoint without downloads (the GPU machine has no network).

    python tools/device/mk_tiny.py --preset tiny /tmp/models/tiny
    python tools/device/mk_tiny.py --preset qwen3-8b --layers 4 /tmp/models/qwen3-8b-l4
    python tools/device/mk_tiny.py --preset tiny --kv-heads 1 --head-dim 128 /tmp/models/tiny-g4

Presets give the attention geometry; any field can be overridden. ``qwen3-8b`` is Qwen3-8B's shape
(hidden 4096, 32 query heads, 8 KV heads, head dim 128, MLP 12288) with few layers and a small vocabulary,
which is enough for attention timing. ``--init-std`` sets ``initializer_range``: random bf16 weights give
near-ties between logits, so compare a few greedy tokens or logprobs with a tolerance, or raise it to make
the logits more peaked. Writes ``vortex_tiny.json`` (the arguments) beside the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time

PRESETS = {
    # 2 layers, G = 2: seconds to build, seconds to load.
    "tiny": dict(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
    ),
    # Qwen3-8B attention geometry (G = 4, D = 128); weights ~0.25 GB per layer in bf16.
    "qwen3-8b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=4,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--layers", type=int, help="num_hidden_layers")
    p.add_argument("--hidden", type=int, help="hidden_size")
    p.add_argument("--intermediate", type=int, help="intermediate_size")
    p.add_argument("--heads", type=int, help="num_attention_heads")
    p.add_argument("--kv-heads", type=int, help="num_key_value_heads")
    p.add_argument("--head-dim", type=int, help="head_dim")
    p.add_argument("--vocab", type=int, help="vocab_size")
    p.add_argument("--max-pos", type=int, help="max_position_embeddings (the served context length)")
    p.add_argument("--init-std", type=float, default=0.1, help="initializer_range (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default=None, help="where to initialise the weights (default: cuda if present)"
    )
    args = p.parse_args()

    t0 = time.time()
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    geo = dict(PRESETS[args.preset])
    for key, field in [
        ("layers", "num_hidden_layers"),
        ("hidden", "hidden_size"),
        ("intermediate", "intermediate_size"),
        ("heads", "num_attention_heads"),
        ("kv_heads", "num_key_value_heads"),
        ("head_dim", "head_dim"),
        ("vocab", "vocab_size"),
        ("max_pos", "max_position_embeddings"),
    ]:
        if getattr(args, key) is not None:
            geo[field] = getattr(args, key)
    if geo["num_attention_heads"] % geo["num_key_value_heads"]:
        p.error("heads must be a multiple of kv-heads")

    cfg = Qwen3Config(
        **geo,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        initializer_range=args.init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        architectures=["Qwen3ForCausalLM"],
    )
    cfg.torch_dtype = torch.bfloat16
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    n_params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(args.out, "vortex_tiny.json"), "w") as f:
        json.dump(
            {"preset": args.preset, "geometry": geo, "init_std": args.init_std, "seed": args.seed},
            f,
            indent=1,
        )
    print(
        f"[mk_tiny] {args.preset} -> {args.out}: layers={geo['num_hidden_layers']} H_q={geo['num_attention_heads']} "
        f"H_kv={geo['num_key_value_heads']} D={geo['head_dim']} params={n_params / 1e6:.1f}M "
        f"on {device} in {time.time() - t0:.1f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
