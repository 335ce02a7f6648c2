"""The paged KV pool of the reference runtime: SGLang-style page allocation and K/V buffers (design §2)."""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable

import torch

from vortex_torch.abs.layout import PoolLayout

RequestId = Hashable


class OutOfPagesError(RuntimeError):
    """The pool has no free page left for a request's next token."""


class PageAllocator:
    """Free list of page ids ``[reserved, num_pages)``, handed out one page at a time.

    Page ``0`` is reserved by default, like SGLang's padding slot 0: a zero-initialised index then never points
    at live data, so a backend that forgets to fill an index reads garbage instead of silently passing.
    ``shuffle_seed`` shuffles the free list so tests see non-contiguous, out-of-order pages.
    """

    def __init__(self, num_pages: int, *, reserved: int = 1, shuffle_seed: int | None = None) -> None:
        if num_pages <= reserved:
            raise ValueError(f"num_pages={num_pages} leaves no page after the {reserved} reserved one(s)")
        self.num_pages = num_pages
        self.reserved = reserved
        free = list(range(reserved, num_pages))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(free)
        # pop() takes from the end: reverse so that without shuffling pages come out in ascending order
        self._free = free[::-1]

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        """Take ``n`` pages (all or nothing)."""
        if n > len(self._free):
            raise OutOfPagesError(
                f"KV pool exhausted: need {n} more page(s), {len(self._free)} free of {self.num_pages}; "
                "raise num_pages or release finished requests"
            )
        return [self._free.pop() for _ in range(n)]

    def free(self, pages: Iterable[int]) -> None:
        """Return pages; the most recently freed is reused first (as SGLang's allocator does)."""
        self._free.extend(pages)


