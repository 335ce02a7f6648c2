"""Indexer ops: what ``forward_indexer`` may call. They run every decode step in every sparse layer.

Shapes are given in the user's per-sequence view ``[S, D0, D1]`` (``S`` = blocks of the row); BATCHED
operands such as the query broadcast over ``S``. See docs/design.md §4.
"""

from .context import Context
from .elementwise import (
    MASKED,
    Abs,
    Add,
    Add_Mul,
    Exp,
    Log,
    Maximum,
    Minimum,
    Multiply,
    Relu,
    Sigmoid,
    Silu,
    WhereEqual,
    WhereGreater,
    WhereGreaterEqual,
    WhereLess,
    WhereLessEqual,
    WhereNotEqual,
)
from .matmul import GeMM, GeMV
from .output import approxTopK, topK
from .reduce import L2Norm, Max, Mean, Min, Sum
from .segment import Conv1d, Normalize, Softmax
from .shape import Kron, MaskSlice, Reshape, Transpose
from .state import Load, Save

__all__ = [
    "MASKED",
    "Abs",
    "Add",
    "Add_Mul",
    "Context",
    "Conv1d",
    "Exp",
    "GeMM",
    "GeMV",
    "Kron",
    "L2Norm",
    "Load",
    "Log",
    "MaskSlice",
    "Max",
    "Maximum",
    "Mean",
    "Min",
    "Minimum",
    "Multiply",
    "Normalize",
    "Relu",
    "Reshape",
    "Save",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Sum",
    "Transpose",
    "WhereEqual",
    "WhereGreater",
    "WhereGreaterEqual",
    "WhereLess",
    "WhereLessEqual",
    "WhereNotEqual",
    "approxTopK",
    "topK",
]
