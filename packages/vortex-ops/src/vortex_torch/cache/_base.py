"""Call form of cache ops: ``op(*tensors, output, loc=loc, ctx=ctx)``."""

from __future__ import annotations

from typing import Any

from ..abs.callsite import at
from ..abs.context import ContextBase
from ..abs.errors import FlowRuleError, FlowShapeError
from ..abs.formats import FORMAT
from ..abs.op import vOp
from ..abs.vtensor import vTensor


class CacheOp(vOp):
    """An op of ``forward_cache``; runs once per block, when the block's last token is written.

    ``output`` is the cache field to store the result in, or ``None`` to get an intermediate back.
    """

    side = "cache"

    def __call__(self, *args: Any, loc: Any = None, ctx: ContextBase, output: Any = None) -> vTensor:
        site = self._claim(ctx)
        if len(args) == self.arity + 1:
            output = args[-1]
            args = args[:-1]
        if len(args) != self.arity:
            raise FlowRuleError(
                f"{self.name} takes {self.arity} tensor argument(s) and an output field, got {len(args)}{at(site)}"
            )
        inputs = [ctx.check_input(self, a, site) for a in args]
        if output is None:
            out = ctx.record(self, inputs, site)
            assert out is not None
            return out
        if not isinstance(output, vTensor) or output.format != FORMAT.PAGED or output.name in ("k", "v"):
            raise FlowRuleError(
                f"{self.name}: output must be a declared cache field (not k, v or an MLA flow's latent) or None"
                f"{at(site)}. Fix: pass a field declared in create_cache as the output (e.g. cache['centroids']); "
                "k, v and the latent are read-only."
            )
        _, inner = self.infer(inputs)
        if inner != output.inner:
            raise FlowShapeError(
                f"{self.name} produces [*, {inner[0]}, {inner[1]}] but field {output.name!r} is declared as "
                f"{output.inner} in create_cache{at(site)}"
            )
        out = ctx.record(self, inputs, site, writes=output.name)
        assert out is not None
        return out


def cache_variant(indexer_cls: type[vOp], dims: tuple[int, ...] | None = None) -> type:
    """The cache-side twin of an indexer op: same math, cache call form (and optionally fewer dims)."""
    attrs: dict[str, Any] = {"__doc__": indexer_cls.__doc__, "__module__": __name__.rsplit(".", 1)[0]}
    if dims is not None:
        attrs["allowed_dims"] = dims
    return type(indexer_cls.__name__, (CacheOp, indexer_cls), attrs)
