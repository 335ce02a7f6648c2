"""The contract every registered flow is held to, shipped for flow authors (langchain's standard-tests shape).

Subclass :class:`FlowContractTests` in a pytest module and name the flow; every standard test then runs
against it::

    from vortex_torch.flow.testing import FlowContractTests

    class TestMyFlow(FlowContractTests):
        flow_name = "my_flow"

The flow is loaded by name (``build_vflow``), so it must be findable the way users find it: registered by
a ``vortex_flow.flows`` entry point of an installed package, imported by the test module, or in the file named
by ``flow_path``. Optional class attributes tune the suite: ``flow_kwargs`` (constructor arguments),
``flow_aliases`` (legacy names that must resolve to the same class), ``geometry`` (the traced shape; keep it
tiny, Triton runs interpreted on a CPU), ``needle_budget`` and ``min_needle_recall`` (the retrieval bar; by
default the flow class's ``expected_min_recall`` when it declares one, else 0.9),
``needle_context_blocks``, ``num_kv_heads`` and ``decode_steps``.

On a machine without CUDA the compiled kernels run in Triton's interpreter, which has to be switched on
before anything imports Triton; importing this module does not do it. Call
``vortex_torch.flow.backend.use_triton_interpreter_without_cuda()`` at the top of your ``conftest.py`` (or set
``TRITON_INTERPRET=1``); :func:`compile_check` otherwise raises a :class:`KernelBackendError` saying so.
:func:`compile_check` is the compiled == reference comparison ``vortex check`` reports (it tolerates bf16
near-ties, which an exact comparison of selections does not).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vortex_torch.abs.context import Geometry
from vortex_torch.abs.layout import DenseBlocks, PoolLayout
from vortex_torch.abs.mla import MLAGeometry

from . import registry
from .backend import KernelBackendError, require_kernel_backend
from .flow import vFlow
from .loader import build_vflow
from .trace import TracedFlow, check_ops_are_known, trace_flow
from .user_code import is_mla_flow

if TYPE_CHECKING:
    from .runtime.config import RuntimeConfig

__all__ = ["CompileCheck", "FlowContractTests", "KernelBackendError", "compile_check", "contract_config"]


# -- compiled == reference -----------------------------------------------------------------------------------
@dataclass
class CompileCheck:
    """What :func:`compile_check` found.

    * ``kernels_per_layer``: indexer launches per layer per decode step of the compiled flow (scoring kernels,
      standalone ops, the selection); ``cache_kernels``: forward_cache launches per completed-block batch of a
      prefill; ``cache_folded``: a decode step's forward_cache runs inside the scoring kernel (no launch);
    * ``selections_equal``: every step selected exactly the same blocks in both executors;
      ``near_tie_rows``: rows whose selections differ only among blocks whose reference scores tie within
      ``score_rtol`` (one bf16 ulp in an aux field, from another summation order, can swap such blocks);
      ``selections_match``: equal up to those near-ties;
    * ``aux_max_abs_error``: per aux field, the largest ``|compiled - reference|`` after the cache update and
      after every indexer step (Save-d state); ``aux_close`` whether all were within tolerance;
    * ``mismatches``: human-readable real differences (empty when ``ok``); ``notes``: the near-ties.
    """

    kernels_per_layer: int
    cache_kernels: int
    selections_equal: bool
    selections_match: bool
    near_tie_rows: int
    aux_close: bool
    aux_max_abs_error: dict[str, float]
    steps: int
    device: str
    source_path: str = ""
    cache_folded: bool = False
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.selections_match and self.aux_close

    def as_dict(self) -> dict[str, Any]:
        """The ``compile`` section of ``vortex check --json``."""
        return {
            "kernels_per_layer": self.kernels_per_layer,
            "cache_kernels": self.cache_kernels,
            "cache_folded_in_decode": self.cache_folded,
            "compiled_matches_reference": self.ok,
            "selections_equal": self.selections_equal,
            "near_tie_rows": self.near_tie_rows,
            "aux_max_abs_error": dict(self.aux_max_abs_error),
            "steps": self.steps,
            "device": self.device,
            "mismatches": list(self.mismatches),
            "notes": list(self.notes),
        }


def default_lengths(block_size: int) -> list[int]:
    """Ragged request lengths (tokens) of :func:`compile_check`: a partial last block, an exact fit, a row of
    exactly ``bos + eos + 1`` blocks, a row shorter than one block, and a longer row."""
    bs = block_size
    return [9 * bs + 3, 6 * bs, 3 * bs - 1, bs - 1, 13 * bs + 1]


def _completed_blocks(layout: PoolLayout, slots: torch.Tensor) -> torch.Tensor:
    """Block ids (every head) whose last token is among ``slots`` (a request's slots in position order)."""
    bs = layout.block_size
    last = slots[bs - 1 :: bs]  # [full blocks]
    heads = torch.arange(layout.num_kv_heads, device=slots.device)
    return layout.block_id(last[:, None], heads[None, :]).reshape(-1)


def compile_check(
    traced: TracedFlow,
    *,
    seed: int = 0,
    steps: int = 2,
    num_kv_heads: int = 2,
    blocks_per_page: int = 2,
    lengths: Sequence[int] | None = None,
    topk_val: int = 2,
    rtol: float = 2e-2,
    atol: float = 2e-2,
    score_rtol: float = 1e-2,
    block_chunk: int = 0,
    cache_dir: str | None = None,
    device: str | torch.device | None = None,
) -> CompileCheck:
    """Compile ``traced`` to Triton (:class:`TritonExecutor`) and compare it with the graph interpreter
    (:class:`ReferenceExecutor`) on a small ragged batch; interpreted by Triton on a CPU.

    The pool follows design §2 with ``blocks_per_page`` blocks per page, pages handed out in a shuffled order
    (page 0 reserved) and random K/V in the flow's KV dtype. Both executors summarise every completed block
    (``run_cache``), then run ``steps`` indexer steps with fresh random queries over the same blocks (so a
    Load sees the previous step's Save) with the budget rule ``topk_val`` / bos 1 / eos 1.

    Aux fields must agree within ``rtol``/``atol``. Selections must be equal, except that two blocks whose
    reference scores differ by at most ``score_rtol`` times the row's largest ``|score|`` may be swapped: aux
    fields are stored in the flow's dtype (bf16), and a different summation order can round one entry to the
    neighbouring bf16 value, which legitimately reorders near-tied blocks. The reference scores are evaluated
    on the reference's own fields before each step's Save.
    """
    require_kernel_backend("compile_check")
    from vortex_torch.kernels.budget_rule import BudgetRule
    from vortex_torch.kernels.select import selection_indptr

    from .compiler.base import SelectionSpec
    from .compiler.reference import ReferenceExecutor
    from .compiler.triton_executor import TritonExecutor

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    geo = traced.geometry
    bs = geo.block_size
    layout = PoolLayout(page_size=bs * blocks_per_page, block_size=bs, num_kv_heads=num_kv_heads)
    compiled = TritonExecutor(traced, layout, block_chunk=block_chunk, cache_dir=cache_dir)
    reference = ReferenceExecutor(traced, layout)
    gen = torch.Generator().manual_seed(seed)

    lens = list(lengths) if lengths is not None else default_lengths(bs)
    ps = layout.page_size
    pages_of = [-(-n // ps) for n in lens]
    num_pages = 1 + sum(pages_of)
    order = 1 + torch.randperm(num_pages - 1, generator=gen)  # shuffled pages; page 0 is never handed out
    slots: list[torch.Tensor] = []
    taken = 0
    for n, npg in zip(lens, pages_of, strict=True):
        pages = order[taken : taken + npg]
        taken += npg
        pos = torch.arange(n)
        slots.append((pages[pos // ps] * ps + pos % ps).to(dev))

    num_slots, d = num_pages * ps, geo.head_dim
    fields: dict[str, torch.Tensor] = {
        name: torch.randn(num_slots, num_kv_heads, d, generator=gen).to(device=dev, dtype=geo.kv_dtype)
        for name in ("k", "v")
    }
    for name, (r, c) in traced.fields.items():
        fields[name] = torch.zeros(layout.num_blocks(num_pages), r, c, dtype=geo.dtype, device=dev)
    mirror = {name: t.clone() for name, t in fields.items()}

    errors: dict[str, float] = dict.fromkeys(traced.fields, 0.0)
    mismatches: list[str] = []
    notes: list[str] = []

    def compare_aux(when: str) -> None:
        for name in traced.fields:
            a, b = fields[name].float(), mirror[name].float()
            errors[name] = max(errors[name], float((a - b).abs().max()) if a.numel() else 0.0)
            if not torch.allclose(a, b, rtol=rtol, atol=atol):
                mismatches.append(
                    f"aux field {name!r} differs {when}: max |compiled - reference| = {errors[name]:.3g}"
                )

    done = torch.cat([_completed_blocks(layout, s) for s in slots])
    compiled.run_cache(fields, done)
    reference.run_cache(mirror, done)
    compare_aux("after forward_cache")

    dense = DenseBlocks.from_token_slots(layout, slots)
    budget = BudgetRule(topk_val, 0.0, 1, 1).budget(dense.lengths())
    spec = SelectionSpec(selection_indptr(budget), 1, 1)
    ptr, dptr = spec.sel_indptr.tolist(), dense.indptr.tolist()
    selections_equal, near_ties = True, 0
    for step in range(steps):
        q = torch.randn(dense.num_rows, geo.group_size, d, generator=gen).to(device=dev, dtype=geo.kv_dtype)
        score, _ = reference.evaluate(q, mirror, dense)  # this step's reference scores [nnz], before Save
        out_c = torch.full((spec.total,), -1, dtype=torch.int32, device=dev)
        out_r = torch.full_like(out_c, -1)
        compiled.run(q, fields, dense, spec, out_c)
        reference.run(q, mirror, dense, spec, out_r)
        if torch.equal(out_c, out_r):
            compare_aux(f"after indexer step {step}")
            continue
        selections_equal = False
        for r in range(dense.num_rows):
            got, want = out_c[ptr[r] : ptr[r + 1]].tolist(), out_r[ptr[r] : ptr[r + 1]].tolist()
            if got == want:
                continue
            row_ids = dense.indices[dptr[r] : dptr[r + 1]].tolist()
            row_score = score[dptr[r] : dptr[r + 1]].float()
            of = dict(zip(row_ids, row_score.tolist(), strict=True))
            tol = score_rtol * float(row_score.abs().max()) + 1e-6
            a = sorted(of.get(b, float("nan")) for b in got)
            w = sorted(of.get(b, float("nan")) for b in want)
            gaps = [abs(x - y) for x, y in zip(a, w, strict=True)]
            if all(g <= tol for g in gaps):  # a block of another row scores NaN: never a near-tie
                gap = max(gaps)
                near_ties += 1
                notes.append(
                    f"step {step}, row {r}: near-tie swap, reference scores differ by {gap:.3g} <= "
                    f"{tol:.3g}: compiled {got}, reference {want}"
                )
            else:
                shown_a, shown_w = [round(x, 4) for x in a], [round(x, 4) for x in w]
                mismatches.append(
                    f"step {step}, row {r}: compiled selected {got} (reference scores {shown_a}), "
                    f"reference {want} ({shown_w})"
                )
        compare_aux(f"after indexer step {step}")

    return CompileCheck(
        kernels_per_layer=compiled.indexer_launches,
        cache_kernels=1 if compiled.cache_kernel is not None else 0,
        cache_folded=compiled.folds_cache_update,
        selections_equal=selections_equal,
        selections_match=not any(m.startswith("step") for m in mismatches),
        near_tie_rows=near_ties,
        aux_close=not any(m.startswith("aux") for m in mismatches),
        aux_max_abs_error=errors,
        steps=steps,
        device=str(dev),
        source_path=compiled.source_path,
        mismatches=mismatches,
        notes=notes,
    )


def contract_config(geometry: Geometry, **overrides: Any) -> RuntimeConfig:
    """The runtime settings of the contract tests: ``geometry``'s block size and aux dtype, two blocks per
    page (so blocks of one page and head are not contiguous in the K/V buffers), and ``overrides``."""
    from .runtime.config import RuntimeConfig

    base = RuntimeConfig(
        block_size=geometry.block_size, page_size=2 * geometry.block_size, dtype=geometry.dtype
    )
    return replace(base, **overrides)


# -- the standard tests --------------------------------------------------------------------------------------
class FlowContractTests:
    """Standard tests of one registered flow. Subclass it, set ``flow_name``, and pytest collects the suite.

    Each test states what it holds the flow to; a failure message names the measured value and the knob.
    """

    #: the registered name (required)
    flow_name: ClassVar[str] = ""
    #: a flow file to load first (``build_vflow(name, module_path)``), for flows that are not installed
    flow_path: ClassVar[str | None] = None
    #: constructor arguments passed through ``build_vflow(name, init_kwargs=...)``
    flow_kwargs: ClassVar[dict[str, Any]] = {}
    #: other names the flow must also load by (legacy names registered with ``register(name, aliases=...)``)
    flow_aliases: ClassVar[tuple[str, ...]] = ()
    #: traced geometry of every test: block size, head dim, group size, aux dtype, KV dtype
    geometry: ClassVar[Geometry] = Geometry(block_size=16, head_dim=32, group_size=2)
    #: KV heads of the synthetic models (an MLA flow's geometry is an ``MLAGeometry``: one latent head)
    num_kv_heads: ClassVar[int] = 2
    #: budget fraction of the needle test, and the needle recall the flow must reach there (unless set here,
    #: the flow class's ``expected_min_recall`` when it declares one: see :meth:`recall_bar`)
    needle_budget: ClassVar[float] = 1 / 16
    min_needle_recall: ClassVar[float] = 0.9
    #: context lengths of the needle test, in blocks
    needle_context_blocks: ClassVar[tuple[int, ...]] = (128, 256)
    #: decode steps of the end-to-end test
    decode_steps: ClassVar[int] = 3

    # -- helpers ---------------------------------------------------------------------------------------------
    def make_flow(self) -> vFlow:
        """A fresh instance of the flow, loaded by name."""
        assert self.flow_name, f"{type(self).__name__} must set flow_name = '<the registered name>'"
        return build_vflow(self.flow_name, self.flow_path, init_kwargs=dict(self.flow_kwargs))

    def traced(self) -> TracedFlow:
        return trace_flow(self.make_flow(), self.geometry)

    def config(self, **overrides: Any) -> RuntimeConfig:
        return contract_config(self.geometry, **overrides)

    def kv_heads(self) -> int:
        """KV heads of the synthetic models: ``num_kv_heads``, or 1 (the latent) for an MLA geometry."""
        return 1 if isinstance(self.geometry, MLAGeometry) else self.num_kv_heads

    def rope_dims(self) -> dict[str, Any]:
        """``qk_rope_head_dim`` of an MLA geometry, for the synthetic runs (empty for MHA/GQA)."""
        g = self.geometry
        return {"qk_rope_head_dim": g.qk_rope_head_dim} if isinstance(g, MLAGeometry) else {}

    def mixed_lengths(self) -> list[int]:
        """Prompt lengths of the runtime tests: one completes a block at the first decode step, one starts
        a new block, one is shorter than a block (it completes at step ``2``)."""
        bs = self.geometry.block_size
        return [10 * bs - 1, 4 * bs + 1, bs - 2]

    # -- the tests -------------------------------------------------------------------------------------------
    def test_registered_and_loads_by_name(self) -> None:
        """The name (and each alias) resolves through the registry, entry points included; the class carries
        the name and a one-line description (what ``vortex list`` shows)."""
        flow = self.make_flow()
        info = registry.get_info(self.flow_name)
        assert info is not None
        assert isinstance(flow, info.cls), f"build_vflow({self.flow_name!r}) built {type(flow).__qualname__}"
        assert type(flow).name == self.flow_name, f"class name attribute is {type(flow).name!r}"
        own = inspect.cleandoc(vars(type(flow)).get("__doc__") or "")  # not one inherited from a base class
        first = own.splitlines()[0] if own else ""
        assert first and info.description == first, (
            f"{type(flow).__qualname__} needs its own docstring whose first line describes the flow in one "
            f"line (shown by `vortex list`); got {first!r}"
        )
        for alias in self.flow_aliases:
            assert registry.get(alias) is info.cls, (
                f"alias {alias!r} does not resolve to {info.cls.__qualname__}"
            )

    def test_traces_under_the_flow_rules(self) -> None:
        """Both methods trace at the test geometry and at a production one (D=128, G=4, block 16) with Vortex
        ops only, every field is written and read, and a flow that Saves state says it needs the radix cache
        off (``requires_radix_cache_off = True``: a reused prefix would carry another request's state)."""
        flow = self.make_flow()
        block = max(Geometry().block_size, self.geometry.block_size)
        production: Geometry = (
            MLAGeometry.of(block_size=block, kv_lora_rank=512, qk_rope_head_dim=64, num_heads=16)  # DeepSeek-V3
            if is_mla_flow(flow)
            else replace(Geometry(), block_size=block)
        )
        for geometry in (self.geometry, production):
            traced = trace_flow(flow, geometry)
            check_ops_are_known(traced)
        needs_off = bool(getattr(type(flow), "requires_radix_cache_off", False))
        assert needs_off == traced.uses_save, (
            f"{type(flow).__qualname__} Saves {sorted(traced.saved_fields)} but requires_radix_cache_off is "
            f"{needs_off}; set the class attribute requires_radix_cache_off = {traced.uses_save}"
        )

    def test_compiled_matches_reference(self, tmp_path: Path) -> None:
        """The Triton executor selects the same blocks as the reference interpreter on a ragged batch over
        shuffled pages, for two steps, and leaves the same aux fields (within bf16 rounding)."""
        report = compile_check(self.traced(), num_kv_heads=self.kv_heads(), cache_dir=str(tmp_path))
        assert report.ok, "compiled != reference:\n  " + "\n  ".join(report.mismatches[:10])
        assert report.kernels_per_layer >= 1

    def test_full_budget_equals_dense(self) -> None:
        """With a budget covering every block, sparse attention is dense attention (every layer and step)."""
        from .runtime.synthetic import run_synthetic

        run = run_synthetic(
            self.make_flow(), self.mixed_lengths(), 2, num_layers=1, num_kv_heads=self.kv_heads(),
            head_dim=self.geometry.head_dim, group_size=self.geometry.group_size,
            config=self.config(topk_val=0, topk_ratio=1.0), kv_dtype=torch.float32, **self.rope_dims(),
        )  # fmt: skip
        for step, (outs, dense) in enumerate(zip(run.outputs, run.dense_outputs, strict=True)):
            for layer, (o, od) in enumerate(zip(outs, dense, strict=True)):
                torch.testing.assert_close(o, od, rtol=1e-5, atol=1e-6, msg=f"step {step}, layer {layer}")

    def test_needle_recall(self) -> None:
        """At ``needle_budget`` of each row's blocks the flow finds planted needles: recall over every row of
        ``needle_context_blocks`` contexts is at least ``min_needle_recall`` (``measure_flow``)."""
        from .runtime.synthetic import measure_flow

        bs = self.geometry.block_size
        m = measure_flow(
            self.make_flow(), tuple(n * bs for n in self.needle_context_blocks), self.needle_budget,
            num_kv_heads=self.kv_heads(), head_dim=self.geometry.head_dim,
            group_size=self.geometry.group_size, config=self.config(), kv_dtype=self.geometry.kv_dtype,
            **self.rope_dims(),
        )  # fmt: skip
        bar, source = self.recall_bar()
        assert math.isfinite(m["attn_rel_error"]), f"sparse attention is not finite: {m['attn_rel_error']}"
        assert bar is None or m["needle_recall"] >= bar, (
            f"needle recall {m['needle_recall']:.3f} < {source} {bar} at budget {self.needle_budget:.4g} (best "
            f"reachable {m['needle_recall_max']:.3f}, attention error {m['attn_rel_error']:.3f}); lower the flow "
            "class's expected_min_recall (or the test's min_needle_recall) only if the flow is not meant to retrieve"
        )

    def recall_bar(self) -> tuple[float | None, str]:
        """The recall :meth:`test_needle_recall` requires and where it comes from: ``min_needle_recall`` when the
        test class sets it, else the flow class's ``expected_min_recall`` (``None``: no bar, as in ``vortex
        check``), else ``min_needle_recall``'s default."""
        own = any("min_needle_recall" in vars(c) for c in type(self).__mro__ if c is not FlowContractTests)
        if not own:
            from .check.report import EXPECTED_MIN_RECALL, resolve_min_recall

            flow_cls = type(self.make_flow())
            if hasattr(flow_cls, EXPECTED_MIN_RECALL):
                return resolve_min_recall(None, flow_cls)
        return self.min_needle_recall, "min_needle_recall"

    def test_runs_end_to_end(self) -> None:
        """A two-layer model (layer 0 dense via ``layers_skip``) decodes ``decode_steps`` tokens for a batch
        of mixed lengths whose blocks complete during decode; every sparse row attends to exactly its budget
        of blocks (checked against design §3 by the runtime) and every output is finite."""
        from .runtime.synthetic import run_synthetic

        run = run_synthetic(
            self.make_flow(), self.mixed_lengths(), self.decode_steps, num_layers=2,
            num_kv_heads=self.kv_heads(), head_dim=self.geometry.head_dim,
            group_size=self.geometry.group_size, config=self.config(topk_val=2, layers_skip=(0,)),
            kv_dtype=self.geometry.kv_dtype, **self.rope_dims(),
        )  # fmt: skip
        assert len(run.outputs) == self.decode_steps
        for step, (plan, sels, outs) in enumerate(zip(run.plans, run.selections, run.outputs, strict=True)):
            for layer, (sel, o) in enumerate(zip(sels, outs, strict=True)):
                assert torch.isfinite(o.float()).all(), f"non-finite output at step {step}, layer {layer}"
                counts = (sel.indptr[1:] - sel.indptr[:-1]).tolist()
                want = plan.dense.lengths().tolist() if sel.dense else plan.budget.tolist()
                assert counts == want, f"step {step}, layer {layer}: attended {counts} blocks, budget {want}"
