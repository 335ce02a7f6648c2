"""The ``ctx`` of ``forward_indexer``."""

from __future__ import annotations

from ..abs.context import ContextBase


class Context(ContextBase):
    """Trace context of ``forward_indexer``: ``q`` is BATCHED ``[B, G, D]``, cache fields PAGED, ``o`` the
    selection slot that the terminal ``topK``/``approxTopK`` fills."""

    side = "indexer"
