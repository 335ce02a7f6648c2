"""The flow contract for ``masked_quest_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestMaskedQuestSparseAttention(FlowContractTests):
    flow_name = "masked_quest_sparse_attention"
