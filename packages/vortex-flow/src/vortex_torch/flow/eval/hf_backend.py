"""The ``hf`` backend: a Hugging Face causal LM (local path or hub id) with dense attention, and the same
model decoding through Vortex's reference runtime (:mod:`vortex_torch.flow.runtime.hf`) at each budget.

Dense decoding is plain transformers with its KV cache and the model's own attention; sparse decoding swaps in
the ``"vortex"`` attention function, whose prefill is dense and whose decode steps attend to the blocks the
flow selects. Both generate ``max_new_tokens`` greedy tokens (no sampling); the text is cut at the first EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..flow import vFlow
from ..runtime.config import RuntimeConfig
from .budgets import Budget
from .errors import EvalError, EvalUsageError, first_line
from .runner import Tick
from .tasks import Sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EvalUsageError(f"--device: {device!r} is not a device; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalUsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU (what serving uses), float32 on a CPU (bf16 matmuls are slow there)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise EvalUsageError(f"--dtype: {dtype!r} is not a dtype; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name_or_path: str, device: torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa"
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local checkpoint directory or a Hugging Face hub id.

    transformers resolves hub ids through its cache (``HF_HOME``) and downloads what is missing; with
    ``HF_HUB_OFFLINE=1`` only the cache is used. Any failure becomes one :class:`EvalError` line.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EvalError(
            f"--model needs transformers ({first_line(exc)}); install it with pip install 'vortex-flow[eval]'"
        ) from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar would interleave with ours
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise EvalError(f"--model {name_or_path}: cannot load its tokenizer: {first_line(exc)}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation
        )
    except Exception as exc:
        raise EvalError(f"--model {name_or_path}: cannot load the model: {first_line(exc)}") from exc
    return model.to(device).eval(), tokenizer


class HFBackend:
    """Dense and Vortex greedy decoding of one model.

    Args:
        model, tokenizer: a transformers causal LM and its tokenizer.
        flow_factory: builds a fresh flow instance (one per budget: a runtime traces and owns its flow).
        budgets: the budgets to run.
        base: runtime settings every budget shares (block/page size, bos/eos, ``layers_skip``); its
            ``topk_val`` / ``topk_ratio`` are replaced by each budget's.
        name: the model's name or path, for the result.
    """

    kind = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        flow_factory: Callable[[], vFlow],
        budgets: Sequence[Budget],
        base: RuntimeConfig,
        name: str = "",
        flow_name: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.flow_factory = flow_factory
        self.budgets = {b.label: b for b in budgets}
        self.budget_labels = [b.label for b in budgets]
        self.base = base
        self.name = name
        self.flow_name = flow_name
        self.device = next(model.parameters()).device

    # -- tokens ---------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        eos = self.tokenizer.eos_token_id
        ids = list(ids)
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def check_context(self, context: int) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and context > int(limit):
            raise EvalUsageError(
                f"--contexts: {context} tokens exceeds the model's max_position_embeddings={limit}"
            )

    # -- generation -----------------------------------------------------------------------------------------------
    def dense_ids(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding with transformers' own attention and KV cache."""
        out: list[int] = []
        with torch.no_grad():
            step = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
            for _ in range(max_new_tokens):
                out.append(int(step.logits[0, -1].argmax()))
                if len(out) == max_new_tokens:
                    break
                step = self.model(
                    input_ids=torch.tensor([[out[-1]]], device=self.device),
                    past_key_values=step.past_key_values,
                    use_cache=True,
                )
        return out

    def runtime_config(self, budget: str) -> RuntimeConfig:
        b = self.budgets[budget]
        return replace(self.base, topk_val=b.topk_val, topk_ratio=b.topk_ratio)

    def sparse_runner(self, budget: str, max_tokens: int) -> Callable[[Sequence[int], int], list[int]]:
        """A function ``(prompt ids, max_new_tokens) -> ids`` decoding through a runtime sized for
        ``max_tokens`` tokens (prompt + generation) at budget ``budget``."""
        from ..runtime.hf import greedy_generate, runtime_for_model

        cfg = self.runtime_config(budget)
        pages = -(-max_tokens // cfg.page_size) + 2  # + page 0 (reserved) + one spare
        rt = runtime_for_model(self.model, self.flow_factory(), cfg, num_pages=pages, device=self.device)
        return lambda ids, n: greedy_generate(self.model, rt, [list(ids)], n)[0]

    def dense(self, samples: Sequence[Sample], tick: Tick) -> list[str]:
        out = []
        for s in samples:
            out.append(self.decode(self.dense_ids(self.encode(s.prompt), s.max_new_tokens)))
            tick()
        return out

    def sparse(self, samples: Sequence[Sample], budget: str, tick: Tick) -> list[str]:
        prompts = [self.encode(s.prompt) for s in samples]
        longest = max(len(p) + s.max_new_tokens for p, s in zip(prompts, samples, strict=True))
        run = self.sparse_runner(budget, longest)
        out = []
        for p, s in zip(prompts, samples, strict=True):
            out.append(self.decode(run(p, s.max_new_tokens)))
            tick()
        return out

    def describe(self) -> dict[str, Any]:
        cfg = self.base
        return {
            "kind": self.kind,
            "model": self.name,
            "flow": self.flow_name,
            "device": str(self.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "dense_attention": str(self.model.config._attn_implementation),
            "budgets": {
                label: {"topk_val": b.topk_val, "topk_ratio": b.topk_ratio}
                for label, b in self.budgets.items()
            },
            "block_size": cfg.block_size,
            "page_size": cfg.page_size,
            "block_reserved_bos": cfg.block_reserved_bos,
            "block_reserved_eos": cfg.block_reserved_eos,
            "layers_skip": list(cfg.layers_skip),
        }
