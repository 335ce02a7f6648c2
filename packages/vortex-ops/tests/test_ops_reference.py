"""Reference semantics of every indexer and cache op, checked against independent hand computations on tiny
tensors (Python loops and scalars, or a different torch formulation), plus the shape rules (``infer``) and
the shape errors. These references are the contract every compiled kernel must reproduce (docs/design.md §4).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vortex_torch import cache as C
from vortex_torch import indexer as I
from vortex_torch.abs.errors import FlowRuleError, FlowShapeError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.abs.layout import DenseBlocks
from vortex_torch.abs.op import Schedule, vOp
from vortex_torch.abs.vtensor import vTensor

B, R, P = FORMAT.BATCHED, FORMAT.RAGGED, FORMAT.PAGED


def t(*rows: object) -> torch.Tensor:
    """A float32 tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def vt(fmt: FORMAT, d0: int, d1: int) -> vTensor:
    return vTensor(inner=(d0, d1), format=fmt, dtype=torch.bfloat16, tensor_id=0)


def elementwise(f: Callable[..., float], *xs: torch.Tensor) -> torch.Tensor:
    """Apply a scalar function elementwise with explicit broadcasting (independent of torch's own ops)."""
    shape = torch.broadcast_shapes(*(x.shape for x in xs))
    xs_b = [x.expand(shape) for x in xs]
    out = torch.empty(shape)
    for idx in itertools.product(*(range(n) for n in shape)):
        out[idx] = f(*(float(x[idx]) for x in xs_b))
    return out


def seg(lengths: list[int]) -> DenseBlocks:
    """Dense block lists of rows with these block counts (block ids are irrelevant to the references)."""
    indices = [torch.arange(n, dtype=torch.int32) for n in lengths]
    return DenseBlocks.from_lists(indices, lengths, [1] * len(lengths), torch.device("cpu"))


# -- elementwise ---------------------------------------------------------------------------------------------
X = t([[-2.0, -0.5, 0.0], [0.25, 1.0, 3.0]])  # [1, 2, 3]
POS = t([[0.5, 1.0, 2.0], [3.0, 4.0, 8.0]])


@pytest.mark.parametrize(
    ("op", "x", "f"),
    [
        (I.Relu(), X, lambda v: v if v >= 0 else 0.0),
        (I.Relu(alpha=0.5, beta=-7.0), X, lambda v: v if v >= 0.5 else -7.0),
        (I.Sigmoid(), X, lambda v: 1 / (1 + math.exp(-v))),
        (I.Sigmoid(alpha=1.0, beta=2.0), X, lambda v: 1 / (1 + math.exp(2 * v + 1))),
        (I.Silu(), X, lambda v: v / (1 + math.exp(-v))),
        (I.Silu(alpha=-1.0, beta=-2.0), X, lambda v: v / (1 + math.exp(-2 * v - 1))),
        (I.Add_Mul(), X, lambda v: v),
        (I.Add_Mul(alpha=3.0, beta=-2.0), X, lambda v: -2 * v + 3),
        (I.Abs(), X, abs),
        (I.Abs(alpha=1.0, beta=2.0), X, lambda v: abs(2 * v + 1)),
        (I.Log(), POS, math.log),
        (I.Log(alpha=1.0, beta=0.5), POS, lambda v: math.log(0.5 * v + 1)),
        (I.Exp(), X, math.exp),
        (I.Exp(alpha=-1.0, beta=0.5), X, lambda v: math.exp(0.5 * v - 1)),
    ],
    ids=lambda p: repr(p) if isinstance(p, vOp) else "",
)
def test_unary(op: vOp, x: torch.Tensor, f: Callable[[float], float]) -> None:
    torch.testing.assert_close(op.reference(x), elementwise(f, x))


def test_unary_defaults() -> None:
    assert I.Relu().params() == {"alpha": 0.0, "beta": 0.0}
    assert I.Sigmoid().params() == {"alpha": 0.0, "beta": -1.0}
    assert I.Silu().params() == {"alpha": 0.0, "beta": -1.0}
    for op in (I.Add_Mul(), I.Abs(), I.Log(), I.Exp()):
        assert op.params() == {"alpha": 0.0, "beta": 1.0}


