"""``RuntimeConfig``: the serving knobs of a Vortex deployment (the same names SGLang's server arguments use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vortex_torch.abs.config_fields import ConfigFieldError, check_shared_fields
from vortex_torch.kernels.budget_rule import BudgetPolicy, BudgetRule

if TYPE_CHECKING:
    from vortex_torch.abs.layout import PoolLayout

    from ..compiler.base import FlowExecutor
    from ..trace import TracedFlow

#: ``(n_blocks [R] int, topk_val, topk_ratio, bos, eos) -> budget [R] int``: replaces the default budget rule
#: (design §5), like SGLang's ``schedule_policy``; its answer is clamped by :class:`BudgetRule`.
BudgetFn = BudgetPolicy

#: Builds the executor of a traced flow over a pool layout (the reference interpreter, a compiled backend, a
#: test double): ``factory(traced, layout)``, e.g. ``lambda t, layout: TritonExecutor(t, layout=layout)``.
ExecutorFactory = Callable[["TracedFlow", "PoolLayout"], "FlowExecutor"]


class RuntimeConfigError(ConfigFieldError):
    """An invalid ``RuntimeConfig`` value; the message names the field and how to fix it."""

    owner = "RuntimeConfig"


@dataclass(frozen=True)
class RuntimeConfig:
    """Per-deployment settings shared by every layer.

    * ``topk_val``, ``topk_ratio``: the budget rule ``min(n, max(topk_val + bos + eos, floor(n * topk_ratio)))``;
    * ``block_reserved_bos`` / ``block_reserved_eos``: leading / trailing blocks every row always keeps
      (``eos >= 1`` because the row's final, possibly partial, block holds the current token);
    * ``layers_skip``: layers that run dense attention and keep no aux fields;
    * ``block_size`` (tokens of one head per block, power of two) and ``page_size`` (SGLang's allocation
      unit, a multiple of ``block_size``);
    * ``dtype``: storage dtype of the flow's aux cache fields and indexer intermediates;
    * ``budget_fn``: replaces the default budget rule (``schedule_policy``); ``None`` keeps the default. Either
      way every budget is clamped to ``[min(n, bos + eos), n]`` (:class:`BudgetRule`, the rule SGLang applies
      to a ``schedule_policy`` too: too small is raised, too large lowered, never an error);
    * ``executor``: ``"reference"`` (the graph interpreter) or a factory
      ``(TracedFlow, PoolLayout) -> FlowExecutor``.
    """

    topk_val: int = 30
    topk_ratio: float = 0.0
    block_reserved_bos: int = 1
    block_reserved_eos: int = 1
    layers_skip: tuple[int, ...] = ()
    block_size: int = 16
    page_size: int = 16
    dtype: torch.dtype = torch.bfloat16
    budget_fn: BudgetFn | None = None
    executor: str | ExecutorFactory = "reference"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`RuntimeConfigError` (a ``ValueError``) naming the offending field and how to fix it.

        The fields ``VortexConfig`` shares are checked by the same function, with the same messages
        (:func:`vortex_torch.abs.config_fields.check_shared_fields`).
        """
        check_shared_fields(RuntimeConfigError, self, tuple)
        bs, ps = self.block_size, self.page_size
        if not isinstance(ps, int) or isinstance(ps, bool) or ps <= 0 or ps % bs:
            raise RuntimeConfigError(
                "page_size", f"must be a positive multiple of block_size={bs} (a page holds whole blocks), got "
                f"{ps!r}; use page_size={bs} or {2 * bs}"
            )  # fmt: skip
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise RuntimeConfigError(
                "dtype", f"must be a floating torch.dtype (e.g. torch.bfloat16), got {self.dtype!r}"
            )
        if self.budget_fn is not None and not callable(self.budget_fn):
            raise RuntimeConfigError(
                "budget_fn", "must be a callable (n_blocks, topk_val, topk_ratio, bos, eos) -> budget, or None "
                f"for the default rule; got {self.budget_fn!r}"
            )  # fmt: skip
        if not (self.executor == "reference" or callable(self.executor)):
            raise RuntimeConfigError(
                "executor", "must be 'reference' or a factory (TracedFlow, PoolLayout) -> FlowExecutor, got "
                f"{self.executor!r}"
            )  # fmt: skip

    @property
    def bos(self) -> int:
        return self.block_reserved_bos

    @property
    def eos(self) -> int:
        return self.block_reserved_eos

    @property
    def rule(self) -> BudgetRule:
        """The budget rule of these settings (no buffer bound: the reference runtime sizes its lists per step)."""
        return BudgetRule(self.topk_val, float(self.topk_ratio), self.bos, self.eos)

    def budget(self, n_blocks: torch.Tensor) -> torch.Tensor:
        """``n_blocks [R]`` -> ``budget [R] int32``: ``budget_fn``'s answer (the default rule when None),
        clamped to ``[min(n, bos + eos), n]`` by :meth:`BudgetRule.budget`, exactly as SGLang clamps a
        ``schedule_policy``. Raises ``ValueError`` when ``budget_fn`` returns anything but an integer tensor
        shaped like ``n_blocks``.
        """
        return self.rule.budget(n_blocks, self.budget_fn).to(torch.int32)
