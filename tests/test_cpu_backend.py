"""The compiled CPU backend (fusedrnn._C): what is particular to it.

Against the reference op on every cell, shape and option: tests/test_conformance.py; the op
registration: tests/test_opcheck.py. Here: the work splits over threads, argument errors,
scratch-buffer reuse, the single-step stack call's refusals (its results against torch.nn:
tests/test_single_step.py) and the ISA copies (half precision, computed in float32:
tests/test_conformance.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import layer_cases
import pytest
import torch
from conftest import num_threads, switched
from layer_cases import TOL, Case, call, with_leaves
from misc_testlib import ROOT, needs_cpu, run_python

from fusedrnn.ops import cpu, library, reference
from fusedrnn.ops.checks import CELLS

_C = cpu._C
pytestmark = needs_cpu
# the switches between strategies and the gemm() entry are in the test build only
needs_test_hooks = pytest.mark.skipif(
    not hasattr(_C, "_gemm"),
    reason="build fusedrnn._C with FUSEDRNN_TEST_HOOKS=1 (as .ci/run does)",
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "cell,variants",
    [("lstm", True), ("gru", True), ("lstm", False), ("gru", False), ("rnn_tanh", False)],
)
@pytest.mark.parametrize("batch,blocks", [(17, True), (17, False), (3, True)])
@needs_test_hooks
def test_several_threads(cell, variants, batch, blocks, dtype):
    # B=17: big enough for blocks of rows on separate threads, cut unevenly (packed lengths),
    # or (blocks off) for steps split over the threads: GEMMs over columns (H >= 128, uneven),
    # pointwise over rows; B=3: too small for blocks, split steps. In float32 the step
    # products of more than four rows use the packed weights (shared by the row blocks).
    # Without variants the LSTM and RNN take the direct way (GEMM into the gates).
    lengths = (3,) * 9 + (2,) * 5 + (1,) * 3 if batch == 17 else (3, 2, 2)
    shape = dict(T=3, B=batch, I=8, H=130, lengths=lengths)
    opts = dict(ln=True, peep=cell == "lstm", zone="hc") if variants else {}
    with switched(_C._set_row_blocks, blocks, True), num_threads(2):
        for reverse in (False, True):
            case = Case(cell, reverse=reverse, **opts, **shape)
            layer_cases.compare(cpu.layer, layer_cases.make_inputs(case, dtype), TOL[dtype])


def f64(*shape):
    return torch.ones(*shape, dtype=torch.float64)


@pytest.mark.parametrize(
    "cell,change,exc,match",
    [  # the ValueErrors are the reference op's too; "plain": an LSTM without bias or variants
        ("plain", dict(w_hh=f64(20, 3)), RuntimeError, "w_hh must have shape"),
        ("plain", dict(x=torch.ones(3, 2, 4)), RuntimeError, "dtype"),
        ("plain", dict(cell="lstmx"), ValueError, "unknown cell 'lstmx'; expected one of"),
        ("plain", dict(x=f64(6, 4), batch_sizes=torch.tensor([2, 2, 3])), RuntimeError,
         "batch_sizes"),
        ("gru", dict(cifg=True), ValueError, "LSTM-only"),
        ("gru", dict(zoneout_c=0.5), ValueError, "zoneout_c needs an LSTM"),
        ("lstm", dict(ln_c_w=None), ValueError, "layer norm needs"),
        ("lstm", dict(w_ch=f64(2, 7)), ValueError, "peephole weights must be"),
        ("lstm", dict(w_ih=f64(27, 5)), ValueError, "expects 4 gate blocks"),
        ("lstm", dict(mask_h=f64(4, 3, 6)), RuntimeError, "mask_h must have"),
        ("lstm", dict(mask_c=f64(4, 2, 7)), RuntimeError, "mask_c must have"),
        ("lstm", dict(ln_c_w=f64(6)), RuntimeError, "ln_c_w must have shape"),
        ("lstm", dict(ln_hh_b=f64(27)), RuntimeError, "ln_hh_b must have shape"),
        ("lstm", dict(ln_ih_w=torch.ones(28)), RuntimeError, "ln_ih_w has dtype"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_clear_errors(cell, change, exc, match):
    plain = Case("lstm", T=3, B=2, I=4, H=5, bias=False)
    case = plain if cell == "plain" else Case(cell, ln=True, peep=cell == "lstm")
    a = with_leaves(layer_cases.make_inputs(case, torch.float64))
    for op in (reference.layer, cpu.layer) if exc is ValueError else (cpu.layer,):
        with pytest.raises(exc, match=match):
            call(op, {**a, **change})


def test_the_extension_takes_the_tables_bool_options():
    """The C++ backends take the bool options from csrc/options.h's list, positionally: the
    table's bool rows must be that list, in its order, right after ``reverse``."""
    k = library.N_POSITIONAL
    assert library.NAMES[k : k + len(library.BOOL_OPTIONS)] == library.BOOL_OPTIONS
    assert _C.bool_options == list(library.BOOL_OPTIONS)


