"""``RuntimeConfig``: the serving knobs of a Vortex deployment (the same names SGLang's server arguments use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vortex_torch.kernels.select.budget import default_budget

if TYPE_CHECKING:
    from vortex_torch.abs.layout import PoolLayout

    from ..compiler.base import FlowExecutor
    from ..trace import TracedFlow

#: ``(n_blocks [R] int, topk_val, topk_ratio, bos, eos) -> budget [R] int``: the budget rule (design §5).
BudgetFn = Callable[[torch.Tensor, int, float, int, int], torch.Tensor]

#: Builds the executor of a traced flow over a pool layout (the reference interpreter, a compiled backend, a
#: test double): ``factory(traced, layout)``, e.g. ``lambda t, layout: TritonExecutor(t, layout=layout)``.
ExecutorFactory = Callable[["TracedFlow", "PoolLayout"], "FlowExecutor"]


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
    * ``budget_fn``: replaces the default budget rule (``schedule_policy``); ``None`` keeps the default;
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
        """Raise ``ValueError`` naming the offending field and how to fix it."""
        bs, ps = self.block_size, self.page_size
        if not isinstance(bs, int) or bs <= 0 or bs & (bs - 1):
            raise ValueError(f"RuntimeConfig.block_size must be a power of two (e.g. 16), got {bs!r}")
        if not isinstance(ps, int) or ps <= 0 or ps % bs:
            raise ValueError(
                f"RuntimeConfig.page_size must be a positive multiple of block_size={bs} (a page holds whole "
                f"blocks), got {ps!r}; use page_size={bs} or {2 * bs}"
            )
        if not isinstance(self.block_reserved_eos, int) or self.block_reserved_eos < 1:
            raise ValueError(
                f"RuntimeConfig.block_reserved_eos must be >= 1 (the final block holds the current token and is "
                f"always attended), got {self.block_reserved_eos!r}"
            )
        if not isinstance(self.block_reserved_bos, int) or self.block_reserved_bos < 0:
            raise ValueError(
                f"RuntimeConfig.block_reserved_bos must be an int >= 0, got {self.block_reserved_bos!r}"
            )
        if not isinstance(self.topk_val, int) or self.topk_val < 0:
            raise ValueError(
                f"RuntimeConfig.topk_val must be an int >= 0 (blocks kept per row), got {self.topk_val!r}"
            )
        if not isinstance(self.topk_ratio, (int, float)) or not 0.0 <= float(self.topk_ratio) <= 1.0:
            raise ValueError(
                f"RuntimeConfig.topk_ratio must be a fraction in [0, 1] (e.g. 0.0625 keeps 1/16 of the blocks), "
                f"got {self.topk_ratio!r}"
            )
        if not isinstance(self.layers_skip, tuple) or not all(
            isinstance(i, int) and i >= 0 for i in self.layers_skip
        ):
            raise ValueError(
                f"RuntimeConfig.layers_skip must be a tuple of layer indices >= 0, e.g. (0, 1), got {self.layers_skip!r}"
            )
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(
                f"RuntimeConfig.dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {self.dtype!r}"
            )
        if self.budget_fn is not None and not callable(self.budget_fn):
            raise ValueError(
                "RuntimeConfig.budget_fn must be a callable (n_blocks, topk_val, topk_ratio, bos, eos) -> budget, "
                f"or None for the default rule; got {self.budget_fn!r}"
            )
        if not (self.executor == "reference" or callable(self.executor)):
            raise ValueError(
                "RuntimeConfig.executor must be 'reference' or a factory (TracedFlow, PoolLayout) -> "
                f"FlowExecutor, got {self.executor!r}"
            )

    @property
    def bos(self) -> int:
        return self.block_reserved_bos

    @property
    def eos(self) -> int:
        return self.block_reserved_eos

    def budget(self, n_blocks: torch.Tensor) -> torch.Tensor:
        """``n_blocks [R]`` -> ``budget [R] int32``, checked against what selection accepts.

        A user rule may return any budget ``b`` with ``b == n`` or ``bos + eos <= b <= n``; anything else is a
        bug in the rule and raises (the selection kernels would otherwise read out of bounds).
        """
        fn = self.budget_fn if self.budget_fn is not None else default_budget
        raw = fn(n_blocks, self.topk_val, float(self.topk_ratio), self.bos, self.eos)
        if not isinstance(raw, torch.Tensor) or raw.shape != n_blocks.shape or raw.is_floating_point():
            raise ValueError(
                f"budget_fn must return an integer tensor shaped like n_blocks {tuple(n_blocks.shape)}, got "
                f"{type(raw).__name__} {getattr(raw, 'shape', '')} {getattr(raw, 'dtype', '')}"
            )
        budget = raw.to(torch.int32)
        n = n_blocks.to(torch.int32)
        bad = (budget > n) | ((budget < n) & (budget < self.bos + self.eos))
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"budget_fn gave row {r} a budget of {int(budget[r])} blocks with n={int(n[r])}, bos={self.bos}, "
                f"eos={self.eos}: a budget must be n or lie in [bos + eos, n]; clamp it with min(n, ...)"
            )
        return budget
