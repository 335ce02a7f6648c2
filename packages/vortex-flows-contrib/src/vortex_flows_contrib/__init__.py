"""Ready-made Vortex sparse-attention flows, one sub-package per flow.

Each sub-package ``vortex_flows_contrib.<name>`` defines one :class:`vortex_torch.flow.vFlow` registered as
``<name>`` and is listed in the ``vortex_flow.flows`` entry-point group of this distribution, so
``build_vflow("<name>")`` finds it once the package is installed; importing this top-level package imports
no flow. ``packages/vortex-flows-contrib/README.md`` indexes them with measured needle recall and attention
error.
"""

from .__about__ import __version__

__all__ = ["__version__"]
