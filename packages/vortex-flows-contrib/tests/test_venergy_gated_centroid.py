"""The flow contract for ``venergy_gated_centroid`` (vortex_torch.flow.testing)."""

from vortex_torch.flow.testing import FlowContractTests


class TestVEnergyGatedCentroid(FlowContractTests):
    flow_name = "venergy_gated_centroid"