XB = t([[1.0, -2.0, 3.0]], [[0.0, 5.0, -1.0]])  # [2, 1, 3]
YB = t([[2.0, 2.0, -3.0], [4.0, -2.0, 0.5]])  # [1, 2, 3]: leading axis and axis 1 broadcast


@pytest.mark.parametrize(
    ("op", "f"),
    [
        (I.Multiply(), lambda a, b: a * b),
        (I.Add(), lambda a, b: a + b),
        (I.Add(alpha=2.0, beta=-0.5), lambda a, b: 2 * a - 0.5 * b),
        (I.Maximum(), max),
        (I.Minimum(), min),
        (C.Add(alpha=-1.0, beta=3.0), lambda a, b: -a + 3 * b),
        (C.Multiply(), lambda a, b: a * b),
    ],
    ids=lambda p: repr(p) if isinstance(p, vOp) else "",
)
def test_binary_with_broadcasting(op: vOp, f: Callable[[float, float], float]) -> None:
    out = op.reference(XB, YB)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out, elementwise(f, XB, YB))


@pytest.mark.parametrize(
    ("op", "pred"),
    [
        (I.WhereEqual(), lambda a, b: a == b),
        (I.WhereNotEqual(), lambda a, b: a != b),
        (I.WhereGreater(), lambda a, b: a > b),
        (I.WhereGreaterEqual(), lambda a, b: a >= b),
        (I.WhereLess(), lambda a, b: a < b),
        (I.WhereLessEqual(), lambda a, b: a <= b),
        (C.WhereGreater(), lambda a, b: a > b),
    ],
    ids=lambda p: repr(p) if isinstance(p, vOp) else "",
)
def test_where_ops_are_additive_masks(op: vOp, pred: Callable[[float, float], bool]) -> None:
    x = t([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]])  # [2, 1, 3]
    y = t([[2.0, 2.0, 2.0]])  # [1, 1, 3]
    out = op.reference(x, y)
    want = elementwise(lambda a, b: 0.0 if pred(a, b) else -1e30, x, y)
    assert torch.equal(out, want)
    assert set(out.unique().tolist()) <= {0.0, torch.tensor(-1e30).item()}  # -1e30 in fp32
    assert I.MASKED == -1e30


def test_masked_value_survives_bf16_and_softmax() -> None:
    masked = torch.tensor([I.MASKED], dtype=torch.bfloat16)
    assert torch.isfinite(masked).all() and float(masked) < -1e29
    probs = torch.softmax(torch.tensor([1.0, I.MASKED]), 0)
    assert probs.tolist() == [1.0, 0.0]


# -- reductions ----------------------------------------------------------------------------------------------
X3 = t([[1.0, -2.0, 3.0], [4.0, 0.5, -6.0]], [[0.0, 2.0, 2.0], [-1.0, -1.0, 8.0]])  # [2, 2, 3]


def _loop_reduce(x: torch.Tensor, dim: int, f: Callable[[list[float]], float]) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = 1
    out = torch.empty(shape)
    for idx in itertools.product(*(range(n) for n in shape)):
        vals = []
        for k in range(x.shape[dim]):
            src = list(idx)
            src[dim] = k
            vals.append(float(x[tuple(src)]))
        out[idx] = f(vals)
    return out


REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "Sum": sum,
    "Mean": lambda v: sum(v) / len(v),
    "Max": max,
    "Min": min,
    "L2Norm": lambda v: math.sqrt(sum(a * a for a in v)),
}


@pytest.mark.parametrize("name", list(REDUCERS))
@pytest.mark.parametrize("dim", [1, 2])
def test_reduce_inner_axis(name: str, dim: int) -> None:
    op = getattr(I, name)(dim=dim)
    torch.testing.assert_close(op.reference(X3), _loop_reduce(X3, dim, REDUCERS[name]))


