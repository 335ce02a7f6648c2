"""``ReferenceRuntime``: a CPU decode engine that runs a flow exactly as design §2-§5 say (the oracle).

One object per model: it owns the paged KV pool of every layer, traces the flow once, and splits a decode step
the way the GPU backends do: :meth:`ReferenceRuntime.plan` once per step for all layers (dense block lists,
budgets, selection offsets), then per layer :meth:`ReferenceRuntime.append_kv` (which fires ``forward_cache``
for every block it completes) and :meth:`ReferenceRuntime.decode_attention` (indexer -> selection -> sparse
attention). Everything runs host-side with the plain-PyTorch references and syncs freely.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from vortex_torch.abs.context import Geometry
from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.kernels.select.budget import selection_indptr
from vortex_torch.kernels.sparse_decode.reference import sparse_decode_attention_reference

from ..compiler.base import FlowExecutor, SelectionSpec
from ..compiler.reference import ReferenceExecutor
from ..flow import vFlow
from ..trace import TracedFlow, trace_flow
from .config import RuntimeConfig
from .pool import PagedKVPool, RequestId

AttentionImpl = Literal["reference", "triton"]


@dataclass
class StepPlan:
    """Everything a decode step shares between layers (design §3, "per batch").

    Rows are ``request_index * H_kv + head`` over ``rids`` in order.

    * ``seq_lens[b]``: tokens of request ``b`` the step attends to (including the token being decoded);
    * ``dense``: CSR of every block of every row in position order, ``last_block_len``, ``row_of``, ``pos``;
    * ``budget [R] int32``: blocks each row attends to; ``selection``: ``sel_indptr [R+1]``, ``bos``, ``eos``;
    * ``block_pos [num_blocks] int64`` / ``block_row [num_blocks] int64``: position and row of every pool block
      listed in ``dense`` (``-1`` elsewhere), so a selected block id maps back to "block j of request b head h".
    """

    rids: list[RequestId]
    seq_lens: list[int]
    num_kv_heads: int
    dense: DenseBlocks
    budget: torch.Tensor
    selection: SelectionSpec
    block_pos: torch.Tensor
    block_row: torch.Tensor

    @property
    def num_rows(self) -> int:
        return len(self.rids) * self.num_kv_heads

    def row(self, request: int, head: int) -> int:
        """Row index of (request index ``request`` in ``rids``, kv head ``head``)."""
        return request * self.num_kv_heads + head

    def num_blocks(self, request: int) -> int:
        """``n_r``: blocks of request ``request`` (the same for all of its heads)."""
        return int(self.dense.lengths()[self.row(request, 0)])

    def positions(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Positions (block index within its row) of ``block_ids [S]`` -> ``[S] int64``."""
        return self.block_pos[block_ids.long()]


@dataclass
class Selection:
    """The blocks one layer attended to in one decode step.

    ``indptr [R+1]`` and ``block_ids [S] int32`` as passed to the attention kernel; ``positions[r]`` the
    ascending block positions of row ``r``; ``dense`` is True for a ``layers_skip`` layer (every block).
    """

    layer: int
    dense: bool
    num_kv_heads: int
    indptr: torch.Tensor
    block_ids: torch.Tensor
    positions: list[list[int]]

    def row(self, request: int, head: int) -> list[int]:
        """Selected block positions of request index ``request`` (in the plan's ``rids``), kv head ``head``."""
        return self.positions[request * self.num_kv_heads + head]

    def row_block_ids(self, request: int, head: int) -> list[int]:
        """Selected pool block ids of (``request``, ``head``), in position order."""
        r = request * self.num_kv_heads + head
        return self.block_ids[int(self.indptr[r]) : int(self.indptr[r + 1])].tolist()


