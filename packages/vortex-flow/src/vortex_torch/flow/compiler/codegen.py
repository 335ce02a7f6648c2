"""Triton source for a scheduled flow graph: the frame of each kind of kernel (``Schedule``), filled by the
lowerings of its ops (:mod:`.lowerings`, keyed by op class; :mod:`.emitter` says how values are held).
"""

from __future__ import annotations

import re

from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import OpNode
from vortex_torch.abs.vtensor import vTensor

from .base import kv_scale_field
from .emitter import KV_FIELDS, Emitter, KernelArg, KernelSource, KVLayout, Tile, p2
from .lowerings import fused_lowering, standalone_lowering
from .row_kernel import RowKernel
from .schedule import CompileError, KernelGroup

__all__ = [
    "GROUP_PARAMS", "KV_FIELDS", "KVLayout", "KernelSource", "cache_kernel", "fused_kernel", "kv_scale_field", "p2",
    "standalone_kernel",
]  # fmt: skip


def emit_op(e: Emitter, node: OpNode, xs: list[Tile]) -> Tile | None:
    """``node``'s fused lowering applied to its input tiles: its output tile (``None`` for a store)."""
    lowering = fused_lowering(node.op)
    if lowering is None:
        raise CompileError(f"{node.op.name} at {node.site} has no Triton lowering")
    return lowering.emit(e, node, xs)


def fused_kernel(
    name: str, group: KernelGroup, external: dict[int, str], stored: set[int], kv: KVLayout, *,
    prefetch_indices: bool = False,
) -> KernelSource:  # fmt: skip
    """A ``Schedule.FUSED`` group. ``external`` maps input tensor ids to "entry:<name>" or "buffer"; ``stored`` are the
    outputs other kernels read. ``prefetch_indices``: a ragged group's chunk loop loads the next chunk's block ids
    one iteration ahead (:func:`_finish`)."""
    mode = "ragged" if group.ragged else "batched"
    e = Emitter(mode, kv)
    hoisted_vars: set[str] = set()
    for node in group.nodes:
        first_line = len(e.body)
        xs = []
        for t in node.inputs:
            tile = e.tiles.get(t.tensor_id)
            if tile is None:
                arg = f"in{t.tensor_id}"
                src = external[t.tensor_id]
                e.args.append(KernelArg(arg, src, t))
                if t.format == FORMAT.PAGED:
                    addressing = "kv" if t.name in KV_FIELDS else "blk"
                    e.entry_ptr[src.partition(":")[2]] = arg
                elif t.format == FORMAT.BATCHED:
                    addressing = "row"
                else:
                    addressing = "rag"
                tile = e.load(t, arg, addressing)
            xs.append(tile)
        tile = emit_op(e, node, xs)
        if node.output is None:  # Save: its store is deferred to the end of the kernel
            continue
        assert tile is not None
        e.tiles[node.output.tensor_id] = tile
        if mode == "ragged" and node.writes is None and tile.s == "1":
            _hoist(e, first_line, hoisted_vars)
        if node.output.tensor_id in stored:
            arg = f"out{node.output.tensor_id}"
            e.args.append(KernelArg(arg, f"buffer:{node.output.tensor_id}", node.output))
            e.store(tile, node.output, arg, "row" if node.output.format == FORMAT.BATCHED else "rag")
    tail: list[str] = []
    if e.deferred:  # a Save may overwrite what a Load of this program read
        e.barrier_before_overwrite(e.deferred_ptrs, tail)
    return _finish(
        name, e, tail + [line for lines in e.deferred.values() for line in lines], prefetch_indices=prefetch_indices
    )


#: names a ragged group's chunk loop defines (``_finish``): a line that reads one must stay in the loop
_CHUNK_NAMES = re.compile(r"\b(chunk|p|valid|rag|blk|p_next|blk_next|VALID3|RAG3|BLK3)\b")
_TMP = re.compile(r"\bt\d+\b")
_ASSIGN = re.compile(r"^(t\d+) = (.*)$")


def _hoist(e: Emitter, first_line: int, hoisted_vars: set[str]) -> None:
    """Move a per-row node's lines (``e.body[first_line:]``) before a ragged group's chunk loop, when every
    line is an assignment ``tN = ...`` that reads no chunk-loop name and no ``tN`` computed in the loop.

    A per-row value (the mean query, a scaled query) is the same for every chunk; inside the loop each chunk
    re-loaded and re-reduced it: for MLA's ``[16, 576]`` absorbed queries that was 4x the bytes of the 8
    centroids a chunk scores. Conservative: any other line shape keeps the node in the loop."""
    lines = e.body[first_line:]
    defined: list[str] = []
    for line in lines:
        m = _ASSIGN.match(line)
        if m is None or _CHUNK_NAMES.search(m.group(2)):
            return
        if any(v not in hoisted_vars and v not in defined for v in _TMP.findall(m.group(2))):
            return
        defined.append(m.group(1))
    del e.body[first_line:]
    e.hoisted += lines
    hoisted_vars.update(defined)


