"""Static checks on the Triton kernels' index arithmetic and specialisation.

Offsets into the sequence-long buffers (``[T, B, G*H]`` gate gradients, ``[T+1, B, H]`` state
histories, ``[N, G*H]`` packed inputs) pass 2**31 elements at sizes that fit on one GPU, and
Triton does integer arithmetic in the width of its operands: an int32 sum wraps before it
reaches the pointer. The rule checked here, per ``@triton.jit`` function (an AST scan, no
triton import needed; the launch tests below import it):

* an *offset* -- a parameter named ``*_off``, ``hs_r``/``hs_w`` or ``cs_r``/``cs_w``, which the
  launchers compute as ``t * B * width`` -- must be added straight to a pointer (``ptr + off +
  ...`` is evaluated pointer first) or be int64 (annotated ``tl.int64`` or cast with
  ``.to(tl.int64)``); combining it with anything else first is flagged;
* an *index* -- ``tl.program_id(...)``, the sequence length ``T``, a ``*row0`` parameter, a
  loop variable over a range bounded by an index (int64 when a bound is), and anything added
  to an index -- may be added to and scaled by compile-time constants, but multiplying it by a
  run-time size (a stride such as ``H`` or ``4 * H``) is flagged unless one side is int64.

Anything that is int64 or a pointer stays so through ``+ - *``, so casting an index once where
it is defined (``tl.program_id(1).to(tl.int64) * BLOCK_B + ...``) makes every offset built
from it int64. Offsets inside one weight matrix (``G*H x H`` elements, indices from the
reduction loop) are not covered by the rule.
"""

from __future__ import annotations

import ast
import pathlib
import re
from dataclasses import replace

import pytest
import torch
from layer_cases import Case, make_inputs
from misc_testlib import compiled_only

from fusedrnn import compile_report
from fusedrnn.ops import library
from fusedrnn.ops.triton.configs import BARRIER_KINDS, RESIDENT_CANDIDATE

KERNEL_DIR = pathlib.Path(__file__).resolve().parents[1] / "fusedrnn" / "ops" / "triton"
OFFSET_NAME = re.compile(r"(_off$|^(hs|cs)_[rw]$)")
INDEX_NAME = re.compile(r"(^T$|row0$)")

PTR, WIDE, OFFSET, INDEX, OTHER = "ptr", "int64", "offset", "index", "other"


def _is_jit(dec: ast.expr) -> bool:
    node = dec.func if isinstance(dec, ast.Call) else dec
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name == "jit" or name.endswith("_jit")


