"""The flow contract for ``rope_unaware_block_sparse_mla`` (vortex_torch.flow.testing), on a small MLA geometry."""

from vortex_torch.abs.mla import MLAGeometry
from vortex_torch.flow.testing import FlowContractTests


class TestRopeUnawareBlockSparseMLA(FlowContractTests):
    flow_name = "rope_unaware_block_sparse_mla"
    geometry = MLAGeometry.of(block_size=16, kv_lora_rank=32, qk_rope_head_dim=16, num_heads=4)
