"""A decode step's plan (design §3) on the device: every row's block list, last-block length, budget and
selection offsets, from SGLang's ``req_to_token`` map and the requests' lengths.

``plan_decode`` is the Triton kernel (one launch per step, CUDA-graph capturable), ``plan_decode_reference`` the
plain-PyTorch reference that defines it; ``BudgetRule`` is design §5's rule with its clamp (re-exported from
:mod:`vortex_torch.kernels.budget_rule`, its home), ``PlanOut`` the caller-owned output buffers.
"""

from ..budget_rule import BudgetRule
from .reference import PlanOut, plan_decode_reference, row_blocks
from .triton_kernel import plan_decode

__all__ = ["BudgetRule", "PlanOut", "plan_decode", "plan_decode_reference", "row_blocks"]
