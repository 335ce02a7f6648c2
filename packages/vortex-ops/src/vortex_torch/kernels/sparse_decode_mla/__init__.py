"""Sparse paged MLA decode attention: each request's absorbed queries attend to the latent blocks of its CSR
selection, and the output is the ``kv_lora_rank``-wide mix of the latents' ``kv_c`` columns.

``sparse_mla_decode`` is the Triton kernel, ``sparse_mla_decode_reference`` the plain-PyTorch reference that defines
its semantics. Both read the latents in
place from SGLang's ``[num_slots, 1, kv_lora_rank + qk_rope_head_dim]`` MLA buffer (design §2 with one head)::

    sparse_mla_decode_reference(q, latent_cache, indptr, indices, last_block_len,
                            page_size=..., block_size=..., v_head_dim=kv_lora_rank, sm_scale=..., out=None,
                            max_blocks_per_row=None, return_lse=False)
"""

from .reference import check_mla_inputs, sparse_mla_decode_reference
from .triton_kernel import SparseMLADecodeWorkspace, sparse_mla_decode

__all__ = ["SparseMLADecodeWorkspace", "check_mla_inputs", "sparse_mla_decode", "sparse_mla_decode_reference"]
