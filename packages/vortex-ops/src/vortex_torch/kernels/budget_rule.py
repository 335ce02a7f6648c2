"""The budget rule (design §5): how many blocks each row attends to. Every path computes budgets here: the
reference runtime (``RuntimeConfig.budget``), the decode planners (the plan kernel evaluates the same rule
in-kernel, tested equal) and SGLang's ``schedule_policy`` (``engine.sgl.policy.apply_policy``).

For a row of ``n`` blocks::

    raw    = policy(n, topk_val, topk_ratio, bos, eos)        # a schedule_policy / budget_fn, or else
           = min(n, max(topk_val + bos + eos, floor(n * topk_ratio)))   # the default rule
    budget = clamp(raw, min(n, bos + eos), min(n, max_selected_per_row))

One behaviour for any value a policy returns: too small is raised to ``bos + eos`` (to ``n`` when the row has
fewer blocks), too large is lowered to ``n`` and to ``max_selected_per_row`` (the size of the selection
buffers). It clamps rather than raises because a policy runs inside SGLang's decode CUDA graph, where a check
would need a host synchronisation; the reference runtime clamps too, so the oracle and the server agree on
every input. A policy's result that is not an integer tensor shaped like ``n`` is a bug and raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .select.budget import default_budget

#: ``(n [R] int, topk_val, topk_ratio, bos, eos) -> [R] int``: a ``schedule_policy`` (SGLang) / ``budget_fn``
#: (reference runtime) that replaces the default rule; its answer is clamped by :class:`BudgetRule`
BudgetPolicy = Callable[[torch.Tensor, int, float, int, int], torch.Tensor]

#: ``max_selected_per_row`` when the selection buffers do not bound the budget (the row's ``n`` still does)
UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class BudgetRule:
    """Design §5's budget rule and its clamp (module docstring); ``bos``/``eos`` are the always-kept leading and
    trailing blocks, ``max_selected_per_row`` the static bound of the selection buffers."""

    topk_val: int
    topk_ratio: float
    bos: int
    eos: int
    max_selected_per_row: int = UNBOUNDED

    def clamp(self, n: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """``budget [R]`` clamped to ``[min(n, bos + eos), min(n, max_selected_per_row)]`` for rows of ``n [R]``
        blocks -> ``[R] int64`` (same device; no host sync)."""
        n = n.to(torch.int64)
        lo = torch.clamp(n, max=self.bos + self.eos)
        hi = torch.clamp(n, max=self.max_selected_per_row)
        return torch.minimum(torch.maximum(budget.to(torch.int64), lo), hi)

    def budget(self, n: torch.Tensor, policy: BudgetPolicy | None = None) -> torch.Tensor:
        """``n [R]`` blocks -> ``[R] int64`` budgets: ``policy``'s answer (the default rule when None), clamped.

        Raises ``ValueError`` when ``policy`` returns anything but an integer tensor shaped like ``n``.
        """
        if policy is None:
            raw = default_budget(n, self.topk_val, self.topk_ratio, self.bos, self.eos)
        else:
            raw = policy(n, self.topk_val, float(self.topk_ratio), self.bos, self.eos)
            if (
                not isinstance(raw, torch.Tensor)
                or raw.shape != n.shape
                or raw.is_floating_point()
                or raw.dtype == torch.bool
            ):
                raise ValueError(
                    f"a budget policy must return an integer tensor shaped like n {tuple(n.shape)} (blocks per "
                    f"row), got {type(raw).__name__} {getattr(raw, 'shape', '')} {getattr(raw, 'dtype', '')}"
                )
        return self.clamp(n, raw)

    def __call__(self, n: torch.Tensor) -> torch.Tensor:
        """``n [R]`` blocks -> ``[R] int64`` budgets of the default rule (clamped): ``budget(n)``."""
        return self.budget(n)
