"""``VortexConfig``: every Vortex knob of an SGLang engine, in one object.

This module imports without SGLang (and without a GPU), so configs can be built and validated anywhere.
``sgl.Engine(..., vortex=VortexConfig(...))`` or ``--vortex-config '<json>'`` turns sparsity on.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from vortex_torch.abs.config_fields import INT32_MAX, check_int, check_shared_fields, is_pow2

from .errors import VortexConfigError
from .policy import resolve_policy

#: aux-field / intermediate dtypes accepted by ``dtype``
DTYPES = ("bfloat16", "float16", "float32", "fp8_e4m3", "fp8_e5m2")
#: the SGLang base attention backends Vortex runs on, the one list: validated here, forced onto ServerArgs
#: (server_rules), swapped by the plugin's backend hook; factory.create_backend builds one class per entry
ATTENTION_BACKENDS = ("flashinfer", "triton")
IMPL_BACKENDS = ("triton", "reference")
#: Fields of the original project's config that are accepted and validated, so its configs load unchanged, and
#: read nowhere else (tested): the Triton code generator picks its own tiling (``workload_chunk_size``) and uses
#: ``tl.dot`` where it pays (``use_tensor_core``). This is the one place that says so.
COMPATIBILITY_ONLY = ("workload_chunk_size", "use_tensor_core")

#: ``schedule_policy`` signature: (cached_blocks [R] int32 tensor, topk_val, topk_ratio, bos, eos) -> [R] blocks
BudgetPolicy = Callable[..., Any]


def _expand_path(value: Any) -> Any:
    """``~`` and ``os.PathLike`` -> a plain str (JSON round-trips, and the loader does not expand ``~``)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return os.path.expanduser(value) if isinstance(value, str) else value


