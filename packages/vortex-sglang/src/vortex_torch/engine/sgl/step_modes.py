"""Decode step modes: sparse, or dense below ``VortexConfig.sparse_decode_min_tokens`` (design §3).

A step decodes sparsely only when its requests hold at least that many tokens in all: what a sparse step saves
is the KV bytes a dense one reads, which grow with the batch's total length, while what it adds (the indexer and
the selection, two more dependent launches per layer) is nearly fixed.

A dense step runs the base backend's own decode in every layer. Its only Vortex work is ``forward_cache`` for the
blocks the step's tokens complete, so a dense step in which no request completes a block runs exactly plain
SGLang's kernels. Each mode has its own CUDA graphs (plugin hooks 7 and 8), told apart by ``ShapeKey``'s
``variant_label``; the mode of a step is decided on the host from ``seq_lens_cpu``, which SGLang keeps anyway.
"""

from __future__ import annotations

import torch

SPARSE = "sparse"
#: dense, no request completes a block: no Vortex launch at all
DENSE = "dense"
#: dense, and a request's new token completes a block: one ``forward_cache`` launch per flow layer too
DENSE_CACHE = "dense-cache"
#: every mode, in the order the capture hook captures their graphs
STEP_MODES = (SPARSE, DENSE, DENSE_CACHE)
#: ``ShapeKey.variant_label`` of each mode's CUDA graphs (None: SGLang's own key)
GRAPH_LABELS: dict[str, str | None] = {SPARSE: None, DENSE: "vortex-dense", DENSE_CACHE: "vortex-dense-cache"}


def host_step_mode(seq_lens_cpu: torch.Tensor, batch_size: int, min_tokens: int, block_size: int) -> str:
    """The mode of a decode step whose requests have lengths ``seq_lens_cpu[:batch_size]`` (host int tensor, the
    step's new token included; the batch's own requests, not CUDA-graph padding): :data:`SPARSE` unless the
    lengths sum to fewer than ``min_tokens`` (``<= 0``: always sparse); then :data:`DENSE_CACHE` when some length
    is a multiple of ``block_size`` (the new token is the last of its block, whose summary is written now), else
    :data:`DENSE`."""
    lens = seq_lens_cpu[:batch_size]
    if min_tokens <= 0 or batch_size <= 0 or int(lens.sum()) >= min_tokens:
        return SPARSE
    return DENSE_CACHE if bool((lens % block_size == 0).any()) else DENSE
