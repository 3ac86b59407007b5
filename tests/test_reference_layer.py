"""The reference layer op (fusedrnn.ops.reference.layer), called directly: one layer, one
direction, against torch.nn (single-layer modules and cells) and against its own
contract (packed semantics, reverse without a flipped copy, None handling)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fusedrnn.ops.reference import CELLS, GATES, layer, step_slices

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
T, B, I, H, P = 4, 3, 3, 5, 2
NN = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
STEMS = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
         "w_hr": "weight_hr"}  # fmt: skip
EXACT = {"rtol": 1e-12, "atol": 1e-12}


def _weights(cell, input_size=I, hidden=H, proj=0, bias=True, dtype=D, requires_grad=False):
    gh = GATES[cell] * hidden
    shapes = {"w_ih": (gh, input_size), "w_hh": (gh, proj or hidden), "b_ih": bias and (gh,),
              "b_hh": bias and (gh,), "w_hr": proj and (proj, hidden)}  # fmt: skip
    return {k: (torch.randn(s, dtype=dtype) * 0.5).requires_grad_(requires_grad) if s else None
            for k, s in shapes.items()}  # fmt: skip


def _states(cell, batch=B, hidden=H, proj=0, dtype=D, requires_grad=False):
    h0 = torch.randn(batch, proj or hidden, dtype=dtype, requires_grad=requires_grad)
    c0 = torch.randn(batch, hidden, dtype=dtype, requires_grad=requires_grad)
    return h0, c0 if cell == "lstm" else None


def _torch_layer(cell, x, h0, c0, w, reverse, batch_sizes=None):
    """torch.nn's answer for one direction, (y, h_n, c_n), and that direction's parameters
    in the order of ``w`` (None where ``w`` has None): a single-layer module, bidirectional
    for ``reverse``, whose direction holds the weights ``w``."""
    cls, extra = NN[cell]
    hidden, d = w["w_ih"].shape[0] // GATES[cell], 2 if reverse else 1
    proj = {"proj_size": w["w_hr"].shape[0]} if w["w_hr"] is not None else {}
    m = getattr(nn, cls)(x.shape[-1], hidden, bias=w["b_ih"] is not None, bidirectional=reverse,
                         **proj, **extra).to(x.dtype)  # fmt: skip
    suffix = "_l0_reverse" if reverse else "_l0"
    params = [None if v is None else getattr(m, STEMS[k] + suffix) for k, v in w.items()]
    with torch.no_grad():
        for p, v in zip(params, w.values(), strict=True):
            if v is not None:
                p.copy_(v)
    hx = h0.expand(d, *h0.shape).contiguous()  # the unused direction starts from h0 too
    if cell == "lstm":
        hx = (hx, c0.expand(d, *c0.shape).contiguous())
    y, state = m(x if batch_sizes is None else PackedSequence(x, batch_sizes), hx)
    y = y if batch_sizes is None else y.data
    y = y[..., y.shape[-1] // 2 :] if reverse else y
    states = [s[d - 1] for s in state] if cell == "lstm" else [state[d - 1], None]
    return (y, *states), params


def _assert_all_close(got, want, **tol):
    """Each of ``got`` equals ``want``'s in shape, dtype and values; None where it has None."""
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if b is None:
            assert a is None, k
        else:
            assert a.shape == b.shape and a.dtype == b.dtype, k
            torch.testing.assert_close(a, b, **(tol or EXACT), msg=lambda m, k=k: f"[{k}] {m}")


