"""torch.library.opcheck over every fusedrnn custom op, forward and backward.

opcheck runs all of its tests (schema, autograd registration, fake tensor, which compares
the fake kernel's shapes *and strides* with the real kernel's, and aot_dispatch_dynamic) on
the arguments the ops really receive: the forward and backward ops' arguments are captured
from a layer call and its backward, for dense, batch_first (a transposed, non-contiguous x),
packed and reverse inputs, in float32 and float64. Inductor plans memory from the fake
strides, so a fake that disagrees with the kernel gives it wrong results or an assert.

The triton ops run on CPU tensors only under the Triton interpreter, which must be chosen
before triton is imported: ``TRITON_INTERPRET=1 python -m pytest tests/test_opcheck.py -k
triton`` (as .ci/run does); without it they skip.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from layer_cases import Case, make_inputs, outputs_and_grads, triton_interpreting
from misc_testlib import needs_cpu, needs_interpreter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from fusedrnn.ops import cpu, cuda, library

LAYOUTS = ("dense", "batch_first", "packed", "dense_reverse", "packed_reverse")
# every layout in float64, the layouts whose fakes differ most in float32 (kept few: the
# interpreter is slow)
CASES = [pytest.param(lay, torch.float64, id=f"{lay}-fp64") for lay in LAYOUTS] + [
    pytest.param(lay, torch.float32, id=f"{lay}-fp32") for lay in ("batch_first", "packed_reverse")
]
PLAIN_CELLS, VARIANT_CELLS = ("lstm", "gru", "rnn_relu"), ("lstm", "gru")
TRITON_OPS = "fusedrnn.ops.triton.layer_op"  # the module that declares the triton ops


class _Capture(TorchDispatchMode):
    """Records every fusedrnn::* op call with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch._ops.OpOverload, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fusedrnn":
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def _inputs(cell: str, layout: str, dtype: torch.dtype, variant=False, device="cpu", proj=0):
    """The layer op's arguments by name; ``variant`` turns on layer norm, zoneout masks and
    (LSTM) peepholes."""
    options = dict(ln=True, peep=cell == "lstm", zone="hc") if variant else {}
    lengths, reverse = (3, 2) if layout.startswith("packed") else None, layout.endswith("reverse")
    case = Case(cell, T=3, B=2, I=3, H=4, proj=proj, lengths=lengths, reverse=reverse,
                batch_first=layout == "batch_first", **options)  # fmt: skip
    return make_inputs(case, dtype, device)


def _captured(layer, a: dict) -> tuple:
    """A forward and a backward into every output (outputs and gradients, as
    layer_cases.outputs_and_grads), and the fusedrnn op calls (op, args, kwargs) they made."""
    with _Capture() as cap:
        return outputs_and_grads(layer, a), cap.calls


def _regrad(op: torch._ops.OpOverload, args: tuple) -> tuple:
    """Fresh copies of the captured arguments: the forward ops' autograd registration is
    tested on inputs that require grad (masks and batch_sizes are data, never differentiated);
    the backward ops are checked as first-order ops (detached inputs)."""
    forward = op.name().endswith("_fwd")

    def fix(t, name):
        t = t.detach().clone()
        return t.requires_grad_(forward and t.is_floating_point() and not name.startswith("mask"))

    return tuple(tree_map_only(torch.Tensor, lambda t, n=s.name: fix(t, n), a)
                 for a, s in zip(args, op._schema.arguments, strict=False))  # fmt: skip


def _check(layer, layout, dtype, variant, cells=None, device="cpu", proj=0) -> set[str]:
    """opcheck every op call of a forward and backward through ``layer`` (plain or variant
    layers of ``cells``, all by default); returns the names of the ops checked."""
    seen = set()
    for cell in cells or (VARIANT_CELLS if variant else PLAIN_CELLS):
        a = _inputs(cell, layout, dtype, variant, device, proj)
        for op, args, kw in _captured(layer, a)[1]:
            seen.add(op.name())
            torch.library.opcheck(op, _regrad(op, args), kw)  # all of its tests
    return seen


def _ops(backend: str) -> set[str]:  # the forward and backward op of a backend
    return {f"fusedrnn::{backend}_layer_fwd", f"fusedrnn::{backend}_layer_bwd"}


