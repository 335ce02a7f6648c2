"""vFlow: write a sparse-attention algorithm as a flow, register it by name, trace, check and compile it."""

from .errors import FlowInitError, FlowLoadError, FlowRuleError, FlowShapeError, RegistryError
from .flow import CacheSpec, vFlow, vFlowMLA
from .loader import build_vflow, load_module_file, resolve_flow_class
from .registry import get, has, list_flows, list_keys, register

__all__ = [
    "CacheSpec",
    "FlowInitError",
    "FlowLoadError",
    "FlowRuleError",
    "FlowShapeError",
    "RegistryError",
    "build_vflow",
    "get",
    "has",
    "list_flows",
    "list_keys",
    "load_module_file",
    "register",
    "resolve_flow_class",
    "vFlow",
    "vFlowMLA",
]