MATCH_TORCH = [  # (cell, what differs from the default T, B, I, H, proj=0, bias=True, f64)
    *[(c, dict(bias=b, dtype=t)) for c in CELLS for b in (True, False) for t in (D, torch.float32)],
    ("lstm", dict(proj=P)),
    *[(c, dict(T=t, B=b, I=i, H=h)) for c in CELLS for t, b, i, h in
      [(1, 1, 1, 1), (2, 1, 1, 7), (1, 4, 2, 3)]],  # one step, one sequence, one unit
]  # fmt: skip


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "cell,shape",
    MATCH_TORCH,
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_matches_torch(cell, shape, reverse, tol):
    """Outputs and, under random upstream gradients, the gradients of x, h0, c0 and every
    weight; torch.nn's weights are copies, so its gradients are taken at its parameters."""
    s = dict(T=T, B=B, I=I, H=H, proj=0, bias=True, dtype=D) | shape
    w = _weights(cell, s["I"], s["H"], s["proj"], s["bias"], s["dtype"], requires_grad=True)
    x = torch.randn(s["T"], s["B"], s["I"], dtype=s["dtype"], requires_grad=True)
    h0, c0 = _states(cell, s["B"], s["H"], s["proj"], s["dtype"], requires_grad=True)
    got = layer(cell, x, h0, c0, *w.values(), None, reverse)
    want, params = _torch_layer(cell, x, h0, c0, w, reverse)
    _assert_all_close(got, want, **tol(s["dtype"]))
    ups = [torch.randn_like(o) for o in want if o is not None]
    mine, theirs = [x, h0, c0, *w.values()], [x, h0, c0, *params]
    keep = [k for k, t in enumerate(mine) if t is not None]
    grads = torch.autograd.grad([o for o in got if o is not None], [mine[k] for k in keep], ups)
    want_grads = torch.autograd.grad(
        [o for o in want if o is not None], [theirs[k] for k in keep], ups
    )
    _assert_all_close(grads, want_grads, **tol(s["dtype"]))


@pytest.mark.parametrize("cell", CELLS)
def test_matches_a_loop_of_torch_cells(cell):
    """An oracle independent of torch.nn's fused RNN path: its cell modules, stepped."""
    w = _weights(cell)
    x = torch.randn(T, B, I, dtype=D)
    h0, c0 = _states(cell)
    cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(cell, nn.RNNCell)
    c = cls(I, H, **({"nonlinearity": cell[4:]} if cell.startswith("rnn") else {})).double()
    with torch.no_grad():
        for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(c, STEMS[k]).copy_(w[k])
    state, ys = (h0, c0) if cell == "lstm" else h0, []
    for t in range(T):
        state = c(x[t], state)
        ys.append(state[0] if cell == "lstm" else state)
    want = torch.stack(ys), ys[-1], state[1] if cell == "lstm" else None
    _assert_all_close(layer(cell, x, h0, c0, *w.values(), None, False), want)


@pytest.mark.parametrize("cell", CELLS)
def test_equivalent_calls_agree(cell):
    """Reverse is the flipped forward; full batch_sizes are the dense layout; non-contiguous
    input, states and weights give their contiguous copies' results."""
    w = _weights(cell)
    x = torch.randn(T, B, I, dtype=D)
    h0, c0 = _states(cell)

    def run(x, h0=h0, c0=c0, w=w, sizes=None, reverse=False):
        return layer(cell, x, h0, c0, *w.values(), sizes, reverse)

    y, *states = run(x.flip(0))
    _assert_all_close(run(x, reverse=True), (y.flip(0), *states), rtol=0, atol=1e-14)
    sizes = torch.full((T,), B, dtype=torch.long)
    for reverse in (False, True):
        y, *states = run(x, reverse=reverse)
        packed = run(x.reshape(T * B, I), sizes=sizes, reverse=reverse)
        _assert_all_close(packed, (y.reshape(T * B, -1), *states), rtol=0, atol=0)
    strided = [t.transpose(0, -1).contiguous().transpose(0, -1) if t is not None else None
               for t in (x, h0, c0)]  # fmt: skip
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    got = run(*strided, w=dict(w, w_hh=w["w_hh"].t().contiguous().t()))
    _assert_all_close(got, run(x), rtol=1e-13, atol=1e-13)


