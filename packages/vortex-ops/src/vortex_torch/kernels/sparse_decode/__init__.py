"""Sparse paged decode attention: attend each row's queries to the KV blocks of its CSR selection.

``sparse_decode_attention`` is the Triton kernel, ``sparse_decode_attention_reference`` the plain-PyTorch
reference that defines its semantics (``docs/design.md`` §3, step 3). Both read K/V in place from SGLang's
native ``[num_slots, H_kv, D]`` buffers, addressing each block through its id (§2)::

    sparse_decode_attention(q, k_cache, v_cache, indptr, indices, last_block_len,
                            page_size=..., block_size=..., sm_scale=None, out=None,
                            max_blocks_per_row=None, return_lse=False)
"""

from .reference import sparse_decode_attention_reference
from .triton_kernel import sparse_decode_attention

__all__ = ["sparse_decode_attention", "sparse_decode_attention_reference"]
