"""The flow contract for ``h2o_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestH2OSparseAttention(FlowContractTests):
    flow_name = "h2o_sparse_attention"
