"""Programmable per-sequence budgets (``VortexConfig.schedule_policy``).

A policy is plain Python over tensors::

    def budget(n, topk_val, topk_ratio, bos, eos):
        # n: [R] int32 cached blocks per (request, kv-head); returns [R] blocks to attend to
        return torch.clamp(topk_val + bos + eos + n // 64, max=256)

It runs inside the decode planner for every row on the GPU; on CUDA it is compiled with ``torch.compile`` into
one fused kernel (CUDA-graph safe: no host synchronisation). Whatever it returns is clamped to
``[min(n, bos + eos), n]`` so the always-kept blocks fit (and to ``max_topk_val`` when set): the one budget rule,
:class:`vortex_torch.kernels.budget_rule.BudgetRule`, which the reference runtime applies to its ``budget_fn``
as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

from vortex_torch.kernels.budget_rule import BudgetRule

from .errors import VortexConfigError

Policy = Callable[..., torch.Tensor]


def resolve_policy(spec: Any) -> Policy:
    """A callable, or ``"package.module:function"`` / ``"/path/file.py:function"``, checked on a sample."""
    if callable(spec):
        fn = spec
    elif isinstance(spec, str) and ":" in spec:
        target, _, attr = spec.rpartition(":")
        try:
            if target.endswith(".py"):
                path = os.path.expanduser(target)
                mod_spec = importlib.util.spec_from_file_location(f"vortex_policy_{abs(hash(path))}", path)
                if mod_spec is None or mod_spec.loader is None or not os.path.isfile(path):
                    raise FileNotFoundError(path)
                module = importlib.util.module_from_spec(mod_spec)
                mod_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(target)
            fn = getattr(module, attr)
        except Exception as exc:
            raise VortexConfigError("schedule_policy", f"cannot load {spec!r}: {type(exc).__name__}: {exc}") from exc
    else:
        raise VortexConfigError("schedule_policy", f"expected a callable or 'module:function', got {spec!r}")
    check_policy(fn)
    return fn


def check_policy(fn: Policy) -> None:
    """Run the policy once on the CPU so a broken one fails at config time, not inside a CUDA graph."""
    n = torch.tensor([1, 2, 7, 64, 1000, 4096], dtype=torch.int32)
    try:
        out = fn(n, 30, 0.0, 1, 1)
    except Exception as exc:
        raise VortexConfigError(
            "schedule_policy", f"calling it as policy(n, topk_val, topk_ratio, bos, eos) failed: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.shape != n.shape:
        raise VortexConfigError("schedule_policy", f"must return a tensor shaped like n ([R]), got {out!r}")
    if out.dtype.is_floating_point or out.dtype == torch.bool:
        raise VortexConfigError("schedule_policy", f"must return integer block counts, got dtype {out.dtype}")


def apply_policy(fn: Policy, n: torch.Tensor, topk_val: int, topk_ratio: float, bos: int, eos: int) -> torch.Tensor:
    """``n [R]`` blocks -> ``[R]`` int32 budgets: the policy's answer clamped to ``[min(n, bos + eos), n]``
    (:meth:`BudgetRule.budget`, the reference runtime's rule too)."""
    return BudgetRule(topk_val, float(topk_ratio), bos, eos).budget(n, fn).to(torch.int32)


def compile_policy(fn: Policy, device: torch.device) -> Policy:
    """On CUDA, fuse the policy into one kernel with torch.compile; elsewhere run it as is."""
    if device.type != "cuda":
        return fn
    return torch.compile(fn, dynamic=False, fullgraph=True)
