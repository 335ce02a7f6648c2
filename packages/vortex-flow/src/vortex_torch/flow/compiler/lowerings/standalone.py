"""Lowerings of the ops over a row's blocks (``dim=0``): each is a kernel of its own, one program per row."""

from __future__ import annotations

from vortex_torch import indexer as ix
from vortex_torch.indexer.reduce import Reduction

from ..emitter import NEG, RED_FN, RED_IDENT, KernelArg, lit, p2
from ..row_kernel import RowKernel
from .registry import standalone


@standalone(Reduction)
def _reduce(k: RowKernel) -> None:
    """Accumulate the row's chunks elementwise, reduce the accumulator over the chunk, store one row."""
    op = k.node.op
    assert isinstance(op, Reduction)
    how = op.how
    ident = RED_IDENT.get(how, "0.0")
    k.body.append(f"acc = tl.zeros({k.shape}, tl.float32) + {ident}")
    comb = {
        "sum": "acc + x", "mean": "acc + x", "l2": "acc + x * x",
        "amax": "tl.maximum(acc, x)", "amin": "tl.minimum(acc, x)",
    }[how]  # fmt: skip
    k.loop([f"x = tl.load(x_ptr + offs, mask=m, other={ident}).to(tl.float32){k.x_scale}", f"acc = {comb}"])
    k.body.append(f"res = {RED_FN[how]}(acc, axis=0, keep_dims=True)")
    if how == "mean":
        k.body.append("res = res / n.to(tl.float32)")
    if how == "l2":
        k.body.append("res = tl.sqrt(res)")
    inner_kw = f", mask={k.inner}" if k.inner else ""
    k.body.append(f"tl.store(y_ptr + row * {k.rc} + {k.ir} * {k.c} + {k.ic}, res{inner_kw})")


@standalone(ix.Softmax)
def _softmax(k: RowKernel) -> None:
    """Two passes: an online max and denominator over the row's chunks, then the normalised values."""
    op = k.node.op
    assert isinstance(op, ix.Softmax)
    r, c = p2(k.r), p2(k.c)
    k.body += [
        f"mx = tl.zeros([1, {r}, {c}], tl.float32) + {NEG}",
        f"den = tl.zeros([1, {r}, {c}], tl.float32)",
    ]
    k.loop([
        f"x = tl.where(m, tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32){k.x_scale} * {lit(op.scale)}, {NEG})",
        "new = tl.maximum(mx, tl.max(x, axis=0, keep_dims=True))",
        "den = den * tl.exp(mx - new) + tl.sum(tl.where(m, tl.exp(x - new), 0.0), axis=0, keep_dims=True)",
        "mx = new",
    ])  # fmt: skip
    k.loop([
        f"x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32){k.x_scale} * {lit(op.scale)}",
        f"tl.store(y_ptr + {k.out_offs}, tl.exp(x - mx) / den, mask=m)",
    ])  # fmt: skip


@standalone(ix.Normalize)
def _normalize(k: RowKernel) -> None:
    k.body.append(f"tot = tl.zeros([1, {p2(k.r)}, {p2(k.c)}], tl.float32)")
    k.loop([f"x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32){k.x_scale}",
            "tot = tot + tl.sum(x, axis=0, keep_dims=True)"])  # fmt: skip
    k.loop([f"x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32){k.x_scale}",
            f"tl.store(y_ptr + {k.out_offs}, x / tot, mask=m)"])  # fmt: skip


@standalone(ix.Conv1d)
def _conv1d(k: RowKernel) -> None:
    """One chunk of outputs reads the ``K`` shifted chunks of inputs it needs (zero outside the row)."""
    op = k.node.op
    assert isinstance(op, ix.Conv1d)
    taps = op.weight.shape[0]
    half = (taps - 1) // 2
    wr, wc = int(op.weight.shape[1]), int(op.weight.shape[2])
    k.e.args.insert(2, KernelArg("w_ptr", "param:weight", None))
    ir, ic, r, c = k.ir, k.ic, k.r, k.c
    # weight [K, wr, wc] with wr in (1, r), wc in (1, c): a size-1 axis broadcasts (offset 0); a full axis
    # is indexed like the input and masked where the input is padded (else the load reads past the weight)
    w_offs = f"{ir if wr > 1 else '0'} * {wc} + {ic if wc > 1 else '0'}"
    w_mask = " & ".join(
        ([f"({ir} < {r})"] if wr > 1 and r != p2(r) else [])
        + ([f"({ic} < {c})"] if wc > 1 and c != p2(c) else [])
    )
    w_kw = f", mask={w_mask}, other=0.0" if w_mask else ""
    inner = f" & ({k.inner})" if k.inner else ""
    stmts = [f"acc = tl.zeros({k.shape}, tl.float32)"]
    for j in range(taps):
        stmts += [
            f"q{j} = p + {j - half}",
            f"ok{j} = (q{j} >= 0) & (q{j} < n)",
            (f"s{j} = tl.load(indices + start + q{j}, mask=ok{j}, other=0).to(tl.int64)" if k.paged
             else f"s{j} = (start + q{j}).to(tl.int64)"),
            f"x{j} = tl.load(x_ptr + {k.in_offs(f's{j}')}, mask=ok{j}[:, None, None]{inner}, other=0.0)"
            f".to(tl.float32){k.x_scale}",
            f"acc = acc + x{j} * tl.load(w_ptr + {j * wr * wc} + {w_offs}{w_kw})",
        ]  # fmt: skip
    stmts.append(f"tl.store(y_ptr + {k.out_offs}, acc, mask=m)")
    k.loop(stmts)
