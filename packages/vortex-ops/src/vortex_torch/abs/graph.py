"""The op graph a traced flow method produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .callsite import CallSite
from .vtensor import vTensor

if TYPE_CHECKING:
    from .op import vOp


@dataclass(eq=False)
class OpNode:
    """One op call: ``output = op(*inputs)``, optionally persisted into the cache field ``writes``."""

    op: vOp
    inputs: tuple[vTensor, ...]
    output: vTensor | None
    writes: str | None = None
    site: CallSite | None = None

    @property
    def label(self) -> str:
        return f"{type(self.op).__name__}#{self.output.tensor_id if self.output else 'sink'}"


@dataclass(eq=False)
class Graph:
    """Nodes in call order plus the named entry tensors (``q``, ``o`` and the cache fields)."""

    side: str
    nodes: list[OpNode] = field(default_factory=list)
    entries: dict[str, vTensor] = field(default_factory=dict)
    _next_id: int = 0

    def new_tensor(self, inner: tuple[int, int], fmt: object, dtype: object, name: str = "") -> vTensor:
        from .formats import FORMAT

        assert isinstance(fmt, FORMAT)
        t = vTensor(inner=inner, format=fmt, dtype=dtype, tensor_id=self._next_id, name=name)  # type: ignore[arg-type]
        self._next_id += 1
        return t

    def producers(self) -> dict[int, OpNode]:
        """tensor_id -> node that computed it."""
        return {n.output.tensor_id: n for n in self.nodes if n.output is not None}

    def written_fields(self) -> set[str]:
        return {n.writes for n in self.nodes if n.writes is not None and n.writes != "o"}

    def read_fields(self) -> set[str]:
        names = {t.tensor_id: name for name, t in self.entries.items()}
        return {names[t.tensor_id] for n in self.nodes for t in n.inputs if t.tensor_id in names}
