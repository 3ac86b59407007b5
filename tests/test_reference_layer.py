"""The reference layer op (fusedrnn.ops.reference.layer), called directly: one layer, one
direction, against torch.nn (single-layer modules and cells) and against its own
contract (packed semantics, reverse without a flipped copy, None handling)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

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


def _weights(cell, input_size=I, hidden=H, proj=0, bias=True, dtype=D, requires_grad=False):
    g = GATES[cell]
    h_out = proj or hidden
    w = {
        "w_ih": torch.randn(g * hidden, input_size, dtype=dtype) * 0.5,
        "w_hh": torch.randn(g * hidden, h_out, dtype=dtype) * 0.5,
        "b_ih": torch.randn(g * hidden, dtype=dtype) * 0.5 if bias else None,
        "b_hh": torch.randn(g * hidden, dtype=dtype) * 0.5 if bias else None,
        "w_hr": torch.randn(proj, hidden, dtype=dtype) * 0.5 if proj else None,
    }
    return {k: v.requires_grad_(requires_grad) if v is not None else None for k, v in w.items()}


def _states(cell, batch=B, hidden=H, proj=0, dtype=D):
    h0 = torch.randn(batch, proj or hidden, dtype=dtype)
    c0 = torch.randn(batch, hidden, dtype=dtype) if cell == "lstm" else None
    return h0, c0


def _torch_module(cell, w, reverse, input_size=I, hidden=H, proj=0, dtype=D):
    """A single-layer torch.nn module whose direction ``reverse`` holds weights ``w``."""
    cls, extra = NN[cell]
    kwargs = dict(bias=w["b_ih"] is not None, bidirectional=reverse, **extra)
    if proj:
        kwargs["proj_size"] = proj
    m = getattr(nn, cls)(input_size, hidden, **kwargs).to(dtype)
    suffix = "_reverse" if reverse else ""
    with torch.no_grad():
        for key, stem in (
            ("w_ih", "weight_ih"),
            ("w_hh", "weight_hh"),
            ("b_ih", "bias_ih"),
            ("b_hh", "bias_hh"),
            ("w_hr", "weight_hr"),
        ):
            if w[key] is not None:
                getattr(m, f"{stem}_l0{suffix}").copy_(w[key])
    return m


def _torch_layer(cell, x, h0, c0, w, reverse, proj=0, batch_sizes=None):
    """torch.nn's answer for one direction: (y, h_n, c_n)."""
    hidden = w["w_ih"].shape[0] // GATES[cell]
    m = _torch_module(cell, w, reverse, x.shape[-1], hidden, proj, x.dtype)
    d = 2 if reverse else 1
    h = h0.unsqueeze(0).expand(d, *h0.shape).contiguous()
    hx = (h, c0.unsqueeze(0).expand(d, *c0.shape).contiguous()) if cell == "lstm" else h
    if batch_sizes is not None:
        x = torch.nn.utils.rnn.PackedSequence(x, batch_sizes)
    y, state = m(x, hx)
    y = y.data if batch_sizes is not None else y
    h_out = proj or hidden
    y = y[..., h_out:] if reverse else y
    if cell == "lstm":
        return y, state[0][d - 1], state[1][d - 1]
    return y, state[d - 1], None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_matches_torch(cell, reverse, bias, dtype, tol):
    w = _weights(cell, bias=bias, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    h0, c0 = _states(cell, dtype=dtype)
    got = layer(cell, x, h0, c0, *w.values(), None, reverse)
    want = _torch_layer(cell, x, h0, c0, w, reverse)
    assert len(got) == 3
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
        else:
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("reverse", [False, True])
def test_projection_matches_torch(reverse):
    w = _weights("lstm", proj=P)
    x = torch.randn(T, B, I, dtype=D)
    h0, c0 = _states("lstm", proj=P)
    y, h_n, c_n = layer("lstm", x, h0, c0, *w.values(), None, reverse)
    assert y.shape == (T, B, P) and h_n.shape == (B, P) and c_n.shape == (B, H)
    for a, b in zip(
        (y, h_n, c_n), _torch_layer("lstm", x, h0, c0, w, reverse, proj=P), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,proj", [(c, 0) for c in CELLS] + [("lstm", P)])
def test_gradients_match_torch(cell, proj):
    w = _weights(cell, proj=proj, requires_grad=True)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0, c0 = _states(cell, proj=proj)
    h0.requires_grad_()
    if c0 is not None:
        c0.requires_grad_()
    leaves = [x, h0] + ([c0] if c0 is not None else []) + [v for v in w.values() if v is not None]
    for reverse in (False, True):
        got = layer(cell, x, h0, c0, *w.values(), None, reverse)
        # torch.nn as an independent oracle: its weights are copies, so compare the
        # gradients via the module's parameters
        m = _torch_module(cell, w, False, proj=proj)
        hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if cell == "lstm" else h0.unsqueeze(0)
        xx = x.flip(0) if reverse else x
        y_ref, state = m(xx, hx)
        y_ref = y_ref.flip(0) if reverse else y_ref
        ref_outs = [y_ref, *(s[0] for s in state)] if cell == "lstm" else [y_ref, state[0]]
        outs = [o for o in got if o is not None]
        gen = torch.Generator().manual_seed(2)
        weights = [torch.randn(o.shape, generator=gen, dtype=D) for o in outs]
        loss = sum((o * g).sum() for o, g in zip(outs, weights, strict=True))
        ref_loss = sum((o * g).sum() for o, g in zip(ref_outs, weights, strict=True))
        grads = torch.autograd.grad(loss, leaves)
        n_state = 2 if cell == "lstm" else 1
        ref_grads = torch.autograd.grad(ref_loss, leaves[: 1 + n_state] + list(m.parameters()))
        for i, (a, b) in enumerate(zip(grads, ref_grads, strict=True)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"grad {i}")


@pytest.mark.parametrize("cell", CELLS)
def test_matches_a_loop_of_torch_cells(cell):
    """An oracle independent of torch.nn's fused RNN path: its cell modules, stepped."""
    w = _weights(cell)
    x = torch.randn(T, B, I, dtype=D)
    h0, c0 = _states(cell)
    cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(cell, nn.RNNCell)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    c = cls(I, H, **kw).double()
    with torch.no_grad():
        c.weight_ih.copy_(w["w_ih"])
        c.weight_hh.copy_(w["w_hh"])
        c.bias_ih.copy_(w["b_ih"])
        c.bias_hh.copy_(w["b_hh"])
    state = (h0, c0) if cell == "lstm" else h0
    ys = []
    for t in range(T):
        state = c(x[t], state)
        ys.append(state[0] if cell == "lstm" else state)
    y, h_n, c_n = layer(cell, x, h0, c0, *w.values(), None, False)
    torch.testing.assert_close(y, torch.stack(ys), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, ys[-1], rtol=1e-12, atol=1e-12)
    if cell == "lstm":
        torch.testing.assert_close(c_n, state[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_is_the_flipped_forward(cell):
    w = _weights(cell)
    x = torch.randn(T, B, I, dtype=D)
    h0, c0 = _states(cell)
    y, h_n, c_n = layer(cell, x, h0, c0, *w.values(), None, True)
    y_f, h_f, c_f = layer(cell, x.flip(0), h0, c0, *w.values(), None, False)
    torch.testing.assert_close(y, y_f.flip(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(h_n, h_f, rtol=0, atol=1e-14)
    if cell == "lstm":
        torch.testing.assert_close(c_n, c_f, rtol=0, atol=1e-14)


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
        c_b = c0[b : b + 1] if c0 is not None else None
        y_b, h_b, cn_b = layer(
            cell, padded[:n, b : b + 1], h0[b : b + 1], c_b, *w.values(), None, reverse
        )
        rows = torch.stack([y[offsets[t] + b] for t in range(n)])
        torch.testing.assert_close(rows, y_b[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h_n[b], h_b[0], rtol=1e-12, atol=1e-12)
        if cell == "lstm":
            torch.testing.assert_close(c_n[b], cn_b[0], rtol=1e-12, atol=1e-12)
    want = _torch_layer(cell, packed.data, h0, c0, w, reverse, proj, packed.batch_sizes)
    for a, b in zip((y, h_n, c_n), want, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_full_batch_sizes_equal_dense(cell):
    w = _weights(cell)
    x = torch.randn(T, B, I, dtype=D)
    h0, c0 = _states(cell)
    sizes = torch.full((T,), B, dtype=torch.long)
    for reverse in (False, True):
        dense = layer(cell, x, h0, c0, *w.values(), None, reverse)
        packed = layer(cell, x.reshape(T * B, I), h0, c0, *w.values(), sizes, reverse)
        torch.testing.assert_close(packed[0], dense[0].reshape(T * B, -1), rtol=0, atol=0)
        for a, b in zip(packed[1:], dense[1:], strict=True):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_noncontiguous_input_and_weights(cell):
    w = _weights(cell)
    x = torch.randn(I, B, T, dtype=D).permute(2, 1, 0)
    assert not x.is_contiguous()
    w_t = dict(w)
    w_t["w_hh"] = w["w_hh"].t().contiguous().t()
    h0 = torch.randn(H, B, dtype=D).t()
    c0 = torch.randn(H, B, dtype=D).t() if cell == "lstm" else None
    got = layer(cell, x, h0, c0, *w_t.values(), None, False)
    want = layer(
        cell,
        x.contiguous(),
        h0.contiguous(),
        c0.contiguous() if c0 is not None else None,
        *w.values(),
        None,
        False,
    )
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


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


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "seq_len,batch,input_size,hidden", [(1, 1, 1, 1), (2, 1, 1, 7), (1, 4, 2, 3)]
)
def test_awkward_shapes(cell, seq_len, batch, input_size, hidden):
    w = _weights(cell, input_size, hidden)
    x = torch.randn(seq_len, batch, input_size, dtype=D)
    h0, c0 = _states(cell, batch, hidden)
    for reverse in (False, True):
        got = layer(cell, x, h0, c0, *w.values(), None, reverse)
        want = _torch_layer(cell, x, h0, c0, w, reverse)
        for a, b in zip(got, want, strict=True):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


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