@pytest.mark.parametrize("name", ["Mean", "Max", "Min", "L2Norm"])
def test_cache_reduce_matches_indexer(name: str) -> None:
    for dim in (1, 2):
        torch.testing.assert_close(
            getattr(C, name)(dim=dim).reference(X3), _loop_reduce(X3, dim, REDUCERS[name])
        )
    with pytest.raises(FlowShapeError, match="dim must be one of"):
        getattr(C, name)(dim=0)


@pytest.mark.filterwarnings("ignore:index_reduce")
@pytest.mark.parametrize("name", list(REDUCERS))
def test_reduce_dim0_over_ragged_rows(name: str) -> None:
    lengths = [3, 1, 2]  # ragged rows: nnz = 6 blocks
    s = seg(lengths)
    x = rand(6, 2, 2, seed=1)
    out = getattr(I, name)(dim=0).reference_segmented(x, s)
    assert out.shape == (3, 2, 2)
    start = 0
    for row, n in enumerate(lengths):
        block = x[start : start + n]
        for i, j in itertools.product(range(2), range(2)):
            want = REDUCERS[name]([float(v) for v in block[:, i, j]])
            assert float(out[row, i, j]) == pytest.approx(want, rel=1e-5, abs=1e-6)
        start += n


# -- GeMM ----------------------------------------------------------------------------------------------------
def _loop_gemm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = max(x.shape[0], y.shape[0])
    nx, ny, k = x.shape[1], y.shape[1], x.shape[2]
    out = torch.zeros(n, ny, nx)
    for s, a, b in itertools.product(range(n), range(ny), range(nx)):
        xs, ys = x[s if x.shape[0] > 1 else 0], y[s if y.shape[0] > 1 else 0]
        out[s, a, b] = sum(float(ys[a, c]) * float(xs[b, c]) for c in range(k))
    return out


def test_gemm_is_y_times_x_transposed() -> None:
    x = t([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]])  # [1, Nx=2, K=3]: the query, broadcast over blocks
    y = t([[1.0, 0.0, 0.0]], [[2.0, 1.0, -1.0]], [[0.5, 0.5, 0.5]])  # [S=3, Ny=1, K=3]
    out = I.GeMM().reference(x, y)
    assert out.shape == (3, 1, 2)
    assert out[1].tolist() == [[2 + 2 - 3, 0 - 1 - 1]]
    torch.testing.assert_close(out, _loop_gemm(x, y))


def test_gemm_broadcasts_the_leading_axis_either_way() -> None:
    x, y = rand(4, 3, 5, seed=2), rand(1, 2, 5, seed=3)
    torch.testing.assert_close(I.GeMM().reference(x, y), _loop_gemm(x, y))
    torch.testing.assert_close(C.GeMM().reference(y, x), _loop_gemm(y, x))


def test_gemv_is_a_dot_product() -> None:
    x, y = t([[1.0, 2.0]]), t([[3.0, 4.0]], [[-1.0, 1.0]])
    assert I.GeMV().reference(x, y).flatten().tolist() == [11.0, 1.0]


# -- Kron ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [(1, 2), (2, 1)])
def test_kron_both_axes_is_torch_kron_per_block(dim: tuple[int, int]) -> None:
    x, y = rand(3, 2, 4, seed=4), rand(3, 2, 2, seed=5)
    out = I.Kron(dim=dim).reference(x, y)
    assert out.shape == (3, 4, 8)
    for s in range(3):
        torch.testing.assert_close(out[s], torch.kron(x[s], y[s]))


# Kron's annotation says ``int | tuple[int, int]``, but one-axis tuples are accepted (and documented upstream).
@pytest.mark.parametrize("dim", [1, (1,)])
def test_kron_axis_1_is_column_wise(dim: int | tuple[int, int]) -> None:
    x, y = rand(2, 2, 3, seed=6), rand(2, 4, 3, seed=7)
    out = I.Kron(dim=dim).reference(x, y)
    assert out.shape == (2, 8, 3)
    for s, j in itertools.product(range(2), range(3)):
        torch.testing.assert_close(out[s, :, j], torch.kron(x[s, :, j], y[s, :, j]))


