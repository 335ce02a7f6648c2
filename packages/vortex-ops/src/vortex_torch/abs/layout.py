"""The KV pool layout (docs/design.md §2) and the dense block list of a decode step (§3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PoolLayout:
    """How a block id addresses SGLang's native per-layer K/V buffers ``[num_slots, H_kv, D]`` (design §2).

    ``page_size`` is SGLang's allocation unit (token slots, all heads); ``block_size`` (a power of two)
    divides it. A block is ``block_size`` consecutive slots of one page and one KV head; K/V are never copied
    into a block-contiguous layout, every reader computes the addresses of a block's tokens from its id. Aux
    fields are ``[num_blocks, r, c]`` tensors indexed by block id directly.

    ``block_page``/``block_head``/``block_sub`` are elementwise on integer tensors of any shape.
    """

    page_size: int
    block_size: int
    num_kv_heads: int

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.page_size <= 0 or self.page_size % self.block_size:
            raise ValueError(
                f"page_size ({self.page_size}) must be a positive multiple of block_size ({self.block_size})"
            )
        if self.num_kv_heads <= 0:
            raise ValueError(f"num_kv_heads must be positive, got {self.num_kv_heads}")

    @property
    def blocks_per_page(self) -> int:
        """``bpp = page_size // block_size``: blocks of one head in one page."""
        return self.page_size // self.block_size

    def num_blocks(self, num_pages: int) -> int:
        return num_pages * self.num_kv_heads * self.blocks_per_page

    # -- slot, head -> block ---------------------------------------------------------------------------
    def block_id(self, slots: torch.Tensor, head: torch.Tensor | int) -> torch.Tensor:
        """Block holding token slot ``slots`` of ``head`` (broadcast shape of ``slots`` and ``head``)."""
        page, offset = slots // self.page_size, slots % self.page_size
        return (page * self.num_kv_heads + head) * self.blocks_per_page + offset // self.block_size

    def completes_block(self, slots: torch.Tensor) -> torch.Tensor:
        """True where writing ``slots`` fills the last token of its block (slots are filled in order)."""
        return (slots + 1) % self.block_size == 0

    # -- block -> page, head, slots, offsets -----------------------------------------------------------
    def block_page(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Page of each block: ``b // (H_kv * bpp)``."""
        return block_ids // (self.num_kv_heads * self.blocks_per_page)

    def block_head(self, block_ids: torch.Tensor) -> torch.Tensor:
        """KV head of each block: ``(b // bpp) % H_kv``."""
        return (block_ids // self.blocks_per_page) % self.num_kv_heads

    def block_sub(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Index of each block inside its page (for its head): ``b % bpp``."""
        return block_ids % self.blocks_per_page

    def block_token_slots(self, block_ids: torch.Tensor) -> torch.Tensor:
        """``block_ids [N]`` -> ``[N, block_size] int64``: the token slots each block covers, in order."""
        ids = block_ids.long()
        first = self.block_page(ids) * self.page_size + self.block_sub(ids) * self.block_size  # [N]
        return first[:, None] + torch.arange(self.block_size, dtype=torch.int64, device=ids.device)[None, :]

    def kv_offsets(self, block_ids: torch.Tensor, head_dim: int) -> torch.Tensor:
        """``block_ids [N]`` -> ``[N, block_size] int64``: element offset of ``d = 0`` of every token of each
        block in a contiguous ``[num_slots, H_kv, D]`` buffer (element ``d`` is at offset ``+ d``)::

            page * (page_size * H_kv * D) + head * D + (sub * block_size + t) * (H_kv * D)
        """
        ids = block_ids.long()
        row = self.num_kv_heads * head_dim  # elements per token slot
        return self.block_token_slots(ids) * row + (self.block_head(ids) * head_dim)[:, None]

    def gather_blocks(self, buffer: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
        """``buffer [num_slots, H_kv, D]``, ``block_ids [N]`` -> ``[N, block_size, D]`` (a copy, same dtype).

        The plain-PyTorch reference of how kernels read a block's K or V; any strides are accepted.
        """
        if buffer.dim() != 3 or buffer.shape[1] != self.num_kv_heads:
            raise ValueError(
                f"expected a K/V buffer [num_slots, H_kv={self.num_kv_heads}, D], got {tuple(buffer.shape)}"
            )
        ids = block_ids.to(device=buffer.device, dtype=torch.int64).reshape(-1)
        return buffer[self.block_token_slots(ids), self.block_head(ids)[:, None]]


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
