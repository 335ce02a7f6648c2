"""The frame of a standalone op: one program's pass over a row, looping over its blocks in chunks of ``BS``.

A standalone lowering (``lowerings/standalone.py``) fills :attr:`RowKernel.body` using the helpers here; the
frame (arguments, row bounds, chunk addressing) is the same for every op.
"""

from __future__ import annotations

from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.graph import OpNode
from vortex_torch.kernels.fp8 import is_fp8

from .emitter import KV_FIELDS, Emitter, KernelArg, KernelSource, KVLayout, kv_stride_args, p2


class RowKernel:
    """A row-wise kernel over ``node``'s single input ``x_ptr`` (RAGGED, or a PAGED field read at the row's
    block ids) writing ``y_ptr`` (RAGGED ``[nnz, r, c]``, or BATCHED ``[R, r, c]`` for a reduction)."""

    def __init__(self, node: OpNode, src: str, kv: KVLayout) -> None:
        (t,) = node.inputs
        out = node.output
        assert out is not None
        self.node = node
        self.kv = kv
        self.e = Emitter("segment", kv)
        self.r, self.c = t.inner
        self.rc = self.r * self.c
        self.e.args = [KernelArg("x_ptr", src, t), KernelArg("y_ptr", f"buffer:{out.tensor_id}", out)]
        self.ir, self.ic = self.e.ar(1, p2(self.r)), self.e.ar(2, p2(self.c))
        #: the inner-axis mask of a padded block ("" when the block's sizes are powers of two)
        self.inner = " & ".join(self.e.inner_mask(self.r, self.c))
        self.paged = t.format == FORMAT.PAGED
        self.kv_in = self.paged and t.name in KV_FIELDS
        #: appended to every load of the input: `` * tl.load(scale_x_ptr)`` for fp8 K/V (value = stored * scale)
        self.x_scale = ""
        if self.kv_in:
            self.e.args += kv_stride_args("x_ptr", t.name)
            if is_fp8(t.dtype):
                self.e.args.append(KernelArg("scale_x_ptr", f"scale:{t.name}"))
                self.x_scale = " * tl.load(scale_x_ptr)"
        #: the tile shape of one chunk
        self.shape = f"[BS, {p2(self.r)}, {p2(self.c)}]"
        #: offsets of the output at the chunk's ragged slots
        self.out_offs = f"(start + p).to(tl.int64)[:, None, None] * {self.rc} + {self.ir} * {self.c} + {self.ic}"
        self.body: list[str] = []

    def in_offs(self, ids: str) -> str:
        """Offsets of the input at ``ids [BS]`` int64 (ragged slots, or block ids of a PAGED input)."""
        if self.kv_in:
            return f"{self.kv.base(f'{ids}[:, None, None]', 'x_ptr')} + {self.ir} * stride0_x_ptr + {self.ic}"
        return f"{ids}[:, None, None] * {self.rc} + {self.ir} * {self.c} + {self.ic}"

    def loop(self, stmts: list[str]) -> None:
        """``stmts`` once per chunk of ``BS`` blocks, with ``p`` (positions), ``valid``, ``src``, ``m`` (the
        chunk's mask) and ``offs`` (the input's offsets) defined."""
        head = [
            "p = c0 + tl.arange(0, BS)",
            "valid = p < n",
            "src = "
            + (
                "tl.load(indices + start + p, mask=valid, other=0).to(tl.int64)"
                if self.paged
                else "(start + p).to(tl.int64)"
            ),
            "m = valid[:, None, None]" + (f" & ({self.inner})" if self.inner else ""),
            f"offs = {self.in_offs('src')}",
        ]
        self.body.append("for c0 in range(0, n, BS):")
        self.body.extend("    " + s for s in head + stmts)

    def finish(self, name: str, frame_params: str) -> KernelSource:
        """A device function of ``frame_params`` (``row``, ``start``, ``n``, ``indices``, ... given by the
        indexer kernel that calls it) and the op's own pointers."""
        params = ", ".join(a.name for a in self.e.args)
        lines = ["@triton.jit", f"def {name}({frame_params}, {params}, BS: tl.constexpr):"]
        lines += ["    " + x for x in self.e.pre + self.body]
        return KernelSource(name=name, args=self.e.args, lines=lines, ragged=False)