@pytest.mark.parametrize("dim", [2, (2,)])
def test_kron_axis_2_is_row_wise(dim: int | tuple[int, int]) -> None:
    x, y = rand(2, 3, 2, seed=8), rand(2, 3, 4, seed=9)
    out = I.Kron(dim=dim).reference(x, y)
    assert out.shape == (2, 3, 8)
    for s, i in itertools.product(range(2), range(3)):
        torch.testing.assert_close(out[s, i], torch.kron(x[s, i], y[s, i]))


def test_kron_broadcasts_the_other_axis_and_the_leading_axis() -> None:
    x, y = rand(1, 2, 1, seed=10), rand(3, 2, 4, seed=11)  # axis 2 broadcasts 1 -> 4, leading 1 -> 3
    out = I.Kron(dim=1).reference(x, y)
    assert out.shape == (3, 4, 4)
    for s, j in itertools.product(range(3), range(4)):
        torch.testing.assert_close(out[s, :, j], torch.kron(x[0, :, 0], y[s, :, j]))


# -- shape ops -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "want"),
    [
        (I.MaskSlice(1, 3, dim=2), [[0.0, 1.0, 1.0, 0.0]] * 3),
        (I.MaskSlice(0, 1, dim=1, alpha=5.0, beta=-1.0), [[5.0] * 4, [-1.0] * 4, [-1.0] * 4]),
        (C.MaskSlice(2, 2, dim=2), [[0.0] * 4] * 3),  # empty slice
    ],
    ids=repr,
)
def test_mask_slice(op: vOp, want: list[list[float]]) -> None:
    x = rand(2, 3, 4, seed=12)
    out = op.reference(x)
    assert out.shape == (2, 3, 4)
    assert out[0].tolist() == want and out[1].tolist() == want


def test_reshape_is_row_major_per_block() -> None:
    x = torch.arange(2 * 2 * 6, dtype=torch.float32).reshape(2, 2, 6)
    out = I.Reshape(-1, 3, 4).reference(x)
    assert out.shape == (2, 3, 4)
    for s in range(2):
        flat = [float(v) for row in x[s] for v in row]
        assert [float(v) for row in out[s] for v in row] == flat
    torch.testing.assert_close(C.Reshape(-1, 12, 1).reference(x), x.reshape(2, 12, 1))


def test_transpose_swaps_the_inner_axes() -> None:
    x = rand(2, 3, 4, seed=13)
    out = I.Transpose().reference(x)
    assert out.shape == (2, 4, 3)
    for s, i, j in itertools.product(range(2), range(3), range(4)):
        assert out[s, j, i] == x[s, i, j]


# -- Softmax / Normalize / Conv1d over a row's blocks (dim 0) ------------------------------------------------
def test_softmax_dim0_normalises_each_row() -> None:
    lengths = [2, 3]
    x = t([[1.0]], [[2.0]], [[0.0]], [[-1.0]], [[3.0]])  # [5, 1, 1]
    out = I.Softmax(dim=0, scale=0.5).reference_segmented(x, seg(lengths))
    rows = [[1.0, 2.0], [0.0, -1.0, 3.0]]
    want = []
    for vals in rows:
        exps = [math.exp(0.5 * v) for v in vals]
        want += [e / sum(exps) for e in exps]
    torch.testing.assert_close(out.flatten(), torch.tensor(want))


def test_softmax_inner_axes() -> None:
    x = rand(2, 3, 4, seed=14)
    for dim in (1, 2):
        out = I.Softmax(dim=dim, scale=2.0).reference(x)
        torch.testing.assert_close(out.sum(dim), torch.ones(2, 4 if dim == 1 else 3))
        torch.testing.assert_close(out, torch.exp(2 * x) / torch.exp(2 * x).sum(dim, keepdim=True))


