"""The reference layer op (fusedrnn.ops.reference.layer), called directly, against its own
contract: reverse without a flipped copy, full batch_sizes as the dense layout, any strides,
empty sequences, None handling. Against torch.nn's fused modules (outputs and every gradient,
every shape and option of the plain cells, packed and reverse included, in float64 and
float32) and its gradcheck: tests/test_conformance.py, backends "torch.nn" and "reference";
packed modules against each sequence run alone: tests/test_modules_packed.py."""

from __future__ import annotations

import pytest
import torch
from layer_cases import Case, call, make_inputs
from module_testlib import assert_all_close

from fusedrnn.ops.reference import CELLS, layer, step_slices

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
YHC = ["y", "h_n", "c_n"]  # the outputs, for assert_all_close


@pytest.mark.parametrize("cell", CELLS)
def test_equivalent_calls_agree(cell):
    """Reverse is the flipped forward; full batch_sizes are the dense layout; all-zero zoneout
    masks are the plain cell bit for bit; non-contiguous input, states and weights give their
    contiguous copies' results."""
    a = make_inputs(Case(cell), D)
    T, B = a["x"].shape[:2]

    def run(**changes):
        return call(layer, {**a, **changes})

    y, *states = run(x=a["x"].flip(0))
    assert_all_close(run(reverse=True), (y.flip(0), *states), YHC, rtol=0, atol=1e-14)
    for reverse in (False, True):
        y, *states = run(reverse=reverse)
        full = torch.full((T,), B, dtype=torch.long)
        packed = run(x=a["x"].flatten(0, 1), batch_sizes=full, reverse=reverse)
        assert_all_close(packed, (y.flatten(0, 1), *states), YHC, rtol=0, atol=0)
    if cell in ("lstm", "gru"):  # against the plain reverse run just made
        zeros = torch.zeros_like(y)
        masks = {"mask_h": zeros, "mask_c": zeros if cell == "lstm" else None}
        assert_all_close(run(reverse=True, **masks), (y, *states), YHC, rtol=0, atol=0)
    # the same values in a non-contiguous layout (the dimensions' order reversed in memory)
    strided = {k: v.transpose(0, -1).contiguous().transpose(0, -1) for k, v in a.items()
               if k in ("x", "h0", "c0", "w_hh") and v is not None}  # fmt: skip
    assert not strided["x"].is_contiguous() and not strided["h0"].is_contiguous()
    assert not strided["w_hh"].is_contiguous()
    assert_all_close(run(**strided), run(), YHC, rtol=1e-13, atol=1e-13)


def test_empty_sequence():
    a = make_inputs(Case("lstm", T=0), D)
    y, h_n, c_n = call(layer, a)
    assert y.shape == (0, 3, 7) and torch.equal(h_n, a["h0"]) and torch.equal(c_n, a["c0"])
    a = make_inputs(Case("gru", T=0), D)
    empty = dict(x=a["x"].flatten(0, 1), batch_sizes=torch.zeros(0, dtype=torch.long))
    y, h_n, _ = call(layer, {**a, **empty, "reverse": True})
    assert y.shape == (0, 7) and torch.equal(h_n, a["h0"])


def test_step_slices():
    assert step_slices(None, 3, 2, False) == [(0, 0, 2), (1, 2, 2), (2, 4, 2)]
    assert step_slices(None, 3, 2, True) == [(2, 4, 2), (1, 2, 2), (0, 0, 2)]
    sizes = torch.tensor([3, 2, 2, 1])
    assert step_slices(sizes, 4, 3, False) == [(0, 0, 3), (1, 3, 2), (2, 5, 2), (3, 7, 1)]
    assert step_slices(sizes, 4, 3, True) == [(3, 7, 1), (2, 5, 2), (1, 3, 2), (0, 0, 3)]
