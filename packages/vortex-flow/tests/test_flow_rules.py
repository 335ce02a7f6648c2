"""Every flow rule raises a specific error at load/trace time that names the flow file, the line of the
offending call and the fix. Each bad flow is a real ``.py`` file loaded with ``build_vflow(name, path)`` and
traced with ``trace_flow(flow, Geometry())``, exactly as a user's flow would be."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vortex_torch.abs.context import Geometry
from vortex_torch.abs.errors import FlowRuleError, FlowShapeError, VortexError
from vortex_torch.abs.formats import FORMAT
from vortex_torch.flow import registry
from vortex_torch.flow.errors import FlowInitError, FlowLoadError, RegistryError, UnknownFlowError
from vortex_torch.flow.loader import build_vflow, load_module_file
from vortex_torch.flow.trace import TracedFlow, trace_flow

REPO = Path(__file__).resolve().parents[3]

HEADER = """\
import torch
from vortex_torch.flow import vFlow, register
from vortex_torch import indexer as I
from vortex_torch import cache as C
"""

INIT = """\
self.mean = I.Mean(dim=1)
self.gemm = I.GeMM()
self.topk = I.topK()
self.cmean = C.Mean(dim=1)
"""
INDEXER = """\
q_mean = self.mean(q, ctx=ctx)
score = self.gemm(q_mean, cache["centroids"], ctx=ctx)
self.topk(score, o, ctx=ctx)
"""
CACHE = """\
self.cmean(cache["k"], cache["centroids"], loc=loc, ctx=ctx)
"""
CREATE = """\
return {"centroids": (1, head_dim)}
"""


def _body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", " " * 8)


def flow_source(
    name: str,
    *,
    init: str = INIT,
    indexer: str = INDEXER,
    cache: str = CACHE,
    create: str = CREATE,
    decorator: str | None = None,
    cls: str = "Flow",
) -> str:
    """A complete flow module; each keyword replaces the body of one method."""
    deco = decorator if decorator is not None else f"@register({name!r})"
    return (
        HEADER
        + f"\n\n{deco}\nclass {cls}(vFlow):\n"
        + "    def __init__(self):\n        super().__init__()\n"
        + _body(init)
        + "\n    def forward_indexer(self, q, o, cache, ctx):\n"
        + _body(indexer)
        + "\n    def forward_cache(self, cache, loc, ctx):\n"
        + _body(cache)
        + "\n    def create_cache(self, block_size, head_dim):\n"
        + _body(create)
    )


def write(tmp_path: Path, filename: str, source: str) -> Path:
    path = tmp_path / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line of ``path`` containing ``needle``."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not found {nth} time(s) in {path}"
    return hits[nth - 1]


def load_trace(name: str, path: Path) -> TracedFlow:
    return trace_flow(build_vflow(name, str(path)), Geometry())


def check_message(exc: BaseException, path: Path, needle: str, *fragments: str, nth: int = 1) -> None:
    """The message names ``path`` at the line holding ``needle`` and contains every fragment."""
    msg = str(exc)
    where = f"{path.name}:{line_of(path, needle, nth)}"
    assert where in msg, f"expected {where} in: {msg}"
    for frag in fragments:
        assert frag in msg, f"expected {frag!r} in: {msg}"
    assert "Fix" in msg or "fix" in msg, f"no fix hint in: {msg}"


def fails(
    tmp_path: Path, exc_type: type[BaseException], needle: str, *fragments: str, nth: int = 1, **parts: str
) -> str:
    """Write a flow with the given method bodies, load and trace it; it must fail at the line with ``needle``."""
    path = write(tmp_path, "bad_flow.py", flow_source("bad", **parts))
    with pytest.raises(exc_type) as info:
        load_trace("bad", path)
    check_message(info.value, path, needle, *fragments, nth=nth)
    return str(info.value)


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from an empty registry (no installed flow packages) and leaves no trace."""
    monkeypatch.setenv("VORTEX_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("VORTEX_FLOWS", raising=False)
    with registry.isolated(clear=True):
        yield


# -- a good flow ------------------------------------------------------------------------------------------------
def test_good_flow_traces(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", flow_source("good"))
    traced = load_trace("good", path)
    assert traced.fields == {"centroids": (1, 128)}
    assert [n.op.name for n in traced.indexer.nodes] == ["Mean", "GeMM", "topK"]
    assert traced.indexer.nodes[0].site is not None
    assert traced.indexer.nodes[0].site.lineno == line_of(path, "q_mean = self.mean")
    assert not torch.cuda.is_initialized()  # loading and tracing never touch the GPU
    # the same instance traces again (another geometry): op instances are claimed per trace
    again = trace_flow(traced.flow, Geometry(block_size=32, head_dim=64, group_size=8))
    assert again.fields == {"centroids": (1, 64)}


def test_example_flow_traces() -> None:
    traced = load_trace("custom_sparse_attention", REPO / "examples" / "custom_sparse_attention.py")
    assert traced.terminal.op.name == "topK"
    assert set(traced.fields) == {"centroids"}


def test_save_with_fill_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "stateful.py",
        flow_source(
            "stateful",
            init=INIT
            + "self.load = I.Load()\nself.add = I.Add()\nself.save = I.Save()\nself.fill = C.Fill(0.0)\n",
            indexer="""
                q_mean = self.mean(q, ctx=ctx)
                score = self.gemm(q_mean, cache["centroids"], ctx=ctx)
                acc = self.add(self.load(cache["acc"], ctx=ctx), score, ctx=ctx)
                self.save(acc, cache["acc"], ctx=ctx)
                self.topk(acc, o, ctx=ctx)
            """,
            cache=CACHE + 'self.fill(cache["acc"], loc=loc, ctx=ctx)\n',
            create='return {"centroids": (1, head_dim), "acc": (1, 1)}\n',
        ),
    )
    traced = load_trace("stateful", path)
    assert traced.saved_fields == {"acc"}


def test_membership_test_on_cache_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "member.py",
        flow_source(
            "member",
            indexer='assert "centroids" in cache and "nope" not in cache\n' + INDEXER,
        ),
    )
    load_trace("member", path)