def test_normalize_dim0_per_row() -> None:
    lengths = [1, 3]
    x = t([[4.0, 2.0]], [[1.0, 1.0]], [[2.0, 3.0]], [[1.0, 4.0]])  # [4, 1, 2]
    out = I.Normalize(dim=0).reference_segmented(x, seg(lengths))
    want = t([[1.0, 1.0]], [[0.25, 0.125]], [[0.5, 0.375]], [[0.25, 0.5]])
    torch.testing.assert_close(out, want)


def test_normalize_inner_axis() -> None:
    x = t([[1.0, 3.0], [2.0, 2.0]])
    torch.testing.assert_close(I.Normalize(dim=2).reference(x), t([[0.25, 0.75], [0.5, 0.5]]))


def _loop_conv(x: torch.Tensor, lengths: list[int], w: list[float]) -> torch.Tensor:
    half = (len(w) - 1) // 2
    out = torch.zeros_like(x)
    start = 0
    for n in lengths:
        for s in range(n):
            for k, wk in enumerate(w):
                src = s + k - half
                if 0 <= src < n:  # zero padding at the row's ends: never read a neighbouring row
                    out[start + s] += wk * x[start + src]
        start += n
    return out


@pytest.mark.parametrize("weight", [[1.0, 2.0, 4.0], [0.5, -1.0], [3.0], [1.0, 0.0, 0.0, 0.0, 2.0]])
def test_conv1d_zero_pads_at_row_ends(weight: list[float]) -> None:
    lengths = [3, 1, 4]
    x = torch.arange(1, 9, dtype=torch.float32).view(8, 1, 1) * t([[1.0, 10.0]])  # [8, 1, 2]
    out = I.Conv1d(weight).reference_segmented(x, seg(lengths))
    torch.testing.assert_close(out, _loop_conv(x, lengths, weight))


def test_conv1d_per_feature_weight() -> None:
    w = [[[1.0, 0.0]], [[2.0, 1.0]], [[0.0, -1.0]]]  # [K=3, 1, 2]: one kernel per column
    x = rand(5, 1, 2, seed=15)
    out = I.Conv1d(w).reference_segmented(x, seg([5]))
    for col in range(2):
        kernel = [w[k][0][col] for k in range(3)]
        torch.testing.assert_close(out[:, :, col], _loop_conv(x[:, :, col : col + 1], [5], kernel)[:, :, 0])


def test_conv1d_weight_is_rounded_to_its_dtype() -> None:
    op = I.Conv1d([1.001], dtype=torch.bfloat16)
    assert op.weight.flatten().tolist() == [torch.tensor(1.001).to(torch.bfloat16).item()]


# -- cache-side interleave ops -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "f"),
    [
        ("MeanInterleave", REDUCERS["Mean"]),
        ("MaxInterleave", max),
        ("MinInterleave", min),
        ("L2NormInterleave", REDUCERS["L2Norm"]),
    ],
)
@pytest.mark.parametrize("dim", [1, 2])
def test_interleave_folds_groups(name: str, f: Callable[[list[float]], float], dim: int) -> None:
    x = rand(2, 4, 6, seed=16)
    k = 2
    out = getattr(C, name)(dim=dim, k=k).reference(x)
    assert out.shape == ((2, 2, 6) if dim == 1 else (2, 4, 3))
    for idx in itertools.product(*(range(n) for n in out.shape)):
        s, i, j = idx
        if dim == 1:
            vals = [float(x[s, i * k + g, j]) for g in range(k)]
        else:
            vals = [float(x[s, i, j * k + g]) for g in range(k)]
        assert float(out[idx]) == pytest.approx(f(vals), rel=1e-5, abs=1e-6)


