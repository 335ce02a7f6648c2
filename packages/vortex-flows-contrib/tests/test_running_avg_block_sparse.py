"""The flow contract for ``running_avg_block_sparse`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestRunningAvgBlockSparse(FlowContractTests):
    flow_name = "running_avg_block_sparse"
