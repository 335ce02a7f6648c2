"""The scoring graph of a flow as ONE kernel launch per layer (with the selection too, when fused).

A flow's scoring graph is scheduled into groups (:mod:`.schedule`): runs of fused per-block ops, standalone
ops over a row's blocks (``dim=0`` reductions, softmax, ...) and the ``topK`` terminal. Each non-terminal
group is emitted as a device function (:mod:`.codegen`); this module writes the kernel that calls them.

Grid ``(R, S)``. Program ``(r, s)``:

1. **parallel stage**, when the first group is a fused per-block group (the usual case: the quick-start flow is
   only that): chunks ``s, s + S, s + 2S, ...`` of ``BS0`` blocks of row ``r``, so ``S`` programs share a row
   and the work follows the row's real length (programs past its last chunk do nothing);
2. when more is left to do (later groups, or the selection when ``fuse_selection``), the row's **last** program
   to finish takes over: every thread fences its stores (``fence.acq_rel.gpu``), a CTA barrier, then one
   gpu-scope acq_rel atomic on a per-row counter, as the sparse-decode split merge does; the taker re-arms the
   counter to 0 for the next launch and runs the remaining groups over the whole row, a CTA barrier between
   them (a group reads what the previous one stored), then, fused, the selection of
   :func:`vortex_torch.kernels.select.triton_kernel.select_row`.

Without a parallel stage (the first group is standalone) the grid is ``(R, 1)`` and the program runs every
group.

With ``CACHE`` (a decode step whose flow has a ``forward_cache``), the kernel first summarises the block the
step's new token completes, so the decode cache update is no launch of its own: row ``r`` is request
``r // H_kv``'s KV head ``r % H_kv``, whose new token slot is ``locs[r // H_kv]``; the program that scores the
row's last chunk (or the row's only program) runs the flow's ``forward_cache`` for that slot and head when the
token is its block's last, then a CTA barrier, so its own scoring of the last chunk reads the new summary. A
row copied whole is summarised too (later steps score it).

With ``PDL`` (a launch with ``enable_pdl``) the kernel's first statement waits for the previous kernel in the
stream (:func:`vortex_torch.kernels._sync.dependent_launch_prologue`).

A row whose budget covers all its blocks is not scored unless the indexer writes state (``Save``); the
selection copies it whole. By default the selection is a launch of its own (``select_blocks_triton``; a
``topK`` that reads a cache field directly then needs no scoring kernel at all). Fused into the row's last
program (``fuse_selection``) it is correct, but slower with many rows: that program searches alone after the
scoring (results/gpu/2026-12-04-decode-step-bench-sweep.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from vortex_torch.kernels.sparse_decode.triton_kernel import ATTEND_CONSTEXPRS

from .codegen import GROUP_PARAMS
from .emitter import KernelArg, KernelSource

#: fixed parameters of the indexer kernel, before the groups' pointers
KERNEL_PARAMS = "indptr, indices, sel_indptr, counter, sel_out, bos, eos, tol_bits, locs"
#: its constexprs (set per launch by the executor)
KERNEL_CONSTEXPRS = ("FENCE", "BS0", "APPROX", "LOW_BIT", "SINGLE_TILE", "BLOCK_N", "GATHER", "CACHE", "PDL")
#: the parameters a kernel that also attends (``attention``) takes after the groups' pointers: the queries
#: ``[R, G, D]``, SGLang's K/V buffers ``[num_slots, H_kv, D]``, the rows' last-block lengths ``[R]``, the output
#: ``[R, G, D]``, the fp8 scales (``[1]``, or any pointer for 16-bit K/V), the softmax scale (log2 units) and the
#: strides (the last dims contiguous)
ATTENTION_PARAMS = (
    "att_q, att_k, att_v, att_last_len, att_o, att_k_scale, att_v_scale, att_qk_scale, "
    "att_sqr, att_sqg, att_ks, att_kh, att_vs, att_vh, att_or, att_og"
)
#: and their constexprs: the attention kernel's (``sparse_decode.triton_kernel.kernel_constexprs``), prefixed
ATTENTION_CONSTEXPRS = tuple(f"ATT_{name}" for name in ATTEND_CONSTEXPRS)
#: attention of the row this program selected, over its selection (one split, the final output)
ATTEND = (
    "_vx_attend_split(att_q, att_k, att_v, sel_out, row, sel_start, budget, tl.load(att_last_len + row), 0, 1, "
    "att_o, att_o, att_k_scale, att_v_scale, att_qk_scale, att_sqr, att_sqg, 1, att_ks, att_kh, att_vs, att_vh, "
    "att_or, 0, att_og, 1, 0, 0, 0, STORE_LSE=False, " + ", ".join(f"{n}=ATT_{n}" for n in ATTEND_CONSTEXPRS) + ")"
)


@dataclass
class IndexerKernel:
    """The indexer kernel's source, its pointer arguments (deduplicated over groups) and its structure."""

    name: str
    args: list[KernelArg]
    lines: list[str]
    #: the largest blocks per chunk of the parallel stage (its ``BS0`` is chosen per launch), or 0 when there is
    #: none (grid ``(R, 1)``)
    parallel_chunk: int
    #: argument name of the scores the selection reads
    score_arg: str


