"""Backend conformance: every backend's layer op against the reference op, one suite.

Backends: ``cpu`` (the C++ extension), ``triton-step`` / ``-cooperative`` / ``-resident`` /
``-persistent`` (the Triton kernels, on CPU tensors under the interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/test_conformance.py -k triton``, set before triton
is imported; on CUDA tensors
when a GPU is present), ``cuda-host`` (the cuda backend's drivers and kernels built for the
CPU, each launch a walk over its grid: tests/cuda_host.py) and ``cuda`` (on a GPU). Each case
(cell x shape x options x packed x reverse x proj x bias) is compared in float64 and float32
(against the reference op in float64 on the same inputs) on fresh seeded data: every output
and the gradient of every differentiable input, with every buffer the kernels write poisoned
first (NaN), so an element a kernel forgets to write shows up. The reference op, the oracle of
the rest, is itself checked: its gradcheck (``reference``) and, on the plain cells, torch.nn's
one-layer modules against it (``torch.nn``, tight tolerance). Half inputs run in float32 are
here too; the cuda backend's half precision and other grid walks are in
tests/test_cuda_backend.py and tests/test_cuda_variants.py.

Backend-specific checks (thread splits, ISA copies, launch counts, grid walks, error messages)
stay in the backend's own test file.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator

import cuda_host
import layer_cases
import pytest
import torch
from conftest import MODES, TOLERANCES
from layer_cases import TOL, Case, call, compare
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence

from fusedrnn.ops import cpu, cuda, library, reference
from fusedrnn.ops.checks import CELLS

F64, F32 = torch.float64, torch.float32
TRITON_DEVICE = layer_cases.triton_device()
needs_triton = [
    pytest.mark.skipif(
        TRITON_DEVICE is None, reason="the triton kernels need CUDA, or TRITON_INTERPRET=1"
    ),
    # on CUDA tensors these are GPU tests (python -m fusedrnn.gpu_check runs pytest -m gpu)
    *([pytest.mark.gpu] if TRITON_DEVICE == "cuda" else []),
]
BACKENDS = [
    pytest.param("cpu", marks=pytest.mark.skipif(not cpu.is_available(), reason="no fusedrnn._C")),
    *[pytest.param(f"triton-{path}", marks=needs_triton)
      for path in ("step", "persistent", "cooperative", "resident")],
    pytest.param("cuda-host", marks=pytest.mark.skipif(bool(cuda_host.why_not()),
                                                      reason=str(cuda_host.why_not()))),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not cuda.is_available(), reason="needs CUDA and fusedrnn._C_cuda")]),
]  # fmt: skip


def torch_nn_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    """torch.nn's one-layer module as a layer op. The weights go in through functional_call,
    so that torch.nn computes their gradients; ``reverse`` runs a bidirectional module whose
    forward direction (same weights, outputs dropped) adds nothing to any gradient."""
    cls, kw = MODES[cell.upper()]
    kw = kw if w_hr is None else dict(kw, proj_size=w_hr.shape[0])
    H, d = w_ih.shape[0] // reference.GATES[cell], 1 + reverse
    m = getattr(torch.nn, cls)(x.shape[-1], H, bias=b_ih is not None, bidirectional=reverse, **kw)
    ws = dict(weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh, weight_hr=w_hr)
    ws = {f"{k}_l0{s}": w for k, w in ws.items() for s in ("", "_reverse")[:d] if w is not None}
    hx = tuple(s.expand(d, *s.shape).contiguous() for s in (h0, c0) if s is not None)
    x = x if batch_sizes is None else PackedSequence(x, batch_sizes)
    y, state = functional_call(m, ws, (x, hx if c0 is not None else hx[0]))
    h_n, c_n = state if c0 is not None else (state, None)
    y = (y if batch_sizes is None else y.data)[..., -h0.shape[-1] :]  # the last direction's
    return y, h_n[-1], None if c_n is None else c_n[-1]


class Backend:
    """A backend under test: its layer op, device, tolerance and output poisoning."""

    def __init__(self, name: str):
        self.name, self.device = name, "cuda" if name == "cuda" else "cpu"
        self.forced = contextlib.nullcontext
        if not name.startswith("triton"):
            fixed = {"cpu": cpu.layer, "cuda": cuda.layer, "reference": reference.layer,
                     "torch.nn": torch_nn_layer}  # fmt: skip
            self.layer = cuda_host.host_layer() if name == "cuda-host" else fixed[name]
            return
        from fusedrnn.ops import triton as tb

        self.device, self.poison, self.layer = TRITON_DEVICE, tb.poison_buffers, tb.layer
        # the path forced for the whole test: a layer's backward chooses its path when it runs
        self.forced = functools.partial(tb.kernel_path, name.split("-")[1])

    @staticmethod
    @contextlib.contextmanager
    def poison():
        """Freed memory refilled with NaN, so an output the C++ kernels allocate uninitialised
        and miss shows up as NaN instead of a lucky zero (the triton backends poison their
        kernels' buffers instead)."""
        junk = [torch.full((n,), float("nan")) for n in (16, 64, 256, 1024, 4096) * 4]
        del junk
        yield

    def tol(self, dtype: torch.dtype, case: Case) -> float:
        if self.name == "torch.nn":
            return TOLERANCES[dtype]["atol"]  # rtol alike
        if self.name == "cpu" and dtype == torch.float32 and not case.variant:
            return 1e-5
        if self.name.startswith("triton") and self.device == "cuda" and dtype == torch.float32:
            return 5e-3  # TF32 tl.dot on GPUs
        return TOL[dtype]

    def inputs(self, case: Case, dtype: torch.dtype, seed: int = 0) -> dict:
        """``case``'s inputs on this backend's device; skips the cases it does not take."""
        if self.name in ("triton-persistent", "triton-resident") and case.variant:
            pytest.skip(f"the variant kernels have no {self.name[7:]} path")
        if self.name == "triton-persistent" and (case.proj or case.H > 64):
            pytest.skip("the persistent kernels take proj_size == 0 and H <= 64")
        return layer_cases.make_inputs(case, dtype, self.device, seed)

    def check(self, case: Case, dtype: torch.dtype, **options) -> None:
        """Outputs and gradients against the reference op on ``case``'s inputs; ``options``
        (pick, wanted) as for layer_cases.compare."""
        a = self.inputs(case, dtype)
        # float32 results against the float64 truth on the same inputs: the reference op's own
        # float32 rounding is no error of the backend's (on the ill-conditioned layer-norm
        # gradients of H=300 it alone reaches a third of the tolerance)
        upcast = torch.float64 if dtype == torch.float32 else None
        compare(self.layer, a, self.tol(dtype, case), poison=self.poison, upcast=upcast, **options)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Iterator[Backend]:
    b = Backend(request.param)
    with b.forced():
        yield b


# -- torch.nn's cells ------------------------------------------------------------------------

# awkward shapes and every option: B=1, T=1, H=1, odd H, H above one block,
# rows ending at different steps, several programs (B=20)
SHAPES = [
    dict(),
    dict(T=4, B=5, I=3, H=13, packed=True, reverse=True),
    dict(T=4, B=4, I=3, H=9, packed=True, bias=False),
    dict(T=3, B=2, I=4, H=7, reverse=True, bias=False),
    dict(T=1, B=1, I=3, H=5),
    dict(T=1, B=3, I=2, H=4, lengths=(1, 1, 1)),
    dict(T=7, B=1, I=1, H=1, reverse=True),
    dict(T=3, B=1, I=2, H=33),
    dict(T=5, B=5, I=3, H=6, lengths=(5, 4, 2, 2, 1), reverse=True),
    dict(T=3, B=2, I=4, H=3, lengths=(3, 3)),
    dict(T=2, B=20, I=3, H=40, packed=True, reverse=True),
    dict(T=4, B=3, I=6, H=70, lengths=(4, 3, 3)),
]
# the cuda kernels' launch shapes (B, T, I, H): B = T = H = 1, one row of many steps, many rows
# of one step, H = 300 beyond one 256-thread row (rows * H = 900: several blocks); for the plain
# cells also 9 x 40 rows, whose bias gradients' two-pass column sum takes several partial chunks
LAUNCHES = ((1, 1, 1, 1), (1, 9, 3, 5), (7, 1, 2, 3), (3, 4, 5, 300))
PLAIN = [Case(cell, **s) for cell in CELLS for s in SHAPES] + [
    *(Case(cell, T=T, B=B, I=I, H=H)
      for cell in ("lstm", "gru", "rnn_tanh") for B, T, I, H in LAUNCHES),
    Case("rnn_tanh", T=40, B=9, I=2, H=3),
    Case("lstm", T=4, B=3, I=4, H=11, proj=5),
    Case("lstm", T=5, B=4, I=3, H=6, proj=2, packed=True),
    Case("lstm", T=4, B=4, I=3, H=9, proj=4, packed=True, reverse=True),
    Case("lstm", T=3, B=2, I=3, H=6, proj=3, bias=False, reverse=True),
    Case("lstm", T=4, B=3, I=6, H=70, proj=5, lengths=(4, 3, 3), reverse=True),
]  # fmt: skip


# "torch.nn" checks the reference op itself (the oracle of the rest) against torch.nn's modules
@pytest.mark.parametrize("backend", [*BACKENDS, "torch.nn"], indirect=True)
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", PLAIN, ids=str)
def test_plain_cells(backend, case, dtype):
    backend.check(case, dtype)


# -- the cell variants -----------------------------------------------------------------------


# every (layer norm, peephole, cifg, zoneout) combination; bias, projection, packing and
# direction cycle so that each meets each option several times without the full product
VARIANTS = [
    Case("lstm", bias=n % 3 != 1, proj=3 if n % 4 == 2 else 0, packed=n % 2 == 1,
         reverse=n % 5 in (1, 3), ln=ln, peep=peep, cifg=cifg, zone=zone)
    for n, (ln, peep, cifg, zone) in enumerate(itertools.product(
        (False, True), (False, True), (False, True), ("eval", "h", "c", "hc", "none")))
    if ln or peep or cifg or zone != "none"
] + [
    Case("gru", bias=bias, packed=n % 2 == 0, reverse=n % 3 == 1, ln=ln, zone=zone)
    for n, (ln, zone, bias) in enumerate(itertools.product(
        (False, True), ("none", "eval", "h"), (True, False)))
    if ln or zone != "none"
]  # fmt: skip
# awkward shapes with every option on: B=1, T=1, odd H, H above one chunk, several programs,
# rows finishing at the same step and a row of length 1, the cuda kernels' launch shapes
AWKWARD = [
    Case(cell, ln=True, peep=cell == "lstm", zone="hc", **s, **(lstm if cell == "lstm" else {}))
    for shapes, lstm in (
        ((dict(T=1, B=1, I=2, H=5), dict(T=3, B=1, I=1, H=33), dict(T=1, B=4, I=3, H=5, reverse=True),
          dict(T=5, B=2, I=4, H=40), dict(T=3, B=20, I=2, H=17, packed=True, reverse=True)),
         {"proj": 4}),
        ([dict(B=5, H=35, lengths=(6, 6, 3, 3, 1), reverse=r) for r in (False, True)], {"cifg": True}),
        ([dict(T=T, B=B, I=I, H=H) for B, T, I, H in LAUNCHES], {}),
    )
    for cell in ("lstm", "gru") for s in shapes
]  # fmt: skip


# option mixes the slices above lack in float32: packed with a projection, CIFG with bias
FLOAT32 = [Case("lstm", T=5, B=4, I=3, H=6, packed=True, ln=True, **opts)
           for opts in (dict(proj=2, peep=True, zone="hc"), dict(cifg=True, zone="eval"))]  # fmt: skip


@pytest.mark.parametrize(
    "case,dtype",
    [(c, F64) for c in VARIANTS + AWKWARD]
    + [(c, F32) for c in VARIANTS[::4] + AWKWARD[::3] + FLOAT32],
    ids=lambda v: {F64: "f64", F32: "f32"}.get(v, str(v)),
)
def test_variants_float64_float32(backend, case, dtype):
    backend.check(case, dtype)


# -- one output's gradients, frozen inputs, a transposed x, repeatability --------------------

CALLS = [  # (case, dtype, how): a loss on output ``pick``, grads of ``wanted``, a batch_first x
    *((c, F64, {"pick": k}) for c in (
        Case("lstm", T=5, B=3, I=4, H=40),
        *(Case(cell, T=3, B=3, I=2, H=6, packed=True) for cell in ("gru", "rnn_tanh")),
        Case("lstm", packed=True, ln=True, peep=True, zone="hc"),
        Case("gru", T=3, B=3, I=2, H=6, ln=True, zone="h", packed=True),
    ) for k in range(3 if c.cell == "lstm" else 2)),
    (Case("lstm", T=4, B=3, I=5, H=6), F32, {"wanted": ("x",)}),
    (Case("lstm", T=3, B=2, I=3, H=5, ln=True, peep=True, zone="eval"), F64,
     {"wanted": ("x", "ln_c_w")}),
    *((Case(cell, bias=False), F64, {"wanted": ("x", "h0", "w_ih", "w_hh")}) for cell in CELLS),
    (Case("gru", T=5, B=4, I=6, H=5, batch_first=True), F64, {}),
    (Case("lstm", batch_first=True, ln=True, zone="eval"), F64, {}),
]  # fmt: skip


@pytest.mark.parametrize("case,dtype,how", CALLS, ids=lambda v: "".join(
    c for c in str(v).removeprefix("torch.") if c not in " '{}"))  # fmt: skip
def test_call_forms(backend, case, dtype, how):
    """``pick``: output gradients autograd does not produce reach the backward as None, and
    each output alone must still give the reference gradients. ``wanted``: the other weights
    (and c0) frozen (no requires_grad), the gradients of those that do require grad still
    match the reference's (which must exist). ``batch_first``: a batch_first module hands the
    op a transposed x."""
    backend.check(case, dtype, **how)


@pytest.mark.parametrize("case", [
    Case("lstm", T=3, B=20, I=2, H=9, ln=True, peep=True, zone="hc", packed=True),
    Case("gru", T=5, B=4, H=9, ln=True, zone="hc", lengths=(5, 4, 4, 2)),
    Case("lstm", T=5, B=4, H=9, ln=True, peep=True, zone="hc", proj=3, lengths=(5, 4, 4, 2)),
    Case("lstm", T=4, B=5, I=3, H=13, packed=True, reverse=True),
], ids=str)  # fmt: skip
def test_repeatable_and_same_without_grad(backend, case):
    """The same call twice bit for bit, outputs and gradients (no atomics), and the same
    outputs under no_grad (nothing saved for a backward, nothing recorded though the inputs
    require grad): a result that read uninitialised memory, or a reduction in a varying order,
    would differ between the runs. Without grad the cuda driver writes the variant cells'
    per-step rows to [B, .] scratch instead of the [N, .] history, and a GEMM over other row
    counts may round differently (cuBLAS and the host build's at::mm alike): there, no_grad
    outputs agree to the float32 tolerance."""
    a = backend.inputs(case, torch.float32, seed=5)
    first, again = (layer_cases.outputs_and_grads(backend.layer, a) for _ in range(2))
    torch.testing.assert_close(again, first, rtol=0, atol=0)  # outputs and gradients
    with torch.no_grad():
        lean = call(backend.layer, layer_cases.with_leaves(a))
    tol = TOL[F32] if backend.name == "cuda-host" and case.variant else 0  # else bit for bit
    assert all(torch.isfinite(o).all() and not o.requires_grad for o in lean if o is not None)
    torch.testing.assert_close(lean, first[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize(
    "case", [Case("lstm", T=3, B=2, I=4, H=5), Case("lstm", ln=True, peep=True, zone="hc")], ids=str
)
def test_half_inputs_computed_in_float32(backend, case, dtype):
    """Half inputs (autocast) that the kernels do not take (the cpu backend's, the triton
    variants') are computed in float32 and returned in their dtype: the backend's float32 result
    on the same values, rounded once (the float32 results: the tests above)."""
    half = backend.inputs(case, dtype)
    if backend.name != "cpu" and not (backend.name.startswith("triton") and case.variant):
        pytest.skip("the kernels take these half inputs (the backend's own tests)")
    want = call(backend.layer, {k: layer_cases.cast(v, F32) for k, v in half.items()})
    with backend.poison():
        got = call(backend.layer, half)
    torch.testing.assert_close(got, [w.to(dtype) for w in want], rtol=0, atol=0)


# -- numerical gradients ---------------------------------------------------------------------


def _four_ways(cell, I=2, **opts):
    """``cell`` with ``opts`` (T=3, B=2, H=3), dense and packed, forward and reverse."""
    return [Case(cell, T=3, B=2, I=I, H=3, lengths=lengths, reverse=reverse, **opts)
            for lengths in (None, (3, 2)) for reverse in (False, True)]  # fmt: skip


GRADCHECK = list(dict.fromkeys([
    *(c for cell in CELLS for c in _four_ways(cell, I=3, proj=2 * (cell == "lstm"))),
    *(Case("lstm", T=3, B=2, I=2, H=3, lengths=(3, 2), **opts) for opts in (
        dict(ln=True), dict(peep=True), dict(cifg=True), dict(cifg=True, peep=True, ln=True),
        dict(zone="eval"), dict(zone="h"), dict(zone="c"), dict(proj=2, ln=True, zone="h"),
        dict(bias=False, ln=True), dict(ln=True, peep=True, proj=2, zone="hc", reverse=True),
    )),
    *(Case("gru", T=3, B=2, I=2, H=3, **opts)
      for opts in (dict(ln=True), dict(zone="eval"), dict(zone="h"), dict(bias=False, ln=True))),
    *(c for cell, opts in (  # four option mixes each dense and packed, forward and reverse
        ("lstm", dict(ln=True, peep=True, zone="hc")),
        ("lstm", dict(cifg=True, peep=True, proj=2, zone="eval")),
        ("lstm", dict(bias=False, ln=True)), ("gru", dict(ln=True, zone="h")),
    ) for c in _four_ways(cell, **opts)),
]))  # fmt: skip
# the cases the Triton kernels take (on the interpreter each costs seconds): every cell once,
# packed and reverse, the projection, and every variant option in two calls
TRITON_GRADCHECK = {
    "lstm-T3B2I3H3-proj=2-lengths=(3,2)-reverse", "gru-T3B2I3H3-lengths=(3,2)", "rnn_tanh-T3B2I3H3",
    "rnn_relu-T3B2I3H3-lengths=(3,2)-reverse", "gru-T3B2I2H3-ln",
    "lstm-T3B2I2H3-proj=2-lengths=(3,2)-reverse-ln-peep-zone=hc",
}  # fmt: skip
assert TRITON_GRADCHECK <= set(map(str, GRADCHECK))


# the reference op is the oracle of the other tests: its own gradients are checked here only
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"], indirect=True)
@pytest.mark.parametrize("case", GRADCHECK, ids=str)
def test_gradcheck(backend, case):
    """float64 numerical against analytical gradients of every differentiable input (a
    random projection of the Jacobian on the Triton interpreter, which is slow; the whole
    Jacobian elsewhere). The reference op (autograd through float64 PyTorch ops) is held to
    a tenfold tighter atol."""
    a = backend.inputs(case, torch.float64, seed=7)
    triton = backend.name.startswith("triton")
    if triton and str(case) not in TRITON_GRADCHECK:
        pytest.skip("the Triton interpreter is slow: it takes the cases of TRITON_GRADCHECK")
    names = [k for k in library.GRAD_INPUTS if a.get(k) is not None]

    def fn(*ts):
        outs = call(backend.layer, {**a, **dict(zip(names, ts, strict=True))})
        return tuple(o for o in outs if o is not None)

    inputs = tuple(a[k].clone().requires_grad_() for k in names)
    atol = 1e-7 if backend.name == "reference" else 1e-6
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=atol, rtol=1e-5, fast_mode=triton)
