"""Outputs and gradients of LSTM / GRU / RNN and of their cells against torch.nn with
identical weights.

Every output (output, h_n, c_n: values, shapes, dtypes, tuple structure) and every gradient
(input, h0, c0, each parameter) is compared, over the full argument grid, dense and packed
(in the input's packing), on every backend that runs on CPU tensors. The cells' construction
is checked in test_modules_construction.py, their errors in test_modules_errors.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES
from module_testlib import LENGTHS, MODE_PROJ, assert_mode_same, assert_same, flatten, mode_pair

T, B, I, H = 3, 2, 3, 5

pytestmark = pytest.mark.usefixtures("one_thread")

# float64 over the full grid; float32 with fewer layers, always with an initial state
DTYPE_LAYERS_HX = [(torch.float64, n, hx) for n in (1, 2, 3) for hx in (False, True)]
DTYPE_LAYERS_HX += [(torch.float32, n, True) for n in (1, 2)]
FLAGS = [(False, True)] * 2 + [(True, False)] * 2  # bidirectional, batch_first, bias, batched
GRID = [
    dict(mode=m, proj=p, sizes=(T, B, I, H), bidirectional=bi, batch_first=bf, bias=bias,
         batched=batched, dtype=dtype, num_layers=n, with_hx=hx)
    for (m, p), bi, bf, bias, batched, (dtype, n, hx) in itertools.product(
        MODE_PROJ, *FLAGS, DTYPE_LAYERS_HX)
]  # fmt: skip
AWKWARD = [  # ((seq_len, batch, input_size, hidden), proj): two time-major layers
    ((1, 1, 1, 1), 0),
    ((1, 4, 2, 3), 0),
    ((6, 1, 1, 7), 0),
    ((3, 0, 4, 6), 0),  # an empty batch is no error in torch.nn on the CPU
    ((5, 3, 1, 2), 1),
    ((7, 5, 4, 9), 4),
    ((2, 1, 3, 3), 2),
]
GRID += [
    dict(mode=m, proj=p, sizes=sizes, bidirectional=bi, dtype=dtype, num_layers=2, with_hx=hx)
    for m in MODES for sizes, p in AWKWARD if m == "LSTM" or not p
    for bi in (False, True) for hx in (False, True) for dtype in (torch.float64, torch.float32)
]  # fmt: skip
# packed input, (dtype, num_layers, batch_first, enforce_sorted, with_hx, lengths): float64 over
# every layout, float32 for two time-major layers, unsorted, with an initial state; short batches
PACKED = [(torch.float64, *c, LENGTHS) for c in itertools.product((1, 2), *[(False, True)] * 3)]
PACKED += [(torch.float32, 2, False, False, True, LENGTHS)]
PACKED += [(torch.float64, 1, False, False, False, n) for n in ([1], [3], [1, 1, 1], [3, 1])]
GRID += [
    dict(mode=m, proj=p, sizes=(max(lengths), len(lengths), I, H), bidirectional=bi,
         dtype=dtype, num_layers=n, batch_first=bf, enforce_sorted=es, with_hx=hx, lengths=lengths)
    for (m, p), bi, (dtype, n, bf, es, hx, lengths) in itertools.product(
        MODE_PROJ, (False, True), PACKED)
]  # fmt: skip

# the cells, one step (the seq_len of sizes unused): (batch, or None for unbatched input,
# input_size, hidden), with and without an initial state, in float64 and float32; the first two
# also without a bias
CELL_SHAPES = [(4, I, H), (None, I, H), (1, 1, 1), (1, 2, 7), (3, 1, 2), (5, 4, 9), (0, I, H)]
GRID += [
    dict(mode=m, proj=0, cell=True, sizes=(1, b, i, h), batched=b is not None, bias=bias,
         dtype=dtype, num_layers=1, with_hx=hx)
    for m in MODES for n, (b, i, h) in enumerate(CELL_SHAPES)
    for bias in (True, False)[: 1 + (n < 2)] for hx in (True, False)
    for dtype in (torch.float64, torch.float32)
]  # fmt: skip


def _id(row):
    on = [k for k in ("bidirectional", "batch_first", "with_hx", "enforce_sorted") if row.get(k)]
    on += [f"packed{row['lengths']}".replace(" ", "")] if row.get("lengths") else []
    off = [f"no_{k}" for k in ("bias", "batched") if not row.get(k, True)]
    sizes, dtype = "x".join(map(str, row["sizes"])), str(row["dtype"])[6:]
    name = row["mode"] + "Cell" * row.get("cell", False)
    return "-".join([name, f"p{row['proj']}", sizes, dtype, f"L{row['num_layers']}", *on, *off])


@pytest.mark.parametrize("row", GRID, ids=_id)
def test_matches_torch_nn(row, cpu_backend, rnn_pair):
    assert_mode_same(rnn_pair, backend=cpu_backend, **row)


@pytest.mark.parametrize("mode", MODES)
def test_strides_no_grad_accumulation_and_frozen_weights(mode, cpu_backend, rnn_pair):
    ref, mod = mode_pair(rnn_pair, mode, I, H, num_layers=2, backend=cpu_backend)
    mod.flatten_parameters()  # harmless, as in torch.nn
    x = torch.randn(I, B, 2 * T, dtype=torch.float64).permute(2, 1, 0)[::2]  # [T, B, I]
    assert not x.is_contiguous()
    h0 = torch.randn(H, B, 2, dtype=torch.float64).permute(2, 1, 0)
    hx = (h0, torch.randn(2, B, 2 * H, dtype=torch.float64)[..., ::2]) if mode == "LSTM" else h0
    assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)
    x = x.contiguous()
    with torch.no_grad():
        out, _ = mod(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-12, atol=1e-12)
    # weight gradients without an input gradient accumulate over two backward passes
    for m in (ref, mod):
        for _ in range(2):
            m(x)[0].square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), mod.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12, msg=name)
    mod.zero_grad()
    assert all(p.grad is None for p in mod.parameters())
    # frozen weights get no gradient (None, as in torch.nn); the others still match
    for m in (ref, mod):
        m.weight_ih_l0.requires_grad_(False)
    assert_same(ref, mod, x, rtol=1e-12, atol=1e-12)


# (class, leading dimensions of the input, and of each state tensor)
LSTM_STATES = [("LSTM", (T, B), (1, B)), ("LSTM", (T, B), (2, B)), ("LSTMCell", (B,), (B,))]


@pytest.mark.parametrize("cls,x_lead,h_lead", LSTM_STATES)
def test_lstm_state_forms(cls, x_lead, h_lead, cpu_backend, rnn_pair):
    """The state may be a list; torch.nn uses c only elementwise, so a float32 c with
    float64 weights is promoted rather than rejected."""
    layers = {"num_layers": h_lead[0]} if cls == "LSTM" else {}
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **layers)
    x = torch.randn(*x_lead, I, dtype=torch.float64)
    h = torch.randn(*h_lead, H, dtype=torch.float64)
    c = torch.randn(*h_lead, H)
    for hx in ([h, c.double()], (h, c)):
        assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,x_lead", [("RNN", (T, B)), ("RNNCell", (B,))])
def test_nonlinearity_set_after_construction(cls, x_lead, cpu_backend, rnn_pair):
    """As in torch.nn: RNNCell reads ``nonlinearity`` at every call, while RNN's mode is
    decided by its constructor and the attribute is only a record."""
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, nonlinearity="tanh")
    for m in (ref, mod):
        m.nonlinearity = "relu"
    cell = cls == "RNNCell"
    x = torch.randn(*x_lead, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64) if cell else None
    out = flatten(mod(x, h))[0]
    torch.testing.assert_close(out, flatten(ref(x, h))[0], rtol=1e-12, atol=1e-12)
    assert bool((out >= 0).all()) == cell


@pytest.mark.parametrize("mode", MODES)
def test_cell_loop_over_time(mode, cpu_backend, rnn_pair):
    """Gradients through several chained steps of a cell, as a user's own loop would run them."""
    cls, extra = MODES[mode]
    ref, mod = rnn_pair(cls + "Cell", I, H, backend=cpu_backend, **extra)
    xs = torch.randn(6, 4, I, dtype=torch.float64)
    results = []
    for cell in (ref, mod):
        x, state, total = xs.clone().requires_grad_(), None, 0
        for t in range(x.shape[0]):
            state = cell(x[t], state)
            total = total + (flatten(state)[0] * (t + 1)).sum()
        results.append(torch.autograd.grad(total, [x, *cell.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)
