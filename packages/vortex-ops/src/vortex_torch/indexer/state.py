"""Per-block state carried across decode steps: ``Load`` reads a cache field, ``Save`` writes it back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..abs.callsite import at
from ..abs.context import ContextBase
from ..abs.errors import FlowRuleError, FlowShapeError
from ..abs.formats import FORMAT
from ..abs.vtensor import vTensor
from ._base import IndexerOp


def _field(ctx: ContextBase, op: IndexerOp, t: object, site: Any) -> vTensor:
    if not isinstance(t, vTensor) or t.format != FORMAT.PAGED or t.name in ("", "k", "v"):
        raise FlowRuleError(f"{op.name} needs a declared cache field such as cache['score']{at(site)}")
    return t


class Load(IndexerOp):
    """``x = Load()(cache["f"])``: the field's value per block as RAGGED ``[S, r, c]`` — what the previous
    step's ``Save`` stored (or what ``forward_cache`` wrote when the block completed)."""

    arity = 1

    def __call__(self, *args: Any, ctx: ContextBase) -> vTensor:
        site = self._claim(ctx)
        if len(args) != 1:
            raise FlowRuleError(f"Load takes one cache field{at(site)}")
        out = ctx.record(self, [_field(ctx, self, args[0], site)], site)
        assert out is not None
        return out

    def infer(self, inputs: Sequence[vTensor]) -> tuple[FORMAT, tuple[int, int]]:
        return FORMAT.RAGGED, inputs[0].inner

    # the field read at each block id, which is how every executor gathers a PAGED input
    triton_expr = "{x}"

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0]


class Save(IndexerOp):
    """``Save()(x, cache["f"])``: store RAGGED ``x [S, r, c]`` into field ``f`` at each block, read by next
    step's ``Load``. Fields saved this way must be reset with ``cache.Fill`` in ``forward_cache`` and need
    SGLang's radix cache off (a reused prefix would carry another request's state)."""

    arity = 2

    def __call__(self, *args: Any, ctx: ContextBase) -> vTensor:
        site = self._claim(ctx)
        if len(args) != 2:
            raise FlowRuleError(f"Save takes (x, cache_field){at(site)}")
        x = ctx.check_input(self, args[0], site)
        field = _field(ctx, self, args[1], site)
        if x.format == FORMAT.BATCHED:
            raise FlowShapeError(f"Save stores one value per block: its input must be RAGGED, got BATCHED{at(site)}")
        if x.inner != field.inner:
            raise FlowShapeError(
                f"Save: value [*, {x.inner[0]}, {x.inner[1]}] does not fit field {field.name!r} declared as "
                f"{field.inner}{at(site)}"
            )
        ctx.record(self, [x], site, writes=field.name, produces=False)
        return field

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        """The value stored; executors store it after the selection (``Load`` reads the previous step's)."""
        return xs[0]
