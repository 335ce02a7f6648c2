"""Terminal ops: pick each row's blocks from a RAGGED score ``[S, 1, 1]`` and write them into ``o``."""

from __future__ import annotations

from typing import Any

from ..abs.callsite import at, user_callsite
from ..abs.context import ContextBase
from ..abs.errors import FlowRuleError, FlowShapeError
from ..abs.formats import FORMAT
from ..abs.op import Schedule
from ..abs.vtensor import vTensor
from ._base import IndexerOp


class topK(IndexerOp):  # noqa: N801 - the name users know from the original project
    """Exact top-k per row over blocks ``[bos, n - eos)``; the first ``bos`` and last ``eos`` blocks are always
    kept and k comes from the budget rule, not from an argument. Ties go to the earlier block."""

    arity = 2
    schedule = Schedule.SELECT
    tolerate_ratio = 0.0

    def params(self) -> dict[str, Any]:
        return {}

    def __call__(self, *args: Any, ctx: ContextBase) -> vTensor:
        site = self._claim(ctx)
        if len(args) != 2:
            raise FlowRuleError(f"{self.name} takes (score, o){at(site)}")
        score = ctx.check_input(self, args[0], site)
        o = args[1]
        if not isinstance(o, vTensor) or o.name != "o":
            raise FlowRuleError(f"{self.name}: the second argument must be the `o` forward_indexer received{at(site)}")
        if score.format == FORMAT.BATCHED or score.inner != (1, 1):
            raise FlowShapeError(
                f"{self.name} needs one score per block, a RAGGED [S, 1, 1] tensor; got {score!r}. Reduce the "
                f"inner axes first (e.g. Max(dim=1)){at(site)}"
            )
        ctx.record(self, [score], site, writes="o", produces=False)
        return o


class approxTopK(topK):  # noqa: N801 - the name users know from the original project
    """Top-k by a radix threshold search that may stop early: recall >= 1 - tolerate_ratio per row."""

    def __init__(self, tolerate_ratio: float = 0.0) -> None:
        super().__init__()
        if isinstance(tolerate_ratio, bool) or not isinstance(tolerate_ratio, int | float) or not (
            0.0 <= tolerate_ratio < 1.0
        ):
            raise FlowRuleError(
                f"approxTopK: tolerate_ratio must be in [0, 1), got {tolerate_ratio!r}{at(user_callsite())}"
            )
        self.tolerate_ratio = float(tolerate_ratio)

    def params(self) -> dict[str, Any]:
        return {"tolerate_ratio": self.tolerate_ratio}
