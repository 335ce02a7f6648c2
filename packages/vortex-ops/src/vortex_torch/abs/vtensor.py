"""``vTensor``: the symbolic tensor a flow's methods see while Vortex traces them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .callsite import CallSite, at, called_from_user_code, user_callsite
from .errors import FlowRuleError
from .formats import FORMAT

_CAST_HINT = "remove the cast: Vortex computes intermediates in fp32 and stores them in the flow's dtype (Geometry.dtype)"
_INDEX_HINT = (
    "flow tensors cannot be indexed or sliced; use MaskSlice(start, end, dim) and Multiply to keep a slice of "
    "features, Reshape/Transpose to rearrange, or a Reduce op (Mean/Max/...) to collapse an axis"
)
_NATIVE_HINTS: dict[str, str] = {
    "mean": "Mean(dim=...)",
    "sum": "Sum(dim=...) (on the cache side: Mean)",
    "max": "Max(dim=...) to reduce, Maximum() for an elementwise max",
    "amax": "Max(dim=...)",
    "min": "Min(dim=...) to reduce, Minimum() for an elementwise min",
    "amin": "Min(dim=...)",
    "norm": "L2Norm(dim=...)",
    "matmul": "GeMM() (GeMM(x, y) = y @ xᵀ per block)",
    "mm": "GeMM() (GeMM(x, y) = y @ xᵀ per block)",
    "bmm": "GeMM() (GeMM(x, y) = y @ xᵀ per block)",
    "einsum": "GeMM() (GeMM(x, y) = y @ xᵀ per block)",
    "mul": "Multiply() for tensor * tensor, Add_Mul(beta=c) for tensor * constant",
    "add": "Add(alpha, beta) for alpha*x + beta*y, Add_Mul(alpha=c) for tensor + constant",
    "sub": "Add(beta=-1.0) for x - y, Add_Mul(alpha=-c) for tensor - constant",
    "truediv": "Add_Mul(beta=1/c) to divide by a constant, Normalize(dim=...) to divide by a sum",
    "div": "Add_Mul(beta=1/c) to divide by a constant, Normalize(dim=...) to divide by a sum",
    "neg": "Add_Mul(beta=-1.0)",
    "abs": "Abs()",
    "exp": "Exp()",
    "log": "Log()",
    "relu": "Relu()",
    "sigmoid": "Sigmoid()",
    "silu": "Silu()",
    "softmax": "Softmax(dim=..., scale=...)",
    "maximum": "Maximum()",
    "minimum": "Minimum()",
    "transpose": "Transpose()",
    "T": "Transpose()",
    "mT": "Transpose()",
    "permute": "Transpose()",
    "reshape": "Reshape(-1, rows, cols)",
    "view": "Reshape(-1, rows, cols)",
    "flatten": "Reshape(-1, rows, cols)",
    "kron": "Kron(dim=...)",
    "topk": "end forward_indexer with topK()(score, o, ctx=ctx)",
    "eq": "WhereEqual() (0 where equal, -1e30 elsewhere: an additive mask)",
    "ne": "WhereNotEqual()",
    "gt": "WhereGreater()",
    "ge": "WhereGreaterEqual()",
    "lt": "WhereLess()",
    "le": "WhereLessEqual()",
    "where": "use a Where* op (WhereGreater(), ...) and Add to apply the mask",
    "getitem": _INDEX_HINT,
    "setitem": "flow tensors are read-only; write a cache field by passing it as an op's output",
    "float": _CAST_HINT,
    "half": _CAST_HINT,
    "bfloat16": _CAST_HINT,
    "to": _CAST_HINT,
    "type": _CAST_HINT,
    "contiguous": "remove the call: Vortex lays tensors out itself",
    "clone": "remove the call: op outputs are fresh tensors already",
    "bool": "Python control flow cannot depend on tensor values; use a Where* op to build an additive mask",
    "item": "a flow cannot read tensor values at trace time; compute with ops instead",
    "tolist": "a flow cannot read tensor values at trace time; compute with ops instead",
    "cpu": "remove the call: flow tensors live where Vortex puts them",
    "cuda": "remove the call: flow tensors live where Vortex puts them",
}
_SYMBOLS = {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "matmul": "@", "pow": "**",
    "mod": "%", "and": "&", "or": "|", "xor": "^", "lshift": "<<", "rshift": ">>", "neg": "unary -",
    "pos": "unary +", "invert": "~", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
    "getitem": "[] (indexing)", "setitem": "[]= (item assignment)", "delitem": "del []", "contains": "in",
}  # fmt: skip
_REFLECTED = {
    "radd",
    "rsub",
    "rmul",
    "rtruediv",
    "rfloordiv",
    "rmatmul",
    "rpow",
    "rmod",
    "rand",
    "ror",
    "rxor",
}


def native_op_hint(what: str) -> str:
    """The Vortex replacement for a native torch operation (``"mean"``, ``"__mul__"``, ``".float"``)."""
    key = what.lstrip(".").strip("_").removesuffix("()")
    if key in _REFLECTED:
        key = key[1:]
    return _NATIVE_HINTS.get(key, "")


def _display(what: str) -> str:
    key = what.strip("_")
    if what.startswith("__") and key in _REFLECTED:
        key = key[1:]
    if what.startswith("__") and key in _SYMBOLS:
        return f"operator {_SYMBOLS[key]}"
    if what.startswith("__"):
        return f"{key}()"
    return what


def _native_op_error(what: str, t: vTensor | None = None) -> FlowRuleError:
    site = user_callsite()
    target = f" on {t.describe()}" if t is not None else " on a traced flow tensor"
    hint = native_op_hint(what)
    if not hint:
        fix = "express the computation with the ops of vortex_torch.indexer / vortex_torch.cache"
    elif re.match(r"[A-Z]\w*\(", hint):  # starts with an op: Mean(dim=...)
        fix = f"use {hint} (ops of vortex_torch.indexer in forward_indexer, of vortex_torch.cache in forward_cache)"
    else:
        fix = hint
    return FlowRuleError(
        f"native torch operation {_display(what)!r}{target}{at(site)}. Flow methods are traced, not run: every tensor "
        f"must go through Vortex ops. Fix: {fix}."
    )


class NativeAttributeError(FlowRuleError, AttributeError):
    """A native tensor attribute (``q.mean``, ``q.float``) used in flow code. Also an ``AttributeError``, so
    ``hasattr(q, "mean")`` and ``getattr(q, "mean", None)`` keep their usual meaning."""


@dataclass(eq=False)
class vTensor:
    """Metadata of a rank-3 flow tensor ``[L, D0, D1]``; ``L`` is symbolic (its meaning is ``format``).

    Tracing hands these to ``forward_indexer``/``forward_cache`` in place of real tensors, so any native
    torch operation on them raises :class:`FlowRuleError` naming the offending line.
    """

    inner: tuple[int, int]
    format: FORMAT
    dtype: torch.dtype
    tensor_id: int
    name: str = ""
    producer_site: CallSite | None = field(default=None, repr=False)
    #: which trace (``ContextBase.trace_id``) made this tensor; 0 = none. Tensors cannot cross traces.
    trace_id: int = field(default=0, repr=False)
    #: the name the flow author sees when it differs from ``name`` (an MLA flow's ``cache["latent"]`` is the
    #: framework's ``"k"`` buffer); messages use it
    label: str = field(default="", repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(-1, D0, D1)``: the leading axis has no fixed size at trace time."""
        return (-1, self.inner[0], self.inner[1])

    def __repr__(self) -> str:
        shown = self.label or self.name
        label = f"{shown!r}, " if shown else ""
        return f"vTensor({label}{self.format.name}, [*, {self.inner[0]}, {self.inner[1]}], {self.dtype})"

    def describe(self) -> str:
        """``'q' (BATCHED [*, 4, 128])`` or ``a RAGGED [*, 1, 1] tensor``, for messages."""
        shape = f"[*, {self.inner[0]}, {self.inner[1]}]"
        if self.label or self.name:
            return f"{self.label or self.name!r} ({self.format.name} {shape})"
        return f"a {self.format.name} {shape} tensor"

    # Two flow tensors compare by identity (graphs keep them in lists and dicts). Comparing one with anything
    # else (``q == 0``) in flow code would be a native torch op that silently yields a Python bool: an error.
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, vTensor) and called_from_user_code():
            raise _native_op_error("__eq__", self)
        return self is other

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, vTensor) and called_from_user_code():
            raise _native_op_error("__ne__", self)
        return self is not other

    # -- guards: tracing must never silently run native torch code on a symbolic tensor --------------------
    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, vTensor)]
        if not tensors:  # torch.cat([q, k]) passes a list
            tensors = [b for a in args if isinstance(a, (list, tuple)) for b in a if isinstance(b, vTensor)]
        raise _native_op_error(getattr(func, "__name__", str(func)), tensors[0] if tensors else None)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: ``q.mean``, ``q.float``, ``q.T``. Vortex's own code and
        # libraries probing with hasattr() get a plain AttributeError.
        if name.startswith("__") or not called_from_user_code():
            raise AttributeError(name)
        err = _native_op_error(f".{name}", self)
        raise NativeAttributeError(str(err), name=name, obj=self)

    def __bool__(self) -> bool:
        raise _native_op_error("bool()", self)

    def __getitem__(self, key: object) -> Any:
        raise _native_op_error("__getitem__", self)

    def __setitem__(self, key: object, value: object) -> None:
        raise _native_op_error("__setitem__", self)

    def __iter__(self) -> Any:
        raise _native_op_error("iteration", self)

    def __len__(self) -> int:
        raise _native_op_error("len()", self)

    def __contains__(self, item: object) -> bool:
        raise _native_op_error("__contains__", self)


def _install_operator_guards() -> None:
    names = [
        "add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv", "rfloordiv",
        "matmul", "rmatmul", "pow", "rpow", "neg", "pos", "abs", "lt", "le", "gt", "ge", "mod", "rmod",
        "and", "rand", "or", "ror", "xor", "rxor", "invert", "lshift", "rshift", "divmod", "rdivmod",
        "float", "int", "index", "complex", "round", "floor", "ceil", "trunc", "delitem", "reversed", "array",
    ]  # fmt: skip
    for short in names:
        dunder = f"__{short}__"

        def guard(self: vTensor, *args: Any, _name: str = dunder) -> Any:
            raise _native_op_error(_name, self)

        setattr(vTensor, dunder, guard)


_install_operator_guards()
