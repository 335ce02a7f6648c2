"""The checks of the fields ``RuntimeConfig`` (vortex-flow) and ``VortexConfig`` (vortex-sglang) share.

Both configs name the same knobs (``block_size``, ``topk_val``, ``topk_ratio``, ``block_reserved_bos``,
``block_reserved_eos``, ``layers_skip``), so they check them here, once, with the same text; each raises its
own :class:`ConfigFieldError` subclass so the message starts with its class name (``VortexConfig.topk_val:
...``). This module is in vortex-ops, which both distributions depend on, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from .errors import VortexError

#: budgets, block counts and sequence lengths live in int32 tensors (planner, kernels)
INT32_MAX = 2**31 - 1


class ConfigFieldError(VortexError, ValueError):
    """An invalid config value; the message is ``<owner>.<field>: <what is wrong and how to fix it>``."""

    owner: ClassVar[str] = "config"

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{self.owner}.{field_name}: {message}")
        self.field = field_name


#: builds the error a config raises: ``error(field_name, message)`` (its ConfigFieldError subclass)
ErrorFactory = Callable[[str, str], Exception]


def is_int(value: object) -> bool:
    """An int that is not a bool (``True`` is an ``int`` to Python, never a block count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_pow2(value: Any) -> bool:
    return is_int(value) and value > 0 and value & (value - 1) == 0


def check_int(error: ErrorFactory, name: str, value: Any, lo: int, what: str) -> None:
    """``value`` must be an int (not a bool) in ``[lo, INT32_MAX]``; ``what`` says what it counts."""
    if not is_int(value) or not lo <= value <= INT32_MAX:
        kind = "a bool" if isinstance(value, bool) else repr(value)
        raise error(name, f"must be an int in [{lo}, 2**31 - 1] ({what}), got {kind}")


class SharedFields(Protocol):
    """The fields both configs have (read-only here: values are checked, never set)."""

    @property
    def block_size(self) -> Any: ...
    @property
    def topk_val(self) -> Any: ...
    @property
    def topk_ratio(self) -> Any: ...
    @property
    def block_reserved_bos(self) -> Any: ...
    @property
    def block_reserved_eos(self) -> Any: ...
    @property
    def layers_skip(self) -> Any: ...


def check_shared_fields(
    error: ErrorFactory,
    config: SharedFields,
    layers_skip_type: type[list[int]] | type[tuple[int, ...]],
) -> None:
    """Check ``config``'s shared fields in this order; raise ``error(field, message)`` for the first bad one.

    ``layers_skip_type`` is the container the config stores (``list`` for ``VortexConfig``, which JSON
    round-trips; ``tuple`` for the frozen ``RuntimeConfig``).
    """
    block_size, topk_val, topk_ratio = config.block_size, config.topk_val, config.topk_ratio
    block_reserved_bos, block_reserved_eos = config.block_reserved_bos, config.block_reserved_eos
    layers_skip = config.layers_skip
    if not is_pow2(block_size) or block_size > INT32_MAX:
        raise error(
            "block_size", f"must be a power of two (e.g. 16) that divides the page size, got {block_size!r}"
        )
    check_int(error, "topk_val", topk_val, 0, "blocks chosen by score per row")
    check_int(error, "block_reserved_bos", block_reserved_bos, 0, "first blocks always kept")
    check_int(error, "block_reserved_eos", block_reserved_eos, 1, "last blocks always kept; the partial last "
              "block holds the current token and is always attended, so at least 1")  # fmt: skip
    floor = topk_val + block_reserved_bos + block_reserved_eos
    if floor > INT32_MAX:
        raise error(
            "topk_val", f"topk_val + block_reserved_bos + block_reserved_eos = {floor} overflows the int32 "
            "budget; a budget can never exceed the blocks of one sequence, so use a value below that"
        )  # fmt: skip
    ratio = topk_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise error(
            "topk_ratio", f"must be a number in [0, 1] (a fraction of each row's cached blocks, e.g. 0.0625 keeps "
            f"1/16), got {ratio!r}"
        )  # fmt: skip
    kind = layers_skip_type.__name__
    if not isinstance(layers_skip, layers_skip_type) or not all(is_int(i) and i >= 0 for i in layers_skip):
        example = "[0, 1]" if layers_skip_type is list else "(0, 1)"
        raise error(
            "layers_skip", f"must be a {kind} of layer ids (ints >= 0), e.g. {example}, got {layers_skip!r}"
        )
