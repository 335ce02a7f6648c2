"""Abstractions shared by every Vortex package: tensor formats, the symbolic ``vTensor``, ``vOp`` and ``ContextBase``."""

from .callsite import CallSite
from .context import ContextBase, Geometry
from .errors import FlowRuleError, FlowShapeError, VortexError
from .formats import FORMAT, combined_format
from .graph import Graph, OpNode
from .layout import PoolLayout
from .op import Schedule, vOp
from .vtensor import vTensor

__all__ = [
    "FORMAT",
    "CallSite",
    "ContextBase",
    "FlowRuleError",
    "FlowShapeError",
    "Geometry",
    "Graph",
    "OpNode",
    "PoolLayout",
    "Schedule",
    "VortexError",
    "combined_format",
    "vOp",
    "vTensor",
]