class PagedKVPool:
    """KV pool of all layers plus the per-request token-slot bookkeeping.

    Pages are shared by all layers: token slot ``s`` of a request is the same in every layer. Per layer the pool
    holds ``"k"``/``"v"`` as SGLang's native ``[num_slots, H_kv, D]`` buffers (``kv_dtype``,
    ``num_slots = num_pages * page_size``; token ``s`` of head ``h`` at ``[s, h]``), and, for layers not in
    ``skip_layers``, every aux field of the flow as ``[num_blocks, r, c]`` (``aux_dtype``) indexed by block
    id, ``num_blocks = num_pages * H_kv * page_size // block_size``. Blocks of K/V are addressed through
    :attr:`layout` (``PoolLayout.gather_blocks`` / ``kv_offsets``), never copied.

    A request's tokens fill its pages in order; a new page is taken when its last page is full (SGLang's paged
    allocator), so slot ``s`` of position ``p`` is ``pages[p // page_size] * page_size + p % page_size``.
    """

    def __init__(
        self,
        layout: PoolLayout,
        num_pages: int,
        num_layers: int,
        head_dim: int,
        aux_fields: dict[str, tuple[int, int]],
        *,
        skip_layers: Iterable[int] = (),
        kv_dtype: torch.dtype = torch.bfloat16,
        aux_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        reserved_pages: int = 1,
        shuffle_seed: int | None = None,
        kv_fields: tuple[str, ...] = ("k", "v"),
    ) -> None:
        self.layout = layout
        self.num_pages = num_pages
        self.num_layers = num_layers
        self.head_dim = head_dim
        self.kv_dtype = kv_dtype
        self.aux_dtype = aux_dtype
        self.device = torch.device(device)
        self.skip_layers = frozenset(skip_layers)
        if kv_fields not in (("k", "v"), ("k",)):
            raise ValueError(f"kv_fields must be ('k', 'v') or ('k',) (an MLA latent pool), got {kv_fields}")
        #: per-token buffers: ("k", "v"), or ("k",) for an MLA pool (the latent, one "head")
        self.kv_fields = kv_fields
        self.allocator = PageAllocator(num_pages, reserved=reserved_pages, shuffle_seed=shuffle_seed)
        self.num_blocks = layout.num_blocks(num_pages)
        self.num_slots = num_pages * layout.page_size
        heads = layout.num_kv_heads
        # per layer: "k"/"v" -> [num_slots, H_kv, D], aux field -> [num_blocks, r, c]
        self._fields: list[dict[str, torch.Tensor]] = []
        for layer in range(num_layers):
            fields = {
                name: torch.zeros(self.num_slots, heads, head_dim, dtype=kv_dtype, device=self.device)
                for name in kv_fields
            }
            if layer not in self.skip_layers:
                for name, (r, c) in aux_fields.items():
                    fields[name] = torch.zeros(self.num_blocks, r, c, dtype=aux_dtype, device=self.device)
            self._fields.append(fields)
        self._pages: dict[RequestId, list[int]] = {}
        self._len: dict[RequestId, int] = {}

    # -- per-layer tensors ----------------------------------------------------------------------------------------
    def fields(self, layer: int) -> dict[str, torch.Tensor]:
        """``{"k": [num_slots, H_kv, D], "v": [num_slots, H_kv, D], aux...: [num_blocks, r, c]}`` of ``layer``
        (the live tensors, not copies)."""
        return self._fields[layer]

    def k_cache(self, layer: int) -> torch.Tensor:
        """``[num_slots, H_kv, D]`` keys of ``layer``."""
        return self._fields[layer]["k"]

    def v_cache(self, layer: int) -> torch.Tensor:
        """``[num_slots, H_kv, D]`` values of ``layer`` (an MLA pool has none: KeyError)."""
        return self._fields[layer]["v"]

    # -- requests -------------------------------------------------------------------------------------------------
    def add_request(self, rid: RequestId) -> None:
        if rid in self._pages:
            raise ValueError(f"request {rid!r} is already live in the pool; release it first")
        self._pages[rid] = []
        self._len[rid] = 0

    def has_request(self, rid: RequestId) -> bool:
        return rid in self._pages

    def requests(self) -> list[RequestId]:
        """Live requests, in the order they were added."""
        return list(self._pages)

    def seq_len(self, rid: RequestId) -> int:
        """Token slots allocated to ``rid`` so far."""
        return self._len[self._check(rid)]

    def pages(self, rid: RequestId) -> list[int]:
        return list(self._pages[self._check(rid)])

    def extend(self, rid: RequestId, n: int) -> torch.Tensor:
        """Allocate the next ``n`` token slots of ``rid`` -> ``[n] int64`` (pages taken as needed)."""
        self._check(rid)
        if n < 0:
            raise ValueError(f"cannot extend request {rid!r} by {n} tokens")
        start, ps = self._len[rid], self.layout.page_size
        pages = self._pages[rid]
        need = -(-(start + n) // ps) - len(pages)  # ceil division: pages the new length needs
        if need > 0:
            new_pages = self.allocator.alloc(need)
            pages.extend(new_pages)
            self._zero_aux(new_pages)
        self._len[rid] = start + n
        return self.token_slots(rid)[start:]

    def token_slots(self, rid: RequestId) -> torch.Tensor:
        """``[seq_len] int64`` token slots of ``rid`` in position order (SGLang's ``req_to_token`` row)."""
        self._check(rid)
        ps = self.layout.page_size
        pos = torch.arange(self._len[rid], dtype=torch.int64, device=self.device)
        pages = torch.tensor(self._pages[rid], dtype=torch.int64, device=self.device)
        return pages[pos // ps] * ps + pos % ps if pos.numel() else pos

    def release(self, rid: RequestId) -> None:
        """Free ``rid``'s pages (their contents stay until a new owner overwrites them)."""
        self.allocator.free(self._pages.pop(self._check(rid)))
        del self._len[rid]

    def _check(self, rid: RequestId) -> RequestId:
        if rid not in self._pages:
            raise KeyError(f"request {rid!r} is not live in the pool (call add_request first)")
        return rid

    def _zero_aux(self, pages: list[int]) -> None:
        # A reused page still holds the previous owner's aux values; a partial final block (never summarised yet)
        # and Save/Load state would otherwise depend on history. Zeroing keeps the oracle deterministic. A page's
        # blocks are the contiguous ids [num_blocks(page), num_blocks(page + 1)) (design §2, PoolLayout).
        first = self.layout.num_blocks
        for fields in self._fields:
            for name, t in fields.items():
                if name in self.kv_fields:
                    continue
                for p in pages:
                    t[first(p) : first(p + 1)] = 0

    # -- writes ---------------------------------------------------------------------------------------------------
    def write(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Store ``k, v [N, H_kv, D]`` at token slots ``slots [N]`` of ``layer``.

        Returns the block ids ``[M] int64`` whose LAST token was just written (for every head, slot-major then
        head order): the blocks ``forward_cache`` must summarise now. Slots of one request must be written in
        position order, which is how a block's last slot marks it complete.
        """
        heads, d = self.layout.num_kv_heads, self.head_dim
        n = slots.numel()
        if (v is None) != ("v" not in self.kv_fields):
            raise ValueError(
                "write: this pool holds " + " and ".join(self.kv_fields) + "; pass exactly those tensors"
            )
        if k.shape != (n, heads, d) or (v is not None and v.shape != (n, heads, d)):
            got = tuple(k.shape) if v is None else f"{tuple(k.shape)} and {tuple(v.shape)}"
            raise ValueError(f"write: k and v must be [N={n}, H_kv={heads}, D={d}], got {got}")
        slots = slots.to(device=self.device, dtype=torch.int64)
        fields = self._fields[layer]
        fields["k"][slots] = k.to(device=self.device, dtype=self.kv_dtype)
        if v is not None:
            fields["v"][slots] = v.to(device=self.device, dtype=self.kv_dtype)
        done = slots[self.layout.completes_block(slots)]  # [m]
        head_ids = torch.arange(heads, device=self.device)
        return self.layout.block_id(done[:, None], head_ids[None, :]).reshape(-1)  # [m * H_kv]

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of token slots ``slots [N]`` in ``layer`` -> two ``[N, H_kv, D]`` tensors (copies; for an
        MLA pool both are the latent)."""
        slots = slots.to(device=self.device, dtype=torch.int64)
        fields = self._fields[layer]
        k = fields["k"][slots]
        return k, (fields["v"][slots] if "v" in fields else k)
