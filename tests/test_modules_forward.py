"""Outputs and gradients of LSTM / GRU / RNN (and of the cells, where they share a contract)
against torch.nn with identical weights.

Every output (output, h_n, c_n: values, shapes, dtypes, tuple structure) and every gradient
(input, h0, c0, each parameter) is compared, over the full argument grid, on every backend
that runs on CPU tensors.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MODES
from module_testlib import assert_same, flatten, mode_kwargs, mode_pair, module_inputs

import fusedrnn

T, B, I, H, P = 3, 2, 3, 5, 2

pytestmark = pytest.mark.usefixtures("one_thread")


MODE_PROJ = [(m, 0) for m in MODES] + [("LSTM", P)]  # a projection only for the LSTM
# float64 over the full grid; float32 with fewer layers, always with an initial state
DTYPE_LAYERS_HX = [(torch.float64, n, hx) for n in (1, 2, 3) for hx in (False, True)]
DTYPE_LAYERS_HX += [(torch.float32, n, True) for n in (1, 2)]


@pytest.mark.parametrize("mode,proj", MODE_PROJ, ids=[f"{m}-p{p}" for m, p in MODE_PROJ])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["3d", "2d"])
@pytest.mark.parametrize(
    "dtype,num_layers,with_hx",
    DTYPE_LAYERS_HX,
    ids=[f"{str(d)[6:]}-L{n}-{'hx' if h else 'nohx'}" for d, n, h in DTYPE_LAYERS_HX],
)
def test_grid(
    mode, proj, bidirectional, batch_first, bias, batched, dtype, num_layers, with_hx,
    cpu_backend, rnn_pair, tol,
):  # fmt: skip
    layout = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ref, mod = mode_pair(
        rnn_pair, mode, I, H, proj=proj, bias=bias, backend=cpu_backend, dtype=dtype, **layout
    )
    x, hx = module_inputs(
        mode, dtype, (T, B, I, H), proj=proj, batched=batched, with_hx=with_hx, **layout
    )
    assert_same(ref, mod, x, hx, **tol(dtype))


AWKWARD = [  # ((seq_len, batch, input_size, hidden), proj)
    ((1, 1, 1, 1), 0),
    ((1, 4, 2, 3), 0),
    ((6, 1, 1, 7), 0),
    ((3, 0, 4, 6), 0),  # an empty batch is no error in torch.nn on the CPU
    ((5, 3, 1, 2), 1),
    ((7, 5, 4, 9), 4),
    ((2, 1, 3, 3), 2),
]


@pytest.mark.parametrize(
    "mode,sizes,proj", [(m, *row) for m in MODES for row in AWKWARD if m == "LSTM" or not row[1]]
)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_awkward_shapes(
    mode, sizes, proj, bidirectional, with_hx, dtype, cpu_backend, tol, rnn_pair
):
    layout = dict(num_layers=2, bidirectional=bidirectional)
    ref, mod = mode_pair(
        rnn_pair, mode, *sizes[2:], proj=proj, backend=cpu_backend, dtype=dtype, **layout
    )
    x, hx = module_inputs(mode, dtype, sizes, proj=proj, with_hx=with_hx, **layout)
    assert_same(ref, mod, x, hx, **tol(dtype))


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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_equals_a_batch_of_one(mode, batch_first, cpu_backend):
    """The no-batch-dim contract of torch.nn's ModuleInfo tests, checked without torch.nn
    (against torch.nn, unbatched and batched: test_grid)."""
    proj = P if mode == "LSTM" else 0
    cls, kw = mode_kwargs(mode, proj, num_layers=2, batch_first=batch_first, bidirectional=True)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    x, hx = module_inputs(
        mode, torch.float64, (T, B, I, H), batch_first=batch_first, proj=proj, batched=False
    )
    out, state = mod(x, hx)
    batched_hx = tuple(h.unsqueeze(1) for h in hx) if mode == "LSTM" else hx.unsqueeze(1)
    x1 = x.unsqueeze(0 if batch_first else 1)
    out1, state1 = mod(x1, batched_hx)
    want = [out1.squeeze(0 if batch_first else 1), *(s.squeeze(1) for s in flatten(state1))]
    torch.testing.assert_close(flatten((out, state)), want, rtol=0, atol=1e-14)


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
