"""vortex-ops cannot ship an op vortex-flow cannot run: every exported op, at every placement it can take, has
a plain-PyTorch reference and a Triton lowering (test_compiler.py then holds the two equal on real flows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs.formats import FORMAT, combined_format
from vortex_torch.abs.op import Schedule, vOp
from vortex_torch.abs.vtensor import vTensor
from vortex_torch.flow.compiler.lowerings import fused_lowering, missing_lowering, standalone_lowering
from vortex_torch.flow.compiler.reference import missing_reference
from vortex_torch.indexer._base import IndexerOp

#: constructor arguments of the exported ops that have no all-default form
ARGS: dict[type[vOp], tuple[Any, ...]] = {
    ix.Reshape: (-1, 2, 8),
    cx.Reshape: (-1, 2, 8),
    ix.MaskSlice: (0, 1),
    cx.MaskSlice: (0, 1),
    ix.Conv1d: ([0.25, 0.5, 0.25],),
}


def exported_ops() -> list[type[vOp]]:
    ops = [getattr(m, n) for m in (ix, cx) for n in m.__all__]
    return [c for c in ops if isinstance(c, type) and issubclass(c, vOp)]


def instances(cls: type[vOp]) -> list[vOp]:
    """One instance per placement the class can take: every allowed ``dim`` where ``dim`` picks it."""
    if cls in ARGS:
        return [cls(*ARGS[cls])]
    dims: Sequence[int] = getattr(cls, "allowed_dims", ())
    return [cls(dim=d) for d in dims] if dims else [cls()]  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", exported_ops(), ids=lambda c: f"{c.__module__.split('.')[1]}.{c.__name__}")
def test_exported_op_has_reference_and_lowering(cls: type[vOp]) -> None:
    for op in instances(cls):
        assert missing_lowering(op) is None, missing_lowering(op)
        assert missing_reference(op) is None, missing_reference(op)


def test_every_placement_is_covered() -> None:
    """The instances above reach all three placements, and ARGS names only exported ops (no stale entries)."""
    seen = {op.schedule for cls in exported_ops() for op in instances(cls)}
    assert seen == set(Schedule)
    assert set(ARGS) <= set(exported_ops())


class _Unlowered(IndexerOp):
    """``[S, D0, D1] -> [S, D0, D1]``: an op with a reference but neither ``triton_expr`` nor a lowering."""

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        return combined_format(inputs[0].format), inputs[0].inner

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0]


class _Expr(_Unlowered):
    triton_expr = "{x} * {x}"


def test_an_op_without_lowering_is_reported() -> None:
    """What the check above relies on: a missing lowering is found, ``triton_expr`` is one, and a subclass's
    registered lowering wins over its base's (Interleave is a Reduction)."""
    assert missing_lowering(_Unlowered()) == "_Unlowered has no fused Triton lowering"
    assert missing_lowering(_Expr()) is None
    assert missing_reference(_Unlowered()) is None
    assert missing_reference(ix.Conv1d([1.0])) is None
    no_reference = type("NoReference", (ix.Conv1d,), {"reference_segmented": vOp.reference_segmented})
    assert missing_reference(no_reference([1.0])) == "NoReference(weight=[[[1.0]]]) has no reference_segmented()"
    dim0 = ix.Mean(dim=0)
    assert standalone_lowering(dim0) is not None and missing_lowering(dim0) is None
    assert fused_lowering(cx.MeanInterleave(dim=1, k=2)) is not fused_lowering(cx.Mean(dim=1))
