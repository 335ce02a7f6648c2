"""Fused Triton kernels, each beside the plain-PyTorch reference (``naive.py``) that defines it."""
