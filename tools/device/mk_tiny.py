"""Build a random-weight Qwen3 checkpoint without downloads (the GPU machine has no network).

    python tools/device/mk_tiny.py --preset tiny /tmp/models/tiny
    python tools/device/mk_tiny.py --preset qwen3-8b --layers 4 /tmp/models/qwen3-8b-l4
    python tools/device/mk_tiny.py --preset tiny --kv-heads 1 --head-dim 128 /tmp/models/tiny-g4
    python tools/device/mk_tiny.py --preset deepseek-v2-tiny /tmp/models/dsv2-tiny
    python tools/device/mk_tiny.py --preset deepseek-v2-lite --layers 1 /tmp/models/dsv2-lite-l1

Presets give the attention geometry; any field can be overridden. ``qwen3-8b`` is Qwen3-8B's shape
(hidden 4096, 32 query heads, 8 KV heads, head dim 128, MLP 12288) with few layers and a small vocabulary,
which is enough for attention timing. ``deepseek-v2-tiny`` is a DeepSeek-V2 (MLA) model with DeepSeek's
attention geometry (latent 512 + 64, qk_nope 128, v 128; the sizes SGLang's FlashInfer MLA kernels take), 8 heads,
a dense first layer then small shared + routed experts, for the MLA GPU tests; ``deepseek-v2-lite`` is
DeepSeek-V2-Lite's whole shape (for the MLA end-to-end bench; build one layer, serve 27 with dummy weights). ``--init-std`` sets ``initializer_range``: random bf16 weights give
near-ties between logits, so compare a few greedy tokens or logprobs with a tolerance, or raise it to make
the logits more peaked. Writes ``vortex_tiny.json`` (the arguments) beside the weights, and a small byte-level
BPE tokenizer (trained offline on a built-in text with the ``tokenizers`` library; ids 0/1/2 are
``<pad>``/``<s>``/``</s>`` as in the config) so text prompts, the HTTP server and ``/v1/completions`` work;
``--no-tokenizer`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

#: DeepSeek-V2's MLA attention: one latent of kv_lora_rank 512 + qk_rope_head_dim 64 (what FlashInfer MLA supports)
DEEPSEEK_ATTENTION: dict[str, Any] = dict(
    kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, head_dim=64
)

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
    # DeepSeek-V2 MLA, tiny
    "deepseek-v2-tiny": dict(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        moe_intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=8,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        **DEEPSEEK_ATTENTION,
        max_position_embeddings=32768,
    ),
    # DeepSeek-V2-Lite's shape (27 layers, 16 heads, 64 routed + 2 shared experts, 6 per token); build it with
    # --layers 1 (~1 GB) and serve more layers with load_format="dummy" (sglang_decode_bench --dummy-layers 27)
    "deepseek-v2-lite": dict(
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=10944,
        moe_intermediate_size=1408,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_key_value_heads=16,
        n_shared_experts=2,
        n_routed_experts=64,
        num_experts_per_tok=6,
        first_k_dense_replace=1,
        **DEEPSEEK_ATTENTION,
        max_position_embeddings=163840,
    ),
}
#: presets that build a DeepSeek-V2 (MLA) model instead of a Qwen3
MLA_PRESETS = {"deepseek-v2-tiny", "deepseek-v2-lite"}


#: what the tokenizer is trained on: enough English for a few hundred merges (the text only shapes the vocab)
CORPUS = (
    "The capital of France is Paris. The capital of Italy is Rome. The quick brown fox jumps over the lazy dog. "
    "Sparse attention keeps the pages that matter and skips the rest. A language model predicts the next token "
    "from the tokens before it. Once upon a time there was a small model with random weights; it could not "
    "speak, but it could serve requests very fast. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" \n"
)


def save_tokenizer(out: str, vocab_size: int) -> int:
    """A byte-level BPE tokenizer with ``<pad>``/``<s>``/``</s>`` at ids 0/1/2, saved as a fast HF tokenizer.

    Any text encodes (bytes are the base alphabet); the vocabulary stays below ``vocab_size``. Returns its size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 1024),
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 8, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=1 << 20
    )
    fast.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    fast.save_pretrained(out)
    assert fast.convert_tokens_to_ids(["<pad>", "<s>", "</s>"]) == [0, 1, 2]
    return len(fast)


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
    p.add_argument("--no-tokenizer", action="store_true", help="do not write a tokenizer")
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

    common = dict(
        tie_word_embeddings=False,
        initializer_range=args.init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg: Any
    if args.preset in MLA_PRESETS:
        from transformers import DeepseekV2Config

        cfg = DeepseekV2Config(**geo, **common, architectures=["DeepseekV2ForCausalLM"])
    else:
        cfg = Qwen3Config(**geo, rope_theta=1000000.0, **common, architectures=["Qwen3ForCausalLM"])
    cfg.torch_dtype = torch.bfloat16
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    n_vocab = 0 if args.no_tokenizer else save_tokenizer(args.out, geo["vocab_size"])
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
        f"tokenizer={n_vocab or 'none'} on {device} in {time.time() - t0:.1f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
