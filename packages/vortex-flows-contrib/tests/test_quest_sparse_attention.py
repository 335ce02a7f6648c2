"""The flow contract for ``quest_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestQuestSparseAttention(FlowContractTests):
    flow_name = "quest_sparse_attention"
