"""Call form of indexer ops: ``out = op(*tensors, ctx=ctx)``."""

from __future__ import annotations

from typing import Any

from ..abs.callsite import at
from ..abs.context import ContextBase
from ..abs.errors import FlowRuleError
from ..abs.op import vOp
from ..abs.vtensor import vTensor


class IndexerOp(vOp):
    """An op of ``forward_indexer``; runs at every decode step of every sparse layer."""

    side = "indexer"

    def __call__(self, *args: Any, ctx: ContextBase) -> vTensor:
        site = self._claim(ctx)
        if len(args) != self.arity:
            raise FlowRuleError(f"{self.name} takes {self.arity} tensor argument(s), got {len(args)}{at(site)}")
        inputs = [ctx.check_input(self, a, site) for a in args]
        out = ctx.record(self, inputs, site)
        assert out is not None
        return out
