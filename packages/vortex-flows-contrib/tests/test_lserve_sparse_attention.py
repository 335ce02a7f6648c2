"""The flow contract for ``lserve_sparse_attention`` (vortex_torch.flow.testing)."""

from vortex_torch.abs import Geometry
from vortex_torch.flow.testing import FlowContractTests


class TestLServeSparseAttention(FlowContractTests):
    flow_name = "lserve_sparse_attention"
    geometry = Geometry(block_size=32, head_dim=32, group_size=2)  # two 16-token sub-blocks