# -- native torch ops --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "shown", "hint"),
    [
        ("x = q.mean(dim=1)", "'.mean'", "Mean(dim=...)"),
        ('x = torch.matmul(q, cache["centroids"])', "'matmul'", "GeMM()"),
        ("x = q * 2", "'operator *'", "Multiply()"),
        ("x = 2 * q", "'operator *'", "Add_Mul(beta=c)"),
        ("x = q[0]", "'operator [] (indexing)'", "MaskSlice"),
        ("x = q.float()", "'.float'", "remove the cast"),
        ("x = torch.nn.functional.softmax(q, dim=-1)", "'softmax'", "Softmax("),
        ("x = torch.cat([q, q])", "'cat'", "Vortex ops"),
        ("x = float(q)", "'float()'", "Vortex ops"),
        ("x = q == 0", "'operator =='", "WhereEqual()"),
        ("x = q.T", "'.T'", "Transpose()"),
        ("x = 1 if q else 0", "'bool()'", "Where*"),
    ],
)
def test_native_torch_op_in_indexer(tmp_path: Path, line: str, shown: str, hint: str) -> None:
    msg = fails(
        tmp_path, FlowRuleError, line, shown, hint, "native torch operation", indexer=line + "\n" + INDEXER
    )
    assert "'q' (BATCHED [*, 4, 128])" in msg


def test_native_indexing_of_a_cache_field(tmp_path: Path) -> None:
    line = 'x = cache["k"][0]'
    msg = fails(
        tmp_path, FlowRuleError, line, "indexing", "'k' (PAGED [*, 16, 128])", cache=line + "\n" + CACHE
    )
    assert "MaskSlice" in msg


