"""What every generated kernel is built from: tiles, kernel arguments and the :class:`Emitter` of a body.

Every value inside a kernel is an fp32 tile ``[S, RP, CP]``: ``S`` is ``BS`` (one slot per block of the
chunk) or 1 (a per-row value such as the query), ``RP``/``CP`` the block's inner shape padded to powers of two.
Padded lanes hold don't-care values; every reduction masks them with its identity, and stores mask them out.

Aux fields are ``[num_blocks, r, c]`` tensors indexed by block id. ``cache["k"]``/``cache["v"]`` are SGLang's
native ``[num_slots, H_kv, D]`` buffers (design §2): a block's tokens are addressed through :class:`KVLayout`,
with the buffer's slot and head strides passed as kernel arguments (``stride0_<ptr>``, ``stride1_<ptr>``).

fp8 (:mod:`vortex_torch.kernels.fp8`): an fp8 K/V buffer (the traced ``kv_dtype``) is read as ``stored *
scale``, the layer's scale a ``[1]`` fp32 kernel argument (``scale_<ptr>``, resolved from ``fields["k_scale"]`` /
``fields["v_scale"]``); stores into aux fields go through ``_vx_store_cast``, which saturates fp8 to its largest
finite value (a compile-time branch: other dtypes are a plain cast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vortex_torch.abs.graph import OpNode
from vortex_torch.abs.vtensor import vTensor
from vortex_torch.kernels.fp8 import is_fp8

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
        """Offset of token 0, element 0 of blocks ``blk`` (an int64 expression) in the buffer ``ptr``, through
        the one copy of the block arithmetic (``vortex_torch.kernels._layout``, imported by every generated
        module as ``_vx_block_first_slot`` / ``_vx_block_head``)."""
        geo = f"{self.page_size}, {self.block_size}, {self.heads}"
        return (
            f"_vx_block_first_slot({blk}, {geo}) * stride0_{ptr} + _vx_block_head({blk}, {geo}) * stride1_{ptr}"
        )


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
    #: "entry:<name>" | "buffer:<tensor_id>" | "stride0:<name>" / "stride1:<name>" (K/V strides) |
    #: "param:<attr>" (a tensor attribute of the kernel's op, e.g. Conv1d's weight, copied to the device once) |
    #: "scale:<name>" (the [1] fp32 dequantisation scale of fp8 K/V buffer <name>: ``fields["<name>_scale"]``)
    source: str
    tensor: vTensor | None = None


@dataclass
class KernelSource:
    name: str
    args: list[KernelArg]
    lines: list[str] = field(default_factory=list)
    ragged: bool = True


class Emitter:
    """Builds one kernel body; knows how every live tensor is addressed."""

    def __init__(self, mode: str, kv: KVLayout | None = None) -> None:
        self.mode = mode  # "ragged" | "batched" | "cache"
        self.kv = kv
        self.pre: list[str] = []
        self.body: list[str] = []
        #: a ragged group's per-row lines, run once before its chunk loop (``codegen._hoist``)
        self.hoisted: list[str] = []
        self.args: list[KernelArg] = []
        self.tiles: dict[int, Tile] = {}
        self.loaded: set[str] = set()  # pointers this kernel has read
        #: field -> the pointer its loads go through (a deferred store into it must wait for them)
        self.entry_ptr: dict[str, str] = {}
        #: field -> its store, emitted at the end of the kernel (``Save``: a Load here reads last step's value;
        #: a later Save of the same field replaces the earlier one)
        self.deferred: dict[str, list[str]] = {}
        #: pointers loaded by this kernel that a deferred store overwrites
        self.deferred_ptrs: set[str] = set()
        #: cache kernels: the method's fields (a ``Fill`` takes its shape from the field it writes)
        self.fields: dict[str, vTensor] = {}
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
        scale = ""
        if addressing == "kv" and is_fp8(t.dtype):  # fp8 K/V: value = stored * the layer's scale
            scale_arg = f"scale_{ptr}"
            if all(a.name != scale_arg for a in self.args):
                self.args.append(KernelArg(scale_arg, f"scale:{t.name}"))
            scale = f" * tl.load({scale_arg})"
        self.body.append(f"{var} = tl.load({ptr} + {offs}{m}).to(tl.float32){scale}")
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
        self.body.append(f"{var} = _vx_store_cast({tile.var}, {ptr}).to(tl.float32)")
        return Tile(var, tile.s, tile.r, tile.c)

    def assign(self, node: OpNode, expr: str, s: str) -> Tile:
        """A new tile ``= expr`` holding ``node``'s output (leading extent ``s``)."""
        assert node.output is not None
        var = self.tmp()
        self.body.append(f"{var} = {expr}")
        return Tile(var, s, *node.output.inner)

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
        # an aux field (fp8 saturates); intermediates are fp32 buffers
        cast = f"_vx_store_cast({val}, {ptr})" if addressing == "blk" else f"{val}.to({ptr}.dtype.element_ty)"
        (into if into is not None else self.body).append(f"tl.store({ptr} + {offs}, {cast}{m})")


def lead(*tiles: Tile) -> str:
    """The leading extent of a value computed from ``tiles``: ``BS`` if any is per block, else 1 (per row)."""
    return "BS" if any(t.s == "BS" for t in tiles) else "1"


RED_FN = {"sum": "tl.sum", "mean": "tl.sum", "l2": "tl.sum", "amax": "tl.max", "amin": "tl.min"}
RED_IDENT = {"amax": NEG, "amin": "3.4028234663852886e38"}  # others: 0.0
