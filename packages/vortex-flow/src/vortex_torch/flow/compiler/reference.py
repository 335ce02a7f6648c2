"""The reference executor: interprets the traced graph with each op's plain-PyTorch semantics (``reference``
for a ``FUSED`` placement, ``reference_segmented`` for a ``STANDALONE`` one, the selection's in
``vortex_torch.kernels.select.reference``).

This is the oracle every compiled kernel and every backend is compared against. All arithmetic is fp32;
aux fields are stored in their declared dtype (fp8 saturating: ``kernels.fp8.saturate_cast``).
``cache["k"]``/``cache["v"]`` are read from the native ``[num_slots, H_kv, D]`` buffers with
``PoolLayout.gather_blocks`` (only when the graph uses them); fp8 K/V are dequantised with ``fields["k_scale"]`` /
``fields["v_scale"]`` (``[1]`` fp32: value = stored * scale), the scales the Triton executor reads too.
"""

from __future__ import annotations

import torch

from vortex_torch import indexer as ix
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.layout import DenseBlocks
from vortex_torch.abs.op import Schedule, vOp
from vortex_torch.kernels.fp8 import dequantize, is_fp8, saturate_cast
from vortex_torch.kernels.select.reference import select_blocks_reference

from .base import FlowExecutor, IndexerPlan, SelectionSpec, kv_scale

KV_FIELDS = ("k", "v")  # native [num_slots, H_kv, D] buffers, read per block through the layout


def missing_reference(op: vOp) -> str | None:
    """Why this executor cannot run ``op`` at its schedule (no plain-PyTorch semantics), or ``None``."""
    if op.schedule == Schedule.SELECT:
        return None if isinstance(op, ix.topK) else f"{op.name} is scheduled as a selection but is not a topK"
    method = "reference_segmented" if op.schedule == Schedule.STANDALONE else "reference"
    if getattr(type(op), method) is getattr(vOp, method):
        return f"{op!r} has no {method}()"
    return None


def read_kv(fields: dict[str, torch.Tensor], name: str, blocks: torch.Tensor, layout: object) -> torch.Tensor:
    """K or V of ``blocks``, ``[N, block_size, D]`` fp32, dequantised when the buffer is fp8."""
    raw = layout.gather_blocks(fields[name], blocks)  # type: ignore[attr-defined]
    if not is_fp8(raw.dtype):
        return raw.float()
    return dequantize(raw, kv_scale(fields, name))


def _as_ragged(x: torch.Tensor, fmt: FORMAT, dense: DenseBlocks) -> torch.Tensor:
    if fmt == FORMAT.BATCHED:
        return x[dense.row_of]
    if fmt == FORMAT.PAGED:
        return x[dense.indices.long()].float()
    return x


class ReferenceExecutor(FlowExecutor):
    """Graph interpreter over ``op.reference`` / ``op.reference_segmented``: no op is special-cased here but the
    selection (``Schedule.SELECT``) and the stores, which the node's ``writes`` says."""

    @property
    def indexer_launches(self) -> int:
        return len(self.traced.indexer.nodes)

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
        if new_locs is not None:
            raise ValueError("the reference executor does not fold the cache update: run_cache first")
        score, saves = self.evaluate(q, fields, dense)
        op = self.traced.terminal.op
        assert isinstance(op, ix.topK)
        select_blocks_reference(
            score, dense.indptr, dense.indices, selection.sel_indptr, selection.bos, selection.eos,
            tolerate_ratio=op.tolerate_ratio, out=out,
        )  # fmt: skip
        for name, value in saves:  # Load reads the previous step's value, so state is written last
            fields[name][dense.indices.long()] = saturate_cast(value, fields[name].dtype)

    def evaluate(
        self, q: torch.Tensor, fields: dict[str, torch.Tensor], dense: DenseBlocks
    ) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """The score ``[nnz]`` fp32 and the pending ``Save`` writes, without selecting or storing anything."""
        graph = self.traced.indexer
        env: dict[int, tuple[torch.Tensor, FORMAT]] = {graph.entries["q"].tensor_id: (q.float(), FORMAT.BATCHED)}
        read = graph.read_fields()
        for name, t in graph.entries.items():
            if t.format != FORMAT.PAGED:
                continue
            if name not in KV_FIELDS:
                env[t.tensor_id] = (fields[name], FORMAT.PAGED)
            elif name in read:  # K/V of every dense block, [nnz, block_size, D]: already RAGGED
                kv = read_kv(fields, name, dense.indices, self.layout)
                env[t.tensor_id] = (kv, FORMAT.RAGGED)
        saves: list[tuple[str, torch.Tensor]] = []
        score: torch.Tensor | None = None
        for node in graph.nodes:
            op = node.op
            args = [env[t.tensor_id] for t in node.inputs]
            if op.schedule == Schedule.SELECT:
                score = _as_ragged(*args[0], dense).reshape(-1)
                continue
            if op.schedule == Schedule.STANDALONE:
                value = op.reference_segmented(_as_ragged(*args[0], dense), dense)
            elif node.output is not None and node.output.format == FORMAT.BATCHED:
                value = op.reference(*(a for a, _ in args))
            else:
                value = op.reference(*(_as_ragged(a, f, dense) for a, f in args))
            if node.output is None:  # Save: stored after the selection
                saves.append((node.writes or "", value))
                continue
            env[node.output.tensor_id] = (value, node.output.format)
        assert score is not None
        return score, saves

    def run_cache(self, fields: dict[str, torch.Tensor], block_ids: torch.Tensor) -> None:
        graph = self.traced.cache
        ids = block_ids.long()
        read = graph.read_fields()
        env: dict[int, torch.Tensor] = {}
        for name, t in graph.entries.items():
            if name not in KV_FIELDS:
                env[t.tensor_id] = fields[name][ids].float()
            elif name in read:  # [N, block_size, D]
                env[t.tensor_id] = read_kv(fields, name, ids, self.layout)
        for node in graph.nodes:
            # an op without tensor inputs (Fill) gets the field it writes, for its shape
            inputs = node.inputs or (graph.entries[node.writes or ""],)
            value = node.op.reference(*(env[t.tensor_id] for t in inputs))
            if node.output is not None:
                env[node.output.tensor_id] = value
            if node.writes is not None:
                fields[node.writes][ids] = saturate_cast(value, fields[node.writes].dtype)
                env[graph.entries[node.writes].tensor_id] = fields[node.writes][ids].float()