def test_native_op_on_an_op_output(tmp_path: Path) -> None:
    line = "score = score.exp()"
    fails(
        tmp_path,
        FlowRuleError,
        line,
        "'.exp'",
        "RAGGED [*, 1, 1] tensor",
        "Exp()",
        indexer="""
            q_mean = self.mean(q, ctx=ctx)
            score = self.gemm(q_mean, cache["centroids"], ctx=ctx)
            score = score.exp()
            self.topk(score, o, ctx=ctx)
        """,
    )


def test_flow_inside_a_directory_named_vortex_torch_is_still_user_code(tmp_path: Path) -> None:
    # a clone of the upstream repository is a directory called vortex_torch: its files are still the user's
    path = write(
        tmp_path, "vortex_torch/flows/clone.py", flow_source("clone", indexer="x = q.sum()\n" + INDEXER)
    )
    with pytest.raises(FlowRuleError) as info:
        load_trace("clone", path)
    assert f"clone.py:{line_of(path, 'x = q.sum()')}" in str(info.value)


# -- op instances, terminal ---------------------------------------------------------------------------------------
def test_op_instance_called_twice(tmp_path: Path) -> None:
    msg = fails(
        tmp_path,
        FlowRuleError,
        "b = self.mean(a, ctx=ctx)",
        "called twice",
        "Mean(dim=1)",
        "create one instance per call in __init__",
        indexer="""
            a = self.mean(q, ctx=ctx)
            b = self.mean(a, ctx=ctx)
            score = self.gemm(b, cache["centroids"], ctx=ctx)
            self.topk(score, o, ctx=ctx)
        """,
    )
    assert (
        f"first at {tmp_path / 'bad_flow.py'}:{line_of(tmp_path / 'bad_flow.py', 'a = self.mean(q')}" in msg
    )


def test_op_instance_shared_between_methods(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        'self.cmean(cache["v"], None, loc=loc, ctx=ctx)',
        "called twice",
        cache=CACHE + 'self.cmean(cache["v"], None, loc=loc, ctx=ctx)\n',
    )


def test_no_terminal_topk(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "def forward_indexer",
        "never selects blocks",
        "topK()(score, o, ctx=ctx)",
        indexer="""
            q_mean = self.mean(q, ctx=ctx)
            score = self.gemm(q_mean, cache["centroids"], ctx=ctx)
        """,
    )


def test_topk_called_twice(tmp_path: Path) -> None:
    msg = fails(
        tmp_path,
        FlowRuleError,
        "I.topK()(score, o, ctx=ctx)",
        "2 times",
        "call topK/approxTopK once",
        indexer=INDEXER + "I.topK()(score, o, ctx=ctx)\n",
    )
    assert f"bad_flow.py:{line_of(tmp_path / 'bad_flow.py', 'self.topk(score, o, ctx=ctx)')}" in msg


def test_op_after_topk(tmp_path: Path) -> None:
    msg = fails(
        tmp_path,
        FlowRuleError,
        "I.Exp()(score, ctx=ctx)",
        "Exp is called after it",
        "move every op before the topK/approxTopK call",
        indexer=INDEXER + "I.Exp()(score, ctx=ctx)\n",
    )
    assert "self.topk(score, o, ctx=ctx)" in msg


def test_approx_topk_is_a_terminal(tmp_path: Path) -> None:
    path = write(
        tmp_path, "approx.py", flow_source("approx", init=INIT.replace("I.topK()", "I.approxTopK(0.1)"))
    )
    assert load_trace("approx", path).terminal.op.name == "approxTopK"


def test_o_passed_to_a_non_terminal_op(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "I.Exp()(o, ctx=ctx)",
        "only the terminal",
        indexer="I.Exp()(o, ctx=ctx)\n" + INDEXER,
    )


# -- create_cache ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reserved", ["k", "v"])
def test_create_cache_declares_k_or_v(tmp_path: Path, reserved: str) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        f'"{reserved}": (block_size, head_dim)',
        f"create_cache declares {reserved!r}",
        "provided automatically",
        f"remove {reserved!r}",
        create=f'return {{\n    "centroids": (1, head_dim),\n    "{reserved}": (block_size, head_dim),\n}}\n',
    )


