"""The text of a shape error: the call site, the inputs and the op's shape rule (read from its docstrings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .callsite import CallSite, at
from .formats import FORMAT

if TYPE_CHECKING:
    from .op import vOp
    from .vtensor import vTensor

_BASES = frozenset({"vOp", "IndexerOp", "CacheOp"})


def shape_rule(op: vOp) -> str:
    """The op's shape rule for error messages, from the docstrings of its class and of the ancestors up to the
    one that defines ``infer``: the first paragraph that states a mapping (contains ``->``), else the first."""
    docs: list[str] = []
    for cls in type(op).__mro__:
        if cls.__name__ in _BASES or not cls.__module__.startswith("vortex_torch."):
            continue
        doc = (cls.__doc__ or "").strip()
        if doc:
            docs.append(" ".join(doc.split("\n\n")[0].split()).replace("``", ""))
        if "infer" in vars(cls):
            break
    with_arrow = [d for d in docs if "->" in d]
    return with_arrow[0] if with_arrow else (docs[0] if docs else "")


def shape_message(op: vOp, message: str, inputs: Sequence[vTensor], site: CallSite | None) -> str:
    """A shape error of ``op`` with its call site, its inputs and its shape rule (the fix is to meet the rule)."""
    if site is not None and str(site) in message:
        return message
    args = ", ".join(t.describe() for t in inputs)
    if getattr(op, "dim", None) == 0 and any(t.format == FORMAT.BATCHED for t in inputs):
        fix = (
            f"dim=0 works over the blocks of a row, so {op.name}(dim=0) needs a RAGGED input (one that depends on "
            "the cache); a BATCHED tensor such as q has one row per (request, kv-head) already: use dim=1 or dim=2"
        )
    else:
        rule = shape_rule(op)
        fix = (
            f"make the inputs meet the rule of {op.name}: {rule.rstrip('.')}"
            if rule
            else f"check the inputs of {op.name}"
        )
    return f"{message}{at(site)}. Inputs: {args}. Fix: {fix}."