LENGTHS = [5, 4, 4, 2, 1]


@pytest.mark.parametrize("cell,proj", [(c, 0) for c in CELLS] + [("lstm", P)])
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_semantics(cell, reverse, proj):
    """Step t computes rows [:batch_sizes[t]]; a row that ended keeps its last state
    (forward), a row that has not started holds h0 (reverse). Checked against each
    sequence run alone, and against torch.nn."""
    w = _weights(cell, proj=proj)
    padded = torch.randn(max(LENGTHS), len(LENGTHS), I, dtype=D)
    packed = pack_padded_sequence(padded, LENGTHS)
    h0, c0 = _states(cell, batch=len(LENGTHS), proj=proj)
    y, h_n, c_n = layer(cell, packed.data, h0, c0, *w.values(), packed.batch_sizes, reverse)
    assert y.shape == (packed.data.shape[0], proj or H)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), packed.batch_sizes.cumsum(0)])
    for b, n in enumerate(LENGTHS):
        c0_b = c0[b : b + 1] if c0 is not None else None
        y_b, h_b, c_b = layer(
            cell, padded[:n, b : b + 1], h0[b : b + 1], c0_b, *w.values(), None, reverse
        )
        rows = torch.stack([y[offsets[t] + b] for t in range(n)])
        got = rows, h_n[b], c_n[b] if c_n is not None else None
        _assert_all_close(got, (y_b[:, 0], h_b[0], c_b[0] if c_b is not None else None))
    want = _torch_layer(cell, packed.data, h0, c0, w, reverse, packed.batch_sizes)[0]
    _assert_all_close((y, h_n, c_n), want)


@pytest.mark.parametrize("cell", CELLS)
def test_grads_exist_exactly_for_given_inputs(cell):
    w = _weights(cell, bias=False, requires_grad=True)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0, c0 = _states(cell)
    h0.requires_grad_()
    y, h_n, c_n = layer(cell, x, h0, c0, *w.values(), None, False)
    assert (c_n is None) == (cell != "lstm")
    loss = y.sum() + h_n.sum() + (c_n.sum() if c_n is not None else 0)
    grads = torch.autograd.grad(loss, [x, h0, w["w_ih"], w["w_hh"]])
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_empty_sequence():
    w = _weights("lstm")
    h0, c0 = _states("lstm")
    y, h_n, c_n = layer("lstm", torch.randn(0, B, I, dtype=D), h0, c0, *w.values(), None, False)
    assert y.shape == (0, B, H) and torch.equal(h_n, h0) and torch.equal(c_n, c0)
    sizes = torch.zeros(0, dtype=torch.long)
    y, h_n, _ = layer(
        "gru", torch.randn(0, I, dtype=D), h0, None, *_weights("gru").values(), sizes, True
    )
    assert y.shape == (0, H) and torch.equal(h_n, h0)


def test_unknown_cell_is_a_value_error():
    w = _weights("lstm")
    h0, c0 = _states("lstm")
    with pytest.raises(ValueError, match=r"unknown cell 'peephole'; expected one of"):
        layer("peephole", torch.randn(T, B, I, dtype=D), h0, c0, *w.values(), None, False)


def test_step_slices():
    assert step_slices(None, 3, 2, False) == [(0, 0, 2), (1, 2, 2), (2, 4, 2)]
    assert step_slices(None, 3, 2, True) == [(2, 4, 2), (1, 2, 2), (0, 0, 2)]
    sizes = torch.tensor([3, 2, 2, 1])
    assert step_slices(sizes, 4, 3, False) == [(0, 0, 3), (1, 3, 2), (2, 5, 2), (3, 7, 1)]
    assert step_slices(sizes, 4, 3, True) == [(3, 7, 1), (2, 5, 2), (1, 3, 2), (0, 0, 3)]


# gradcheck of this op: tests/test_conformance.py (backend "reference")