# -- shape inference -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "inputs", "want"),
    [
        (I.Exp(), [vt(B, 4, 8)], (B, (4, 8))),
        (I.Relu(), [vt(P, 1, 8)], (R, (1, 8))),  # a PAGED input is read per dense block: RAGGED
        (I.Multiply(), [vt(B, 1, 8), vt(B, 4, 1)], (B, (4, 8))),
        (I.Add(), [vt(B, 1, 8), vt(P, 3, 8)], (R, (3, 8))),
        (I.WhereLess(), [vt(R, 1, 1), vt(B, 1, 1)], (R, (1, 1))),
        (I.GeMM(), [vt(B, 1, 128), vt(P, 1, 128)], (R, (1, 1))),
        (I.GeMM(), [vt(B, 4, 64), vt(P, 16, 64)], (R, (16, 4))),
        (I.GeMM(), [vt(B, 4, 64), vt(B, 2, 64)], (B, (2, 4))),
        (I.GeMV(), [vt(B, 1, 64), vt(P, 1, 64)], (R, (1, 1))),
        (I.Sum(dim=1), [vt(B, 4, 8)], (B, (1, 8))),
        (I.Max(dim=2), [vt(P, 4, 8)], (R, (4, 1))),
        (I.Mean(dim=0), [vt(R, 4, 8)], (B, (4, 8))),
        (I.Min(dim=0), [vt(P, 1, 1)], (B, (1, 1))),
        (I.Softmax(dim=0), [vt(R, 1, 1)], (R, (1, 1))),
        (I.Softmax(dim=2), [vt(B, 2, 3)], (B, (2, 3))),
        (I.Normalize(dim=0), [vt(P, 1, 2)], (R, (1, 2))),
        (I.Conv1d([1.0, 2.0, 1.0]), [vt(R, 1, 1)], (R, (1, 1))),
        (I.Conv1d([[[1.0, 2.0]]]), [vt(R, 3, 2)], (R, (3, 2))),
        (I.Transpose(), [vt(B, 4, 8)], (B, (8, 4))),
        (I.Reshape(-1, 2, 16), [vt(R, 4, 8)], (R, (2, 16))),
        (I.Kron(), [vt(B, 2, 4), vt(P, 2, 2)], (R, (4, 8))),
        (I.Kron(dim=1), [vt(R, 2, 1), vt(R, 4, 3)], (R, (8, 3))),
        (I.Kron(dim=2), [vt(R, 1, 2), vt(R, 3, 4)], (R, (3, 8))),
        (I.MaskSlice(0, 4, dim=2), [vt(B, 1, 8)], (B, (1, 8))),
        (I.Load(), [vt(P, 2, 3)], (R, (2, 3))),
        (C.Mean(dim=1), [vt(P, 16, 128)], (R, (1, 128))),
        (C.MeanInterleave(dim=1, k=4), [vt(P, 16, 128)], (R, (4, 128))),
        (C.MaxInterleave(dim=2, k=32), [vt(P, 16, 128)], (R, (16, 4))),
        (C.GeMM(), [vt(P, 16, 128), vt(P, 1, 128)], (R, (1, 16))),
    ],
    ids=lambda p: repr(p) if isinstance(p, vOp) else "",
)
def test_infer(op: vOp, inputs: list[vTensor], want: tuple[FORMAT, tuple[int, int]]) -> None:
    assert op.infer(inputs) == want


