"""Triton source for a scheduled flow graph.

Every value inside a kernel is an fp32 tile ``[S, RP, CP]``: ``S`` is ``BS`` (one slot per block of the
chunk) or 1 (a per-row value such as the query), ``RP``/``CP`` the block's inner shape padded to powers of two.
Padded lanes hold don't-care values; every reduction masks them with its identity, and stores mask them out.

Aux fields are ``[num_blocks, r, c]`` tensors indexed by block id. ``cache["k"]``/``cache["v"]`` are SGLang's
native ``[num_slots, H_kv, D]`` buffers (design §2): a block's tokens are addressed through :class:`KVLayout`,
with the buffer's slot and head strides passed as kernel arguments (``stride0_<ptr>``, ``stride1_<ptr>``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import OpNode
from vortex_torch.abs.vtensor import vTensor
from vortex_torch.cache.ops import _Interleave

from .schedule import CompileError, KernelGroup

NEG = "-3.4028234663852886e38"  # fp32 lowest: identity of max that stays finite


def p2(n: int) -> int:
    """Next power of two >= n (Triton tile sizes must be powers of two)."""
    return 1 << (n - 1).bit_length()


def lit(v: float) -> str:
    """A float parameter as Triton source (``float("inf")`` folds to a constant; ``repr`` would give ``inf``)."""
    v = float(v)
    return repr(v) if math.isfinite(v) else f'float("{v}")'


KV_FIELDS = ("k", "v")


@dataclass(frozen=True)
class KVLayout:
    """How a block id addresses the native K/V buffers ``[num_slots, H_kv, D]`` (``PoolLayout``, design §2)."""

    page_size: int
    block_size: int
    heads: int

    def base(self, blk: str, ptr: str) -> str:
        """Offset of token 0, element 0 of blocks ``blk`` (an int64 expression) in the buffer ``ptr``."""
        bpp = self.page_size // self.block_size
        slot0 = f"({blk} // {self.heads * bpp}) * {self.page_size}"
        head = f"({blk} // {bpp}) % {self.heads}" if bpp > 1 else f"{blk} % {self.heads}"
        if bpp > 1:
            slot0 += f" + ({blk} % {bpp}) * {self.block_size}"
        return f"({slot0}) * stride0_{ptr} + ({head}) * stride1_{ptr}"


def kv_stride_args(ptr: str, name: str) -> list[KernelArg]:
    """The slot and head strides of K/V buffer ``ptr`` (no other parameter name starts with "stride")."""
    return [KernelArg(f"stride0_{ptr}", f"stride0:{name}"), KernelArg(f"stride1_{ptr}", f"stride1:{name}")]


@dataclass(frozen=True)
class Tile:
    var: str
    s: str  # "BS" or "1"
    r: int
    c: int

    @property
    def rp(self) -> int:
        return p2(self.r)

    @property
    def cp(self) -> int:
        return p2(self.c)


@dataclass
class KernelArg:
    """A pointer argument and where the executor finds its tensor."""

    name: str
    source: str  # "entry:<name>" | "buffer:<tensor_id>" | "select"
    tensor: vTensor | None = None


@dataclass
class KernelSource:
    name: str
    args: list[KernelArg]
    lines: list[str] = field(default_factory=list)
    ragged: bool = True


class _Emitter:
    """Builds one kernel body; knows how every live tensor is addressed."""

    def __init__(self, mode: str, kv: KVLayout | None = None) -> None:
        self.mode = mode  # "ragged" | "batched" | "cache"
        self.kv = kv
        self.pre: list[str] = []
        self.body: list[str] = []
        self.args: list[KernelArg] = []
        self.tiles: dict[int, Tile] = {}
        self.loaded: set[str] = set()  # pointers this kernel has read
        self._aranges: set[str] = set()
        self._n = 0

    def tmp(self) -> str:
        self._n += 1
        return f"t{self._n}"

    def ar(self, axis: int, size: int, rank: int = 3) -> str:
        """Broadcastable index vector along inner ``axis`` (1 or 2) of a rank-3 (or 4) tile."""
        name = f"I{axis}_{size}" + ("_4" if rank == 4 else "")
        if name not in self._aranges:
            self._aranges.add(name)
            idx = ["None"] * rank
            idx[axis] = ":"
            self.pre.append(f"{name} = tl.arange(0, {size})[{', '.join(idx)}]")
        return name

    def inner_mask(self, r: int, c: int) -> list[str]:
        parts = []
        if r != p2(r):
            parts.append(f"({self.ar(1, p2(r))} < {r})")
        if c != p2(c):
            parts.append(f"({self.ar(2, p2(c))} < {c})")
        return parts

    def address(self, t: vTensor, addressing: str) -> tuple[str, str, list[str]]:
        """(base offset expr, S, mask parts) of a tensor addressed per row, per block id or per ragged slot."""
        r, c = t.inner
        rc = r * c
        if addressing == "row":
            return f"row * {rc}", "1", []
        key = {"blk": "BLK3", "rag": "RAG3"}[addressing]
        return f"{key} * {rc}", "BS", ["VALID3"]

    def load(self, t: vTensor, ptr: str, addressing: str) -> Tile:
        """Load ``t`` into a tile: ``addressing`` is "row", "rag", "blk" (an aux field) or "kv" (K/V)."""
        r, c = t.inner
        if addressing == "kv":
            assert self.kv is not None
            self.args += kv_stride_args(ptr, t.name)
            base, s, mask, row_stride = self.kv.base("BLK3", ptr), "BS", ["VALID3"], f"stride0_{ptr}"
        else:
            (base, s, mask), row_stride = self.address(t, addressing), str(c)
        mask = mask + self.inner_mask(r, c)
        offs = f"{base} + {self.ar(1, p2(r))} * {row_stride} + {self.ar(2, p2(c))}"
        var = self.tmp()
        m = f", mask={' & '.join(mask)}, other=0.0" if mask else ""
        self.body.append(f"{var} = tl.load({ptr} + {offs}{m}).to(tl.float32)")
        self.loaded.add(ptr)
        tile = Tile(var, s, r, c)
        self.tiles[t.tensor_id] = tile
        return tile

    def barrier_before_overwrite(self, ptrs: set[str], into: list[str]) -> None:
        """A store into memory this kernel loaded: the threads that store an element need not be the ones that
        loaded it (the two tiles may have different layouts), so make every load of the program land first."""
        if ptrs & self.loaded:
            into.append("tl.debug_barrier()")
            self.loaded -= ptrs

    def rounded(self, tile: Tile, ptr: str) -> Tile:
        """``tile`` as a later read of the field it was just stored into sees it: rounded to the field's dtype.
        Computed in registers; re-loading what this program stored would race across threads on a GPU."""
        var = self.tmp()
        self.body.append(f"{var} = {tile.var}.to({ptr}.dtype.element_ty).to(tl.float32)")
        return Tile(var, tile.s, tile.r, tile.c)

    def store(
        self, tile: Tile, t: vTensor, ptr: str, addressing: str, *, into: list[str] | None = None
    ) -> None:
        r, c = t.inner
        base, s, mask = self.address(t, addressing)
        mask = mask + self.inner_mask(r, c)
        if addressing == "row" and self.mode == "ragged":
            mask.append("(chunk == 0)")  # a per-row value computed by every chunk is stored once
        offs = f"{base} + {self.ar(1, p2(r))} * {c} + {self.ar(2, p2(c))}"
        val = tile.var
        if s == "BS" and tile.s == "1":
            val = f"({val} + tl.zeros([BS, {tile.rp}, {tile.cp}], tl.float32))"
        m = f", mask={' & '.join(mask)}" if mask else ""
        (into if into is not None else self.body).append(
            f"tl.store({ptr} + {offs}, {val}.to({ptr}.dtype.element_ty){m})"
        )


def _s(*tiles: Tile) -> str:
    return "BS" if any(t.s == "BS" for t in tiles) else "1"


_RED_FN = {"sum": "tl.sum", "mean": "tl.sum", "l2": "tl.sum", "amax": "tl.max", "amin": "tl.min"}
_RED_IDENT = {"amax": NEG, "amin": "3.4028234663852886e38"}  # others: 0.0


def emit_op(e: _Emitter, node: OpNode, xs: list[Tile]) -> Tile:
    """Lines computing one W op from its input tiles; returns the output tile."""
    op = node.op
    out_t = node.output
    assert out_t is not None
    r, c = out_t.inner
    var = e.tmp()
    S = _s(*xs)

    def put(expr: str, s: str = S) -> Tile:
        e.body.append(f"{var} = {expr}")
        return Tile(var, s, r, c)

    if isinstance(op, (ix.Relu, ix.Sigmoid, ix.Silu, ix.Add_Mul, ix.Abs, ix.Log, ix.Exp)):
        v, a, b = xs[0].var, lit(op.alpha), lit(op.beta)
        lin = f"({b} * {v} + {a})"
        forms = {
            ix.Relu: f"tl.where({v} >= {a}, {v}, {b})",
            ix.Sigmoid: f"1.0 / (1.0 + tl.exp({lin}))",
            ix.Silu: f"{v} / (1.0 + tl.exp({lin}))",
            ix.Add_Mul: lin,
            ix.Abs: f"tl.abs({lin})",
            ix.Log: f"tl.log({lin})",
            ix.Exp: f"tl.exp({lin})",
        }
        base = next(k for k in forms if isinstance(op, k))
        return put(forms[base])
    if isinstance(op, ix.elementwise._Where):
        return put(f"tl.where({xs[0].var} {op.predicate} {xs[1].var}, 0.0, {lit(ix.MASKED)})")
    if isinstance(op, ix.Multiply):
        return put(f"{xs[0].var} * {xs[1].var}")
    if isinstance(op, ix.Add):
        return put(f"{lit(op.alpha)} * {xs[0].var} + {lit(op.beta)} * {xs[1].var}")
    if isinstance(op, ix.Maximum):
        return put(f"tl.maximum({xs[0].var}, {xs[1].var})")
    if isinstance(op, ix.Minimum):
        return put(f"tl.minimum({xs[0].var}, {xs[1].var})")
    if isinstance(op, _Interleave):
        return put(_interleave(e, op, xs[0]), xs[0].s)
    if isinstance(op, ix.reduce._Reduce):
        x = xs[0]
        axis, size = op.dim, (x.r if op.dim == 1 else x.c)
        pad = size != (x.rp if axis == 1 else x.cp)
        how = op.how
        val = f"{x.var} * {x.var}" if how == "l2" else x.var
        if pad:
            val = f"tl.where({e.ar(axis, p2(size))} < {size}, {val}, {_RED_IDENT.get(how, '0.0')})"
        red = f"{_RED_FN[how]}({val}, axis={axis}, keep_dims=True)"
        if how == "mean":
            red = f"{red} / {size}.0"
        if how == "l2":
            red = f"tl.sqrt({red})"
        return put(red, x.s)
    if isinstance(op, ix.GeMM):
        x, y = xs
        k = x.c
        prod = f"{y.var}[:, :, None, :] * {x.var}[:, None, :, :]"  # [S, Ny, Nx, K]
        if k != p2(k):
            prod = f"tl.where({e.ar(3, p2(k), rank=4)} < {k}, {prod}, 0.0)"
        return put(f"tl.sum({prod}, axis=3)")
    if isinstance(op, ix.Transpose):
        return put(f"tl.permute({xs[0].var}, (0, 2, 1))")
    if isinstance(op, ix.Reshape):
        x = xs[0]
        if (x.r, x.c, r, c) != (x.rp, x.cp, p2(r), p2(c)):
            raise CompileError(
                f"Reshape(-1, {r}, {c}) of a [*, {x.r}, {x.c}] block at {node.site}: the Triton backend reshapes "
                "only blocks whose inner sizes (input and output) are all powers of two. Reshape to power-of-two "
                "sizes, or reduce/slice the block first"
            )
        return put(f"tl.reshape({x.var}, ({x.s}, {r}, {c}))", x.s)
    if isinstance(op, ix.Kron):
        return put(_kron(op, xs, r, c, S))
    if isinstance(op, ix.MaskSlice):
        x = xs[0]
        idx = e.ar(op.dim, x.rp if op.dim == 1 else x.cp)
        cond = f"({idx} >= {op.start}) & ({idx} < {op.end})"
        return put(f"tl.where({cond}, {lit(op.alpha)}, {lit(op.beta)}) + tl.zeros_like({x.var})", x.s)
    if isinstance(op, (ix.Softmax, ix.Normalize)):
        return _inner_normalise(e, op, xs[0], var, r, c)
    raise CompileError(f"{op.name} at {node.site} has no Triton lowering")


def _interleave(e: _Emitter, op: _Interleave, x: Tile) -> str:
    """Fold groups of ``k`` consecutive entries along ``op.dim``: a reshape when that axis is a power of two
    (then so are ``k`` and the folded size), else a masked reduction over a rank-4 membership tile."""
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
        val = f"tl.where({ii} // {k} == {jj}, {val}, {_RED_IDENT.get(how, '0.0')})"
    expr = f"{_RED_FN[how]}({val}, axis={red})"
    if how == "mean":
        expr = f"{expr} / {k}.0"
    if how == "l2":
        expr = f"tl.sqrt({expr})"
    return expr


def _kron(op: ix.Kron, xs: list[Tile], r: int, c: int, S: str) -> str:
    x, y = xs
    if 1 in op.dims and 2 in op.dims:
        prod = f"{x.var}[:, :, None, :, None] * {y.var}[:, None, :, None, :]"
    elif 1 in op.dims:
        prod = f"{x.var}[:, :, None, :] * {y.var}[:, None, :, :]"
    else:
        prod = f"{x.var}[:, :, :, None] * {y.var}[:, :, None, :]"
    return f"tl.reshape({prod}, ({S}, {p2(r)}, {p2(c)}))"


def _inner_normalise(e: _Emitter, op: ix.Softmax | ix.Normalize, x: Tile, var: str, r: int, c: int) -> Tile:
    axis = op.dim
    size = x.r if axis == 1 else x.c
    padded = size != (x.rp if axis == 1 else x.cp)
    m = f"{e.ar(axis, p2(size))} < {size}"
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
    return Tile(var, x.s, r, c)


def fused_kernel(
    name: str, group: KernelGroup, external: dict[int, str], stored: set[int], kv: KVLayout
) -> KernelSource:
    """A fused W group. ``external`` maps input tensor ids to "entry:<name>" or "buffer"; ``stored`` are the
    outputs other kernels read."""
    mode = "ragged" if group.ragged else "batched"
    e = _Emitter(mode, kv)
    saves: dict[str, list[str]] = {}  # field -> its store; a later Save of the same field replaces it
    save_ptrs: set[str] = set()
    entry_ptr: dict[str, str] = {}  # field name -> the pointer its loads go through
    for node in group.nodes:
        xs = []
        for t in node.inputs:
            tile = e.tiles.get(t.tensor_id)
            if tile is None:
                arg = f"in{t.tensor_id}"
                src = external[t.tensor_id]
                e.args.append(KernelArg(arg, src, t))
                if t.format == FORMAT.PAGED:
                    addressing = "kv" if t.name in KV_FIELDS else "blk"
                    entry_ptr[src.partition(":")[2]] = arg
                elif t.format == FORMAT.BATCHED:
                    addressing = "row"
                else:
                    addressing = "rag"
                tile = e.load(t, arg, addressing)
            xs.append(tile)
        if isinstance(node.op, ix.Save):
            arg = f"save_{node.writes}"
            if node.writes not in saves:
                e.args.append(KernelArg(arg, f"entry:{node.writes}", None))
            target = node.inputs[0]
            fake = vTensor(inner=target.inner, format=FORMAT.PAGED, dtype=target.dtype, tensor_id=-1)
            saves[node.writes or ""] = []
            e.store(
                xs[0], fake, arg, "blk", into=saves[node.writes or ""]
            )  # Load reads last step's: at the end
            if node.writes in entry_ptr:
                save_ptrs.add(entry_ptr[node.writes or ""])
            continue
        assert node.output is not None
        # Load is the field's value per block: the tile already loaded at the block ids
        tile = xs[0] if isinstance(node.op, ix.Load) else emit_op(e, node, xs)
        e.tiles[node.output.tensor_id] = tile
        if node.output.tensor_id in stored:
            arg = f"out{node.output.tensor_id}"
            e.args.append(KernelArg(arg, f"buffer:{node.output.tensor_id}", node.output))
            e.store(tile, node.output, arg, "row" if node.output.format == FORMAT.BATCHED else "rag")
    tail: list[str] = []
    if saves:
        e.barrier_before_overwrite(save_ptrs, tail)  # a Save may overwrite what a Load of this program read
    return _finish(name, e, tail + [line for lines in saves.values() for line in lines])


def cache_kernel(
    name: str, nodes: list[OpNode], entries: dict[str, vTensor], kv: KVLayout, *, decode: bool = False
) -> KernelSource:
    """forward_cache: one program per ``BS`` completed blocks; every input is a field read at the block id.

    ``decode``: the kernel takes the step's token slots ``locs [T]`` instead of block ids and finds the
    completed blocks itself (candidate ``p`` is token ``p // H_kv``, head ``p % H_kv``; its block is complete
    when the token is the block's last one), so a decode step needs no host count and no index compaction.
    """
    e = _Emitter("cache", kv)
    by_id = {t.tensor_id: n for n, t in entries.items()}
    declared: set[str] = set()

    def field_arg(fname: str, t: vTensor | None) -> str:
        arg = f"f_{fname}"
        if arg not in declared:
            e.args.append(KernelArg(arg, f"entry:{fname}", t))
            declared.add(arg)
        return arg

    read_later: list[set[int]] = [set() for _ in range(len(nodes) + 1)]  # [i]: tensors read by nodes[i:]
    for i in range(len(nodes) - 1, -1, -1):
        read_later[i] = read_later[i + 1] | {t.tensor_id for t in nodes[i].inputs}
    last_write = {n.writes: i for i, n in enumerate(nodes) if n.writes is not None}

    def write(tile: Tile, fname: str, i: int) -> None:
        arg = field_arg(fname, None)
        field_t = entries[fname]
        if last_write[fname] == i:  # only the final value is stored: two stores of one element could race
            e.barrier_before_overwrite({arg}, e.body)
            e.store(tile, field_t, arg, "blk")
        e.tiles.pop(field_t.tensor_id, None)
        if field_t.tensor_id in read_later[i + 1]:  # a later read of the field sees the stored value
            e.tiles[field_t.tensor_id] = e.rounded(tile, arg)

    for i, node in enumerate(nodes):
        if isinstance(node.op, cx.Fill):
            t = entries[node.writes or ""]
            const = Tile(e.tmp(), "BS", *t.inner)
            e.body.append(
                f"{const.var} = tl.zeros([BS, {const.rp}, {const.cp}], tl.float32) + {lit(node.op.alpha)}"
            )
            write(const, node.writes or "", i)
            continue
        xs = []
        for t in node.inputs:
            tile = e.tiles.get(t.tensor_id)
            if tile is None:
                fname = by_id[t.tensor_id]
                tile = e.load(t, field_arg(fname, t), "kv" if fname in KV_FIELDS else "blk")
            xs.append(tile)
        tile = emit_op(e, node, xs)
        assert node.output is not None
        e.tiles[node.output.tensor_id] = tile
        if node.writes is not None:
            write(tile, node.writes, i)
    return _finish(name, e, [], decode_cache=decode)


def _finish(name: str, e: _Emitter, tail: list[str], *, decode_cache: bool = False) -> KernelSource:
    params = ", ".join(a.name for a in e.args)
    head = [
        "@triton.jit",
        f"def {name}(indptr, indices, {params}, BS: tl.constexpr):" if e.mode != "cache"
        else f"def {name}(locs, num_locs, {params}, BS: tl.constexpr):" if decode_cache
        else f"def {name}(block_ids, num_blocks, {params}, BS: tl.constexpr):",
    ]  # fmt: skip
    if e.mode == "ragged":
        pre = [
            "row = tl.program_id(0)",
            "chunk = tl.program_id(1)",
            "start = tl.load(indptr + row)",
            "n = tl.load(indptr + row + 1) - start",
            "p = chunk * BS + tl.arange(0, BS)",
            "valid = p < n",
            "rag = (start + p).to(tl.int64)",
            "blk = tl.load(indices + rag, mask=valid, other=0).to(tl.int64)",
            "VALID3 = valid[:, None, None]",
            "RAG3 = rag[:, None, None]",
            "BLK3 = blk[:, None, None]",
        ]
    elif e.mode == "batched":
        pre = ["row = tl.program_id(0).to(tl.int64)"]
    elif decode_cache:
        kvl = e.kv
        assert kvl is not None
        pre = [
            "p = tl.program_id(0) * BS + tl.arange(0, BS)",
            f"loc = tl.load(locs + p // {kvl.heads}, mask=p < num_locs * {kvl.heads}, other=0).to(tl.int64)",
            f"valid = (p < num_locs * {kvl.heads}) & (loc % {kvl.block_size} == {kvl.block_size - 1})",
            f"blk = _vx_block_id(loc, p % {kvl.heads}, {kvl.page_size}, {kvl.block_size}, {kvl.heads})",
            "VALID3 = valid[:, None, None]",
            "BLK3 = blk[:, None, None]",
        ]
    else:
        pre = [
            "p = tl.program_id(0) * BS + tl.arange(0, BS)",
            "valid = p < num_blocks",
            "blk = tl.load(block_ids + p, mask=valid, other=0).to(tl.int64)",
            "VALID3 = valid[:, None, None]",
            "BLK3 = blk[:, None, None]",
        ]
    lines = head + ["    " + x for x in pre + e.pre + e.body + tail]
    return KernelSource(name=name, args=e.args, lines=lines, ragged=e.mode == "ragged")


def standalone_kernel(name: str, node: OpNode, src: str, kv: KVLayout) -> KernelSource:
    """Row-wise kernels over a row's blocks: Reduce(dim=0), Softmax/Normalize(dim=0), Conv1d."""
    (t,) = node.inputs
    out = node.output
    assert out is not None
    e = _Emitter("segment", kv)
    r, c = t.inner
    rc = r * c
    e.args = [KernelArg("x_ptr", src, t), KernelArg("y_ptr", f"buffer:{out.tensor_id}", out)]
    op = node.op
    ir, ic = e.ar(1, p2(r)), e.ar(2, p2(c))
    inner_parts = e.inner_mask(r, c)
    inner = " & ".join(inner_parts)
    inner_kw = f", mask={inner}" if inner else ""
    paged = t.format == FORMAT.PAGED
    kv_in = paged and t.name in KV_FIELDS
    if kv_in:
        e.args += kv_stride_args("x_ptr", t.name)

    def in_offs(ids: str) -> str:
        """Offsets of the input at ``ids [BS]`` int64 (ragged slots, or block ids of a PAGED input)."""
        if kv_in:
            return f"{kv.base(f'{ids}[:, None, None]', 'x_ptr')} + {ir} * stride0_x_ptr + {ic}"
        return f"{ids}[:, None, None] * {rc} + {ir} * {c} + {ic}"

    addr = (
        "tl.load(indices + start + p, mask=valid, other=0).to(tl.int64)"
        if paged
        else "(start + p).to(tl.int64)"
    )
    chunk_head = [
        "p = c0 + tl.arange(0, BS)",
        "valid = p < n",
        f"src = {addr}",
        "m = valid[:, None, None]" + (f" & ({inner})" if inner else ""),
        f"offs = {in_offs('src')}",
    ]
    out_offs = f"(start + p).to(tl.int64)[:, None, None] * {rc} + {ir} * {c} + {ic}"
    body: list[str] = []

    def loop(stmts: list[str], extra: list[str] | None = None) -> None:
        body.append("for c0 in range(0, n, BS):")
        body.extend("    " + s for s in chunk_head + (extra or []) + stmts)

    shape = f"[BS, {p2(r)}, {p2(c)}]"
    if isinstance(op, ix.reduce._Reduce):
        how = op.how
        ident = _RED_IDENT.get(how, "0.0")
        body.append(f"acc = tl.zeros({shape}, tl.float32) + {ident}")
        comb = {
            "sum": "acc + x", "mean": "acc + x", "l2": "acc + x * x",
            "amax": "tl.maximum(acc, x)", "amin": "tl.minimum(acc, x)",
        }[how]  # fmt: skip
        loop([f"x = tl.load(x_ptr + offs, mask=m, other={ident}).to(tl.float32)", f"acc = {comb}"])
        body.append(f"res = {_RED_FN[how]}(acc, axis=0, keep_dims=True)")
        if how == "mean":
            body.append("res = res / n.to(tl.float32)")
        if how == "l2":
            body.append("res = tl.sqrt(res)")
        body.append(f"tl.store(y_ptr + row * {rc} + {ir} * {c} + {ic}, res{inner_kw})")
    elif isinstance(op, ix.Softmax):
        body += [
            f"mx = tl.zeros([1, {p2(r)}, {p2(c)}], tl.float32) + {NEG}",
            f"den = tl.zeros([1, {p2(r)}, {p2(c)}], tl.float32)",
        ]
        loop([
            f"x = tl.where(m, tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32) * {lit(op.scale)}, {NEG})",
            "new = tl.maximum(mx, tl.max(x, axis=0, keep_dims=True))",
            "den = den * tl.exp(mx - new) + tl.sum(tl.where(m, tl.exp(x - new), 0.0), axis=0, keep_dims=True)",
            "mx = new",
        ])  # fmt: skip
        loop([
            f"x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32) * {lit(op.scale)}",
            f"tl.store(y_ptr + {out_offs}, tl.exp(x - mx) / den, mask=m)",
        ])  # fmt: skip
    elif isinstance(op, ix.Normalize):
        body.append(f"tot = tl.zeros([1, {p2(r)}, {p2(c)}], tl.float32)")
        loop(["x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)",
              "tot = tot + tl.sum(x, axis=0, keep_dims=True)"])  # fmt: skip
        loop(["x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)",
              f"tl.store(y_ptr + {out_offs}, x / tot, mask=m)"])  # fmt: skip
    elif isinstance(op, ix.Conv1d):
        k = op.weight.shape[0]
        half = (k - 1) // 2
        wr, wc = int(op.weight.shape[1]), int(op.weight.shape[2])
        e.args.insert(2, KernelArg("w_ptr", "weight", None))
        # weight [K, wr, wc] with wr in (1, r), wc in (1, c): a size-1 axis broadcasts (offset 0); a full axis
        # is indexed like the input and masked where the input is padded (else the load reads past the weight)
        w_offs = f"{ir if wr > 1 else '0'} * {wc} + {ic if wc > 1 else '0'}"
        w_mask = " & ".join(
            ([f"({ir} < {r})"] if wr > 1 and r != p2(r) else [])
            + ([f"({ic} < {c})"] if wc > 1 and c != p2(c) else [])
        )
        w_kw = f", mask={w_mask}, other=0.0" if w_mask else ""
        stmts = [f"acc = tl.zeros({shape}, tl.float32)"]
        for j in range(k):
            stmts += [
                f"q{j} = p + {j - half}",
                f"ok{j} = (q{j} >= 0) & (q{j} < n)",
                (f"s{j} = tl.load(indices + start + q{j}, mask=ok{j}, other=0).to(tl.int64)" if paged
                 else f"s{j} = (start + q{j}).to(tl.int64)"),
                f"x{j} = tl.load(x_ptr + {in_offs(f's{j}')}, "
                f"mask=ok{j}[:, None, None]" + (f" & ({inner})" if inner else "") + ", other=0.0).to(tl.float32)",
                f"acc = acc + x{j} * tl.load(w_ptr + {j * wr * wc} + {w_offs}{w_kw})",
            ]  # fmt: skip
        stmts.append(f"tl.store(y_ptr + {out_offs}, acc, mask=m)")
        loop(stmts)
    else:
        raise CompileError(f"{op.name} has no standalone Triton lowering")
    params = ", ".join(a.name for a in e.args)
    lines = [
        "@triton.jit",
        f"def {name}(indptr, indices, {params}, BS: tl.constexpr):",
        "    row = tl.program_id(0).to(tl.int64)",
        "    start = tl.load(indptr + row).to(tl.int64)",
        "    n = tl.load(indptr + row + 1) - tl.load(indptr + row)",
    ]
    lines += ["    " + x for x in e.pre + body]
    return KernelSource(name=name, args=e.args, lines=lines, ragged=False)
