"""MLA geometry (DeepSeek-V2/V3, GLM): one latent "KV head" of width ``kv_lora_rank + qk_rope_head_dim``.

An MLA layer caches one latent row per token, ``[kv_c | k_pe]``: the compressed KV (``kv_lora_rank`` wide, 512
on DeepSeek) followed by the RoPE'd key part (``qk_rope_head_dim``, 64), 576 in all. Decode runs *absorbed*:
each query head becomes ``[q_nope · W_UK | q_pe]`` of the same width, its logit is ``<q, latent>`` and its
output is a ``kv_lora_rank``-wide mix of the latents' first columns (``W_UV`` is applied by the model after).

So for Vortex an MLA layer is a GQA layer with one KV head (``H_kv = 1``), ``G = H_q`` and ``D = kv_lora_rank
+ qk_rope_head_dim`` for scoring, whose attention returns ``kv_lora_rank`` columns: :class:`MLAGeometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import Geometry


@dataclass(frozen=True)
class MLAGeometry(Geometry):
    """:class:`Geometry` of an MLA layer: ``head_dim`` is the latent width ``kv_lora_rank + qk_rope_head_dim``
    (what the indexer's ``q [R, H_q, head_dim]`` and ``cache["latent"] [*, block_size, head_dim]`` have),
    ``group_size`` is ``H_q`` (one latent head), ``qk_rope_head_dim`` the RoPE part at the end of each row."""

    qk_rope_head_dim: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.qk_rope_head_dim < self.head_dim:
            raise ValueError(
                f"MLAGeometry: qk_rope_head_dim={self.qk_rope_head_dim} must be in [0, head_dim={self.head_dim})"
            )

    @property
    def kv_lora_rank(self) -> int:
        """Width of the compressed KV ``kv_c`` (the first columns of a latent row, also the output width)."""
        return self.head_dim - self.qk_rope_head_dim

    @classmethod
    def of(
        cls, *, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int, num_heads: int, **dtypes: object
    ) -> MLAGeometry:
        """The geometry of an MLA layer with ``num_heads`` query heads (per rank): ``head_dim = kv_lora_rank +
        qk_rope_head_dim``, ``group_size = num_heads``; ``dtypes``: ``dtype`` / ``kv_dtype`` as in Geometry."""
        if kv_lora_rank <= 0 or qk_rope_head_dim < 0 or num_heads <= 0:
            raise ValueError(
                f"MLA geometry needs kv_lora_rank > 0, qk_rope_head_dim >= 0 and num_heads > 0, got "
                f"{kv_lora_rank}, {qk_rope_head_dim}, {num_heads}"
            )
        return cls(
            block_size=block_size,
            head_dim=kv_lora_rank + qk_rope_head_dim,
            group_size=num_heads,
            qk_rope_head_dim=qk_rope_head_dim,
            **dtypes,  # type: ignore[arg-type]
        )


def is_mla(geometry: Geometry) -> bool:
    """Whether ``geometry`` describes an MLA layer."""
    return isinstance(geometry, MLAGeometry)
