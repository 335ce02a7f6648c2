"""What the leading axis of a flow tensor indexes (docs/design.md §4)."""

from __future__ import annotations

import enum


class FORMAT(enum.IntEnum):
    """Leading-axis meaning of a rank-3 flow tensor ``[L, D0, D1]``.

    * ``BATCHED``: one row per (request, kv-head) — ``q`` and ``Reduce(dim=0)`` outputs.
    * ``RAGGED``: one row per dense block, packed over all rows — scores and intermediates.
    * ``PAGED``: one row per block id of the KV pool — cache fields.
    """

    BATCHED = 0
    RAGGED = 1
    PAGED = 2


def combined_format(*formats: FORMAT) -> FORMAT:
    """Output format of an op over inputs of these formats: BATCHED only if every input is BATCHED.

    A PAGED input is read at the dense block list, so it counts as RAGGED.
    """
    return FORMAT.BATCHED if all(f == FORMAT.BATCHED for f in formats) else FORMAT.RAGGED