@needs_cpu
@pytest.mark.parametrize("layout,dtype", CASES)
@pytest.mark.parametrize("variant", [False, True], ids=["layer", "variant"])
def test_cpu_ops(variant, layout, dtype):
    assert _check(cpu.layer, layout, dtype, variant) == _ops("cpu")
    # an LSTM with a projection (w_hr, an h narrower than c), plain and as a variant
    if dtype == torch.float64 and (variant, layout) in ((False, "dense_reverse"), (True, "packed")):
        assert _check(cpu.layer, layout, dtype, variant, ("lstm",), proj=3) == _ops("cpu")


@needs_cpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_eager_calls_run_the_op_bodies_only_while_unwatched(cell, monkeypatch):
    """An eager call with autograd runs the ops' Python bodies directly while nothing observes
    the dispatcher, and the registered ops under a dispatch mode or the profiler (which then
    see them); outputs and every gradient are the same either way."""
    answers = []
    real = library._unwatched
    monkeypatch.setattr(library, "_unwatched", lambda a: answers.append(real(a)) or answers[-1])

    a = _inputs(cell, "dense", torch.float64)
    direct = outputs_and_grads(cpu.layer, a)
    assert answers == [True, True]  # forward, backward
    watched, calls = _captured(cpu.layer, a)
    assert answers[2:] == [False]  # a watched forward runs its backward as an op too
    assert {op.name() for op, _, _ in calls} == _ops("cpu")
    with torch.profiler.profile() as prof:
        profiled = outputs_and_grads(cpu.layer, a)
    assert answers[3:] == [False]
    assert _ops("cpu") <= {e.key for e in prof.key_averages()}
    torch.testing.assert_close([watched, profiled], [direct, direct], rtol=0, atol=0)


@needs_cpu
def test_cpu_variant_gru_outputs_are_deterministic():
    """Every output is a function of the inputs: the GRU's layer-norm statistics [N, 4] use two
    columns, and the other two must not carry whatever the allocator left there."""
    op, a, kw = _captured(cpu.layer, _inputs("gru", "dense", torch.float32, True))[1][0]
    a = [t.detach() if isinstance(t, torch.Tensor) else t for t in a]
    outs = []
    for fill in (7.0, 9.0):
        junk = [torch.full((1000,), fill) for _ in range(50)]  # dirty the allocator's pages
        del junk
        outs.append(op(*a, **kw))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@needs_interpreter
# variant layers run kernels of their own, whatever the path
@pytest.mark.parametrize("path", ["step", "cooperative", "resident", "persistent", "variant"])
@pytest.mark.parametrize("layout,dtype", CASES)
def test_triton_ops(layout, dtype, path):
    from fusedrnn.ops import triton as tb
    from fusedrnn.ops.triton.layer_op import layer

    if path == "persistent" and dtype == torch.float64:
        pytest.skip("the persistent kernels do not take float64")
    # one cell per case, in turn, to keep the interpreter's time down
    variant = path == "variant"
    cells = VARIANT_CELLS if variant else PLAIN_CELLS
    with tb.kernel_path(None if variant else path):
        seen = _check(layer, layout, dtype, variant, (cells[LAYOUTS.index(layout) % len(cells)],))
        # an LSTM with a projection, on the launch that holds W_hh on chip
        if path == "resident" and (layout, dtype) == ("packed_reverse", torch.float64):
            assert _check(layer, layout, dtype, False, ("lstm",), proj=3) == _ops("triton")
    assert seen == _ops("triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout,dtype", CASES)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_ops(backend, layout, dtype):
    """The GPU backends' ops on CUDA tensors (the cuda ops load only in a CUDA build)."""
    if backend == "cuda" and not cuda.is_available():
        pytest.skip("the CUDA extension is not built")
    layer = cuda.layer if backend == "cuda" else importlib.import_module(TRITON_OPS).layer
    seen = [_check(layer, layout, dtype, variant, device="cuda") for variant in (False, True)]
    assert set().union(*seen) == _ops(backend)


def test_triton_every_custom_op_is_covered():
    """No op in the fusedrnn namespace escapes the checks above (named "triton" so that the
    interpreter run, where the triton ops can load, executes it too)."""
    if triton_interpreting():
        importlib.import_module(TRITON_OPS)
    # the CUDA tests register the cuda op factories over a CPU build of the kernels under
    # "*host_test*" names when they run in this process; they are test fixtures, not ops
    names = torch._C._dispatch_get_all_op_names()
    registered = {n for n in names if n.startswith("fusedrnn::") and "host_test" not in n}
    # the cuda ops are checked on CUDA tensors by test_gpu_ops (their kernels need a GPU)
    assert registered - _ops("cpu") - _ops("triton") - _ops("cuda") == set()
