"""Debug dumps of Vortex decode steps inside SGLang, and their replay through the reference executor.

Set ``VORTEX_DEBUG_DUMP=/some/dir`` (read by each scheduler process) and every eager sparse decode step of the
first ``VORTEX_DEBUG_DUMP_STEPS`` (default 8) steps writes one file per (step, layer):
``<dir>/tp<rank>/step<step>_layer<layer>.pt`` holding the queries, the plan, the selection SGLang made, the
attention output, and the K/V and aux fields of every block the step listed. CUDA-graph replays are not dumped
(nothing runs on the host there): run the engine with ``disable_cuda_graph=True`` or batches above the captured
sizes to get dumps. Dumping synchronises with the host; it is for tests and debugging only.

:func:`replay` rebuilds those blocks in a compact pool on the host and recomputes everything with the reference
executor (the CPU oracle of ``vortex_torch.flow.runtime``): the aux fields from K/V (``forward_cache``), the
selection from ``q`` (``forward_indexer`` + top-k, same budgets), and the attention output over SGLang's
selection, then reports where SGLang differs (ties in the scores aside).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from vortex_torch.abs.layout import PoolLayout

from .planner import DecodePlan

DUMP_ENV = "VORTEX_DEBUG_DUMP"
DUMP_STEPS_ENV = "VORTEX_DEBUG_DUMP_STEPS"
#: the fields entries of an fp8 pool's K/V scales (recorded apart from the aux fields)
KV_SCALES = ("k_scale", "v_scale")


class DecodeDumper:
    """Writes dump records for the first ``max_steps`` decode steps of one scheduler process."""

    def __init__(self, directory: str, max_steps: int, meta: dict[str, Any]) -> None:
        self.directory = directory
        self.max_steps = max_steps
        self.meta = dict(meta)
        self.step = -1
        os.makedirs(directory, exist_ok=True)

    @classmethod
    def from_env(cls, rank: int, meta: dict[str, Any]) -> DecodeDumper | None:
        base = os.environ.get(DUMP_ENV)
        if not base:
            return None
        return cls(os.path.join(base, f"tp{rank}"), int(os.environ.get(DUMP_STEPS_ENV, "8")), meta)

    def next_step(self) -> None:
        """Called once per decode batch (plan)."""
        self.step += 1

    def active(self) -> bool:
        if self.step < 0 or self.step >= self.max_steps:
            return False
        return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())

    def dump(
        self,
        layer_id: int,
        layout: PoolLayout,
        plan: DecodePlan,
        q_rows: torch.Tensor,
        fields: dict[str, torch.Tensor],
        o: torch.Tensor,
        sm_scale: float | None,
        seq_lens: torch.Tensor | None = None,
    ) -> str | None:
        """Write the record of ``layer_id`` for the current step (no-op outside ``active()``)."""
        if not self.active():
            return None
        dense = plan.dense_blocks_with_row_index()
        rows = plan.num_rows
        n_sel = int(plan.sel_indptr[rows])
        ids = dense.indices.long()
        record = {
            **self.meta,
            "step": self.step,
            "layer": layer_id,
            "page_size": layout.page_size,
            "block_size": layout.block_size,
            "num_kv_heads": layout.num_kv_heads,
            "sm_scale": sm_scale,
            "q": q_rows.detach().cpu(),
            "dense_indptr": plan.dense_indptr.cpu(),
            "dense_indices": dense.indices.cpu(),
            "last_block_len": plan.last_block_len.cpu(),
            "budget": plan.budget.cpu(),
            "sel_indptr": plan.sel_indptr.cpu(),
            "sel_indices": plan.sel_indices[:n_sel].cpu(),
            "o": o.detach().cpu(),
            "k_blocks": layout.gather_blocks(fields["k"], ids).cpu(),
            "v_blocks": layout.gather_blocks(fields["v"], ids).cpu(),
            "aux": {n: t[ids].cpu() for n, t in fields.items() if n not in ("k", "v", *KV_SCALES)},
            "kv_scales": {n: fields[n].cpu() for n in KV_SCALES if n in fields},  # fp8 K/V: value = stored * scale
            "seq_lens": None if seq_lens is None else seq_lens.cpu(),
        }
        path = os.path.join(self.directory, f"step{self.step:05d}_layer{layer_id:03d}.pt")
        torch.save(record, path)
        return path


# -- host replay ---------------------------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    """How one dumped (step, layer) compares with the reference executor.

    ``rows_exact``: rows whose selection equals the reference's; ``rows_tied``: the others, where every block
    SGLang chose scores within the tie tolerance of the reference's k-th best; ``mismatches``: rows that are
    neither (``(row, sglang positions, reference positions)``). ``aux_max_err``: largest |aux - reference aux|
    over the completed blocks; ``o_max_err``: largest |o - reference attention over SGLang's selection|.
    """

    step: int
    layer: int
    rows: int
    rows_sparse: int
    rows_exact: int
    rows_tied: int
    mismatches: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    aux_max_err: float = 0.0
    o_max_err: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _flow_for(record: dict[str, Any]) -> Any:
    from vortex_torch.abs.context import Geometry
    from vortex_torch.flow.loader import build_vflow
    from vortex_torch.flow.trace import trace_flow

    from .flow_spec import AUX_DTYPES

    flow = build_vflow(record["module_name"], record.get("module_path"), record.get("flow_kwargs") or {})
    geo = Geometry(
        block_size=record["block_size"],
        head_dim=record["q"].shape[-1],
        group_size=record["q"].shape[1],
        dtype=AUX_DTYPES[record["aux_dtype"]],
        kv_dtype=record["k_blocks"].dtype,
    )
    flow.initialize(geo.block_size, geo.head_dim, geo.kv_dtype, geo.kv_dtype, geo.dtype)
    return trace_flow(flow, geo)


def replay(record: dict[str, Any], *, score_atol: float = 2e-2, score_rtol: float = 2e-2) -> ReplayReport:
    """Recompute a dumped step on the host with the reference executor and compare (see module doc)."""
    from vortex_torch.abs.layout import DenseBlocks
    from vortex_torch.flow.compiler.base import SelectionSpec
    from vortex_torch.flow.compiler.reference import ReferenceExecutor
    from vortex_torch.kernels.sparse_decode import sparse_decode_attention_reference

    traced = _flow_for(record)
    bsz, heads = int(record["block_size"]), int(record["num_kv_heads"])
    q = record["q"]
    rows, _group, dim = q.shape
    indptr = record["dense_indptr"].long()
    nnz = int(indptr[-1])
    lens = indptr[1:] - indptr[:-1]
    row_of = torch.repeat_interleave(torch.arange(rows), lens)
    pos = torch.arange(nnz) - indptr[:-1][row_of]
    head = row_of % heads

    # compact pool: entry e of row r lives in page e (page_size == block_size), head r % H_kv
    compact = PoolLayout(page_size=bsz, block_size=bsz, num_kv_heads=heads)
    cids = torch.arange(nnz) * heads + head  # compact block id of every entry
    kv_dtype = record["k_blocks"].dtype
    k_buf = torch.zeros(nnz * bsz, heads, dim, dtype=kv_dtype)
    v_buf = torch.zeros_like(k_buf)
    slots = compact.block_token_slots(cids)  # [nnz, bsz]
    # through uint8 views: index_put is not implemented for every fp8 dtype (a bit copy either way)
    k_buf.view(torch.uint8)[slots, head[:, None]] = record["k_blocks"].view(torch.uint8)
    v_buf.view(torch.uint8)[slots, head[:, None]] = record["v_blocks"].view(torch.uint8)
    executor = ReferenceExecutor(traced, compact)
    scales: dict[str, torch.Tensor] = dict(record.get("kv_scales") or {})
    fields: dict[str, torch.Tensor] = {"k": k_buf, "v": v_buf, **scales}
    for name, (r, c) in traced.fields.items():
        fields[name] = torch.zeros(nnz * heads, r, c, dtype=record["aux"][name].dtype)
    last_len = record["last_block_len"].long()
    is_last = pos == (lens[row_of] - 1)
    complete = ~is_last | (last_len[row_of] == bsz)  # the partial last block was never summarised
    executor.run_cache(fields, cids[complete])
    aux_err = 0.0
    for name in traced.fields:
        ref = fields[name][cids[complete]].float()
        got = record["aux"][name][complete].float()
        if ref.numel():
            aux_err = max(aux_err, float((ref - got).abs().max()))

    dense = DenseBlocks(
        indptr=indptr.to(torch.int32), indices=cids.to(torch.int32), last_block_len=last_len.to(torch.int32),
        row_of=row_of, pos=pos,
    )  # fmt: skip
    sel_indptr = record["sel_indptr"].to(torch.int32)
    spec = SelectionSpec(sel_indptr=sel_indptr, bos=int(record["bos"]), eos=int(record["eos"]))
    ref_sel = torch.zeros(int(sel_indptr[-1]), dtype=torch.int32)
    executor.run(q, fields, dense, spec, ref_sel)
    score, _ = executor.evaluate(q, fields, dense)

    # SGLang's selection, as positions: pool block id -> position within the row
    got_ids = record["sel_indices"].long()
    pool_ids = record["dense_indices"].long()
    report = ReplayReport(step=int(record["step"]), layer=int(record["layer"]), rows=rows, rows_sparse=0,
                          rows_exact=0, rows_tied=0)  # fmt: skip
    got_compact = torch.empty_like(got_ids)
    bos, eos = spec.bos, spec.eos
    for r in range(rows):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        slo, shi = int(sel_indptr[r]), int(sel_indptr[r + 1])
        where = {int(b): j for j, b in enumerate(pool_ids[lo:hi].tolist())}
        got_pos = [where.get(int(b), -1) for b in got_ids[slo:shi].tolist()]
        got_compact[slo:shi] = torch.tensor(
            [int(cids[lo + j]) if j >= 0 else -1 for j in got_pos], dtype=torch.long
        )
        ref_pos = [int(pos[int(b) // heads]) for b in ref_sel[slo:shi].tolist()]  # compact id = entry * H + h
        n, budget = hi - lo, shi - slo
        if budget < n:
            report.rows_sparse += 1
        if got_pos == ref_pos:
            report.rows_exact += 1
            continue
        if -1 in got_pos or sorted(set(got_pos)) != got_pos or len(got_pos) != budget:
            report.mismatches.append((r, got_pos, ref_pos))
            continue
        # ties aside: every chosen middle block scores within tolerance of the reference's k-th best
        k = budget - bos - eos
        middle = score[lo + bos : hi - eos]
        kth = torch.topk(middle, k).values.min() if k > 0 else torch.tensor(float("inf"))
        fixed = set(range(min(bos, n))) | set(range(max(n - eos, 0), n))
        chosen = [j for j in got_pos if j not in fixed]
        tol = score_atol + score_rtol * float(kth.abs())
        if set(fixed) <= set(got_pos) and all(float(score[lo + j]) >= float(kth) - tol for j in chosen):
            report.rows_tied += 1
        else:
            report.mismatches.append((r, got_pos, ref_pos))

    if (got_compact >= 0).all():
        o_ref = sparse_decode_attention_reference(
            q, k_buf, v_buf, sel_indptr, got_compact.to(torch.int32), last_len.to(torch.int32),
            page_size=bsz, block_size=bsz, sm_scale=record["sm_scale"], k_scale=scales.get("k_scale"),
            v_scale=scales.get("v_scale"),
        )  # fmt: skip
        report.o_max_err = float((o_ref.float() - record["o"].float()).abs().max())
    else:
        report.o_max_err = float("inf")
    return report


def load_records(directory: str) -> list[dict[str, Any]]:
    """Every dump record under ``directory`` (recursively), sorted by (rank dir, step, layer)."""
    out = []
    for root, _dirs, files in sorted(os.walk(directory)):
        for name in sorted(files):
            if name.endswith(".pt"):
                out.append(torch.load(os.path.join(root, name), weights_only=False))
    return out
