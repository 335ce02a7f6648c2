"""The flow contract for ``gqa_block_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestGQABlockSparseAttention(FlowContractTests):
    flow_name = "gqa_block_sparse_attention"
