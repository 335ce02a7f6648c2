"""Decode step modes: sparse, or dense below ``VortexConfig.sparse_decode_threshold`` (design §3).

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


def host_step_mode(seq_lens_cpu: torch.Tensor, batch_size: int, threshold: int, block_size: int) -> str:
    """The mode of a decode step whose requests have lengths ``seq_lens_cpu[:batch_size]`` (host int tensor, the
    step's new token included; the batch's own requests, not CUDA-graph padding): :data:`SPARSE` unless every length is below
    ``threshold``; then :data:`DENSE_CACHE` when some length is a multiple of ``block_size`` (the new token is
    the last of its block, whose summary is written now), else :data:`DENSE`."""
    lens = seq_lens_cpu[:batch_size]
    if threshold <= 0 or batch_size <= 0 or int(lens.max()) >= threshold:
        return SPARSE
    return DENSE_CACHE if bool((lens % block_size == 0).any()) else DENSE
