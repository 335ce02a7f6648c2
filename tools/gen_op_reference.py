"""Generate docs/ops.md, the reference of every indexer and cache op, from the op classes themselves.

For each class exported by ``vortex_torch.indexer`` and ``vortex_torch.cache`` (their ``__all__``) it renders:

* the constructor signature (``inspect.signature``) and the call form (the op's ``arity`` and side);
* the semantics: the class docstring (inherited from the indexer twin for cache ops);
* the shape rule: the docstring paragraph that states a mapping (``vortex_torch.abs.op.shape_rule``);
* a one-line example from :data:`EXAMPLES` below, whose output format and shape are computed by the op's own
  ``infer`` (so an example cannot drift from the shape rule: an example the op rejects fails the generator);
* where the compiler may place it (fused into a kernel, or a standalone kernel: ``op.schedule``).

An op exported without an entry in :data:`EXAMPLES` is an error: a new op cannot ship undocumented.
``tests/test_docs.py`` regenerates the file and fails when the committed docs/ops.md differs.

usage: python tools/gen_op_reference.py           (rewrite docs/ops.md)
       python tools/gen_op_reference.py --check   (exit 1 when docs/ops.md is stale)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.op import vOp
from vortex_torch.abs.shape_message import shape_rule
from vortex_torch.abs.vtensor import vTensor

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "ops.md"
SIDES = ("indexer", "cache")

#: Tensors the examples use, per side: expression -> (format, inner shape (D0, D1)). Geometry: head_dim 128,
#: G = 4 query heads per KV head, block_size 16.
TENSORS: dict[str, dict[str, tuple[FORMAT, tuple[int, int]]]] = {
    "indexer": {
        "q": (FORMAT.BATCHED, (4, 128)),
        "q_mean": (FORMAT.BATCHED, (1, 128)),
        'cache["centroids"]': (FORMAT.PAGED, (1, 128)),
        'cache["score"]': (FORMAT.PAGED, (1, 1)),
        "per_head": (FORMAT.RAGGED, (4, 1)),
        "feats": (FORMAT.RAGGED, (1, 128)),
        "score": (FORMAT.RAGGED, (1, 1)),
        "prior": (FORMAT.RAGGED, (1, 1)),
        "a": (FORMAT.RAGGED, (1, 4)),
        "b": (FORMAT.RAGGED, (1, 8)),
        "o": (FORMAT.RAGGED, (1, 1)),  # the opaque selection output forward_indexer receives
    },
    "cache": {
        'cache["k"]': (FORMAT.PAGED, (16, 128)),
        'cache["v"]': (FORMAT.PAGED, (16, 128)),
        'cache["centroids"]': (FORMAT.PAGED, (1, 128)),
        'cache["sub_centroids"]': (FORMAT.PAGED, (4, 128)),
        'cache["k_flat"]': (FORMAT.PAGED, (2, 1024)),
        'cache["energy"]': (FORMAT.PAGED, (1, 1)),
        'cache["state"]': (FORMAT.PAGED, (1, 1)),
        "centroid": (FORMAT.RAGGED, (1, 128)),
        "norms": (FORMAT.RAGGED, (16, 1)),
    },
}


@dataclass(frozen=True)
class Example:
    """``out = op(*args)`` with ``op = ctor``; ``out`` is a variable (indexer), a cache field (cache ops: the
    output argument) or None (ops that only write, such as ``topK``/``Save``/``Fill``)."""

    ctor: str
    args: tuple[str, ...]
    out: str | None


def _ex(ctor: str, *args: str, out: str | None = None) -> Example:
    return Example(ctor, args, out)


_UNARY_I = {"Abs": "()", "Exp": "()", "Log": "(alpha=1.0)", "Add_Mul": "(alpha=1.0, beta=2.0)",
            "Relu": "()", "Sigmoid": "()", "Silu": "()"}  # fmt: skip
_WHERE = ("WhereEqual", "WhereNotEqual", "WhereGreater", "WhereGreaterEqual", "WhereLess", "WhereLessEqual")

#: One example per exported op and side.
EXAMPLES: dict[str, dict[str, Example]] = {
    "indexer": {
        **{n: _ex(f"{n}{a}", "score", out="score") for n, a in _UNARY_I.items()},
        **{n: _ex(f"{n}()", "score", "prior", out="mask") for n in _WHERE},
        "Add": _ex("Add(alpha=1.0, beta=0.5)", "score", "prior", out="score"),
        "Multiply": _ex("Multiply()", 'cache["centroids"]', "q_mean", out="feats"),
        "Maximum": _ex("Maximum()", "score", "prior", out="score"),
        "Minimum": _ex("Minimum()", "score", "prior", out="score"),
        "GeMM": _ex("GeMM()", "q_mean", 'cache["centroids"]', out="score"),
        "GeMV": _ex("GeMV()", "q_mean", 'cache["centroids"]', out="score"),
        "Mean": _ex("Mean(dim=1)", "q", out="q_mean"),
        "Sum": _ex("Sum(dim=0)", "score", out="total"),
        "Max": _ex("Max(dim=1)", "per_head", out="score"),
        "Min": _ex("Min(dim=1)", "per_head", out="score"),
        "L2Norm": _ex("L2Norm(dim=2)", "feats", out="score"),
        "Softmax": _ex("Softmax(dim=0, scale=0.088)", "score", out="probs"),
        "Normalize": _ex("Normalize(dim=0)", "score", out="weights"),
        "Conv1d": _ex("Conv1d([0.25, 0.5, 0.25])", "score", out="smoothed"),
        "Transpose": _ex("Transpose()", "per_head", out="row"),
        "Reshape": _ex("Reshape(-1, 8, 16)", "feats", out="tiles"),
        "Kron": _ex("Kron(dim=2)", "a", "b", out="pairs"),
        "MaskSlice": _ex("MaskSlice(0, 64, dim=2)", "feats", out="mask"),
        "Load": _ex("Load()", 'cache["score"]', out="prev"),
        "Save": _ex("Save()", "score", 'cache["score"]'),
        "topK": _ex("topK()", "score", "o"),
        "approxTopK": _ex("approxTopK(tolerate_ratio=0.1)", "score", "o"),
    },
    "cache": {
        **{n: _ex(f"{n}{a}", 'cache["energy"]', out='cache["energy"]') for n, a in _UNARY_I.items()},
        **{n: _ex(f"{n}()", 'cache["energy"]', 'cache["state"]', out='cache["state"]') for n in _WHERE},
        "Add": _ex("Add(alpha=0.5, beta=0.5)", "centroid", 'cache["centroids"]', out='cache["centroids"]'),
        "Multiply": _ex("Multiply()", "centroid", "centroid", out='cache["centroids"]'),
        "Maximum": _ex("Maximum()", 'cache["energy"]', 'cache["state"]', out='cache["state"]'),
        "Minimum": _ex("Minimum()", 'cache["energy"]', 'cache["state"]', out='cache["state"]'),
        "GeMM": _ex("GeMM()", "centroid", 'cache["k"]', out=None),
        "Mean": _ex("Mean(dim=1)", 'cache["k"]', out='cache["centroids"]'),
        "Max": _ex("Max(dim=1)", 'cache["k"]', out='cache["centroids"]'),
        "Min": _ex("Min(dim=1)", 'cache["k"]', out='cache["centroids"]'),
        "L2Norm": _ex("L2Norm(dim=2)", 'cache["v"]', out=None),
        "MeanInterleave": _ex("MeanInterleave(dim=1, k=4)", 'cache["k"]', out='cache["sub_centroids"]'),
        "MaxInterleave": _ex("MaxInterleave(dim=1, k=4)", 'cache["k"]', out='cache["sub_centroids"]'),
        "MinInterleave": _ex("MinInterleave(dim=1, k=4)", 'cache["k"]', out='cache["sub_centroids"]'),
        "L2NormInterleave": _ex("L2NormInterleave(dim=1, k=4)", 'cache["k"]', out='cache["sub_centroids"]'),
        "MaskSlice": _ex("MaskSlice(0, 64, dim=2)", 'cache["centroids"]', out=None),
        "Reshape": _ex("Reshape(-1, 2, 1024)", 'cache["k"]', out='cache["k_flat"]'),
        "Fill": _ex("Fill(0.0)", out='cache["state"]'),
    },
}


@dataclass(frozen=True)
class OpDoc:
    side: str
    name: str
    signature: str
    call: str
    semantics: str
    shape_rule: str
    example: str
    example_shapes: str
    schedule: str
    #: the ``dim`` values the op accepts, where the class states them (``allowed_dims``)
    dims: tuple[int, ...] = ()


def _module(side: str) -> ModuleType:
    return importlib.import_module(f"vortex_torch.{side}")


def op_classes(side: str) -> list[tuple[str, type[vOp]]]:
    """``(name, class)`` of every op ``vortex_torch.<side>`` exports, in ``__all__`` order."""
    mod = _module(side)
    out = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if isinstance(obj, type) and issubclass(obj, vOp):
            out.append((name, obj))
    return out


def _doc(cls: type) -> str:
    """The class docstring, or the nearest ancestor's (cache twins carry their indexer op's)."""
    return inspect.cleandoc(inspect.getdoc(cls) or "")


def _describe(fmt: FORMAT, inner: tuple[int, int]) -> str:
    return f"{fmt.name} [*, {inner[0]}, {inner[1]}]"


def _call_form(side: str, name: str, arity: int) -> str:
    xs = ", ".join(["x", "y"][:arity])
    if name in ("topK", "approxTopK"):
        return "op(score, o, ctx=ctx)  # writes the selection into o; returns nothing to use"
    if name == "Load":
        return 'x = op(cache["f"], ctx=ctx)'
    if name == "Save":
        return 'op(x, cache["f"], ctx=ctx)  # stores x into field f'
    if name == "Fill":
        return 'op(cache["f"], loc=loc, ctx=ctx)  # sets field f of each completed block'
    if side == "indexer":
        return f"out = op({xs}, ctx=ctx)"
    return f'op({xs}, cache["f"], loc=loc, ctx=ctx)  # or out = op({xs}, None, loc=loc, ctx=ctx)'


def _example(side: str, name: str, cls: type[vOp]) -> tuple[str, str, vOp]:
    """The example's source line and its shapes, computed by the op's ``infer``."""
    try:
        ex = EXAMPLES[side][name]
    except KeyError:
        raise SystemExit(
            f"gen_op_reference: vortex_torch.{side}.{name} has no example; add one to EXAMPLES[{side!r}] in "
            "tools/gen_op_reference.py"
        ) from None
    namespace = dict(vars(_module(side)))
    op = eval(ex.ctor, namespace)  # our own constant table, not input
    assert isinstance(op, cls), f"{side}.{name}: example constructs {type(op).__name__}"
    attr = f"self.{name.lower()}"
    vocab = TENSORS[side]
    inputs = [
        vTensor(inner=vocab[a][1], format=vocab[a][0], dtype=torch.bfloat16, tensor_id=i, name=a)
        for i, a in enumerate(ex.args)
    ]
    ins = ", ".join(f"`{a}` {_describe(*vocab[a])}" for a in ex.args) or "no input"
    if name in ("topK", "approxTopK", "Save"):
        line = f"{attr}({', '.join(ex.args)}, ctx=ctx)"
        what = "writes the selected blocks into `o`" if name != "Save" else f"writes `{ex.args[1]}`"
        return f"{line}  # {attr} = {ex.ctor}", f"{ins} → {what}", op
    if name == "Fill":
        line = f"{attr}({ex.out}, loc=loc, ctx=ctx)"
        return f"{line}  # {attr} = {ex.ctor}", f"no input → writes `{ex.out}` {_describe(*vocab[str(ex.out)])}", op
    fmt, inner = op.infer(inputs)  # raises FlowShapeError when the example does not fit the op's rule
    args = ", ".join(ex.args)
    if side == "indexer":
        line = f"{ex.out} = {attr}({args}, ctx=ctx)"
        return f"{line}  # {attr} = {ex.ctor}", f"{ins} → `{ex.out}` {_describe(fmt, inner)}", op
    if ex.out is None:
        line = f"out = {attr}({args}, None, loc=loc, ctx=ctx)"
        return f"{line}  # {attr} = {ex.ctor}", f"{ins} → intermediate {_describe(fmt, inner)}", op
    field_inner = vocab[ex.out][1]
    if field_inner != inner:
        raise SystemExit(f"gen_op_reference: cache.{name} example writes {inner} into {ex.out} {field_inner}")
    line = f"{attr}({args}, {ex.out}, loc=loc, ctx=ctx)"
    return f"{line}  # {attr} = {ex.ctor}", f"{ins} → writes `{ex.out}` (computed {_describe(fmt, inner)})", op


def collect() -> list[OpDoc]:
    docs = []
    for side in SIDES:
        for name, cls in op_classes(side):
            example, shapes, op = _example(side, name, cls)
            signature = _signature(name, cls)
            docs.append(
                OpDoc(
                    side=side,
                    name=name,
                    signature=signature,
                    call=_call_form(side, name, cls.arity),
                    semantics=_doc(cls),
                    shape_rule=shape_rule(op),
                    example=example,
                    example_shapes=shapes,
                    schedule=op.schedule.value,
                    dims=tuple(getattr(cls, "allowed_dims", ())),
                )
            )
    return docs


def _signature(name: str, cls: type) -> str:
    """``Name(a: int = 1, b: float | None = None)``: the constructor's parameters, annotations unquoted (the op
    modules use ``from __future__ import annotations``), no ``self`` and no return annotation."""
    parts = []
    for p in inspect.signature(cls).parameters.values():
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    return f"{name}({', '.join(parts)})"


def _anchor(d: OpDoc) -> str:
    return f"{d.side}-{d.name.lower()}"


def render(docs: list[OpDoc] | None = None) -> str:
    docs = collect() if docs is None else docs
    lines = [
        "# Op reference",
        "",
        "<!-- Generated by tools/gen_op_reference.py from the op classes; do not edit by hand. "
        "CI (tests/test_docs.py) fails when this file is stale. -->",
        "",
        "Every op a flow may call: `vortex_torch.indexer` in `forward_indexer`, `vortex_torch.cache` in "
        "`forward_cache`. An op is created once in the flow's `__init__` (`self.mean = Mean(dim=1)`) and called "
        "once per trace; it records a graph node, it computes nothing then.",
        "",
        "Shapes are rank 3, `[L, D0, D1]`. The leading axis `*` is symbolic, and its meaning is the tensor's "
        "format (`vortex_torch.abs.FORMAT`):",
        "",
        *(f"* {line}" for line in _format_lines()),
        "",
        "Each example below is one line of a flow (with the op's constructor in the comment); its output shape "
        "and format are what the op's own shape rule (`infer`) computes for the inputs shown. Geometry of the "
        "examples: head_dim 128, G = 4 query heads per KV head, block_size 16. \"Placement\" is where the "
        "compiler may put the op: fused into a kernel with its neighbours, or a standalone kernel.",
        "",
    ]
    for side in SIDES:
        mod = _module(side)
        lines += [f"## `vortex_torch.{side}`", "", inspect.cleandoc(mod.__doc__ or ""), ""]
        lines += ["| op | constructor | example: inputs → output |", "|---|---|---|"]
        for d in (d for d in docs if d.side == side):
            shapes = d.example_shapes.replace("|", "\\|")
            signature = d.signature.replace("|", "\\|")  # GitHub tables split cells at | even in code
            lines.append(f"| [`{d.name}`](#{_anchor(d)}) | `{signature}` | {shapes} |")
        lines.append("")
        for d in (d for d in docs if d.side == side):
            flat = " ".join(d.semantics.replace("``", "").split())
            lines += [
                f'<a id="{_anchor(d)}"></a>',
                f"### {side}.{d.name}",
                "",
                f"`{d.signature}` · call: `{d.call}` · placement: {d.schedule}",
                "",
                d.semantics or "(no docstring)",
                "",
                *([f"Shape rule: {d.shape_rule}", ""] if d.shape_rule and d.shape_rule not in flat else []),
                *([f"Allowed `dim`: {', '.join(map(str, d.dims))}.", ""] if d.dims else []),
                "```python",
                d.example,
                "```",
                "",
                d.example_shapes,
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _format_lines() -> list[str]:
    doc = inspect.getdoc(FORMAT) or ""
    return [" ".join(item.split()) for item in doc.split("* ")[1:]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/ops.md differs from the op classes")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(REPO)} is stale: run python tools/gen_op_reference.py", file=sys.stderr)
            return 1
        print("up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)} ({len(collect())} ops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
