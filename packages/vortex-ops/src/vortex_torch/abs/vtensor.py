"""``vTensor``: the symbolic tensor a flow's methods see while Vortex traces them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .callsite import CallSite, at, user_callsite
from .errors import FlowRuleError
from .formats import FORMAT


def _native_op_error(what: str) -> FlowRuleError:
    site = user_callsite()
    return FlowRuleError(
        f"native torch operation {what!r} used on a traced flow tensor{at(site)}. Inside create_cache, "
        "forward_cache and forward_indexer every tensor must go through vortex_torch.indexer / "
        "vortex_torch.cache ops (e.g. use vortex_torch.indexer.Mean(dim=1) instead of q.mean(dim=1))."
    )


@dataclass(eq=False)
class vTensor:  # noqa: N801 - the name users know from the original project
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

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(-1, D0, D1)``: the leading axis has no fixed size at trace time."""
        return (-1, self.inner[0], self.inner[1])

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"vTensor({label}{self.format.name}, [*, {self.inner[0]}, {self.inner[1]}], {self.dtype})"

    # -- guards: tracing must never silently run native torch code on a symbolic tensor --------------------
    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        raise _native_op_error(getattr(func, "__name__", str(func)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _native_op_error(f".{name}")

    def __bool__(self) -> bool:
        raise _native_op_error("bool()")

    def __getitem__(self, key: object) -> Any:
        raise _native_op_error("indexing []")

    def __iter__(self) -> Any:
        raise _native_op_error("iteration")

    def __len__(self) -> int:
        raise _native_op_error("len()")


def _install_operator_guards() -> None:
    names = [
        "add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv", "rfloordiv",
        "matmul", "rmatmul", "pow", "rpow", "neg", "pos", "abs", "lt", "le", "gt", "ge", "mod", "and",
        "or", "xor", "invert",
    ]  # fmt: skip
    for short in names:
        dunder = f"__{short}__"

        def guard(self: vTensor, *args: Any, _name: str = dunder) -> Any:
            raise _native_op_error(f"operator {_name}")

        setattr(vTensor, dunder, guard)


_install_operator_guards()