def _is_attr(node: ast.expr | None, attr: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == attr


class _Checker:
    """Walks one function body in order on construction, tracking the kind of every local
    name."""

    def __init__(self, fn: ast.FunctionDef, path: str):
        self.fn, self.path, self.problems = fn, path, []
        self.kinds: dict[str, str] = {}
        self.constexpr: set[str] = set()
        for a in fn.args.args:
            if _is_attr(a.annotation, "constexpr"):
                self.constexpr.add(a.arg)
            else:
                self.kinds[a.arg] = (WIDE if _is_attr(a.annotation, "int64") else
                                     PTR if a.arg.endswith("_ptr") else
                                     OFFSET if OFFSET_NAME.search(a.arg) else
                                     INDEX if INDEX_NAME.search(a.arg) else OTHER)  # fmt: skip
        self.run(fn.body)

    def flag(self, node: ast.AST, why: str) -> None:
        self.problems.append(f"{self.path}:{node.lineno} {self.fn.name}: {why}: "
                             f"{ast.unparse(node)}")  # fmt: skip

    def is_const(self, node: ast.expr) -> bool:
        if isinstance(node, ast.BinOp):
            return self.is_const(node.left) and self.is_const(node.right)
        return isinstance(node, ast.Constant) or getattr(node, "id", None) in self.constexpr

    def kind(self, node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            return self.kinds.get(node.id, OTHER)
        if isinstance(node, ast.Subscript):
            self.kind(node.slice)
            return self.kind(node.value)
        if isinstance(node, ast.IfExp):
            self.kind(node.test)
            kinds = {self.kind(node.body), self.kind(node.orelse)}
            return next((k for k in (PTR, OFFSET, INDEX, WIDE) if k in kinds), OTHER)
        if isinstance(node, ast.Call):
            f = node.func
            for a in [*node.args, *(k.value for k in node.keywords)]:
                self.kind(a)
            inner = self.kind(f.value) if isinstance(f, ast.Attribute) else OTHER
            if _is_attr(f, "to"):
                return WIDE if node.args and _is_attr(node.args[0], "int64") else inner
            return INDEX if _is_attr(f, "program_id") else OTHER
        if isinstance(node, ast.BinOp):
            lk, rk = self.kind(node.left), self.kind(node.right)
            kinds = {lk, rk}
            if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                return OTHER
            if PTR in kinds:
                if OFFSET in kinds and not isinstance(node.op, ast.Add):
                    self.flag(node, "offset used other than added to a pointer")
                return PTR
            if WIDE in kinds:
                return WIDE
            if OFFSET in kinds:
                self.flag(node, "int32 offset combined before it reaches the pointer")
                return OFFSET
            if INDEX in kinds:
                if isinstance(node.op, ast.Mult):
                    other = node.right if lk == INDEX else node.left
                    if not self.is_const(other):
                        self.flag(node, "int32 index multiplied by a run-time size")
                return INDEX
            return OTHER
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.kind(child)
        return OTHER

    def assign(self, target: ast.expr, kind: str) -> None:
        if isinstance(target, ast.Name):
            self.kinds[target.id] = kind
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self.assign(t, OTHER)

    def run(self, body: list[ast.stmt]) -> None:
        for st in body:
            if isinstance(st, (ast.Assign, ast.AnnAssign)) and st.value is not None:
                k = self.kind(st.value)
                if _is_attr(getattr(st, "annotation", None), "constexpr"):
                    self.constexpr.add(st.target.id)
                for t in st.targets if isinstance(st, ast.Assign) else [st.target]:
                    self.assign(t, k)
            elif isinstance(st, ast.AugAssign):
                k = self.kind(ast.BinOp(left=st.target, op=st.op, right=st.value,
                                        lineno=st.lineno, col_offset=st.col_offset))  # fmt: skip
                self.assign(st.target, k)
            elif isinstance(st, ast.For):
                bounds = st.iter.args if isinstance(st.iter, ast.Call) else []
                kinds = {self.kind(st.iter), *(self.kind(b) for b in bounds)}
                width = WIDE if WIDE in kinds else INDEX if kinds & {INDEX, OFFSET} else OTHER
                self.assign(st.target, width)  # the loop variable takes the bounds' width
            elif isinstance(st, (ast.If, ast.While)):
                self.kind(st.test)
            elif isinstance(st, (ast.Expr, ast.Return)) and st.value is not None:
                self.kind(st.value)
            if isinstance(st, (ast.For, ast.If, ast.While)):
                self.run(st.body)
                self.run(st.orelse)


def offset_problems(source: str, name: str = "<src>") -> list[str]:
    return [p for fn in ast.walk(ast.parse(source))
            if isinstance(fn, ast.FunctionDef) and any(_is_jit(d) for d in fn.decorator_list)
            for p in _Checker(fn, name).problems]  # fmt: skip


# one kernel twice: with an int32 offset and index, and with both int64
RULE_EXAMPLE = """
@triton.jit
def k(dg_ptr, dg_off{wide}, H, BLOCK_B: tl.constexpr):
    rows = tl.program_id(0){to_wide} * BLOCK_B + tl.arange(0, BLOCK_B)
    out = dg_off + rows[:, None] * (3 * H)
    tl.store(dg_ptr + out, 0.0)
    tl.store(dg_ptr + 7 + dg_off, 0.0)
"""


def test_rule_catches_int32_offset_sums():
    problems = offset_problems(RULE_EXAMPLE.format(wide="", to_wide=""))
    assert any("offset combined" in p for p in problems), problems
    assert any("index multiplied" in p for p in problems), problems
    assert offset_problems(RULE_EXAMPLE.format(wide=": tl.int64", to_wide=".to(tl.int64)")) == []


@pytest.mark.parametrize("path", sorted(KERNEL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_kernel_offsets_are_int64_or_pointer_first(path):
    assert offset_problems(path.read_text(), path.name) == []


def constexpr_from_jit(sources: dict[str, str]) -> list[str]:
    """``X: tl.constexpr = f(...)`` where ``f`` is a ``@triton.jit`` function of these
    modules: Triton 3.8 folds such a call into a constant, Triton 3.6 (the GPU machines'
    version) returns a tensor, which a ``tl.constexpr`` parameter it reaches then rejects, so
    the kernel does not compile there. Such helpers are ``@triton.constexpr_function``s."""
    trees = {path: ast.parse(src) for path, src in sources.items()}
    nodes = [(path, node) for path, tree in trees.items() for node in ast.walk(tree)]
    jitted = {f.name for _, f in nodes
              if isinstance(f, ast.FunctionDef) and any(map(_is_jit, f.decorator_list))}  # fmt: skip
    return [f"{path}:{node.lineno}: {ast.unparse(node)}" for path, node in nodes
            if isinstance(node, ast.AnnAssign) and _is_attr(node.annotation, "constexpr")
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", "") in jitted]  # fmt: skip


def test_constexpr_locals_do_not_come_from_jit_functions():
    sources = {p.name: p.read_text() for p in sorted(KERNEL_DIR.glob("*.py"))}
    assert constexpr_from_jit(sources) == []
    bad = (
        "@triton.jit\ndef g(C: tl.constexpr):\n    return C\n\n"
        "@triton.jit\ndef k(C: tl.constexpr):\n"
    )
    assert constexpr_from_jit({"k.py": bad + "    G: tl.constexpr = g(C)\n"}) == [
        "k.py:7: G: tl.constexpr = g(C)"
    ]


def tuple_defaults(sources: dict[str, str]) -> list[str]:
    """Parameters of ``@triton.jit`` functions whose default is a tuple: Triton 3.6 (the GPU
    machines' version) fails to compile a call that leaves such a parameter out (Triton 3.8
    takes it). The resident kernels' empty weight tuple is passed explicitly instead."""
    out = []
    for path, src in sources.items():
        for f in ast.walk(ast.parse(src)):
            if isinstance(f, ast.FunctionDef) and any(map(_is_jit, f.decorator_list)):
                args = (f.args.posonlyargs + f.args.args)[
                    -len(f.args.defaults) or len(f.args.args) :
                ]
                for arg, default in zip(args, f.args.defaults, strict=True):
                    if isinstance(default, ast.Tuple):
                        out.append(f"{path}:{f.lineno}: {f.name}({arg.arg}={ast.unparse(default)})")
    return out


def test_no_jit_parameter_defaults_to_a_tuple():
    sources = {p.name: p.read_text() for p in sorted(KERNEL_DIR.glob("*.py"))}
    assert tuple_defaults(sources) == []
    bad = "@triton.jit\ndef g(a, ws=(), C: tl.constexpr = 0):\n    return a\n"
    assert tuple_defaults({"g.py": bad}) == ["g.py:2: g(ws=())"]


def _layer_launches(precision, cases):
    """``(case, path, kernel name, CELL, job, planned)`` of each launch of the layer op's forward
    and backward (with every output's gradient) in ``precision`` (compile_report.PRECISIONS) on
    each case's inputs, on every kernel path that takes them (the persistent kernels take no
    projection, nor the variants, which have no resident kernels either): ``job`` is the
    compile the launch needs, ``planned`` whether the compile report makes it. The resident
    launch's counts of K chunks and its load group follow H, so its compile counts as planned
    when the report makes it for some counts and group (its table of real layer sizes
    compiles those)."""
    from fusedrnn.ops.triton import layer_op
    from fusedrnn.ops.triton.persistent import PATHS, kernel_path
    from fusedrnn.ops.triton.runtime import capture_launches

    counts = ("RESIDENT", "LOAD_GROUP", "RESIDENT_PROJ")

    def any_chunks(job):
        return replace(job, constexprs=tuple((k, bool(v) if k in counts else v)
                                             for k, v in job.constexprs))  # fmt: skip

    planned = {any_chunks(j) for j in compile_report.jobs([0], [precision])}
    dtype = getattr(torch, compile_report.PRECISIONS[precision][0])
    for case in cases:
        a = library.LayerArgs(**{**library.OPTION_DEFAULTS, **make_inputs(case, dtype)}, save=True)
        paths = ("step", "cooperative", "resident") if case.proj else PATHS
        for path in ("step", "cooperative") if case.variant else paths:
            with kernel_path(path), capture_launches() as records:
                bufs = layer_op.forward(a)
                grads = [torch.zeros_like(b) if b.numel() else None for b in bufs]
                layer_op.backward(a, bufs, grads, [True] * len(library.GRAD_INPUTS))
            for kernel, _grid, args, kwargs in records:
                job = compile_report.job_key(kernel, args, kwargs, precision)
                yield (case, path, kernel.fn.__name__, kwargs.get("CELL"), job,
                       any_chunks(job) in planned)  # fmt: skip


@compiled_only
def test_a_sequence_compiles_each_kernel_once_as_planned():
    """Per-step offsets are ``do_not_specialize`` (and int64): the specialisation that
    Triton's launcher derives from the arguments (Triton's own binder) is the same at every
    step, so a sequence compiles each kernel once. That specialisation (here: packed float32
    sequences with H = 20, not a multiple of 16, whose per-step offsets alternate between
    multiples of 16, other values and 1, through every cell's kernels on every path) is among
    the compile report's compiles, attributes and constants included."""
    seq = dict(T=5, B=3, I=8, H=20, lengths=(5, 3, 2))
    cases = [Case(cell, **seq, **options) for cell, options in (
        ("lstm", {}), ("lstm", dict(proj=8)), ("gru", {}), ("rnn_tanh", {}),
        ("gru", dict(ln=True, zone="h")), ("lstm", dict(ln=True, peep=True, zone="hc")))]  # fmt: skip
    jobs: dict[tuple, set] = {}
    for case, path, kernel, cell, job, planned in _layer_launches("fp32", cases):
        assert planned, job
        jobs.setdefault((case, path, kernel, cell), set()).add(job)
    # every kernel was launched, each for every cell it runs
    launched = {k[2:] for k in jobs}
    assert launched == {
        *((f"_{name}_{d}_kernel", cell) for name in ("step", "persistent") for d in ("fwd", "bwd")
          for cell in (0, 1, 2)),
        *((f"_variant_{d}_kernel", cell) for d in ("fwd", "bwd") for cell in (0, 1)),
    }, sorted(launched)  # fmt: skip
    assert {k: len(v) for k, v in jobs.items() if len(v) > 1} == {}


@compiled_only
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_half_precision_layer_op_launches_only_planned_kernels(precision):
    """The layer op's own launches in half precision (forward and backward with every
    output's gradient, on every kernel path) are compiles of the report: the LSTM's ``dCs``
    arrives in the dtype of ``Cs`` (float32), not the op's."""
    # a shape of compile_report.SHAPES
    cases = [Case(cell, T=2, B=3, I=5, H=24) for cell in ("lstm", "gru", "rnn_tanh")]
    unplanned = [(case.cell, path, kernel)
                 for case, path, kernel, _, _, planned in _layer_launches(precision, cases)
                 if not planned]  # fmt: skip
    assert unplanned == []


@compiled_only
def test_the_named_layer_sizes_run_planned_compiles():
    """The report's last table (a row per kernel x cell x H x dtype of the cooperative and
    resident launches at H = 256 ... 1024, layer-norm variants and the LSTM's resident launch
    with proj_size = H / 2 included) names compiles the report makes. H is a run-time
    argument, so the cooperative launch at real sizes runs the compiles of the small shapes;
    the resident launch's chunks of K follow H (forward with projection: proj_size), so its
    rows are compiles of their own, one per H (and projection)."""
    precisions = ["bf16", "fp32"]
    named = compile_report.named_launches(precisions)
    planned = set(compile_report.jobs([0], precisions))
    names = [name for name, _ in named]
    # per H: four cells forward and backward in each dtype on both launches, the two
    # layer-norm cells in fp32 (cooperative only), the projected LSTM in each dtype (resident);
    # and the LSTM's resident launch at H = 768 in bf16 in the candidate config and with each
    # grid barrier the launches do not use
    candidate = RESIDENT_CANDIDATE.text()
    barriers = {f"barrier={kind}": BARRIER_KINDS.index(kind) for kind in ("relaxed", "flags")}
    experiments = (candidate, *barriers)
    assert len(names) == len(set(names)) == 4 * (4 * 2 * 2 * 2 + 2 * 2 + 2 * 2) + 2 * 3
    assert f"resident lstm bwd H=768 bf16 {candidate}" in names
    assert "cooperative lstm fwd H=768 bf16" in names
    assert "resident lstm bwd H=768 proj=384 bf16" in names
    assert "resident gru bwd H=1024 fp32" in names
    assert "cooperative layer-norm gru bwd H=1024 fp32" in names
    cooperative = [(name, job) for name, job in named if name.startswith("cooperative")]
    assert [name for name, job in cooperative if job not in planned] == []
    for kind in ("fwd", "bwd"):
        jobs = {job for name, job in named if name.startswith(f"resident lstm {kind}")
                and not name.endswith(experiments)}  # fmt: skip
        assert len(jobs) == 4 * 2 * 2, kind  # every H and dtype, projected or not
        (wide,) = [dict(job.constexprs) for name, job in named
                   if name == f"resident lstm {kind} H=768 bf16 {candidate}"]  # fmt: skip
        assert wide["BLOCK_H"] == 32 and wide["RESIDENT"] and wide["BARRIER"] == 0
        shipped = dict(dict(named)[f"resident lstm {kind} H=768 bf16"].constexprs)
        for text, code in barriers.items():
            c = dict(dict(named)[f"resident lstm {kind} H=768 bf16 {text}"].constexprs)
            assert c == dict(shipped, BARRIER=code), text  # the shipped launch but its barrier
