"""The flow contract for ``streaming_llm`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestStreamingLLM(FlowContractTests):
    flow_name = "streaming_llm"
    min_needle_recall = 0.0  # sinks + recent window: it does not retrieve, by design
