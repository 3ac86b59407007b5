"""gradcheck / gradgradcheck of the modules in float64 on tiny sizes, with respect to
the input, the initial state and every parameter (passed through functional_call), and
second-order gradients (``create_graph=True`` then a second backward) against torch.nn."""

from __future__ import annotations

import pytest
import torch
from conftest import MODES, module_as_function
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

# torch.nn's modes, the LSTM also with a projection
CASES = {**MODES, "LSTM_PROJ": ("LSTM", {"proj_size": 2})}
# the cpu backend's own double backward: also the LSTM with layer norm, at H = 2
CPU_CASES = {
    **MODES,
    "LSTM_PROJ": ("LSTM", {"proj_size": 1}),
    "LSTM_LN": ("LSTM", {"layer_norm": True}),
}
T, B, I, H = 3, 2, 2, 3
CPU_SIZES = (3, 2, 3, 2)  # T, B, I, H
LENGTHS = [2, 3]


def _function(mode, bidirectional=False, packed=False, backend="cpu", num_layers=1, cpu=False):
    cls, kw = (CPU_CASES if cpu else CASES)[mode]
    layout = dict(bidirectional=bidirectional, packed=packed, num_layers=num_layers)
    sizes = CPU_SIZES if cpu else (T, B, I, H)
    return module_as_function(cls, kw, sizes, LENGTHS, backend=backend, **layout)


# (bidirectional, packed, num_layers): every layout of one layer, and a bidirectional stack
LAYOUTS = [(False, False, 1), (False, True, 1), (True, False, 1), (True, True, 1), (True, False, 2)]


@pytest.mark.parametrize("mode", CASES)
@pytest.mark.parametrize(
    "bidirectional,packed,num_layers",
    LAYOUTS,
    ids=[f"{'bi' if b else 'uni'}-{'packed' if p else 'dense'}-L{n}" for b, p, n in LAYOUTS],
)
def test_gradcheck(mode, bidirectional, packed, num_layers, cpu_backend):
    f, inputs = _function(mode, bidirectional, packed, cpu_backend, num_layers)
    # the full Jacobian for the simplest layout; random projections of it elsewhere
    fast = bidirectional or packed
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("mode", CASES)
@pytest.mark.parametrize(
    "bidirectional,packed", [(False, False), (True, True)], ids=["uni-dense", "bi-packed"]
)
def test_gradgradcheck_reference(mode, bidirectional, packed):
    """Second derivatives (torch.nn supports double backward): the reference backend,
    which autograd differentiates twice."""
    f, inputs = _function(mode, bidirectional, packed, "reference")
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_gradcheck(cls, bias, cpu_backend):
    cell = getattr(fusedrnn, cls)(I, H, bias=bias, backend=cpu_backend).double()
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, H, dtype=torch.float64, requires_grad=True)

    def f(x, h, c, *weights):
        hx = (h, c) if cls == "LSTMCell" else h
        return functional_call(cell, dict(zip(names, weights, strict=True)), (x, hx))

    assert gradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-7, rtol=1e-5)
    if cpu_backend == "reference":
        assert gradgradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("mode", CPU_CASES)
def test_gradgradcheck_cpu(mode):
    f, inputs = _function(mode, cpu=True)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradgradcheck_cpu_bidirectional_packed(mode):
    f, inputs = _function(mode, bidirectional=True, packed=True, cpu=True)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_second_order_matches_torch_nn(rnn_pair):
    t, b, i, h = CPU_SIZES
    ref, mod = rnn_pair("LSTM", i, h, num_layers=2, backend="cpu", dtype=torch.float64)
    x = torch.randn(t, b, i, dtype=torch.float64)
    grads = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_()
        out, (h_n, c_n) = m(xi)
        loss = (out**2).sum() + (h_n * c_n).sum()
        params = list(m.parameters())
        first = torch.autograd.grad(loss, [xi, *params], create_graph=True)
        penalty = sum((g**2).sum() for g in first)
        grads.append(torch.autograd.grad(penalty, [xi, *params]))
    for want, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
