"""The flow's aux fields beside SGLang's KV pool: one ``[num_blocks, r, c]`` tensor per field and sparse layer.

K/V stay in SGLang's ``MHATokenToKVPool`` buffers (``[num_slots, H_kv, D]`` per layer, design §2); the aux
fields a flow declares in ``create_cache`` live here, indexed by block id, so they belong to the same token
slots as the K/V they summarise: a prefix the radix cache hands to another request keeps its summaries, and a
slot reused after eviction is summarised again when its block completes. The store is created once per pool
(after SGLang allocated it, before CUDA-graph capture) and attached to it as ``pool.vortex_aux``; its bytes
were reserved by the cell-size hook (``PreparedFlow.aux_bytes_per_token``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vortex_torch.abs.layout import PoolLayout

from .flow_spec import PreparedFlow

log = logging.getLogger("vortex_torch.engine.sgl")

ATTR = "vortex_aux"


class AuxFieldStore:
    """``fields(layer_id) -> {name: [num_blocks, r, c]}`` for every sparse layer of one pool.

    ``num_blocks = num_slots // page_size * H_kv * (page_size // block_size)`` covers every slot of the pool,
    padding page 0 included (masked ``forward_cache`` candidates are redirected there). Zero-initialised.
    """

    def __init__(
        self,
        prepared: PreparedFlow,
        layout: PoolLayout,
        num_slots: int,
        layer_ids: list[int],
        device: torch.device | str,
    ) -> None:
        if num_slots % layout.page_size:
            raise ValueError(
                f"pool of {num_slots} slots is not a whole number of {layout.page_size}-slot pages"
            )
        self.layout = layout
        self.num_blocks = layout.num_blocks(num_slots // layout.page_size)
        self.dtype = prepared.aux_dtype
        self.layer_ids = list(layer_ids)
        self._fields: dict[int, dict[str, torch.Tensor]] = {
            layer: {
                name: torch.zeros(self.num_blocks, r, c, dtype=prepared.aux_dtype, device=device)
                for name, (r, c) in prepared.fields.items()
            }
            for layer in self.layer_ids
        }

    def fields(self, layer_id: int) -> dict[str, torch.Tensor]:
        """Aux fields of global layer ``layer_id`` (empty for a flow with none)."""
        return self._fields[layer_id]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for f in self._fields.values() for t in f.values())

    @classmethod
    def attach(
        cls, pool: Any, prepared: PreparedFlow, layout: PoolLayout, layer_ids: list[int]
    ) -> AuxFieldStore:
        """The store of SGLang's ``pool`` (an ``MHATokenToKVPool``), created on first use.

        Several backends built over one pool (e.g. separate prefill and decode backends) share it.
        """
        store = getattr(pool, ATTR, None)
        if store is not None:
            if store.layout != layout or set(store.layer_ids) != set(layer_ids):
                raise RuntimeError(
                    f"the KV pool already carries Vortex aux fields for {store.layout}, layers {store.layer_ids}; "
                    f"a second backend asks for {layout}, layers {layer_ids}"
                )
            return store
        num_slots = int(pool.size) + int(pool.page_size)  # k_buffer rows: slots 0 .. size + page_size - 1
        store = cls(prepared, layout, num_slots, layer_ids, pool.device)
        setattr(pool, ATTR, store)
        log.info(
            "Vortex aux fields: %d sparse layers x %s over %d blocks (%.1f MiB, %s)",
            len(layer_ids), dict(prepared.fields), store.num_blocks, store.nbytes / 2**20, prepared.aux_dtype,
        )  # fmt: skip
        return store
