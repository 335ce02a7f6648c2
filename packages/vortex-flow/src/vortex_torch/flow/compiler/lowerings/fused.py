"""Lowerings of the ops that fuse but are more than one ``triton_expr``: reductions and folds inside a block,
products, layout changes, and the stores ``Save`` and ``Fill``."""

from __future__ import annotations

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import OpNode
from vortex_torch.abs.vtensor import vTensor
from vortex_torch.cache.ops import Interleave
from vortex_torch.indexer.reduce import Reduction

from ..emitter import NEG, RED_FN, RED_IDENT, Emitter, KernelArg, Tile, lead, lit, p2
from ..schedule import CompileError
from .registry import fused


@fused(Reduction)
def _reduce(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    """Keepdim reduction over inner axis ``dim``; padded lanes hold the reduction's identity."""
    op = node.op
    assert isinstance(op, Reduction)
    (x,) = xs
    axis, size = op.dim, (x.r if op.dim == 1 else x.c)
    how = op.how
    val = f"{x.var} * {x.var}" if how == "l2" else x.var
    if size != (x.rp if axis == 1 else x.cp):
        val = f"tl.where({e.ar(axis, p2(size))} < {size}, {val}, {RED_IDENT.get(how, '0.0')})"
    red = f"{RED_FN[how]}({val}, axis={axis}, keep_dims=True)"
    if how == "mean":
        red = f"{red} / {size}.0"
    if how == "l2":
        red = f"tl.sqrt({red})"
    return e.assign(node, red, x.s)


def _interleave_elements(node: OpNode) -> int:
    """A non-power-of-two axis is folded through a rank-4 membership tile ``[*, r, c, folded]``."""
    (x,) = node.inputs
    assert node.output is not None and isinstance(node.op, Interleave)
    return p2(x.inner[0]) * p2(x.inner[1]) * p2(node.output.inner[node.op.dim - 1])


@fused(Interleave, tile_elements=_interleave_elements)
def _interleave(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    """Fold groups of ``k`` consecutive entries along ``op.dim``: a reshape when that axis is a power of two
    (then so are ``k`` and the folded size), else a masked reduction over a rank-4 membership tile."""
    op = node.op
    assert isinstance(op, Interleave)
    (x,) = xs
    k, how, axis = op.k, op.how, op.dim
    size = x.r if axis == 1 else x.c
    if size == p2(size):
        if axis == 1:
            g, red = f"tl.reshape({x.var}, ({x.s}, {x.r // k}, {k}, {x.cp}))", 2
        else:
            g, red = f"tl.reshape({x.var}, ({x.s}, {x.rp}, {x.c // k}, {k}))", 3
        val = f"{g} * {g}" if how == "l2" else g
    else:
        # out[j] = reduce over i with i // k == j; padded inputs (i >= size) only reach padded outputs
        if axis == 1:
            g, jj, ii, red = f"{x.var}[:, None, :, :]", e.ar(1, p2(size // k), 4), e.ar(2, x.rp, 4), 2
        else:
            g, jj, ii, red = f"{x.var}[:, :, None, :]", e.ar(2, p2(size // k), 4), e.ar(3, x.cp, 4), 3
        val = f"{g} * {g}" if how == "l2" else g
        val = f"tl.where({ii} // {k} == {jj}, {val}, {RED_IDENT.get(how, '0.0')})"
    expr = f"{RED_FN[how]}({val}, axis={red})"
    if how == "mean":
        expr = f"{expr} / {k}.0"
    if how == "l2":
        expr = f"tl.sqrt({expr})"
    return e.assign(node, expr, x.s)


def _gemm_elements(node: OpNode) -> int:
    """The product ``[*, Ny, Nx, K]`` before the contraction."""
    x, y = node.inputs
    return p2(y.inner[0]) * p2(x.inner[0]) * p2(x.inner[1])


@fused(ix.GeMM, tile_elements=_gemm_elements)
def _gemm(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    x, y = xs
    k = x.c
    # A single row on either side (the usual scoring GeMM: one query against each block's summary) contracts a
    # rank-3 product, which keeps the loaded tile's register layout. The rank-4 broadcast moves the whole tile
    # through shared memory first (an H200 ttgir showed a convert_layout of the [S, 1, K] tile plus barriers).
    if x.rp == 1 or y.rp == 1:
        prod = f"{y.var} * {x.var}"  # [S, Ny, K] (Nx = 1) or [S, Nx, K] (Ny = 1)
        if k != p2(k):
            prod = f"tl.where({e.ar(2, p2(k))} < {k}, {prod}, 0.0)"
        if x.rp == 1:
            return e.assign(node, f"tl.sum({prod}, axis=2, keep_dims=True)", lead(*xs))  # [S, Ny, 1]
        return e.assign(node, f"tl.sum({prod}, axis=2)[:, None, :]", lead(*xs))  # [S, 1, Nx]
    prod = f"{y.var}[:, :, None, :] * {x.var}[:, None, :, :]"  # [S, Ny, Nx, K]
    if k != p2(k):
        prod = f"tl.where({e.ar(3, p2(k), rank=4)} < {k}, {prod}, 0.0)"
    return e.assign(node, f"tl.sum({prod}, axis=3)", lead(*xs))


@fused(ix.Reshape)
def _reshape(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    (x,) = xs
    assert node.output is not None
    r, c = node.output.inner
    if (x.r, x.c, r, c) != (x.rp, x.cp, p2(r), p2(c)):
        raise CompileError(
            f"Reshape(-1, {r}, {c}) of a [*, {x.r}, {x.c}] block at {node.site}: the Triton backend reshapes "
            "only blocks whose inner sizes (input and output) are all powers of two. Reshape to power-of-two "
            "sizes, or reduce/slice the block first"
        )
    return e.assign(node, f"tl.reshape({x.var}, ({x.s}, {r}, {c}))", x.s)


@fused(ix.Kron)
def _kron(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    op = node.op
    assert isinstance(op, ix.Kron) and node.output is not None
    x, y = xs
    r, c = node.output.inner
    if 1 in op.dims and 2 in op.dims:
        prod = f"{x.var}[:, :, None, :, None] * {y.var}[:, None, :, None, :]"
    elif 1 in op.dims:
        prod = f"{x.var}[:, :, None, :] * {y.var}[:, None, :, :]"
    else:
        prod = f"{x.var}[:, :, :, None] * {y.var}[:, :, None, :]"
    s = lead(*xs)
    return e.assign(node, f"tl.reshape({prod}, ({s}, {p2(r)}, {p2(c)}))", s)


@fused(ix.MaskSlice)
def _mask_slice(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    op = node.op
    assert isinstance(op, ix.MaskSlice)
    (x,) = xs
    idx = e.ar(op.dim, x.rp if op.dim == 1 else x.cp)
    cond = f"({idx} >= {op.start}) & ({idx} < {op.end})"
    return e.assign(node, f"tl.where({cond}, {lit(op.alpha)}, {lit(op.beta)}) + tl.zeros_like({x.var})", x.s)


@fused(ix.Softmax, ix.Normalize)
def _inner_normalise(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    """Softmax / Normalize along inner axis ``dim`` (1 or 2) of each block."""
    op = node.op
    assert isinstance(op, ix.Softmax | ix.Normalize) and node.output is not None
    (x,) = xs
    axis = op.dim
    size = x.r if axis == 1 else x.c
    padded = size != (x.rp if axis == 1 else x.cp)
    m = f"{e.ar(axis, p2(size))} < {size}"
    var = e.tmp()
    if isinstance(op, ix.Softmax):
        z = f"{var}_z"
        e.body.append(f"{z} = {lit(op.scale)} * {x.var}")
        if padded:
            e.body.append(f"{z} = tl.where({m}, {z}, {NEG})")
        e.body.append(f"{z} = tl.exp({z} - tl.max({z}, axis={axis}, keep_dims=True))")
        e.body.append(f"{var} = {z} / tl.sum({z}, axis={axis}, keep_dims=True)")
    else:
        val = f"tl.where({m}, {x.var}, 0.0)" if padded else x.var
        e.body.append(f"{var} = {x.var} / tl.sum({val}, axis={axis}, keep_dims=True)")
    return Tile(var, x.s, *node.output.inner)


@fused(ix.Save)
def _save(e: Emitter, node: OpNode, xs: list[Tile]) -> None:
    """Store into the field at the end of the kernel, after every Load of it in this kernel has read last
    step's value."""
    name = node.writes or ""
    arg = f"save_{name}"
    if name not in e.deferred:
        e.args.append(KernelArg(arg, f"entry:{name}", None))
    target = node.inputs[0]
    as_field = vTensor(inner=target.inner, format=FORMAT.PAGED, dtype=target.dtype, tensor_id=-1)
    e.deferred[name] = []
    e.store(xs[0], as_field, arg, "blk", into=e.deferred[name])
    if name in e.entry_ptr:
        e.deferred_ptrs.add(e.entry_ptr[name])


@fused(cx.Fill)
def _fill(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    """The constant, shaped like the field the Fill writes (the cache kernel stores it)."""
    op = node.op
    assert isinstance(op, cx.Fill)
    t = e.fields[node.writes or ""]
    const = Tile(e.tmp(), "BS", *t.inner)
    e.body.append(f"{const.var} = tl.zeros([BS, {const.rp}, {const.cp}], tl.float32) + {lit(op.alpha)}")
    return const