@pytest.mark.parametrize(
    ("op", "inputs", "match"),
    [
        (I.GeMM(), [vt(B, 1, 64), vt(P, 1, 128)], "contracts the last axis"),
        (I.GeMV(), [vt(B, 4, 64), vt(P, 1, 64)], "vectors"),
        (I.Multiply(), [vt(B, 4, 8), vt(P, 16, 8)], "do not broadcast on axis 1"),
        (I.Maximum(), [vt(B, 1, 8), vt(P, 1, 4)], "do not broadcast on axis 2"),
        (I.Mean(dim=0), [vt(B, 4, 8)], "must be RAGGED"),
        (I.Softmax(dim=0), [vt(B, 1, 1)], "must be RAGGED"),
        (I.Conv1d([1.0, 1.0]), [vt(B, 1, 1)], "must be RAGGED"),
        (I.Conv1d([[[1.0, 2.0, 3.0]]]), [vt(R, 1, 2)], "weight axis 2 has size 3"),
        (I.Reshape(-1, 3, 3), [vt(R, 2, 4)], "cannot hold"),
        (I.Kron(), [vt(R, 3, 2), vt(R, 2, 2)], "powers of two"),
        (I.Kron(dim=1), [vt(R, 2, 3), vt(R, 2, 4)], "do not broadcast"),
        (I.MaskSlice(0, 9, dim=2), [vt(R, 1, 8)], "past axis 2"),
        (C.MeanInterleave(dim=1, k=3), [vt(P, 16, 128)], "not a multiple of k=3"),
    ],
    ids=lambda p: repr(p) if isinstance(p, vOp) else "",
)
def test_infer_errors(op: vOp, inputs: list[vTensor], match: str) -> None:
    with pytest.raises(FlowShapeError, match=match):
        op.infer(inputs)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: I.Mean(dim=3), "dim must be one of"),
        (lambda: I.Softmax(dim=-1), "dim must be 0, 1 or 2"),
        (lambda: I.Conv1d([1.0], dim=1), "dim must be 0"),
        (lambda: I.Conv1d([[1.0, 2.0]]), r"weight must be \[K\] or \[K, D0, D1\]"),
        (lambda: I.Reshape(4, 2, 2), "first argument must be -1"),
        (lambda: I.Kron(dim=0), "dim must be 1, 2 or"),
        (lambda: I.MaskSlice(0, 1, dim=0), "dim must be 1 or 2"),
        (lambda: I.MaskSlice(3, 1), "start <= end"),
        (lambda: C.MeanInterleave(dim=1, k=0), "k must be positive"),
        (lambda: C.L2NormInterleave(dim=0, k=2), "dim must be one of"),
    ],
)
def test_constructor_errors(make: Callable[[], vOp], match: str) -> None:
    with pytest.raises(FlowShapeError, match=match):
        make()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: I.Mean(dim=True), "dim must be one of"),  # a bool is an int to Python, not to a flow author
        (lambda: I.Mean(dim=1.0), "dim must be one of"),
        (lambda: I.Softmax(dim="1"), "dim must be 0, 1 or 2"),
        (lambda: I.Kron(dim=(1, 1.5)), "dim must be 1, 2 or"),
        (lambda: I.Reshape(-1, 0, 4), "the second size must be positive"),
        (lambda: I.Reshape(-1, 4, -1), "the third size must be positive"),
        (lambda: I.Reshape(-1.0, 4, 4), "first argument must be -1"),
        (lambda: I.Conv1d([]), r"weight must be \[K\] or \[K, D0, D1\]"),
        (lambda: I.Conv1d([[[1.0, float("nan")]]]), "weight must be finite"),
        (lambda: I.Conv1d("abc"), "weight must be a nested list of numbers"),
        (lambda: I.MaskSlice(0.5, 2), "need ints 0 <= start <= end"),
        (lambda: C.MeanInterleave(dim=1, k=2.0), "k must be positive"),
    ],
)
def test_constructor_arguments_are_checked_where_the_flow_writes_them(make: Callable[[], vOp], match: str) -> None:
    """The error names the line that built the op (here: this file's lambda), and how to fix it."""
    with pytest.raises(FlowShapeError, match=match) as info:
        make()
    assert f"{Path(__file__).name}:" in str(info.value) and "Fix:" in str(info.value)


def test_approx_topk_ratio_type() -> None:
    with pytest.raises(FlowRuleError, match="tolerate_ratio must be in"):
        I.approxTopK(True)


def test_approx_topk_ratio_range() -> None:
    assert I.approxTopK(0.25).params() == {"tolerate_ratio": 0.25}
    for bad in (-0.1, 1.0):
        with pytest.raises(FlowRuleError, match=r"tolerate_ratio must be in \[0, 1\)"):
            I.approxTopK(bad)


def test_reduce_schedule_depends_on_dim() -> None:
    assert I.Mean(dim=0).schedule == Schedule.STANDALONE and I.Mean(dim=1).schedule == Schedule.FUSED
    assert I.Softmax(dim=0).schedule == Schedule.STANDALONE and I.Softmax(dim=2).schedule == Schedule.FUSED
    assert I.Max().schedule == Schedule.FUSED  # the class default
    assert I.topK().schedule == Schedule.SELECT and I.Conv1d([1.0]).schedule == Schedule.STANDALONE
