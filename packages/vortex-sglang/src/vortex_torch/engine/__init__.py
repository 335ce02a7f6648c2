"""Vortex inside serving engines: ``vortex_torch.engine.sgl`` runs flows as an SGLang attention backend.

Shipped by the vortex-sglang distribution. SGLang itself is an optional dependency (the ``sglang`` extra):
importing this package does not import SGLang.
"""
