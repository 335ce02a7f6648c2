"""The executors a flow can run on (``impl_backend``), and the load-time check that it can run on one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vortex_torch.abs.callsite import at
from vortex_torch.abs.op import vOp

from .lowerings import missing_lowering
from .reference import missing_reference
from .schedule import CompileError, live_nodes

if TYPE_CHECKING:
    from ..trace import TracedFlow

#: ``impl_backend`` -> why it cannot run an op (``None`` when it can)
MISSING: dict[str, Callable[[vOp], str | None]] = {
    "triton": missing_lowering,
    "reference": missing_reference,
}
IMPL_BACKENDS = tuple(MISSING)


def check_backend(traced: TracedFlow, impl_backend: str) -> None:
    """Raise :class:`CompileError` naming the flow line of the first op ``impl_backend`` cannot run.

    Run it when the flow is loaded, so that an op the backend lacks fails there and not at the first decode
    step. Dead ops are not checked: they are removed before anything runs.
    """
    if impl_backend not in MISSING:
        raise ValueError(f"impl_backend must be one of {', '.join(IMPL_BACKENDS)}, got {impl_backend!r}")
    for graph in (traced.indexer, traced.cache):
        for node in live_nodes(graph):
            reason = MISSING[impl_backend](node.op)
            if reason is not None:
                raise CompileError(
                    f"{reason}{at(node.site)}: impl_backend={impl_backend!r} cannot run this flow. Fix: use "
                    f"another op, or impl_backend={'reference' if impl_backend == 'triton' else 'triton'!r}"
                )
