"""Vortex: programmable sparse attention for LLM serving.

``vortex_torch`` is shared by several distributions: vortex-ops owns this file and the core subpackages
(``abs``, ``indexer``, ``cache``, ``kernels``); vortex-flow adds ``vortex_torch.flow`` and vortex-sglang
``vortex_torch.engine``. Importing the package stays light (no subpackage is imported here) and calls the
``vortex_torch.plugins`` entry points once per process (see :mod:`vortex_torch._plugins`).
"""

from pkgutil import extend_path

from vortex_torch.__about__ import __version__
from vortex_torch._plugins import PluginLoadError, autoload_disabled, load_plugins

# Editable installs keep each distribution's ``src/vortex_torch`` in its own directory: let the other
# distributions' subpackages (``vortex_torch.flow``, ``vortex_torch.engine``) be found there too.
__path__ = extend_path(__path__, __name__)

__all__ = ["PluginLoadError", "__version__", "load_plugins"]

if not autoload_disabled():
    load_plugins()
