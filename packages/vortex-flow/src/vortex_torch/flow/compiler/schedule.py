"""From a traced graph to kernels: dead-op removal, then fusion of consecutive fusable ops into one kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

from vortex_torch import indexer as ix
from vortex_torch.abs.errors import VortexError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import Graph, OpNode
from vortex_torch.abs.op import Schedule


class CompileError(VortexError):
    """A valid flow that this compiler backend cannot lower (the message says what to change)."""


def live_nodes(graph: Graph) -> list[OpNode]:
    """Nodes that contribute to a side effect (selection, Save, a cache-field write), in call order."""
    producers = graph.producers()
    live: set[int] = set()
    stack = [n for n in graph.nodes if n.writes is not None]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        stack.extend(producers[t.tensor_id] for t in node.inputs if t.tensor_id in producers)
    return [n for n in graph.nodes if id(n) in live]


@dataclass
class KernelGroup:
    """One launch: a run of ``Schedule.FUSED`` ops, one ``STANDALONE`` op or the ``SELECT`` terminal
    (``kind``, a ``str`` enum: ``"fused"``, ``"standalone"``, ``"select"``)."""

    kind: Schedule
    nodes: list[OpNode] = field(default_factory=list)

    @property
    def ragged(self) -> bool:
        """Whether the kernel iterates over blocks (else over rows only)."""
        return any(
            (n.output is not None and n.output.format != FORMAT.BATCHED) or n.writes is not None
            for n in self.nodes
        )


def group_nodes(nodes: list[OpNode]) -> list[KernelGroup]:
    """Fuse maximal runs of consecutive ``FUSED`` ops; a ``STANDALONE`` op and the ``SELECT`` terminal each get
    a kernel of their own."""
    groups: list[KernelGroup] = []
    for node in nodes:
        kind = node.op.schedule
        if kind == Schedule.FUSED and groups and groups[-1].kind == Schedule.FUSED:
            groups[-1].nodes.append(node)
        else:
            groups.append(KernelGroup(kind, [node]))
    _check_state_order(groups)
    return groups


def _check_state_order(groups: list[KernelGroup]) -> None:
    """A field saved in kernel i must not be read by a later kernel: it would see this step's value."""
    saved_in: dict[str | None, int] = {}  # field -> the first kernel that Saves it
    for i, g in enumerate(groups):
        for n in g.nodes:
            if isinstance(n.op, ix.Save):
                saved_in.setdefault(n.writes, i)
    for i, g in enumerate(groups):
        for n in g.nodes:
            for t in n.inputs:
                j = saved_in.get(t.name) if t.name else None
                if j is not None and i > j:
                    fix = (
                        "select on a value computed before the Save (e.g. Load the field) instead"
                        if isinstance(n.op, ix.topK)
                        else "move the Save after every read of the field"
                    )
                    raise CompileError(
                        f"field {t.name!r} is read by {n.op.name} (at {n.site}) in a kernel after the one that Saves "
                        f"it, where this backend would see this step's value instead of the previous one; {fix}"
                    )


def materialized(groups: list[KernelGroup]) -> set[int]:
    """Tensor ids computed in one kernel and used by another: they go through global memory."""
    where: dict[int, int] = {}
    for i, g in enumerate(groups):
        for n in g.nodes:
            if n.output is not None:
                where[n.output.tensor_id] = i
    out: set[int] = set()
    for i, g in enumerate(groups):
        for n in g.nodes:
            out.update(t.tensor_id for t in n.inputs if t.tensor_id in where and where[t.tensor_id] != i)
    return out
