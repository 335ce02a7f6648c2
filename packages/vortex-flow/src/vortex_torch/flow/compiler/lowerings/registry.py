"""The table of Triton lowerings, keyed by op class, and the decorators that fill it.

An op's lowering is decided by the first class of its MRO that is registered here or declares ``triton_expr``
in its body (a string: the generic elementwise lowering; ``None``: none), so a subclass's lowering wins over
its base's whatever the registration order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vortex_torch.abs.graph import OpNode
from vortex_torch.abs.op import vOp

from ..emitter import Emitter, Tile, lead, lit
from ..row_kernel import RowKernel

#: ``(emitter, node, input tiles) -> output tile`` (``None`` for an op that only stores, such as ``Save``)
FusedEmit = Callable[[Emitter, OpNode, list[Tile]], Tile | None]
#: fills the body of a row kernel for the node it was built for
StandaloneEmit = Callable[[RowKernel], None]


@dataclass(frozen=True)
class FusedLowering:
    emit: FusedEmit
    #: fp32 elements per block of the largest intermediate the lowering builds besides its inputs and output
    #: (a rank-4 product): it bounds the blocks a program may hold (``TritonExecutor.chunks``)
    tile_elements: Callable[[OpNode], int] | None = None


_FUSED: dict[type[vOp], FusedLowering] = {}
_STANDALONE: dict[type[vOp], StandaloneEmit] = {}


def fused(
    *ops: type[vOp], tile_elements: Callable[[OpNode], int] | None = None
) -> Callable[[FusedEmit], FusedEmit]:
    """Register the decorated function as the fused lowering of ``ops`` (and of their subclasses)."""

    def register(emit: FusedEmit) -> FusedEmit:
        for op in ops:
            if op in _FUSED:
                raise ValueError(f"{op.__name__} already has a fused lowering")
            _FUSED[op] = FusedLowering(emit, tile_elements)
        return emit

    return register


def standalone(*ops: type[vOp]) -> Callable[[StandaloneEmit], StandaloneEmit]:
    """Register the decorated function as the standalone (row-wise, ``dim=0``) lowering of ``ops``."""

    def register(emit: StandaloneEmit) -> StandaloneEmit:
        for op in ops:
            if op in _STANDALONE:
                raise ValueError(f"{op.__name__} already has a standalone lowering")
            _STANDALONE[op] = emit
        return emit

    return register


def emit_expr(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    """The generic lowering: ``op.triton_expr`` with the input tiles and the op's numeric parameters."""
    op = node.op
    assert op.triton_expr is not None
    names = dict(zip("xy", (t.var for t in xs), strict=False))
    params = {k: lit(v) for k, v in op.params().items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return e.assign(node, op.triton_expr.format(**names, **params), lead(*xs))


_GENERIC = FusedLowering(emit_expr)


def fused_lowering(op: vOp) -> FusedLowering | None:
    """The lowering of ``op`` inside a fused kernel, or ``None`` when the Triton backend has none."""
    for cls in type(op).__mro__:
        if cls in _FUSED:
            return _FUSED[cls]
        if "triton_expr" in vars(cls):  # declared here: an expression, or None for "not lowered this way"
            return _GENERIC if vars(cls)["triton_expr"] is not None else None
    return None


def standalone_lowering(op: vOp) -> StandaloneEmit | None:
    """The lowering of ``op`` as a kernel of its own, or ``None`` when the Triton backend has none."""
    for cls in type(op).__mro__:
        if cls in _STANDALONE:
            return _STANDALONE[cls]
    return None
