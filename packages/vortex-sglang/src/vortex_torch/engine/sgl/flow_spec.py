"""A ``VortexConfig`` resolved against a model: the flow loaded and traced, its aux fields and budget rule.

:func:`prepare_flow` is what every SGLang-side step uses, in every process: the ``ServerArgs`` check (main
process, before any GPU memory is allocated), the KV-pool cell-size hook and the attention backends (scheduler
processes). It imports nothing from SGLang, so it also runs in CPU tests. Results are cached per process.

Every failure is a :class:`~vortex_torch.engine.sgl.config.VortexConfigError` naming the config field to fix
(``module_path``, ``module_name``, ``flow_kwargs``, ``dtype``, ``schedule_policy``); the flow's own error (file
and line included) is its message and ``__cause__``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vortex_torch.abs.context import Geometry
from vortex_torch.abs.errors import VortexError
from vortex_torch.abs.mla import MLAGeometry

from .config import VortexConfig, VortexConfigError
from .policy import Policy

if TYPE_CHECKING:  # vortex-flow's tracer is imported when a flow is prepared, not with this module
    from vortex_torch.flow.trace import TracedFlow

#: ``VortexConfig.dtype`` -> storage dtype of aux fields and indexer intermediates
AUX_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def aux_dtype_of(config: VortexConfig) -> torch.dtype:
    try:
        return AUX_DTYPES[config.dtype]
    except KeyError:
        raise VortexConfigError(
            "dtype", f"must be one of {', '.join(AUX_DTYPES)}, got {config.dtype!r}"
        ) from None


@dataclass(frozen=True)
class ModelGeometry:
    """The attention shape of one SGLang worker (one attention-TP rank).

    ``num_kv_heads`` is ``H_kv`` of this rank's KV pool, ``group_size`` ``G = H_q / H_kv`` (query heads that
    share a KV head), ``head_dim`` ``D``; ``kv_dtype`` the dtype K/V are stored in; ``context_len`` the
    longest sequence SGLang admits (sizes the per-row block lists: ``ceil(context_len / block_size)``).
    """

    num_layers: int
    num_kv_heads: int
    group_size: int
    head_dim: int
    kv_dtype: torch.dtype = torch.bfloat16
    context_len: int = 32768
    #: MLA models: the RoPE part of the latent (``head_dim`` is then ``kv_lora_rank + qk_rope_head_dim``,
    #: ``num_kv_heads`` 1 and ``group_size`` the query heads); None for MHA/GQA
    qk_rope_head_dim: int | None = None


@dataclass
class PreparedFlow:
    """A config's flow, traced for one geometry, plus what the pool and the planner need from it.

    * ``traced``: the flow's checked op graphs (``traced.uses_save``: the indexer writes state with ``Save``);
    * ``fields``: aux fields ``{name: (r, c)}`` (``k``/``v`` excluded), each a ``[num_blocks, r, c]`` tensor
      of ``aux_dtype`` per sparse layer;
    * ``policy``: the resolved ``schedule_policy`` (``None``: the default rule, design §5).
    """

    config: VortexConfig
    geometry: Geometry
    traced: TracedFlow
    fields: dict[str, tuple[int, int]]
    aux_dtype: torch.dtype
    policy: Policy | None = None
    layers_skip: frozenset[int] = field(default_factory=frozenset)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def uses_save(self) -> bool:
        return self.traced.uses_save

    def is_sparse(self, layer_id: int) -> bool:
        """Whether global layer ``layer_id`` runs the flow (not in ``layers_skip``)."""
        return layer_id not in self.layers_skip

    def sparse_layers(self, start_layer: int, end_layer: int) -> list[int]:
        """Global ids of the sparse layers in ``[start_layer, end_layer)`` (a pipeline stage's layers)."""
        return [i for i in range(start_layer, end_layer) if self.is_sparse(i)]

    def aux_bytes_per_block(self) -> int:
        """Bytes of all aux fields of one block of one layer: ``sum(r * c) * element_size``."""
        elt = torch.empty((), dtype=self.aux_dtype).element_size()
        return sum(r * c for r, c in self.fields.values()) * elt

    def aux_bytes_per_token(self, num_kv_heads: int, num_sparse_layers: int) -> int:
        """Aux bytes one token slot adds to the KV pool (its ``1 / block_size`` share of one block per KV
        head and sparse layer), rounded up: what the cell-size hook adds to SGLang's per-token cost."""
        total = num_kv_heads * num_sparse_layers * self.aux_bytes_per_block()
        return math.ceil(total / self.block_size)


_cache: dict[tuple[object, ...], PreparedFlow] = {}
_lock = threading.Lock()


def _hashable(value: object) -> object:
    """A hashable stand-in for a config value: containers by content (repr keeps their order and types), a
    callable ``schedule_policy`` by identity (two lambdas with the same text are different policies; the cached
    entry's config holds a reference, so the id cannot be reused while the entry exists)."""
    if callable(value):
        return ("callable", id(value))
    if isinstance(value, (list, tuple, dict, set)):
        return (type(value).__name__, repr(value))
    return value


def _cache_key(config: VortexConfig, geometry: Geometry) -> tuple[object, ...]:
    """Every ``VortexConfig`` field and the geometry: a :class:`PreparedFlow` carries its config, and the
    planner, the budget rule and the executor read fields of it (``topk_val``, ``impl_backend``, ...), so two
    configs that differ in any field must not share one."""
    return (*((f.name, _hashable(getattr(config, f.name))) for f in dataclasses.fields(config)), geometry)


def _snapshot(config: VortexConfig) -> VortexConfig:
    """A copy the cached :class:`PreparedFlow` keeps: later edits of the caller's object cannot change it."""
    return dataclasses.replace(
        config, layers_skip=list(config.layers_skip or []), flow_kwargs=dict(config.flow_kwargs)
    )


def _flow_error_field(exc: BaseException, config: VortexConfig) -> str:
    from vortex_torch.flow.compiler.schedule import CompileError
    from vortex_torch.flow.errors import FlowInitError, FlowLoadError, UnknownFlowError

    if isinstance(exc, CompileError):
        return "impl_backend"
    if isinstance(exc, UnknownFlowError):
        return "module_name"
    if isinstance(exc, FlowLoadError):
        return "module_path"
    if isinstance(exc, FlowInitError) and config.flow_kwargs:
        return "flow_kwargs"
    return "module_name"


def prepare_flow(
    config: VortexConfig,
    *,
    head_dim: int,
    group_size: int,
    kv_dtype: torch.dtype,
    qk_rope_head_dim: int | None = None,
) -> PreparedFlow:
    """Load, instantiate and trace ``config``'s flow for ``(block_size, head_dim, G, dtype, kv_dtype)``.

    Cached per process, keyed by every config field and the geometry (same values -> same object). The
    config is validated again first: this runs in every scheduler process, and a field may have been changed
    since the config was built. Raises :class:`VortexConfigError` naming the field (``module_path`` for a file
    that cannot be loaded, ``module_name`` for an unknown flow or one that breaks the flow rules,
    ``flow_kwargs``, ``dtype``, ``schedule_policy``, ``impl_backend`` for an op the backend cannot run, or any field :meth:`VortexConfig.validate` rejects).

    For an MLA model pass ``qk_rope_head_dim``: ``head_dim`` is then the latent width ``kv_lora_rank +
    qk_rope_head_dim``, ``group_size`` the query heads per rank, and the flow must be a ``vFlowMLA`` (traced for
    an ``MLAGeometry``; a vFlow is a ``module_name`` error that says so, and vice versa).
    """
    config.validate()
    aux_dtype = aux_dtype_of(config)
    geometry: Geometry
    if qk_rope_head_dim is not None:
        geometry = MLAGeometry(
            block_size=config.block_size,
            head_dim=head_dim,
            group_size=group_size,
            dtype=aux_dtype,
            kv_dtype=kv_dtype,
            qk_rope_head_dim=qk_rope_head_dim,
        )
    else:
        geometry = Geometry(
            block_size=config.block_size,
            head_dim=head_dim,
            group_size=group_size,
            dtype=aux_dtype,
            kv_dtype=kv_dtype,
        )
    key = _cache_key(config, geometry)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        from vortex_torch.flow.compiler.backends import check_backend
        from vortex_torch.flow.loader import build_vflow
        from vortex_torch.flow.trace import trace_flow

        assert config.module_name is not None  # VortexConfig.validate
        try:
            flow = build_vflow(config.module_name, config.module_path, config.flow_kwargs)
            if getattr(type(flow), "mla", False) != (qk_rope_head_dim is not None):
                trace_flow(flow, geometry)  # raises the flow-rule error naming the kind of flow and of model
            flow.initialize_for(geometry)
            traced = trace_flow(flow, geometry)
            check_backend(traced, config.impl_backend)  # an op the backend lacks fails here, not at decode
        except VortexError as exc:
            raise VortexConfigError(_flow_error_field(exc, config), str(exc)) from exc
        policy = config.budget_policy()  # resolves and test-runs schedule_policy (VortexConfigError)
        prepared = PreparedFlow(
            config=_snapshot(config),
            geometry=geometry,
            traced=traced,
            fields=dict(traced.fields),
            aux_dtype=aux_dtype,
            policy=policy,
            layers_skip=frozenset(config.layers_skip or ()),
        )
        _cache[key] = prepared
        return prepared


def clear_cache() -> None:
    """Forget every prepared flow (tests)."""
    with _lock:
        _cache.clear()
