"""``vFlow``: the base class of a sparse-attention algorithm."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vortex_torch.abs.context import ContextBase, Geometry
from vortex_torch.abs.mla import MLAGeometry
from vortex_torch.abs.vtensor import vTensor

from .user_code import LATENT, declared_fields

#: Cache layout a flow declares: field name -> inner shape ``(rows, cols)`` of one block's entry.
CacheSpec = dict[str, tuple[int, int]]


class vFlow(abc.ABC):  # noqa: N801 - the name users know from the original project
    """A sparse-attention algorithm, written with Vortex ops only.

    * :meth:`create_cache` declares the per-block aux fields (``"k"``/``"v"`` are provided);
    * :meth:`forward_cache` summarises a block into them once, when its last token is written;
    * :meth:`forward_indexer` scores every block of a row at each decode step and ends in ``topK``/``approxTopK``.

    Vortex traces the methods once, validates the op graph and compiles it; they are never run eagerly.
    """

    #: set by ``@register``
    name: str = ""
    #: True for flows of MLA models (:class:`vFlowMLA`): one latent cache field instead of k and v
    mla: ClassVar[bool] = False

    def __init__(self) -> None:
        self._meta: dict[str, tuple[tuple[int, int], torch.dtype]] = {}

    @abc.abstractmethod
    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        """Score blocks: ``q [B, G, D]`` BATCHED, ``cache[f] [S, r, c]``; end with ``topK()(score, o, ctx=ctx)``."""

    @abc.abstractmethod
    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        """Summarise a just-completed block: ``cache["k"]``, ``cache["v"]`` are ``[1, block_size, D]``."""

    if TYPE_CHECKING:
        # (block_size, head_dim) here, (block_size, kv_lora_rank, qk_rope_head_dim) on vFlowMLA: typed loosely so
        # that flows of both kinds type-check; tracing checks the signature against the flow's kind.
        create_cache: Callable[..., CacheSpec]
    else:

        @abc.abstractmethod
        def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
            """Declare aux fields as ``{name: (rows, cols)}``; must not declare ``"k"`` or ``"v"``."""

    # -- helpers the runtimes use ----------------------------------------------------------------------------
    def initialize(
        self,
        block_size: int,
        head_dim: int,
        kv_cache_dtype: torch.dtype = torch.bfloat16,
        q_data_type: torch.dtype = torch.bfloat16,
        intermediate_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        """Resolve the cache layout for this geometry (k/v in the KV dtype, aux fields in ``intermediate_dtype``)."""
        fields = declared_fields(self, block_size, head_dim)
        self._meta = {"k": ((block_size, head_dim), kv_cache_dtype), "v": ((block_size, head_dim), kv_cache_dtype)}
        self._meta.update({name: (shape, intermediate_dtype) for name, shape in fields.items()})

    def initialize_for(self, geometry: Geometry) -> None:
        """:meth:`initialize` for a traced geometry (K/V and queries in ``geometry.kv_dtype``)."""
        self.initialize(
            geometry.block_size, geometry.head_dim, geometry.kv_dtype, geometry.kv_dtype, geometry.dtype
        )

    @property
    def framework_fields(self) -> tuple[str, ...]:
        """The cache fields the framework provides (``("k", "v")``; ``("latent",)`` for an MLA flow)."""
        return ("k", "v")

    def get_cache_meta_info(self) -> dict[str, tuple[tuple[int, int], torch.dtype]]:
        """``{field: ((rows, cols), dtype)}`` including k and v; call :meth:`initialize` first."""
        if not self._meta:
            raise RuntimeError(f"{type(self).__name__}.initialize(...) must be called before get_cache_meta_info()")
        return dict(self._meta)

    def get_token_ratio(self) -> float:
        """Bytes per block of everything cached over the bytes of the keys alone (sizes the KV pool)."""
        meta = self.get_cache_meta_info()

        def nbytes(name: str) -> int:
            (r, c), dtype = meta[name]
            return r * c * torch.empty((), dtype=dtype).element_size()

        return sum(nbytes(n) for n in meta) / nbytes(self.framework_fields[0])

    def aux_bytes_per_block(self) -> int:
        """Bytes of aux fields per block (what a flow adds to the KV pool)."""
        meta = self.get_cache_meta_info()
        return sum(
            r * c * torch.empty((), dtype=dt).element_size()
            for n, ((r, c), dt) in meta.items()
            if n not in self.framework_fields
        )


class vFlowMLA(vFlow):
    """A flow for MLA models (DeepSeek-V2/V3, GLM): the pool holds one latent row ``[kv_c | k_pe]`` per token
    instead of k and v.

    * :meth:`create_cache` ``(block_size, kv_lora_rank, qk_rope_head_dim)`` declares the aux fields;
      ``cache["latent"]`` (``[1, block_size, kv_lora_rank + qk_rope_head_dim]`` in ``forward_cache``, the KV
      dtype) is provided, and declaring ``"latent"``, ``"k"`` or ``"v"`` is an error;
    * :meth:`forward_indexer` receives the absorbed query ``q [B, H_q, kv_lora_rank + qk_rope_head_dim]`` =
      ``[q_nope · W_UK | q_pe]`` (one row per request: MLA has one latent head, so ``G = H_q``), so
      ``<q, latent>`` is the full decode logit including the RoPE part, and ``<q, mean latent>`` scores a block;
    * the same rules as :class:`vFlow` (Vortex ops only, one call site per op, one terminal ``topK``, every
      declared field written and read).
    """

    mla: ClassVar[bool] = True

    @abc.abstractmethod
    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        """Score blocks: ``q [B, H_q, kv_lora_rank + qk_rope_head_dim]`` BATCHED (absorbed), ``cache[f] [S, r,
        c]`` (``cache["latent"] [S, block_size, kv_lora_rank + qk_rope_head_dim]``); end with ``topK``."""

    @abc.abstractmethod
    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        """Summarise a just-completed block: ``cache["latent"]`` is ``[1, block_size, kv_lora_rank +
        qk_rope_head_dim]``."""

    @abc.abstractmethod
    def create_cache(self, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int) -> CacheSpec:
        """Declare aux fields as ``{name: (rows, cols)}``; ``"latent"`` (``kv_lora_rank + qk_rope_head_dim``
        wide) is provided and must not be declared, nor ``"k"``/``"v"``."""

    def initialize(  # type: ignore[override]
        self,
        block_size: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        kv_cache_dtype: torch.dtype = torch.bfloat16,
        q_data_type: torch.dtype = torch.bfloat16,
        intermediate_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        """Resolve the cache layout: ``latent`` ``(block_size, kv_lora_rank + qk_rope_head_dim)`` in the KV dtype,
        aux fields in ``intermediate_dtype``."""
        fields = declared_fields(self, block_size, kv_lora_rank, qk_rope_head_dim)
        self._meta = {LATENT: ((block_size, kv_lora_rank + qk_rope_head_dim), kv_cache_dtype)}
        self._meta.update({name: (shape, intermediate_dtype) for name, shape in fields.items()})

    def initialize_for(self, geometry: Geometry) -> None:
        if not isinstance(geometry, MLAGeometry):
            raise TypeError(f"{type(self).__name__} is a vFlowMLA: initialize it for an MLAGeometry, got {geometry}")
        self.initialize(
            geometry.block_size,
            geometry.kv_lora_rank,
            geometry.qk_rope_head_dim,
            geometry.kv_dtype,
            geometry.kv_dtype,
            geometry.dtype,
        )

    @property
    def framework_fields(self) -> tuple[str, ...]:
        return (LATENT,)
