"""The compiled CPU kernels of the cell variants: what is particular to them.

Against the reference op (every option, shape, dtype and ISA copy): tests/test_conformance.py.
Here: the cpu backend's own work split (row blocks, split steps) and the argument checks of
the plain cells and the variants.
"""

from __future__ import annotations

import layer_cases
import pytest
import torch
from layer_cases import TOL, Case, call, with_leaves
from test_cpu_backend import num_threads

from fusedrnn.ops import cpu, reference

_C = cpu._C

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason="fusedrnn._C (the CPU extension) is not built"
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "cell,variants",
    [("lstm", True), ("gru", True), ("lstm", False), ("gru", False), ("rnn_tanh", False)],
)
@pytest.mark.parametrize("batch,blocks", [(17, True), (17, False), (3, True)])
@pytest.mark.skipif(
    not hasattr(_C, "_set_row_blocks"),
    reason="build fusedrnn._C with FUSEDRNN_TEST_HOOKS=1 (as .ci/run does)",
)
def test_several_threads(cell, variants, batch, blocks, dtype):
    # B=17: big enough for blocks of rows on separate threads, cut unevenly (packed lengths),
    # or (blocks off) for steps split over the threads: GEMMs over columns (H >= 128, uneven),
    # pointwise over rows; B=3: too small for blocks, split steps. In float32 the step
    # products of more than four rows use the packed weights (shared by the row blocks).
    # Without variants the LSTM and RNN take the direct way (GEMM into the gates).
    _C._set_row_blocks(blocks)
    try:
        lengths = (3,) * 9 + (2,) * 5 + (1,) * 3 if batch == 17 else (3, 2, 2)
        shape = dict(T=3, B=batch, I=8, H=130, lengths=lengths)
        opts = dict(ln=True, peep=cell == "lstm", zone="hc") if variants else {}
        with num_threads(2):
            for reverse in (False, True):
                case = Case(cell, reverse=reverse, **opts, **shape)
                layer_cases.compare(cpu.layer, layer_cases.make_inputs(case, dtype), TOL[dtype])
    finally:
        _C._set_row_blocks(True)


def f64(*shape):
    return torch.ones(*shape, dtype=torch.float64)


@pytest.mark.parametrize(
    "cell,change,exc,match",
    [  # the ValueErrors are the reference op's too; "plain": an LSTM without bias or variants
        ("plain", dict(w_hh=f64(20, 3)), RuntimeError, "w_hh must have shape"),
        ("plain", dict(x=torch.ones(3, 2, 4)), RuntimeError, "dtype"),
        ("plain", dict(cell="lstmx"), ValueError, "unknown cell"),
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
    case = Case(cell, ln=True, peep=cell == "lstm")
    if cell == "plain":
        case = Case("lstm", T=3, B=2, I=4, H=5, bias=False)
    a = with_leaves(layer_cases.make_inputs(case, torch.float64))
    for op in (reference.layer, cpu.layer) if exc is ValueError else (cpu.layer,):
        with pytest.raises(exc, match=match):
            call(op, {**a, **change})