@pytest.mark.parametrize(
    "shape", ["(1, head_dim, 3)", "(0, head_dim)", '"1x128"', "(1.5, 2)", "(True, 2)", "4"]
)
def test_create_cache_bad_shape(tmp_path: Path, shape: str) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        '"centroids":',
        "field 'centroids' maps to",
        "(rows, cols) pair of positive ints",
        create=f'return {{"centroids": {shape}}}\n',
    )


@pytest.mark.parametrize(
    ("create", "fragment"),
    [
        ("return [('centroids', (1, head_dim))]\n", "must return a dict"),
        ("x = {'centroids': (1, head_dim)}\n", "returned None"),
        ("return {'q': (1, head_dim)}\n", "name of a forward_indexer input"),
        ("return {'my field': (1, head_dim)}\n", "identifier"),
    ],
)
def test_create_cache_bad_return(tmp_path: Path, create: str, fragment: str) -> None:
    needle = "def create_cache" if fragment in ("must return a dict", "returned None") else "return {"
    fails(tmp_path, FlowRuleError, needle, fragment, create=create)


def test_exception_in_create_cache(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "return {'centroids': (1, head_dimm)}",
        "NameError",
        "head_dimm",
        create="return {'centroids': (1, head_dimm)}\n",
    )


def test_cache_key_not_declared(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        'cache["centroid"]',
        "cache['centroid'], which create_cache does not declare",
        "Declared: centroids, k, v",
        "did you mean cache['centroids']",
        indexer=INDEXER.replace('cache["centroids"]', 'cache["centroid"]'),
    )


def test_cache_dict_is_read_only(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        'cache["centroids"] = x',
        "read-only",
        cache='x = self.cmean(cache["k"], None, loc=loc, ctx=ctx)\ncache["centroids"] = x\n',
    )


# -- fields: written, read, filled -----------------------------------------------------------------------------
def test_declared_field_never_written(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        '"extra": (1, 1)',
        "'extra' is declared in create_cache",
        "never written",
        "forward_cache",
        create='return {\n    "centroids": (1, head_dim),\n    "extra": (1, 1),\n}\n',
    )


def test_declared_field_never_read_by_indexer(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        '"maxk": (1, head_dim)',
        "never read by forward_indexer",
        "remove the field",
        init=INIT + "self.cmax = C.Max(dim=1)\n",
        cache=CACHE + 'self.cmax(cache["k"], cache["maxk"], loc=loc, ctx=ctx)\n',
        create='return {\n    "centroids": (1, head_dim),\n    "maxk": (1, head_dim),\n}\n',
    )


def test_saved_field_never_filled(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        'self.save(acc, cache["acc"], ctx=ctx)',
        "accumulated with Save",
        "Fill(0.0)(cache['acc'], loc=loc, ctx=ctx)",
        init=INIT + "self.load = I.Load()\nself.add = I.Add()\nself.save = I.Save()\n",
        indexer="""
            q_mean = self.mean(q, ctx=ctx)
            score = self.gemm(q_mean, cache["centroids"], ctx=ctx)
            acc = self.add(self.load(cache["acc"], ctx=ctx), score, ctx=ctx)
            self.save(acc, cache["acc"], ctx=ctx)
            self.topk(acc, o, ctx=ctx)
        """,
        create='return {"centroids": (1, head_dim), "acc": (1, 1)}\n',
    )


# -- shapes ----------------------------------------------------------------------------------------------------
def test_gemm_contraction_mismatch(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        "score = self.gemm(q_mean",
        "contracts the last axis",
        "x is [*, 4, 1] but y is [*, 1, 128]",
        "GeMM(x, y) = y @ xᵀ",
        init=INIT.replace("I.Mean(dim=1)", "I.Mean(dim=2)"),
    )


