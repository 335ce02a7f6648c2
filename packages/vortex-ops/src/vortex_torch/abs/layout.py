"""The KV pool layout (docs/design.md §2) and the dense block list of a decode step (§3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PoolLayout:
    """Page-major, head-interleaved pool: block = ``block_size`` tokens of one KV head, contiguous.

    ``page_size`` is SGLang's allocation unit (tokens, all heads); ``block_size`` divides it.
    """

    page_size: int
    block_size: int
    num_kv_heads: int

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.page_size % self.block_size:
            raise ValueError(f"page_size ({self.page_size}) must be a multiple of block_size ({self.block_size})")

    @property
    def blocks_per_page(self) -> int:
        return self.page_size // self.block_size

    def num_blocks(self, num_pages: int) -> int:
        return num_pages * self.num_kv_heads * self.blocks_per_page

    def flat_row(self, slots: torch.Tensor, head: torch.Tensor | int) -> torch.Tensor:
        """Row of the ``[num_pages * H_kv * page_size, D]`` K/V buffer holding token slot ``slots`` of ``head``."""
        page, offset = slots // self.page_size, slots % self.page_size
        return page * (self.page_size * self.num_kv_heads) + head * self.page_size + offset

    def block_id(self, slots: torch.Tensor, head: torch.Tensor | int) -> torch.Tensor:
        """Block holding token slot ``slots`` of ``head`` (same shape as ``slots``)."""
        page, offset = slots // self.page_size, slots % self.page_size
        return (page * self.num_kv_heads + head) * self.blocks_per_page + offset // self.block_size

    def completes_block(self, slots: torch.Tensor) -> torch.Tensor:
        """True where writing ``slots`` fills the last token of its block (slots are filled in order)."""
        return (slots + 1) % self.block_size == 0


@dataclass
class DenseBlocks:
    """Every block of every row of a decode step, as CSR (rows are ``request * H_kv + head``).

    * ``indptr [R+1] int32``, ``indices [nnz] int32``: block ids of each row in position order;
    * ``last_block_len [R] int32``: valid tokens in each row's final block;
    * ``row_of [nnz] int64`` and ``pos [nnz] int64``: row and position of each ragged entry.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    last_block_len: torch.Tensor
    row_of: torch.Tensor
    pos: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def lengths(self) -> torch.Tensor:
        """``[R]`` blocks per row."""
        return (self.indptr[1:] - self.indptr[:-1]).long()

    @classmethod
    def from_token_slots(cls, layout: PoolLayout, slots_per_request: list[torch.Tensor]) -> DenseBlocks:
        """Build from each request's token slots ``[seq_len]`` (SGLang's ``req_to_token`` row, cut to length).

        Reference (host-side) construction; backends build the same lists with their own planners.
        """
        device = slots_per_request[0].device if slots_per_request else torch.device("cpu")
        bs, heads = layout.block_size, layout.num_kv_heads
        indices, lengths, last = [], [], []
        for slots in slots_per_request:
            n_tok = int(slots.numel())
            if n_tok == 0:
                raise ValueError("every request in a decode step has at least one cached token")
            first_slots = slots[::bs].long()  # slot of each block's first token
            for h in range(heads):
                indices.append(layout.block_id(first_slots, h))
                lengths.append(first_slots.numel())
                last.append(n_tok - (first_slots.numel() - 1) * bs)
        return cls.from_lists(indices, lengths, last, device)

    @classmethod
    def from_lists(
        cls, indices: list[torch.Tensor], lengths: list[int], last: list[int], device: torch.device
    ) -> DenseBlocks:
        lens = torch.tensor(lengths, dtype=torch.long, device=device)
        indptr = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
        indptr[1:] = torch.cumsum(lens, 0)
        flat = torch.cat(indices).to(torch.int32) if indices else torch.zeros(0, dtype=torch.int32, device=device)
        row_of = torch.repeat_interleave(torch.arange(len(lengths), device=device), lens)
        pos = torch.arange(flat.numel(), device=device) - indptr[:-1].long()[row_of]
        return cls(
            indptr=indptr,
            indices=flat,
            last_block_len=torch.tensor(last, dtype=torch.int32, device=device),
            row_of=row_of,
            pos=pos,
        )
