"""The flow contract for ``streaming_llm`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestStreamingLLM(FlowContractTests):
    flow_name = "streaming_llm"  # no recall bar: the class declares expected_min_recall = None
