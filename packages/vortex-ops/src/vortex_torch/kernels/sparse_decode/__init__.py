"""Sparse paged decode attention: attend each row's queries to the KV blocks of its CSR selection.

``sparse_decode_attention`` is the Triton kernel, ``sparse_decode_attention_naive`` the plain-PyTorch
reference that defines its semantics (``docs/design.md`` §3, step 3).
"""

from .naive import sparse_decode_attention_naive
from .triton_kernel import sparse_decode_attention

__all__ = ["sparse_decode_attention", "sparse_decode_attention_naive"]
