"""What every executor of a traced flow provides (the reference interpreter and the compiled kernels)."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from vortex_torch.abs.layout import DenseBlocks, PoolLayout

from ..trace import TracedFlow


@dataclass
class SelectionSpec:
    """Per-step selection parameters shared by all layers: ``sel_indptr [R+1]`` from the budget rule and the
    always-kept ``bos``/``eos`` block counts."""

    sel_indptr: torch.Tensor
    bos: int
    eos: int

    @property
    def total(self) -> int:
        return int(self.sel_indptr[-1])


class FlowExecutor(abc.ABC):
    """Runs a traced flow over one layer of a pool laid out as ``layout`` (design §2).

    ``fields`` maps ``"k"``/``"v"`` to the layer's native K/V buffers ``[num_slots, H_kv, D]`` (SGLang's; a
    block's tokens are found through ``layout``: ``gather_blocks`` / ``kv_offsets``, never copied out) and
    every aux field to its ``[num_blocks, r, c]`` tensor indexed by block id; aux fields are updated in place.
    """

    def __init__(self, traced: TracedFlow, layout: PoolLayout) -> None:
        if layout.block_size != traced.geometry.block_size:
            raise ValueError(
                f"pool layout has block_size={layout.block_size} but the flow was traced for "
                f"block_size={traced.geometry.block_size}"
            )
        self.traced = traced
        self.layout = layout

    @abc.abstractmethod
    def run_indexer(
        self,
        q: torch.Tensor,
        fields: dict[str, torch.Tensor],
        dense: DenseBlocks,
        selection: SelectionSpec,
        out: torch.Tensor,
    ) -> None:
        """Score and select: ``q [R, G, D]`` -> ``out [sel_indptr[-1]] int32`` block ids, ascending per row."""

    @abc.abstractmethod
    def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
        """Summarise the just-completed blocks ``block_ids [N]`` into the aux fields."""

    @property
    @abc.abstractmethod
    def indexer_launches(self) -> int:
        """Kernel launches per layer per decode step for the indexer (scoring + selection)."""
