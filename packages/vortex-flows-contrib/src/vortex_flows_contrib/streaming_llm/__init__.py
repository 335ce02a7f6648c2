"""``streaming_llm``: attention sinks plus a recent window, no scoring (StreamingLLM, arXiv:2309.17453)."""

from __future__ import annotations

from typing import Any, ClassVar

from vortex_torch import cache as cx
from vortex_torch import indexer as ix
from vortex_torch.abs import ContextBase, vTensor
from vortex_torch.flow import CacheSpec, register, vFlow

__all__ = ["StreamingLLM"]


@register("streaming_llm")
class StreamingLLM(vFlow):
    """StreamingLLM: sink blocks + recent window, carried by bos/eos; a constant score, no scoring compute.

    The selection is the budget rule's always-kept blocks: the first ``block_reserved_bos`` blocks (the
    attention sinks) and the last ``block_reserved_eos`` blocks (the recent window). Serve it with
    ``topk_val=0, topk_ratio=0`` so that the budget is exactly ``bos + eos`` blocks, e.g.
    ``block_reserved_bos=1, block_reserved_eos=63`` for 16 sink tokens and a ~1k-token window at block 16.

    The op set has no positional op along a row's blocks (``MaskSlice`` is positional only inside a
    block; ``Conv1d`` sees the row's ends but would need a tap per window block, a cost this flow exists to
    avoid), so the score is a constant: a 1x1 field set to 0 by ``Fill`` and handed to ``topK`` as is (one
    gather, no scoring kernel, 2 bytes per block). With a larger budget the extra middle blocks are the
    earliest ones (ties go to the earlier block): a longer sink, not a longer window.
    """

    paper: ClassVar[str] = "Efficient Streaming Language Models with Attention Sinks"
    arxiv: ClassVar[str] = "2309.17453"
    requires_radix_cache_off: ClassVar[bool] = False
    #: not a retrieval flow: it keeps sinks and the recent window whatever the query, so `vortex check` and the
    #: contract test hold it to no needle-recall bar (only to compiled == reference and finite attention)
    expected_min_recall: ClassVar[float | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.select = ix.topK()
        self.flat = cx.Fill(0.0)

    def create_cache(self, block_size: int, head_dim: int) -> CacheSpec:
        return {"flat_score": (1, 1)}

    def forward_cache(self, cache: dict[str, vTensor], loc: Any, ctx: ContextBase) -> None:
        self.flat(cache["flat_score"], loc=loc, ctx=ctx)

    def forward_indexer(self, q: vTensor, o: vTensor, cache: dict[str, vTensor], ctx: ContextBase) -> None:
        self.select(cache["flat_score"], o, ctx=ctx)  # every block ties: bos/eos carry the selection
