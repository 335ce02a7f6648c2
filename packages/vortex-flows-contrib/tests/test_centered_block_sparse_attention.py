"""The flow contract for ``centered_block_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestCenteredBlockSparseAttention(FlowContractTests):
    flow_name = "centered_block_sparse_attention"