def _call(fn: KernelSource, names: list[str], bs: int | str, row_serial: bool) -> str:
    own = ", ".join(names)
    frame = GROUP_PARAMS.replace("c_lo, c_step", "0, 1" if row_serial else "split, num_splits")
    return f"{fn.name}({frame}, {own}, BS={bs})"


def rest_needs_handoff(serial: list[str], fuse_selection: bool) -> bool:
    """Whether the row's last scoring program must take over: later groups to run, or the selection."""
    return fuse_selection or len(serial) > 1


def indexer_kernel(
    name: str,
    groups: list[KernelSource],
    chunks: list[int],
    *,
    score_arg: KernelArg,
    skip_dense: bool,
    fuse_selection: bool,
    cache_row: KernelSource | None = None,
    kv_heads: int = 1,
    attention: bool = False,
) -> IndexerKernel:
    """The kernel over ``groups`` (device functions, in order; ``chunks[i]`` blocks per chunk of group ``i``; the
    parallel stage's chunk is the kernel's constexpr ``BS0``, at most ``chunks[0]``)
    whose last group stored the scores that ``score_arg`` points to (or, with no group, a cache field read at
    the block ids: ``GATHER``). ``skip_dense``: the groups write no state, so a row copied whole need not be
    scored. ``fuse_selection``: the row's last program also selects (one launch in all); otherwise the kernel
    only scores and the selection is a launch of its own. ``cache_row``: the flow's one-slot decode
    ``forward_cache`` (:func:`.codegen.cache_kernel` with ``row``), run under the ``CACHE`` constexpr for the
    new token of each row (``kv_heads`` rows per request). ``attention`` (with ``fuse_selection``): the program
    that selects a row then attends it over its selection, one split, writing the final output
    (:data:`ATTEND`): the whole sparse layer in one launch."""
    if attention and not fuse_selection:
        raise ValueError("attention in the indexer kernel needs the selection there too (fuse_selection)")
    # the kernel's parameters: one per distinct source (a group's own names may clash: x_ptr, y_ptr, ...)
    args: dict[str, KernelArg] = {}
    name_of: dict[str, str] = {}

    def param(a: KernelArg, i: int) -> str:
        # an op's own tensor ("param:<attr>") belongs to that group's op: "param:<attr>:<group>"
        source = f"{a.source}:{i}" if a.source.startswith("param:") else a.source
        if source not in name_of:
            name = a.name if a.name not in args else f"{a.name}_g{i}"
            name_of[source] = name
            args[name] = KernelArg(name, source, a.tensor)
        return name_of[source]

    names = [[param(a, i) for a in g.args] for i, g in enumerate(groups)]
    score_name = param(score_arg, len(groups))
    cache: list[str] = []
    if cache_row is not None:
        own = ", ".join(param(a, len(groups) + 1) for a in cache_row.args)
        call = f"{cache_row.name}(tl.load(locs + row // {kv_heads}).to(tl.int64), row % {kv_heads}, {own}, BS=1)"
        cache = [call, "tl.debug_barrier()  # the new summary's stores before this program's loads"]
    params = ", ".join(args)
    parallel = bool(groups) and groups[0].ragged
    body = [
        "_vx_dependent_launch_prologue(PDL)  # before any load: with PDL the previous kernel may still run",
        "row = tl.program_id(0).to(tl.int64)",
        "split = tl.program_id(1)",
        "start = tl.load(indptr + row).to(tl.int64)",
        "n = tl.load(indptr + row + 1) - tl.load(indptr + row)",
        "sel_start = tl.load(sel_indptr + row)",
        "budget = tl.load(sel_indptr + row + 1) - sel_start",
    ]
    # `live`: whether this row is scored at all (a row copied whole needs no score, unless scoring writes state)
    live = "(budget < n)" if skip_dense else "(n > 0)"
    select_call = (
        f"_vx_select_row({score_name}, indices, sel_out, start, n, sel_start, budget, bos, eos, tol_bits, "
        "APPROX, LOW_BIT, SINGLE_TILE, BLOCK_N, GATHER)"
    )
    # with attention, a line of its own per statement: `select` is emitted at several indentations
    finish = [select_call, "tl.debug_barrier()  # the selection's stores before its loads", ATTEND] if attention else [
        select_call
    ]
    serial = [_call(g, nm, bs, row_serial=True) for g, nm, bs in zip(groups, names, chunks, strict=True)]
    if parallel:
        body += ["num_splits = tl.num_programs(1)", "nchunks = tl.cdiv(n, BS0)"]
        if cache:  # by the program that scores the row's last chunk
            body += [
                "if CACHE:",
                "    if split == tl.maximum(nchunks - 1, 0) % num_splits:",
                *("        " + c for c in cache),
            ]
    elif cache:
        body += ["if CACHE:", *("    " + c for c in cache)]
    if parallel and not rest_needs_handoff(serial, fuse_selection):  # scoring only, no hand-off
        body += [
            f"if {live} & (split < nchunks):",
            f"    {_call(groups[0], names[0], 'BS0', row_serial=False)}",
        ]
    elif parallel:
        rest = serial[1:]
        body += [
            f"if {live} & (split < nchunks):",
            f"    {_call(groups[0], names[0], 'BS0', row_serial=False)}",
            "    _vx_release_fence(FENCE)  # every thread's score stores in L2 before the hand-off",
            "    tl.debug_barrier()",
            '    done = tl.atomic_add(counter + row, 1, sem="acq_rel", scope="gpu")',
            "    if done == tl.minimum(num_splits, nchunks) - 1:  # the row's last program: finish the row",
            '        tl.atomic_xchg(counter + row, 0, sem="relaxed", scope="gpu")',
        ]
        for call in rest:
            body += [f"        {call}", "        tl.debug_barrier()"]
        if fuse_selection:
            body += [f"        {x}" for x in finish]
            if skip_dense:  # copied rows: one program writes the copy
                body += ["if (budget >= n) & (split == 0):", *(f"    {x}" for x in finish)]
            elif attention:  # an empty row (n == 0) is not live: its output is still written (zeros)
                body += ["if (n == 0) & (split == 0):", f"    {ATTEND}"]
    elif not groups:  # topK of a cache field: only the selection
        body += finish if fuse_selection else ["pass  # not launched: the selection kernel reads the field"]
    else:
        body.append(f"if {live}:")
        for call in serial:
            body += [f"    {call}", "    tl.debug_barrier()"]
        if fuse_selection:
            body += [f"    {x}" for x in finish]
            if skip_dense:
                body += ["else:", *(f"    {x}" for x in finish)]
            elif attention:
                body += ["else:", f"    {ATTEND}"]
    constexprs = ", ".join(f"{c}: tl.constexpr" for c in KERNEL_CONSTEXPRS + (ATTENTION_CONSTEXPRS if attention else ()))
    params += f", {ATTENTION_PARAMS}" if attention else ""
    lines = ["@triton.jit", f"def {name}({KERNEL_PARAMS}, {params}, {constexprs}):"]
    lines += ["    " + x for x in body]
    return IndexerKernel(
        name=name,
        args=list(args.values()),
        lines=lines,
        parallel_chunk=chunks[0] if parallel else 0,
        score_arg=score_name,
    )
