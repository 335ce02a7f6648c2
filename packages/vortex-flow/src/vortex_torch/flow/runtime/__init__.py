"""The CPU reference runtime: a paged KV pool and a decode engine that run a flow exactly as docs/design.md
specifies. It is the oracle the GPU backends are tested against.

``vortex_torch.flow.runtime.hf`` (needs the ``hf`` extra) drives a Hugging Face model through it.
"""

from .config import BudgetFn, ExecutorFactory, RuntimeConfig, RuntimeConfigError
from .engine import AttentionImpl, ReferenceRuntime, Selection, StepPlan
from .pool import OutOfPagesError, PageAllocator, PagedKVPool, RequestId
from .synthetic import NeedleContext, SyntheticRun, make_needle_context, measure_flow, run_synthetic

__all__ = [
    "AttentionImpl",
    "BudgetFn",
    "ExecutorFactory",
    "NeedleContext",
    "OutOfPagesError",
    "PageAllocator",
    "PagedKVPool",
    "ReferenceRuntime",
    "RequestId",
    "RuntimeConfig",
    "RuntimeConfigError",
    "Selection",
    "StepPlan",
    "SyntheticRun",
    "make_needle_context",
    "measure_flow",
    "run_synthetic",
]