def cache_kernel(
    name: str,
    nodes: list[OpNode],
    entries: dict[str, vTensor],
    kv: KVLayout,
    *,
    decode: bool = False,
    row: bool = False,
) -> KernelSource:
    """forward_cache: one program per ``BS`` completed blocks; every input is a field read at the block id.

    ``decode``: the kernel takes the step's token slots ``locs [T]`` instead of block ids and finds the
    completed blocks itself (candidate ``p`` is token ``p // H_kv``, head ``p % H_kv``; its block is complete
    when the token is the block's last one), so a decode step needs no host count and no index compaction.
    ``row`` (with ``decode``): the same for ONE token slot and KV head, as a device function
    ``name(loc, head, <fields>, BS)`` called with ``BS=1`` by the indexer kernel (the decode cache update folded
    into scoring: :mod:`.indexer_kernel`).
    """
    e = Emitter("cache", kv)
    e.fields = entries
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
        xs = []
        for t in node.inputs:
            tile = e.tiles.get(t.tensor_id)
            if tile is None:
                fname = by_id[t.tensor_id]
                tile = e.load(t, field_arg(fname, t), "kv" if fname in KV_FIELDS else "blk")
            xs.append(tile)
        tile = emit_op(e, node, xs)
        assert tile is not None
        if node.output is not None:  # Fill produces no tensor, only the field's new value
            e.tiles[node.output.tensor_id] = tile
        if node.writes is not None:
            write(tile, node.writes, i)
    return _finish(name, e, [], decode_cache="row" if row else decode)


#: the parameters every indexer group function takes before its own (see :mod:`.indexer_kernel`)
GROUP_PARAMS = "row, start, n, c_lo, c_step, indptr, indices"


def _finish(
    name: str, e: Emitter, tail: list[str], *, decode_cache: bool | str = False, prefetch_indices: bool = False
) -> KernelSource:
    """Indexer groups become device functions of :data:`GROUP_PARAMS` (the indexer kernel calls them); a
    ragged group loops over chunks ``c_lo, c_lo + c_step, ...`` of ``BS`` blocks of row ``row``. Cache
    kernels are whole kernels, except the one-slot decode update (``decode_cache == "row"``).

    ``prefetch_indices``: the chunk loop loads the NEXT chunk's block ids (``blk_next``, carried by the loop)
    before the loads of this one's summaries, so an iteration waits on one memory round trip, not two (ids,
    then the summaries at them); Triton does not pipeline this loop by itself (its loads feed no ``tl.dot``).
    The last iteration's look-ahead is masked off past the row."""
    params = ", ".join(a.name for a in e.args)
    if e.mode == "cache" and decode_cache == "row":
        kvl = e.kv
        assert kvl is not None
        pre = [
            "loc = tl.zeros([BS], dtype=tl.int64) + slot",
            f"valid = loc % {kvl.block_size} == {kvl.block_size - 1}  # the token completes its block",
            f"blk = _vx_block_id(loc, head, {kvl.page_size}, {kvl.block_size}, {kvl.heads})",
            "VALID3 = valid[:, None, None]",
            "BLK3 = blk[:, None, None]",
        ]
        head = ["@triton.jit", f"def {name}(slot, head, {params}, BS: tl.constexpr):"]
        lines = head + ["    " + x for x in pre + e.pre + e.body + tail]
        return KernelSource(name=name, args=e.args, lines=lines, ragged=False)
    if e.mode == "cache":
        head = [
            "@triton.jit",
            f"def {name}(locs, num_locs, {params}, BS: tl.constexpr):" if decode_cache
            else f"def {name}(block_ids, num_blocks, {params}, BS: tl.constexpr):",
        ]  # fmt: skip
        if decode_cache:
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
        return KernelSource(name=name, args=e.args, lines=lines, ragged=False)
    head = ["@triton.jit", f"def {name}({GROUP_PARAMS}, {params}, BS: tl.constexpr):"]
    if e.mode == "batched":
        lines = head + ["    " + x for x in e.pre + e.body + tail]
        return KernelSource(name=name, args=e.args, lines=lines, ragged=False)
    if prefetch_indices:
        ids = [
            "blk = blk_next.to(tl.int64)",
            "p_next = p + c_step * BS",
            "blk_next = tl.load(indices + (start + p_next).to(tl.int64), mask=p_next < n, other=0)",
        ]
        before = [
            "p_next = c_lo * BS + tl.arange(0, BS)",
            "blk_next = tl.load(indices + (start + p_next).to(tl.int64), mask=p_next < n, other=0)",
        ]
    else:
        ids, before = ["blk = tl.load(indices + rag, mask=valid, other=0).to(tl.int64)"], []
    chunk = [
        "p = chunk * BS + tl.arange(0, BS)",
        "valid = p < n",
        "rag = (start + p).to(tl.int64)",
        *ids,
        "VALID3 = valid[:, None, None]",
        "RAG3 = rag[:, None, None]",
        "BLK3 = blk[:, None, None]",
    ]
    lines = head + ["    " + x for x in e.pre + e.hoisted + before]
    lines.append("    for chunk in range(c_lo, tl.cdiv(n, BS), c_step):")
    lines += ["        " + x for x in chunk + e.body + tail]
    return KernelSource(name=name, args=e.args, lines=lines, ragged=True)


def standalone_kernel(name: str, node: OpNode, src: str, kv: KVLayout) -> KernelSource:
    """A row-wise kernel over a row's blocks for a ``Schedule.STANDALONE`` op (``dim=0``: Reduce, Softmax,
    Normalize, Conv1d): the op's standalone lowering fills the frame of :class:`RowKernel`."""
    lowering = standalone_lowering(node.op)
    if lowering is None:
        raise CompileError(f"{node.op.name} has no standalone Triton lowering")
    kernel = RowKernel(node, src, kv)
    lowering(kernel)
    return kernel.finish(name, GROUP_PARAMS)