def test_stack_step_names_what_does_not_fit_or_falls_back():
    """Each mismatch raises naming the problem; with fallback the call answers None instead
    (the modules' shortcut then takes the general path). Autograd is refused outright."""
    m = torch.nn.LSTM(6, 8, 2)
    w = m._flat_weights
    x, h, c = torch.randn(1, 3, 6), torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)
    cases = [
        ("float64", (x.double(), h, c, w), "dtype"),
        ("features", (torch.randn(1, 3, 5), h, c, w), "features"),
        ("two steps", (torch.randn(2, 3, 6), h, c, w), "one step"),
        ("4-D", (torch.randn(1, 1, 3, 6), h, c, w), "one step"),
        ("state batch", (x, torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), w), "hx must be"),
        ("state layers", (x, torch.zeros(1, 3, 8), c, w), "hx must be"),
        ("cell state", (x, h, torch.zeros(2, 3, 7), w), "cx must be"),
        ("cell state dtype", (x, h, c.double(), w), "cx must be"),
        ("cx missing", (x, h, None, w), "both hx and cx"),
        ("weight dtype", (x, h, c, [w[0].double(), *w[1:]]), "every weight"),
        ("weight count", (x, h, c, w[:-1]), "weights, got 7"),
    ]
    with torch.no_grad():
        assert cpu.stack_step("lstm", x, h, c, w, 2, True, 0, fallback=True) is not None
        for name, (xi, hi, ci, wi), message in cases:
            assert cpu.stack_step("lstm", xi, hi, ci, wi, 2, True, 0, fallback=True) is None, name
            with pytest.raises(RuntimeError, match=f"fusedrnn stack_step: .*{message}"):
                cpu.stack_step("lstm", xi, hi, ci, wi, 2, True, 0)
    with pytest.raises(RuntimeError, match="does not record autograd"):  # w requires grad
        cpu.stack_step("lstm", x, h, c, w, 2, True, 0)


def test_kernel_isa_selection():
    # FUSEDRNN_CPU_ISA is a cap, not a demand: the CPU may have less
    cap = {"generic": 1, "avx2": 2}.get(os.environ.get("FUSEDRNN_CPU_ISA"), 3)
    assert _C.kernel_isa() in ["generic", "avx2+fma", "avx512f"][:cap]
    # the packed GEMM's tile follows the pointwise kernels' ISA
    assert _C.sgemm_isa() in ("", _C.kernel_isa())


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_narrower_isa_copies_match_too(isa):
    """Each ISA copy of the kernels is compiled separately (baseline, AVX2, AVX-512): run the
    cpu conformance cases of torch.nn's cells and of the variants, the packed GEMM and the
    sampling loop's float16-weight product again with the choice capped at a narrower copy than
    this CPU's."""
    if os.environ.get("FUSEDRNN_CPU_ISA") in ("generic", isa) or _C.kernel_isa() == "generic" or (
            isa == "avx2" and _C.kernel_isa() == "avx2+fma"):  # fmt: skip
        pytest.skip(f"this process already runs the {isa} copy or a narrower one")
    rerun = {  # file: tests chosen by name, which must exist (a renamed one would drop out)
        pathlib.Path(__file__): ["test_kernel_isa_selection"],
        ROOT / "tests/test_conformance.py": ["test_plain_cells", "test_variants_float"],
        ROOT / "tests/test_charlm_generate.py": ["test_half_weights_state"],
        ROOT / "tests/test_cpu_sgemm.py": ["test_gemm_matches"],
    }
    for path, names in rerun.items():
        assert all(re.search(rf"^def {n}", path.read_text(), re.M) for n in names), (path, names)
    # of the conformance suite, the cpu backend's cases
    chosen = [
        f"({n} and cpu)" if "conformance" in p.name else n for p, ns in rerun.items() for n in ns
    ]
    r = run_python(
        "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *map(str, rerun), "-k",
        " or ".join(chosen), env=dict(os.environ, FUSEDRNN_CPU_ISA=isa), timeout=600, check=True,
    )  # fmt: skip
    assert " passed" in r.stdout


SCRATCH = [Case(cell, T=5, B=7, I=6, H=70) for cell in CELLS] + [
    Case("lstm", T=5, B=6, I=6, H=40, proj=3, ln=True, peep=True, zone="h"),
    Case("gru", T=5, B=6, I=6, H=40, ln=True, zone="h"),
]


@pytest.mark.parametrize("case", SCRATCH, ids=str)
def test_scratch_reuse_leaves_earlier_results_intact(case):
    """Layer calls reuse per-thread scratch buffers (gates, packed weights, dG) and pooled
    outputs: the outputs and gradients of one call, training and inference, must survive later
    calls on other data and other shapes, and freeing the buffers must not change anything."""

    def once(seed, **shape):
        a = layer_cases.make_inputs(dataclasses.replace(case, **shape), torch.float32, seed=seed)
        with torch.no_grad():
            y_inf = call(cpu.layer, a)[0]
        outs, grads = layer_cases.outputs_and_grads(cpu.layer, a)
        return [t for t in (y_inf, *outs, *grads.values()) if t is not None]

    first = once(21)
    kept = [t.clone() for t in first]
    once(22)
    once(23, packed=True)
    once(24, B=4, lengths=(5, 4, 2, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, kept, strict=True))
    cpu.empty_cache()
    assert all(torch.equal(a, b) for a, b in zip(once(21), kept, strict=True))