def test_broadcasting_mismatch(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        'x = I.Multiply()(q, cache["k"], ctx=ctx)',
        "do not broadcast on axis 1",
        "'q' (BATCHED [*, 4, 128])",
        "'k' (PAGED [*, 16, 128])",
        indexer='x = I.Multiply()(q, cache["k"], ctx=ctx)\n' + INDEXER,
    )


def test_save_into_field_of_another_shape(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        'I.Save()(score, cache["acc"], ctx=ctx)',
        "does not fit field 'acc'",
        init=INIT + "self.fill = C.Fill(0.0)\n",
        indexer=INDEXER.replace("self.topk", 'I.Save()(score, cache["acc"], ctx=ctx)\nself.topk'),
        cache=CACHE + 'self.fill(cache["acc"], loc=loc, ctx=ctx)\n',
        create='return {"centroids": (1, head_dim), "acc": (2, 2)}\n',
    )


def test_cache_op_writing_field_of_another_shape(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        "self.cmean(cache",
        "produces [*, 16, 1]",
        "field 'centroids' is declared as (1, 128)",
        init=INIT.replace("C.Mean(dim=1)", "C.Mean(dim=2)"),
    )


def test_cache_op_shape_error_without_output_names_the_line(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        "x = C.MeanInterleave(dim=1, k=3)",
        "not a multiple of k=3",
        cache='x = C.MeanInterleave(dim=1, k=3)(cache["k"], None, loc=loc, ctx=ctx)\n' + CACHE,
    )


@pytest.mark.parametrize(
    ("indexer", "fragment"),
    [
        ('score = I.Multiply()(q_mean, cache["centroids"], ctx=ctx)', "[*, 1, 128]"),  # not reduced
        ("score = I.Max(dim=2)(q_mean, ctx=ctx)", "BATCHED"),  # BATCHED, not one score per block
    ],
)
def test_topk_on_a_score_that_is_not_s11(tmp_path: Path, indexer: str, fragment: str) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        "self.topk(score, o, ctx=ctx)",
        "RAGGED [S, 1, 1]",
        fragment,
        "Max(dim=1)",
        indexer=f"q_mean = self.mean(q, ctx=ctx)\n{indexer}\nself.topk(score, o, ctx=ctx)\n",
    )


def test_reduce_dim0_on_batched(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowShapeError,
        "x = I.Mean(dim=0)(q, ctx=ctx)",
        "Mean(dim=0)",
        "must be RAGGED",
        "use dim=1 or dim=2",
        indexer="x = I.Mean(dim=0)(q, ctx=ctx)\n" + INDEXER,
    )


# -- the two sides ---------------------------------------------------------------------------------------------
def test_indexer_op_used_in_forward_cache(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        'I.Max(dim=1)(cache["k"], ctx=ctx)',
        "Max from vortex_torch.indexer is an op of forward_indexer but is called in forward_cache",
        "use vortex_torch.cache.Max",
        cache='I.Max(dim=1)(cache["k"], ctx=ctx)\n' + CACHE,
    )


def test_cache_op_used_in_forward_indexer(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "C.Max(dim=1)(q, None, loc=None, ctx=ctx)",
        "Max from vortex_torch.cache is an op of forward_cache but is called in forward_indexer",
        "use vortex_torch.indexer.Max",
        indexer="C.Max(dim=1)(q, None, loc=None, ctx=ctx)\n" + INDEXER,
    )


def test_cache_only_op_in_indexer_says_there_is_no_twin(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "C.MeanInterleave(dim=1, k=2)(q, None, loc=None, ctx=ctx)",
        "vortex_torch.indexer has no MeanInterleave",
        indexer="C.MeanInterleave(dim=1, k=2)(q, None, loc=None, ctx=ctx)\n" + INDEXER,
    )


def test_tensor_carried_from_indexer_into_cache(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "self.cmean(self.stash",
        "another method or trace",
        "cache fields",
        indexer="self.stash = q\n" + INDEXER,
        cache='self.cmean(self.stash, cache["centroids"], loc=loc, ctx=ctx)\n',
    )


