"""What ``vortex check`` was asked to do: the parsed command line, passed to the worker process as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

#: needle recall a flow must reach unless it declares ``expected_min_recall`` or ``--min-recall`` is given
DEFAULT_MIN_RECALL = 0.9
#: seconds a flow gets to import, construct and trace (``--timeout``)
DEFAULT_TIMEOUT_S = 60.0
#: needles avoid the first and last block of a context (bos/eos keep those anyway)
EDGE_BLOCKS = 1
#: ``--aux-dtype`` values (``VortexConfig.dtype``'s names) -> the ``torch`` dtype attribute the aux fields get
AUX_DTYPES: dict[str, str] = {
    "bfloat16": "bfloat16",
    "float16": "float16",
    "float32": "float32",
    "fp8_e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
}
#: the aux dtype of a check without ``--aux-dtype``, and the baseline an ``--aux-dtype`` run is compared with
BASELINE_AUX_DTYPE = "bfloat16"


@dataclass(frozen=True)
class CheckOptions:
    """The settings of one check; every field was validated by the CLI's parser."""

    flow: str
    name: str | None = None
    contexts: tuple[int, ...] = (4096, 8192, 16384, 32768)
    budget: float = 1 / 16
    needles: int = 4
    block_size: int = 16
    head_dim: int = 128
    group_size: int = 4
    kv_heads: int = 2
    #: MLA geometry, used when the flow is a vFlowMLA (DeepSeek-V2-Lite's attention by default): one latent head
    #: of kv_lora_rank + qk_rope_head_dim, mla_heads absorbed query heads
    kv_lora_rank: int = 512
    qk_rope_head_dim: int = 64
    mla_heads: int = 16
    seed: int = 0
    min_recall: float | None = None  # None: the flow's expected_min_recall, else DEFAULT_MIN_RECALL
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: ``--aux-dtype``: measure with the aux fields stored in this dtype (a key of :data:`AUX_DTYPES`) and compare
    #: with :data:`BASELINE_AUX_DTYPE`; ``None``: measure in the baseline dtype only, no comparison
    aux_dtype: str | None = None

    @property
    def is_file(self) -> bool:
        return flow_is_file(self.flow)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CheckOptions:
        raw = json.loads(text)
        raw["contexts"] = tuple(raw["contexts"])
        return cls(**raw)


def flow_is_file(flow: str) -> bool:
    """Whether the FLOW argument names a file (``*.py``, a path, an existing file) rather than a registered
    flow name (names never contain a path separator or end in ``.py``)."""
    return flow.endswith(".py") or os.sep in flow or (os.altsep or os.sep) in flow or os.path.isfile(flow)


def min_context(needles: int, block_size: int) -> int:
    """The shortest context (tokens) that can hold ``needles`` needles outside the edge blocks."""
    inner_blocks = max(1, -(-needles // block_size))
    return (2 * EDGE_BLOCKS + inner_blocks - 1) * block_size + 1
