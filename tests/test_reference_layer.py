"""The reference layer op (fusedrnn.ops.reference.layer), called directly: one layer, one
direction, against torch.nn's cell modules stepped and against its own contract (packed
semantics, reverse without a flipped copy, None handling). Against torch.nn's fused modules
(outputs and every gradient, every shape and option of the plain cells in float64 and
float32) and its gradcheck: tests/test_conformance.py, backends "torch.nn" and "reference"."""

from __future__ import annotations

import pytest
import torch
from layer_cases import Case, call, make_inputs
from module_testlib import assert_all_close
from torch import nn

from fusedrnn.ops.reference import CELLS, layer, step_slices

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
EXACT = {"rtol": 1e-12, "atol": 1e-12}


def _assert_all_close(got, want, **tol):
    """(y, h_n, c_n) equal ``want``'s in shape, dtype and values; None where it has None."""
    assert_all_close(got, want, ["y", "h_n", "c_n"], **(tol or EXACT))


@pytest.mark.parametrize("cell", CELLS)
def test_matches_a_loop_of_torch_cells(cell):
    """An oracle independent of torch.nn's fused RNN path: its cell modules, stepped."""
    case = Case(cell)
    a = make_inputs(case, D)
    cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(cell, nn.RNNCell)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    c = cls(case.I, case.H, **kw).double()
    with torch.no_grad():
        for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(c, k.replace("w_", "weight_").replace("b_", "bias_")).copy_(a[k])
    state, ys = (a["h0"], a["c0"]) if cell == "lstm" else a["h0"], []
    for x_t in a["x"]:
        state = c(x_t, state)
        ys.append(state[0] if cell == "lstm" else state)
    want = torch.stack(ys), ys[-1], state[1] if cell == "lstm" else None
    _assert_all_close(call(layer, a), want)


def _strided(t):
    """``t``'s values in a non-contiguous layout (its dimensions' order reversed in memory)."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)


@pytest.mark.parametrize("cell", CELLS)
def test_equivalent_calls_agree(cell):
    """Reverse is the flipped forward; full batch_sizes are the dense layout; non-contiguous
    input, states and weights give their contiguous copies' results."""
    a = make_inputs(Case(cell), D)
    T, B = a["x"].shape[:2]

    def run(**changes):
        return call(layer, {**a, **changes})

    y, *states = run(x=a["x"].flip(0))
    _assert_all_close(run(reverse=True), (y.flip(0), *states), rtol=0, atol=1e-14)
    for reverse in (False, True):
        y, *states = run(reverse=reverse)
        full = torch.full((T,), B, dtype=torch.long)
        packed = run(x=a["x"].flatten(0, 1), batch_sizes=full, reverse=reverse)
        _assert_all_close(packed, (y.flatten(0, 1), *states), rtol=0, atol=0)
    strided = {k: _strided(a[k]) for k in ("x", "h0", "c0", "w_hh") if a[k] is not None}
    assert not strided["x"].is_contiguous() and not strided["h0"].is_contiguous()
    assert not strided["w_hh"].is_contiguous()
    _assert_all_close(run(**strided), run(), rtol=1e-13, atol=1e-13)


LENGTHS = (5, 4, 4, 2, 1)


@pytest.mark.parametrize("cell,proj", [(c, 0) for c in CELLS] + [("lstm", 2)])
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_semantics(cell, reverse, proj):
    """Step t computes rows [:batch_sizes[t]]; a row that ended keeps its last state
    (forward), a row that has not started holds h0 (reverse). Checked against each
    sequence run alone."""
    case = Case(cell, T=5, B=5, I=3, H=5, proj=proj, lengths=LENGTHS, reverse=reverse)
    a = make_inputs(case, D)
    y, h_n, c_n = call(layer, a)
    assert y.shape == (sum(LENGTHS), proj or 5)
    offsets = [0, *a["batch_sizes"].cumsum(0).tolist()]
    for b, n in enumerate(LENGTHS):
        rows = [offsets[t] + b for t in range(n)]
        one = {k: None if a[k] is None else a[k][b : b + 1] for k in ("h0", "c0")}
        y_b, h_b, c_b = call(layer, {**a, **one, "x": a["x"][rows, None], "batch_sizes": None})
        got = y[rows], h_n[b], c_n[b] if c_n is not None else None
        _assert_all_close(got, (y_b[:, 0], h_b[0], c_b[0] if c_b is not None else None))


def test_empty_sequence():
    a = make_inputs(Case("lstm", T=0), D)
    y, h_n, c_n = call(layer, a)
    assert y.shape == (0, 3, 7) and torch.equal(h_n, a["h0"]) and torch.equal(c_n, a["c0"])
    a = make_inputs(Case("gru", T=0), D)
    empty = dict(x=a["x"].flatten(0, 1), batch_sizes=torch.zeros(0, dtype=torch.long))
    y, h_n, _ = call(layer, {**a, **empty, "reverse": True})
    assert y.shape == (0, 7) and torch.equal(h_n, a["h0"])


def test_unknown_cell_is_a_value_error():
    with pytest.raises(ValueError, match=r"unknown cell 'peephole'; expected one of"):
        call(layer, {**make_inputs(Case("lstm"), D), "cell": "peephole"})


def test_step_slices():
    assert step_slices(None, 3, 2, False) == [(0, 0, 2), (1, 2, 2), (2, 4, 2)]
    assert step_slices(None, 3, 2, True) == [(2, 4, 2), (1, 2, 2), (0, 0, 2)]
    sizes = torch.tensor([3, 2, 2, 1])
    assert step_slices(sizes, 4, 3, False) == [(0, 0, 3), (1, 3, 2), (2, 5, 2), (3, 7, 1)]
    assert step_slices(sizes, 4, 3, True) == [(3, 7, 1), (2, 5, 2), (1, 3, 2), (0, 0, 3)]