# -- exceptions in user code -----------------------------------------------------------------------------------
def test_attribute_typo_on_self(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "q_mean = self.meen(q, ctx=ctx)",
        "AttributeError",
        "'meen'",
        "Did you mean self.mean?",
        indexer=INDEXER.replace("self.mean(", "self.meen("),
    )


def test_ctx_passed_positionally(tmp_path: Path) -> None:
    fails(
        tmp_path,
        FlowRuleError,
        "q_mean = self.mean(q, ctx)",
        "TypeError",
        "op(x, ctx=ctx)",
        indexer=INDEXER.replace("self.mean(q, ctx=ctx)", "self.mean(q, ctx)"),
    )


def test_bad_op_argument_in_init(tmp_path: Path) -> None:
    path = write(tmp_path, "init_err.py", flow_source("init_err", init=INIT + "self.bad = I.Max(dim=3)\n"))
    with pytest.raises(FlowInitError) as info:
        build_vflow("init_err", str(path))
    check_message(info.value, path, "self.bad = I.Max(dim=3)", "dim must be one of")


def test_wrong_init_kwargs(tmp_path: Path) -> None:
    path = write(tmp_path, "kw.py", flow_source("kw"))
    with pytest.raises(FlowInitError, match=r"does not accept init_kwargs \{'ratio': 0.5\}") as info:
        build_vflow("kw", str(path), {"ratio": 0.5})
    assert f"kw.py:{line_of(path, '@register')}" in str(info.value)


def test_abstract_flow(tmp_path: Path) -> None:
    source = flow_source("abstract").split("    def create_cache")[0]
    path = write(tmp_path, "abstract.py", source)
    with pytest.raises(FlowInitError, match="does not implement create_cache") as info:
        build_vflow("abstract", str(path))
    assert f"abstract.py:{line_of(path, '@register')}" in str(info.value)


# -- registration and loading ----------------------------------------------------------------------------------
def test_unknown_register_name_lists_known_names(tmp_path: Path) -> None:
    path = write(tmp_path, "named.py", flow_source("centroid_flow"))
    other = write(tmp_path, "other.py", flow_source("other_flow"))
    load_module_file(str(other))
    with pytest.raises(UnknownFlowError) as info:
        build_vflow("centroid_flwo", str(path))
    msg = str(info.value)
    assert "no flow is registered as 'centroid_flwo'" in msg and "named.py" in msg
    assert "That file registers 'centroid_flow'" in msg
    assert "Known flows: centroid_flow, other_flow" in msg
    assert "Did you mean 'centroid_flow'?" in msg
    assert "@register('centroid_flwo')" in msg  # the fix
    assert isinstance(info.value, FlowLoadError) and isinstance(info.value, KeyError)


def test_unknown_name_without_module_path(tmp_path: Path) -> None:
    with pytest.raises(UnknownFlowError, match="module_path=") as info:
        build_vflow("nothing_here")
    assert "Known flows: (none)" in str(info.value)


def test_duplicate_name_from_two_files(tmp_path: Path) -> None:
    first = write(tmp_path, "first.py", flow_source("dup", cls="FirstFlow"))
    second = write(tmp_path, "second.py", flow_source("dup", cls="SecondFlow"))
    build_vflow("dup", str(first))
    with pytest.raises(RegistryError) as info:
        build_vflow("dup", str(second))
    msg = str(info.value)
    assert "'dup' is registered twice" in msg
    assert "class FirstFlow" in msg and "class SecondFlow" in msg
    assert f"first.py:{line_of(first, '@register')}" in msg
    assert f"second.py:{line_of(second, '@register')}" in msg
    assert "different name" in msg
    assert registry.get("dup").__name__ == "FirstFlow"  # the failed file left nothing behind


def test_same_file_loaded_twice_is_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "twice.py", flow_source("twice"))
    first = build_vflow("twice", str(path))
    second = build_vflow("twice", str(path))
    assert type(first).__qualname__ == type(second).__qualname__ == "Flow"
    assert registry.list_keys() == ["twice"]
    load_trace("twice", path)