class ReferenceRuntime:
    """CPU reference decode engine for one flow over a ``num_layers``-layer model.

    Args:
        flow: the flow instance; traced once for ``(block_size, head_dim, group_size, dtype, kv_dtype)``.
        num_layers, num_kv_heads (``H_kv``), head_dim (``D``), group_size (``G = H_q // H_kv``): model shape.
        config: budget rule, bos/eos, skipped layers, block/page size, aux dtype, executor.
        num_pages: pages in the pool (page 0 is reserved, as in SGLang).
        kv_dtype: storage dtype of K/V; queries are cast to it for attention.
        attention: ``"reference"`` (plain-PyTorch reference, default) or ``"triton"`` (the Triton kernel; on CPU
            it runs in Triton's interpreter when that defined the kernels, i.e. ``TRITON_INTERPRET=1`` was set
            before they were imported; otherwise it raises ``TritonUnavailableError``).
        check_selection: verify every selection against design §3 (row ownership, ascending positions,
            bos/eos kept, whole row when the budget covers it) and raise on a violation; catches broken
            executors plugged in through ``config.executor``.
        keep_selection_log: also append every :class:`Selection` to :attr:`selection_log`.
        shuffle_pages_seed: hand out pages in a shuffled order (tests of scattered pages).
    """

    def __init__(
        self,
        flow: vFlow,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        group_size: int,
        config: RuntimeConfig,
        num_pages: int,
        kv_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        *,
        attention: AttentionImpl = "reference",
        check_selection: bool = True,
        keep_selection_log: bool = False,
        shuffle_pages_seed: int | None = None,
    ) -> None:
        for name, val in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if val <= 0:
                raise ValueError(f"ReferenceRuntime: {name} must be positive, got {val}")
        if group_size <= 0:
            raise ValueError(f"ReferenceRuntime: group_size (H_q // H_kv) must be positive, got {group_size}")
        bad = [i for i in config.layers_skip if i >= num_layers]
        if bad:
            raise ValueError(
                f"RuntimeConfig.layers_skip has {bad}, but the model has only {num_layers} layers"
            )
        if attention not in ("reference", "triton"):
            raise ValueError(f"attention must be 'reference' or 'triton', got {attention!r}")
        self.flow = flow
        self.config = config
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.group_size = group_size
        self.kv_dtype = kv_dtype
        self.device = torch.device(device)
        self.attention: AttentionImpl = attention
        self.check_selection = check_selection
        self.layout = PoolLayout(
            page_size=config.page_size, block_size=config.block_size, num_kv_heads=num_kv_heads
        )
        self.geometry = self._make_geometry(config, head_dim, group_size, kv_dtype)
        # initialize() resolves get_cache_meta_info(), which backends use to size the pool
        flow.initialize_for(self.geometry)
        self.traced: TracedFlow = trace_flow(flow, self.geometry)
        factory = config.executor  # validated: "reference" or a callable
        self.executor: FlowExecutor = (
            ReferenceExecutor(self.traced, self.layout)
            if isinstance(factory, str)
            else factory(self.traced, self.layout)
        )
        self.skip_layers = frozenset(config.layers_skip)
        self.pool = PagedKVPool(
            self.layout,
            num_pages,
            num_layers,
            head_dim,
            self.traced.fields,
            skip_layers=self.skip_layers,
            kv_dtype=kv_dtype,
            aux_dtype=config.dtype,
            device=self.device,
            shuffle_seed=shuffle_pages_seed,
            kv_fields=self.kv_fields,
        )
        self._stored: list[dict[RequestId, int]] = [{} for _ in range(num_layers)]
        #: the latest selection of every layer (``last_selection[layer].row(b, h)`` -> positions)
        self.last_selection: dict[int, Selection] = {}
        self.keep_selection_log = keep_selection_log
        self.selection_log: list[Selection] = []

    #: the per-token buffers of the pool ("k"/"v"; an MLA runtime keeps only the latent, as "k")
    kv_fields: tuple[str, ...] = ("k", "v")

    def _make_geometry(
        self, config: RuntimeConfig, head_dim: int, group_size: int, kv_dtype: torch.dtype
    ) -> Geometry:
        """The geometry the flow is traced for (an MLA runtime returns an ``MLAGeometry``)."""
        return Geometry(
            block_size=config.block_size,
            head_dim=head_dim,
            group_size=group_size,
            dtype=config.dtype,
            kv_dtype=kv_dtype,
        )

    # -- requests -------------------------------------------------------------------------------------------------
    def add_request(self, rid: RequestId) -> None:
        """Start a request with no tokens."""
        self.pool.add_request(rid)
        for stored in self._stored:
            stored[rid] = 0

    def release(self, rid: RequestId) -> None:
        """End a request and free its pages."""
        self.pool.release(rid)
        for stored in self._stored:
            stored.pop(rid, None)

    def seq_len(self, rid: RequestId) -> int:
        """Token slots allocated to ``rid`` (all layers share them)."""
        return self.pool.seq_len(rid)

    def num_stored(self, layer: int, rid: RequestId) -> int:
        """Tokens of ``rid`` whose K/V ``layer`` has written so far."""
        return self._stored[layer][rid]

    def reserve(self, rids: Sequence[RequestId], counts: Sequence[int]) -> list[torch.Tensor]:
        """Allocate the next ``counts[i]`` token slots of each request, once for all layers.

        This is SGLang's ``alloc`` before a forward pass; call it before :meth:`plan` so the plan includes the
        tokens of this step. Returns each request's new slots ``[counts[i]] int64``.
        """
        if len(rids) != len(counts):
            raise ValueError(f"reserve: {len(rids)} rids but {len(counts)} counts")
        return [self.pool.extend(rid, int(c)) for rid, c in zip(rids, counts, strict=True)]

    # -- writes ---------------------------------------------------------------------------------------------------
    def append_kv(
        self,
        layer: int,
        rids: Sequence[RequestId],
        k: torch.Tensor,
        v: torch.Tensor | None,
        counts: Sequence[int],
    ) -> torch.Tensor:
        """Write the next tokens of several requests into ``layer`` and summarise every block they complete.

        ``k, v [sum(counts), H_kv, D]`` hold ``counts[0]`` tokens of ``rids[0]`` (in position order), then
        ``counts[1]`` of ``rids[1]``, ... (prefill: many per request; decode: one). Slots come from
        :meth:`reserve`, or are allocated here by the first layer that writes past a request's length.
        For a layer not in ``layers_skip``, ``executor.run_cache`` then runs once on all completed blocks, so
        ``forward_cache`` sees each block exactly once, right after its last token is written.
        Returns the completed block ids ``[M] int64``.
        """
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a {self.num_layers}-layer runtime")
        if len(rids) != len(counts):
            raise ValueError(f"append_kv: {len(rids)} rids but {len(counts)} counts")
        if len(set(rids)) != len(rids):
            raise ValueError("append_kv: a request appears twice in rids; concatenate its tokens instead")
        total = sum(int(c) for c in counts)
        if k.shape[0] != total or (v is not None and v.shape[0] != total):
            raise ValueError(
                f"append_kv: counts sum to {total} tokens but k/v have {k.shape[0]}/"
                f"{v.shape[0] if v is not None else '-'}"
            )
        stored = self._stored[layer]
        slots = []
        for rid, c in zip(rids, counts, strict=True):
            if c < 0:
                raise ValueError(f"append_kv: negative count {c} for request {rid!r}")
            if rid not in stored:
                raise KeyError(f"request {rid!r} is not live (call add_request first)")
            start, end = stored[rid], stored[rid] + int(c)
            have = self.pool.seq_len(rid)
            if end > have:
                self.pool.extend(rid, end - have)
            slots.append(self.pool.token_slots(rid)[start:end])
        all_slots = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.int64)
        done = self.pool.write(layer, all_slots, k, v)
        for rid, c in zip(rids, counts, strict=True):
            stored[rid] += int(c)
        if layer not in self.skip_layers and done.numel():
            self.executor.run_cache(self.pool.fields(layer), done)
        return done

    def gather_kv(self, layer: int, rid: RequestId) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V that ``layer`` holds for ``rid``, in position order -> two ``[num_stored, H_kv, D]`` tensors."""
        slots = self.pool.token_slots(rid)[: self._stored[layer][rid]]
        return self.pool.read(layer, slots)

    # -- one decode step ------------------------------------------------------------------------------------------
    def plan(self, rids: Sequence[RequestId]) -> StepPlan:
        """Build the per-step lists for ``rids`` (batch order = row order), once for all layers.

        Covers every token slot allocated to each request, so call :meth:`reserve` for this step's new tokens
        first; each layer must have written them (:meth:`append_kv`) before its :meth:`decode_attention`.
        """
        if not rids:
            raise ValueError("plan: a decode step needs at least one request")
        if len(set(rids)) != len(rids):
            raise ValueError("plan: a request appears twice in the batch")
        slots = [self.pool.token_slots(rid) for rid in rids]
        for rid, s in zip(rids, slots, strict=True):
            if s.numel() == 0:
                raise ValueError(
                    f"plan: request {rid!r} has no tokens; prefill (append_kv) or reserve() first"
                )
        dense = DenseBlocks.from_token_slots(self.layout, slots)
        budget = self.config.budget(dense.lengths())
        sel = SelectionSpec(sel_indptr=selection_indptr(budget), bos=self.config.bos, eos=self.config.eos)
        nb = self.pool.num_blocks
        block_pos = torch.full((nb,), -1, dtype=torch.int64, device=self.device)
        block_row = torch.full((nb,), -1, dtype=torch.int64, device=self.device)
        block_pos[dense.indices.long()] = dense.pos
        block_row[dense.indices.long()] = dense.row_of
        return StepPlan(
            rids=list(rids),
            seq_lens=[int(s.numel()) for s in slots],
            num_kv_heads=self.num_kv_heads,
            dense=dense,
            budget=budget,
            selection=sel,
            block_pos=block_pos,
            block_row=block_row,
        )

    def decode_attention(
        self, layer: int, q: torch.Tensor, plan: StepPlan, *, sm_scale: float | None = None
    ) -> torch.Tensor:
        """Sparse decode attention of ``layer``: ``q [B, H_q, D]`` (query head ``h * G + g`` uses kv head
        ``h``) -> ``o [B, H_q, D]`` in ``q.dtype``.

        Layers in ``layers_skip`` attend to every block; the others run the indexer on rows
        ``q.view(B * H_kv, G, D)``, select, and attend to the selected blocks. The selection is recorded in
        :attr:`last_selection` (and :attr:`selection_log`).
        """
        q_rows = self._rows(layer, q, plan)
        dense = plan.dense
        if layer in self.skip_layers:
            indptr, ids = dense.indptr, dense.indices
        else:
            ids = torch.empty(plan.selection.total, dtype=torch.int32, device=self.device)
            self.executor.run(q_rows, self.pool.fields(layer), dense, plan.selection, ids)
            indptr = plan.selection.sel_indptr
        positions = self._positions(
            plan, ids, indptr, check=self.check_selection and layer not in self.skip_layers
        )
        record = Selection(
            layer=layer,
            dense=layer in self.skip_layers,
            num_kv_heads=self.num_kv_heads,
            indptr=indptr,
            block_ids=ids,
            positions=positions,
        )
        self.last_selection[layer] = record
        if self.keep_selection_log:
            self.selection_log.append(record)
        o = self._attend(layer, q_rows, indptr, ids, dense.last_block_len, sm_scale)
        return o.view(q.shape[0], q.shape[1], -1).to(q.dtype)

    def dense_attention(
        self, layer: int, q: torch.Tensor, plan: StepPlan, *, sm_scale: float | None = None
    ) -> torch.Tensor:
        """Full attention over every cached token of ``layer``: ``q [B, H_q, D]`` -> ``o [B, H_q, D]``.

        What a skipped layer computes, and the baseline sparse outputs are compared with.
        """
        q_rows = self._rows(layer, q, plan)
        dense = plan.dense
        o = self._attend(layer, q_rows, dense.indptr, dense.indices, dense.last_block_len, sm_scale)
        return o.view(q.shape[0], q.shape[1], -1).to(q.dtype)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _rows(self, layer: int, q: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """``q [B, H_q, D]`` -> ``[B * H_kv, G, D]`` in ``kv_dtype``, after checking the layer is written."""
        b, hk, g, d = len(plan.rids), self.num_kv_heads, self.group_size, self.head_dim
        if q.shape != (b, hk * g, d):
            raise ValueError(
                f"q must be [B={b}, H_q={hk * g}, D={d}] for this plan and model, got {tuple(q.shape)}"
            )
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a {self.num_layers}-layer runtime")
        stored = self._stored[layer]
        for rid, n in zip(plan.rids, plan.seq_lens, strict=True):
            if stored.get(rid) != n:
                raise RuntimeError(
                    f"layer {layer} holds {stored.get(rid)} tokens of request {rid!r} but the plan covers {n}: "
                    "append_kv this step's tokens to the layer before its decode_attention"
                )
        # HF's repeat_kv order: query head h * G + g belongs to kv head h, so a plain view groups each row
        return q.reshape(b * hk, g, d).to(device=self.device, dtype=self.kv_dtype)

    def _attend(
        self,
        layer: int,
        q_rows: torch.Tensor,
        indptr: torch.Tensor,
        ids: torch.Tensor,
        last_block_len: torch.Tensor,
        sm_scale: float | None,
    ) -> torch.Tensor:
        k_cache, v_cache = self.pool.k_cache(layer), self.pool.v_cache(layer)  # [num_slots, H_kv, D]
        args = (q_rows, k_cache, v_cache, indptr, ids, last_block_len)
        ps, bs = self.layout.page_size, self.layout.block_size
        if self.attention == "triton":
            # imported on first use: only this path needs the sparse-decode Triton kernel module
            from vortex_torch.kernels.sparse_decode import sparse_decode_attention

            return sparse_decode_attention(*args, page_size=ps, block_size=bs, sm_scale=sm_scale)
        return sparse_decode_attention_reference(*args, page_size=ps, block_size=bs, sm_scale=sm_scale)

    def _positions(
        self, plan: StepPlan, ids: torch.Tensor, indptr: torch.Tensor, *, check: bool
    ) -> list[list[int]]:
        """Per-row positions of the selected ``ids``; with ``check``, enforce the selection contract (§3)."""
        ptr = indptr.tolist()
        pos_all = plan.positions(ids).tolist()
        per_row = [pos_all[ptr[r] : ptr[r + 1]] for r in range(len(ptr) - 1)]
        if not check:
            return per_row
        owner = plan.block_row[ids.long()].tolist()
        lengths = plan.dense.lengths().tolist()
        bos, eos = plan.selection.bos, plan.selection.eos
        for r, pos in enumerate(per_row):
            b, h = divmod(r, self.num_kv_heads)
            where = f"row {r} (request {plan.rids[b]!r}, head {h})"
            if any(o != r for o in owner[ptr[r] : ptr[r + 1]]):
                raise RuntimeError(
                    f"selection of {where} holds blocks of another row: {ids[ptr[r] : ptr[r + 1]]}"
                )
            if any(a >= c for a, c in itertools.pairwise(pos)):
                raise RuntimeError(f"selection of {where} is not strictly ascending in position: {pos}")
            n = lengths[r]
            must = list(range(n)) if len(pos) >= n else [*range(min(bos, n)), *range(max(n - eos, 0), n)]
            missing = sorted(set(must) - set(pos))
            if missing:
                raise RuntimeError(
                    f"selection of {where} misses always-kept block positions {missing} (n={n}, budget={len(pos)}, "
                    f"bos={bos}, eos={eos}): {pos}"
                )
        return per_row
