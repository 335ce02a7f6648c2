"""``VortexConfig``: every Vortex knob of an SGLang engine, in one object.

This module imports without SGLang (and without a GPU), so configs can be built and validated anywhere.
``sgl.Engine(..., vortex=VortexConfig(...))`` or ``--vortex-config '<json>'`` turns sparsity on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import VortexConfigError
from .policy import resolve_policy

#: aux-field / intermediate dtypes accepted by ``dtype``
DTYPES = ("bfloat16", "float16", "float32", "fp8_e4m3", "fp8_e5m2")
ATTENTION_BACKENDS = ("flashinfer", "triton")
IMPL_BACKENDS = ("triton", "reference")

#: ``schedule_policy`` signature: (cached_blocks [R] int32 tensor, topk_val, topk_ratio, bos, eos) -> [R] blocks
BudgetPolicy = Callable[..., Any]


def _pow2(n: int) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


@dataclass
class VortexConfig:
    """Sparse-attention settings of one SGLang engine (defaults are the original project's).

    Budget: each (request, kv-head) attends to ``min(n, max(topk_val + bos + eos, int(n * topk_ratio)))``
    of its ``n`` cached blocks, or what ``schedule_policy`` returns.
    """

    #: blocks chosen by score per (request, kv-head), besides the bos/eos blocks
    topk_val: int = 30
    #: upper bound on the budget used to size buffers; None: derived from max_seq_lens
    max_topk_val: int | None = None
    #: global layer ids that run dense attention (no indexer, no aux cache)
    layers_skip: list[int] | None = None
    #: first N blocks always kept (attention sink)
    block_reserved_bos: int = 1
    #: last N blocks always kept (the recent window; the partial last block is always one of them)
    block_reserved_eos: int = 1
    #: planning length for buffers; -1: the model's context length
    max_seq_lens: int = -1
    #: blocks per indexer program (a power of two)
    workload_chunk_size: int = 32
    #: dtype of aux cache fields and stored indexer intermediates
    dtype: str = "bfloat16"
    #: the .py file holding the flow; None: installed flows (vortex-flows-contrib, entry points)
    module_path: str | None = None
    #: the flow's @register name (required)
    module_name: str | None = None
    #: tokens per Vortex block, the unit of sparsity (a power of two dividing SGLang's page_size)
    block_size: int = 16
    #: dynamic budget as a fraction of the cached blocks
    topk_ratio: float = 0.0
    #: where generated kernels are cached; None: ~/.cache/vortex
    compilation_cache_dir: str | None = None
    #: per-sequence budget: a Python callable, or "module:function" / "path/to/file.py:function"
    schedule_policy: Any = None
    #: SGLang base backend the sparse decode runs on
    attention_backend: str = "flashinfer"
    #: indexer implementation: generated Triton kernels, or the plain-PyTorch reference (slow; for debugging)
    impl_backend: str = "triton"
    #: accepted for compatibility with the original project; the Triton codegen picks tl.dot itself
    use_tensor_core: bool = False
    #: keyword arguments passed to the flow class's constructor
    flow_kwargs: dict[str, Any] = field(default_factory=dict)
    #: sparse decode attention that reproduces plain SGLang exactly, at a speed cost. False (default): Vortex's
    #: Triton kernel, planned on the GPU inside SGLang's decode CUDA graph (no per-step host work), softmax
    #: weights rounded to the KV dtype before p @ v as FlashAttention/FlashInfer do. True: on the flashinfer
    #: base, FlashInfer's own decode kernel over the selected tokens (bit-identical to plain SGLang when the
    #: budget covers every block; its plan runs on the host every step); on the triton base, softmax weights
    #: kept fp32 through p @ v (the exact attention rounded once)
    exact_attention: bool = False

    def __post_init__(self) -> None:
        if self.layers_skip is None:
            self.layers_skip = []
        self.validate()

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def coerce(cls, value: VortexConfig | Mapping[str, Any] | str) -> VortexConfig:
        """Accept a VortexConfig, a dict or a JSON string."""
        if isinstance(value, VortexConfig):
            return value
        if isinstance(value, str):
            text = value
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise VortexConfigError("<json>", f"not valid JSON ({exc}): {text[:80]!r}") from exc
        if not isinstance(value, Mapping):
            raise VortexConfigError("<value>", f"expected a VortexConfig, a dict or a JSON string, got {type(value)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise VortexConfigError(unknown[0], f"unknown field; valid fields: {', '.join(sorted(known))}")
        return cls(**dict(value))

    @classmethod
    def from_flat(cls, kwargs: Mapping[str, Any]) -> VortexConfig:
        """From legacy flat keys (``vortex_topk_val=...``): the ``vortex_`` prefix is stripped."""
        return cls.coerce({k.removeprefix("vortex_"): v for k, v in kwargs.items()})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if callable(self.schedule_policy):
            out["schedule_policy"] = f"{self.schedule_policy.__module__}:{self.schedule_policy.__qualname__}"
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # -- validation ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Checks that need nothing but the config itself (see :meth:`validate_for_model` for the rest)."""
        if not self.module_name or not isinstance(self.module_name, str):
            raise VortexConfigError("module_name", "required: the @register name of the flow to run")
        if self.module_path is not None:
            path = os.path.expanduser(str(self.module_path))
            if not os.path.isfile(path):
                raise VortexConfigError("module_path", f"{self.module_path!r} is not a file: point it at your flow's .py")
        if not _pow2(self.block_size):
            raise VortexConfigError("block_size", f"must be a power of two (e.g. 16), got {self.block_size!r}")
        if not _pow2(self.workload_chunk_size):
            raise VortexConfigError("workload_chunk_size", f"must be a power of two, got {self.workload_chunk_size!r}")
        if not isinstance(self.block_reserved_eos, int) or self.block_reserved_eos < 1:
            raise VortexConfigError(
                "block_reserved_eos", f"must be an int >= 1 (the partial last block is always attended), got "
                f"{self.block_reserved_eos!r}"
            )  # fmt: skip
        if not isinstance(self.block_reserved_bos, int) or self.block_reserved_bos < 0:
            raise VortexConfigError("block_reserved_bos", f"must be an int >= 0, got {self.block_reserved_bos!r}")
        if not isinstance(self.topk_val, int) or self.topk_val < 0:
            raise VortexConfigError("topk_val", f"must be an int >= 0, got {self.topk_val!r}")
        if self.max_topk_val is not None and (not isinstance(self.max_topk_val, int) or self.max_topk_val < 1):
            raise VortexConfigError("max_topk_val", f"must be None or a positive int, got {self.max_topk_val!r}")
        if not isinstance(self.topk_ratio, (int, float)) or not 0.0 <= float(self.topk_ratio) <= 1.0:
            raise VortexConfigError("topk_ratio", f"must be in [0, 1], got {self.topk_ratio!r}")
        if not isinstance(self.max_seq_lens, int) or (self.max_seq_lens < 1 and self.max_seq_lens != -1):
            raise VortexConfigError("max_seq_lens", f"must be -1 (model context) or a positive int, got {self.max_seq_lens!r}")
        if self.dtype not in DTYPES:
            raise VortexConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise VortexConfigError(
                "attention_backend", f"must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention_backend!r}"
            )
        if self.impl_backend not in IMPL_BACKENDS:
            raise VortexConfigError("impl_backend", f"must be one of {', '.join(IMPL_BACKENDS)}, got {self.impl_backend!r}")
        if not isinstance(self.layers_skip, list) or not all(isinstance(i, int) for i in self.layers_skip):
            raise VortexConfigError("layers_skip", f"must be a list of layer ids, got {self.layers_skip!r}")
        if not isinstance(self.exact_attention, bool):
            raise VortexConfigError("exact_attention", f"must be True or False, got {self.exact_attention!r}")
        if not isinstance(self.flow_kwargs, dict):
            raise VortexConfigError("flow_kwargs", f"must be a dict, got {type(self.flow_kwargs).__name__}")
        if self.schedule_policy is not None and not (callable(self.schedule_policy) or isinstance(self.schedule_policy, str)):
            raise VortexConfigError("schedule_policy", "must be a callable or a 'module:function' string")

    def validate_for_model(self, *, page_size: int | None, num_layers: int) -> None:
        """Checks against the model and the server settings; run before any GPU memory is allocated."""
        if page_size is not None and page_size % self.block_size:
            raise VortexConfigError(
                "block_size", f"SGLang page_size ({page_size}) must be a multiple of block_size ({self.block_size})"
            )
        bad = [i for i in self.layers_skip or [] if not 0 <= i < num_layers]
        if bad:
            raise VortexConfigError("layers_skip", f"layer ids {bad} are out of range for a {num_layers}-layer model")

    def budget_policy(self) -> BudgetPolicy | None:
        """The schedule_policy as a callable (resolving "module:function" / "file.py:function"), or None."""
        return resolve_policy(self.schedule_policy) if self.schedule_policy is not None else None