def test_failed_file_rolls_back_its_registrations(tmp_path: Path) -> None:
    source = flow_source("half") + "\n\nraise RuntimeError('boom')\n"
    path = write(tmp_path, "half.py", source)
    with pytest.raises(FlowLoadError) as info:
        load_module_file(str(path))
    check_message(info.value, path, "raise RuntimeError", "RuntimeError: boom")
    assert not registry.has("half")


def test_missing_module_path(tmp_path: Path) -> None:
    write(tmp_path, "real_flow.py", flow_source("x"))
    missing = tmp_path / "my_flow.py"
    with pytest.raises(FlowLoadError) as info:
        build_vflow("x", str(missing))
    msg = str(info.value)
    assert "does not exist" in msg and str(missing) in msg
    assert "real_flow.py" in msg  # what is there instead
    assert "Fix" in msg


def test_directory_as_module_path(tmp_path: Path) -> None:
    write(tmp_path, "flows/my_flow.py", flow_source("x"))
    with pytest.raises(FlowLoadError) as info:
        build_vflow("x", str(tmp_path / "flows"))
    msg = str(info.value)
    assert "is a directory" in msg and "my_flow.py" in msg and "Fix" in msg


def test_syntax_error_in_flow_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "syntax.py",
        flow_source("syntax").replace("def forward_cache(self,", "def forward_cache(self"),
    )
    with pytest.raises(FlowLoadError) as info:
        build_vflow("syntax", str(path))
    check_message(info.value, path, "def forward_cache(self", "syntax error")


def test_import_error_in_flow_file(tmp_path: Path) -> None:
    path = write(tmp_path, "imp.py", "import not_a_real_module_xyz\n" + flow_source("imp"))
    with pytest.raises(FlowLoadError) as info:
        build_vflow("imp", str(path))
    check_message(info.value, path, "import not_a_real_module_xyz", "ModuleNotFoundError")


def test_non_vflow_class_decorated(tmp_path: Path) -> None:
    path = write(tmp_path, "notflow.py", HEADER + "\n\n@register('notflow')\nclass NotAFlow:\n    pass\n")
    with pytest.raises(RegistryError) as info:
        load_module_file(str(path))
    check_message(info.value, path, "@register('notflow')", "class NotAFlow", "not a vFlow subclass", "vFlow")


@pytest.mark.parametrize(
    ("decorator", "fragment"),
    [
        ("@register(42)", "non-empty string name, got 42"),
        ("@register('')", "non-empty string name"),
        ("@register('my flow')", "spaces or commas"),
        ("@register", "without a name on class Flow"),
    ],
)
def test_register_with_a_bad_name(tmp_path: Path, decorator: str, fragment: str) -> None:
    path = write(tmp_path, "badname.py", flow_source("unused", decorator=decorator))
    with pytest.raises(RegistryError) as info:
        load_module_file(str(path))
    check_message(info.value, path, decorator, fragment)


def test_errors_are_vortex_errors() -> None:
    for cls in (FlowRuleError, FlowShapeError, FlowLoadError, FlowInitError, RegistryError, UnknownFlowError):
        assert issubclass(cls, VortexError)


def test_vtensor_guards_keep_python_protocols_working() -> None:
    from vortex_torch import indexer as ix

    ctx = ix.Context(Geometry())
    q = ctx.entry("q", (4, 128), FORMAT.BATCHED, torch.bfloat16)
    k = ctx.entry("k", (16, 128), FORMAT.PAGED, torch.bfloat16)
    assert not hasattr(q, "mean") and getattr(q, "float", None) is None  # AttributeError semantics
    assert q == q and q != k and q in [k, q] and len({q, k, q}) == 2  # identity between flow tensors
    assert q.shape == (-1, 4, 128) and q.inner == (4, 128)  # metadata stays readable
    with pytest.raises(FlowRuleError, match="operator =="):
        _ = q == 0
    with pytest.raises(FlowRuleError, match=r"'\.mean'"):
        q.mean(dim=1)
