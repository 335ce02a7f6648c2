"""The flow contract for ``block_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestBlockSparseAttention(FlowContractTests):
    flow_name = "block_sparse_attention"
