"""The flow contract for ``gqa_quest_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestGQAQuestSparseAttention(FlowContractTests):
    flow_name = "gqa_quest_sparse_attention"
