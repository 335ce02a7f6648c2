"""What every executor of a traced flow provides (the reference interpreter and the compiled kernels)."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from vortex_torch.abs.layout import DenseBlocks, PoolLayout

from ..trace import TracedFlow


@dataclass
class IndexerPlan:
    """FlashInfer's plan/run split for a flow's indexer: made once per batch shape by :meth:`FlowExecutor.plan`
    (e.g. before CUDA-graph capture), passed to every :meth:`FlowExecutor.run` (one per layer). It holds the static
    bounds, ``max_rows`` rows of at most ``max_blocks_per_row`` blocks (launches are sized by them, so a run needs
    no host sync), and, in an executor's subclass, the caller-owned scratch of its launches."""

    max_rows: int
    max_blocks_per_row: int

    def fits(self, rows: int, max_blocks_per_row: int) -> bool:
        """Whether a run over ``rows`` rows of at most ``max_blocks_per_row`` blocks fits this plan."""
        return rows <= self.max_rows and max_blocks_per_row <= self.max_blocks_per_row


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


def kv_scale_field(name: str) -> str:
    """The ``fields`` entry holding the dequantisation scale of fp8 K/V buffer ``name`` (``"k"`` -> ``"k_scale"``)."""
    return f"{name}_scale"


def kv_scale(fields: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``fields["<name>_scale"]``, the ``[1]`` fp32 scale an fp8 ``cache[name]`` is read with (value = stored *
    scale); a clear error when it is missing or malformed."""
    key = kv_scale_field(name)
    buf = fields[name]
    scale = fields.get(key)
    if scale is None:
        raise ValueError(
            f"cache[{name!r}] is {buf.dtype}: pass its dequantisation scale as fields[{key!r}], a [1] float32 tensor "
            f"on {buf.device} (SGLang's layer.{key}_float; value = stored * scale; torch.ones(1) for none)"
        )
    if scale.numel() != 1 or scale.dtype != torch.float32 or scale.device != buf.device:
        raise ValueError(
            f"fields[{key!r}] must be a [1] float32 tensor on {buf.device}, got shape {tuple(scale.shape)} "
            f"{scale.dtype} on {scale.device}"
        )
    return scale


class FlowExecutor(abc.ABC):
    """Runs a traced flow over one layer of a pool laid out as ``layout`` (design §2).

    ``fields`` maps ``"k"``/``"v"`` to the layer's native K/V buffers ``[num_slots, H_kv, D]`` (SGLang's; a
    block's tokens are found through ``layout``: ``gather_blocks`` / ``kv_offsets``, never copied out) and
    every aux field to its ``[num_blocks, r, c]`` tensor indexed by block id; aux fields are updated in place.
    When K/V are fp8 (``--kv-cache-dtype fp8_*``), ``fields["k_scale"]`` / ``fields["v_scale"]`` hold the layer's
    dequantisation scales, ``[1]`` float32 tensors on the device (value = stored * scale; SGLang's
    ``layer.k_scale_float``, 1.0 when the checkpoint has none): both executors read K/V through them.
    """

    def __init__(self, traced: TracedFlow, layout: PoolLayout) -> None:
        if layout.block_size != traced.geometry.block_size:
            raise ValueError(
                f"pool layout has block_size={layout.block_size} but the flow was traced for "
                f"block_size={traced.geometry.block_size}"
            )
        self.traced = traced
        self.layout = layout

    #: whether ``run`` needs ``dense.row_of``/``dense.pos`` (the interpreter's segment ops do; building
    #: them costs a host sync, so the compiled executor, which never reads them, says False)
    needs_row_index: bool = True

    def plan(self, max_rows: int, max_blocks_per_row: int, device: torch.device | str) -> IndexerPlan:
        """The plan of :meth:`run` calls over up to ``max_rows`` rows of at most ``max_blocks_per_row`` blocks
        (its scratch, if the executor needs any, allocated on ``device`` now)."""
        del device  # the base plan owns no scratch
        return IndexerPlan(max_rows, max_blocks_per_row)

    @abc.abstractmethod
    def run(
        self,
        q: torch.Tensor,
        fields: dict[str, torch.Tensor],
        dense: DenseBlocks,
        selection: SelectionSpec,
        out: torch.Tensor,
        *,
        plan: IndexerPlan | None = None,
        new_locs: torch.Tensor | None = None,
    ) -> None:
        """Score and select: ``q [R, G, D]`` -> ``out [sel_indptr[-1]] int32`` block ids, ascending per row.

        ``plan``: from :meth:`plan`, so the call neither syncs nor allocates (CUDA graphs); None sizes the call
        from ``dense`` (a host sync, eager use only). A plan too small for ``dense`` gets scratch for this call
        only (an eager batch above the CUDA-graph size). ``new_locs [B]``: a decode step's new token slots, one
        per request (rows ``b * H_kv .. b * H_kv + H_kv - 1``), accepted only when :attr:`folds_cache_update`:
        the blocks they complete are summarised before scoring, in the same launch."""

    @property
    def folds_cache_update(self) -> bool:
        """Whether :meth:`run` takes ``new_locs`` (the decode cache update folded into scoring);
        otherwise the caller runs the cache update first."""
        return False

    @abc.abstractmethod
    def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
        """Summarise the just-completed blocks ``block_ids [N]`` into the aux fields."""

    @property
    @abc.abstractmethod
    def indexer_launches(self) -> int:
        """Kernel launches per layer per decode step for the indexer (scoring + selection)."""