def _static_register_names(path: str) -> list[str] | None:
    """The names a flow file registers, read from its source without running it (``@register("name",
    aliases=(...))`` with string literals), or None when that cannot be told statically."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None  # prepare_flow loads the file and reports the error with its line
    names: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called != "register":
            continue
        if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            return None  # a computed name: only running the file can tell
        names.append(node.args[0].value)
        for kw in node.keywords:
            if kw.arg == "aliases" and isinstance(kw.value, (ast.Tuple, ast.List)):
                names += [e.value for e in kw.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return names or None  # no @register at all: the file may import the module that registers the flow


@dataclass
class VortexConfig:
    """Sparse-attention settings of one SGLang engine (defaults are the original project's).

    Budget: each (request, kv-head) attends to ``min(n, max(topk_val + bos + eos, int(n * topk_ratio)))``
    of its ``n`` cached blocks, or what ``schedule_policy`` returns, clamped to ``[min(n, bos + eos), n]``
    (:class:`vortex_torch.kernels.budget_rule.BudgetRule`, the one rule the reference runtime applies too: a
    budget below ``bos + eos`` is raised to it, never an error). When ``max_topk_val`` is set, every budget
    (the default rule's, a ``topk_ratio``'s and a ``schedule_policy``'s) is also clamped to ``max_topk_val``
    blocks, the size the per-row buffers are planned for; it must be ``>= topk_val + bos + eos``.

    Every field is checked when the config is built (:meth:`validate`) and again at engine start (the
    ``ServerArgs`` hook and every scheduler process), so a field changed after construction cannot reach the
    scheduler unchecked. The fields of :data:`COMPATIBILITY_ONLY` are accepted and validated, never read.
    """

    #: blocks chosen by score per (request, kv-head), besides the bos/eos blocks
    topk_val: int = 30
    #: upper bound on every budget (blocks per row) and the size of the per-row buffers; None: derived from
    #: max_seq_lens. Budgets above it (topk_ratio, schedule_policy) are clamped to it.
    max_topk_val: int | None = None
    #: global layer ids that run dense attention (no indexer, no aux cache)
    layers_skip: list[int] | None = None
    #: first N blocks always kept (attention sink)
    block_reserved_bos: int = 1
    #: last N blocks always kept (the recent window; the partial last block is always one of them)
    block_reserved_eos: int = 1
    #: planning length for buffers; -1: the model's context length
    max_seq_lens: int = -1
    #: a power of two; COMPATIBILITY_ONLY
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
    #: where generated kernels are cached (a writable directory; created if missing); None:
    #: $VORTEX_COMPILATION_CACHE or ~/.cache/vortex
    compilation_cache_dir: str | None = None
    #: per-sequence budget: a Python callable, or "module:function" / "path/to/file.py:function"
    schedule_policy: Any = None
    #: SGLang base backend the sparse decode runs on
    attention_backend: str = "flashinfer"
    #: indexer implementation: generated Triton kernels, or the plain-PyTorch reference (slow; for debugging)
    impl_backend: str = "triton"
    #: a bool; COMPATIBILITY_ONLY
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
    #: launch each sparse layer's kernels (scoring, selection, Vortex's attention) with Hopper programmatic
    #: dependent launch, so that each is scheduled while the previous one finishes (sm_90+ GPUs only; an error
    #: elsewhere, and with impl_backend="reference"). Off by default: no measurable gain on the H200
    #: (results/gpu/2026-12-05-gpu-runs.md)
    enable_pdl: bool = False
    #: a decode step decodes sparsely only when its requests hold at least this many tokens in all; below, every
    #: layer runs plain SGLang's dense attention (the base backend's kernels; Vortex only keeps the block summaries
    #: up to date). A sparse step saves KV reads in proportion to the batch's total length but adds a nearly fixed
    #: cost per layer, so below some total it is the slower one (SGLang's double sparsity has a per-request
    #: knob for the same reason, ``--ds-sparse-decode-threshold``). The choice is made per step on the host, from
    #: the lengths SGLang already holds there, between CUDA graphs captured per batch size and step mode
    #: (:mod:`.step_modes`). 0 (default): every step sparse, the original project's behaviour
    sparse_decode_min_tokens: int = 0

    def __post_init__(self) -> None:
        if self.layers_skip is None:
            self.layers_skip = []
        elif isinstance(self.layers_skip, tuple):
            self.layers_skip = list(self.layers_skip)
        self.module_path = _expand_path(self.module_path)
        self.compilation_cache_dir = _expand_path(self.compilation_cache_dir)
        self.validate()

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def coerce(cls, value: VortexConfig | Mapping[str, Any] | str) -> VortexConfig:
        """Accept a VortexConfig, a dict or a JSON string; the result is validated (a ``VortexConfig`` again:
        its fields may have been changed since it was built)."""
        if isinstance(value, VortexConfig):
            value.validate()
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
        """Check every field; raise :class:`VortexConfigError` naming the first bad one and the fix.

        Needs nothing but the config and the installed flows (:meth:`validate_for_model` checks the rest
        against the model). Field-local checks run first, then cross-field bounds, then whether
        ``module_name`` can be found (see :meth:`_check_module_name`).
        """
        self._check_flow_fields()
        self._check_budget_fields()
        self._check_other_fields()
        self._check_module_name()

    def _check_flow_fields(self) -> None:
        if not isinstance(self.module_name, str) or not self.module_name.strip():
            raise VortexConfigError(
                "module_name", f"required: the @register name of the flow to run (a non-empty str), got "
                f"{self.module_name!r}"
            )  # fmt: skip
        if self.module_path is not None:
            path = self.module_path
            if not isinstance(path, str) or not path:
                raise VortexConfigError(
                    "module_path", f"must be None or the path of your flow's .py file (a str), got {path!r}"
                )
            if not os.path.isfile(path):
                raise VortexConfigError(
                    "module_path", f"{path!r} is not a file (resolved from {os.getcwd()}): point it at your flow's "
                    ".py (an absolute path is safest), or set it to None to use an installed flow"
                )  # fmt: skip
            if not path.endswith(".py"):
                raise VortexConfigError("module_path", f"{path!r} must be a Python file ending in .py")
            if not os.access(path, os.R_OK):
                raise VortexConfigError("module_path", f"{path!r} is not readable: check its permissions")
        if not isinstance(self.flow_kwargs, dict) or not all(isinstance(k, str) for k in self.flow_kwargs):
            raise VortexConfigError(
                "flow_kwargs", f"must be a dict of keyword arguments (str keys) for the flow's constructor, got "
                f"{self.flow_kwargs!r}"
            )  # fmt: skip

    def _check_budget_fields(self) -> None:
        # the fields RuntimeConfig has too: one check, one text (vortex_torch.abs.config_fields)
        check_shared_fields(VortexConfigError, self, list)
        floor = self.topk_val + self.block_reserved_bos + self.block_reserved_eos
        if self.max_topk_val is not None:
            check_int(VortexConfigError, "max_topk_val", self.max_topk_val, 1,
                      "None, or the largest budget in blocks per row")  # fmt: skip
            if self.max_topk_val < floor:
                raise VortexConfigError(
                    "max_topk_val", f"{self.max_topk_val} is below topk_val + block_reserved_bos + "
                    f"block_reserved_eos = {floor}, the smallest budget the default rule gives a long sequence: "
                    f"set max_topk_val >= {floor} (or None), or lower topk_val"
                )  # fmt: skip
        if self.max_seq_lens != -1:
            check_int(VortexConfigError, "max_seq_lens", self.max_seq_lens, 1,
                      "-1 for the model's context length, or tokens")  # fmt: skip
            if self.max_seq_lens < self.block_size:
                raise VortexConfigError(
                    "max_seq_lens", f"{self.max_seq_lens} is shorter than one block ({self.block_size} tokens): no "
                    "block would ever complete. Use -1 (the model's context length) or a longer length"
                )  # fmt: skip
        if not is_pow2(self.workload_chunk_size) or self.workload_chunk_size > INT32_MAX:
            raise VortexConfigError(
                "workload_chunk_size", f"must be a power of two (compatibility only: accepted, never read), got "
                f"{self.workload_chunk_size!r}"
            )  # fmt: skip

    def _check_other_fields(self) -> None:
        def one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
            if not isinstance(value, str) or value not in allowed:
                raise VortexConfigError(name, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")

        one_of("dtype", self.dtype, DTYPES)
        one_of("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        one_of("impl_backend", self.impl_backend, IMPL_BACKENDS)
        if not isinstance(self.exact_attention, bool):
            raise VortexConfigError("exact_attention", f"must be True or False, got {self.exact_attention!r}")
        if not isinstance(self.enable_pdl, bool):
            raise VortexConfigError("enable_pdl", f"must be True or False, got {self.enable_pdl!r}")
        if self.enable_pdl and self.impl_backend == "reference":
            raise VortexConfigError(
                "enable_pdl", "launches Vortex's Triton kernels; impl_backend='reference' has none. Set one of them "
                "back (enable_pdl=False or impl_backend='triton')"
            )  # fmt: skip
        check_int(VortexConfigError, "sparse_decode_min_tokens", self.sparse_decode_min_tokens, 0,
                  "0, every decode step sparse, or the batch's total tokens below which a step is dense")  # fmt: skip
        if not isinstance(self.use_tensor_core, bool):
            raise VortexConfigError(
                "use_tensor_core", f"must be True or False (compatibility only: accepted, never read), got "
                f"{self.use_tensor_core!r}"
            )  # fmt: skip
        policy = self.schedule_policy
        if policy is not None and not callable(policy):
            target, sep, attr = policy.rpartition(":") if isinstance(policy, str) else ("", "", "")
            if not (sep and target and attr.isidentifier()):
                raise VortexConfigError(
                    "schedule_policy", f"must be None, a callable, or 'package.module:function' / "
                    f"'path/to/file.py:function', got {policy!r}"
                )  # fmt: skip
        self._check_cache_dir()

    def _check_cache_dir(self) -> None:
        path = self.compilation_cache_dir
        if path is None:
            return
        if not isinstance(path, str) or not path:
            raise VortexConfigError(
                "compilation_cache_dir", f"must be None (~/.cache/vortex) or a directory path (a str), got {path!r}"
            )
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise VortexConfigError(
                    "compilation_cache_dir", f"{path!r} exists and is not a directory: point it at a directory"
                )
            if not os.access(path, os.W_OK | os.X_OK):
                raise VortexConfigError(
                    "compilation_cache_dir", f"directory {path!r} is not writable: choose one you can write to"
                )
            return
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):  # it will be created: its nearest existing ancestor must allow that
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise VortexConfigError(
                "compilation_cache_dir", f"{path!r} does not exist and cannot be created ({parent!r} is not a "
                "writable directory): choose a writable location"
            )  # fmt: skip

    def _check_module_name(self) -> None:
        """Report an unknown ``module_name`` now where that is cheap and certain: with ``module_path``, from the
        names the file's ``@register`` calls spell out (the file is not run; a file whose names are computed
        is left to :func:`~.flow_spec.prepare_flow`); without it, from the installed and registered flows."""
        from vortex_torch.flow import registry

        name = self.module_name
        assert isinstance(name, str)  # _check_flow_fields
        if self.module_path is None:
            if not registry.has(name):
                raise VortexConfigError("module_name", registry.unknown_flow_message(name))
            return
        declared = _static_register_names(self.module_path)
        if declared is None or name in declared or registry.has(name):
            return
        close = difflib.get_close_matches(name, declared, n=1)
        raise VortexConfigError(
            "module_name", f"{self.module_path} registers {', '.join(map(repr, declared))}, not {name!r}, and no "
            f"installed flow has that name.{f' Did you mean {close[0]!r}?' if close else ''} Fix: set module_name "
            f"to the name the file registers, or decorate the flow class there with @register({name!r})"
        )  # fmt: skip

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
