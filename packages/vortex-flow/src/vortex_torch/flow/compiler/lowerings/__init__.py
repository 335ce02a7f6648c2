"""Triton lowerings of the flow ops, keyed by op class: import this package to get the complete table.

* ops that set ``triton_expr`` (elementwise) need nothing here: :func:`registry.emit_expr` lowers them;
* :mod:`.fused`: the other ops a fused kernel computes; :mod:`.standalone`: the ``dim=0`` ops (own kernel);
* ``Schedule.SELECT`` ops (``topK``) run the selection kernel of ``vortex_torch.kernels.select``.

:func:`missing_lowering` is what the load-time check and ``test_op_coverage.py`` ask.
"""

from __future__ import annotations

from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import OpNode
from vortex_torch.abs.op import Schedule, vOp
from vortex_torch.indexer.output import topK

from ..emitter import p2
from . import fused, standalone  # noqa: F401 - importing them registers their lowerings
from .registry import FusedLowering, fused_lowering, standalone_lowering

__all__ = ["FusedLowering", "fused_lowering", "missing_lowering", "per_block_elements", "standalone_lowering"]


def missing_lowering(op: vOp) -> str | None:
    """Why the Triton backend cannot run ``op`` at its schedule, or ``None`` when it can."""
    if op.schedule == Schedule.FUSED and fused_lowering(op) is None:
        return f"{op.name} has no fused Triton lowering"
    if op.schedule == Schedule.STANDALONE and standalone_lowering(op) is None:
        return f"{op!r} has no standalone (row-wise) Triton lowering"
    if op.schedule == Schedule.SELECT and not isinstance(op, topK):
        return f"{op.name} is scheduled as a selection but is not a topK: the selection kernel cannot run it"
    return None


def per_block_elements(nodes: list[OpNode]) -> int:
    """The largest tile a kernel of ``nodes`` holds per block (padded sizes), including what a lowering builds
    beyond its inputs and output (``FusedLowering.tile_elements``: the rank-4 product of a GeMM); per-row
    (BATCHED) values are not counted, they do not grow with the block chunk."""
    most = 1
    for n in nodes:
        for t in (*n.inputs, *([n.output] if n.output is not None else [])):
            if t.format != FORMAT.BATCHED:
                most = max(most, p2(t.inner[0]) * p2(t.inner[1]))
        if n.output is None or n.output.format == FORMAT.BATCHED:
            continue
        lowering = fused_lowering(n.op) if n.op.schedule == Schedule.FUSED else None
        if lowering is not None and lowering.tile_elements is not None:
            most = max(most, lowering.tile_elements(n))
    return most
