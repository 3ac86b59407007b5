"""gradcheck / gradgradcheck of the modules in float64 on tiny sizes, with respect to
the input, the initial state and every parameter (passed through functional_call), and
second-order gradients (``create_graph=True`` then a second backward) against torch.nn."""

from __future__ import annotations

import pytest
import torch
from conftest import MODES
from module_testlib import flatten, random_state
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

# torch.nn's modes, the LSTM also with a projection; for the cpu backend's own double
# backward, also the LSTM with layer norm, at CPU_SIZES (H = 2)
CASES = {**MODES, "LSTM_PROJ": ("LSTM", {"proj_size": 2})}
CPU_CASES = CASES | dict(
    LSTM_PROJ=("LSTM", {"proj_size": 1}), LSTM_LN=("LSTM", {"layer_norm": True})
)
T, B, I, H = SIZES = (3, 2, 2, 3)
CPU_SIZES = (3, 2, 3, 2)
LENGTHS = [2, 3]


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _as_function(mod, x, states, run):
    """(f, inputs) for gradcheck / gradgradcheck: f(x, *states, *params) is
    ``run(call, x, states)``, where ``call`` runs ``mod`` with those parameters."""
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mod.parameters()]

    def f(x, *rest):
        weights = dict(zip(names, rest[len(states) :], strict=True))
        return run(lambda *args: functional_call(mod, weights, args), x, rest[: len(states)])

    return f, (x, *states, *params)


def _function(mode, bidirectional=False, packed=False, backend="cpu", num_layers=1, cpu=False):
    """(f, inputs) of a float64 module of ``mode`` (CPU_CASES at CPU_SIZES when ``cpu``)."""
    cls, kw = (CPU_CASES if cpu else CASES)[mode]
    t, b, i, h = CPU_SIZES if cpu else SIZES
    layout = dict(num_layers=num_layers, bidirectional=bidirectional, backend=backend)
    mod = getattr(fusedrnn, cls)(i, h, **layout, **kw).double()
    lstm, x = cls == "LSTM", _leaf(t, b, i)
    lead = (num_layers * (2 if bidirectional else 1), b)
    states = flatten(random_state(cls, lead, h, kw.get("proj_size", 0)))
    states = [s.requires_grad_() for s in states]

    def run(call, x, hx):
        inp = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
        return tuple(flatten(call(inp, hx if lstm else hx[0])))  # a packed output as its data

    return _as_function(mod, x, states, run)


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


# (backend, mode, bidirectional and packed): torch.nn supports double backward; the
# reference backend is autograd differentiated twice, the cpu backend has its own
GRADGRAD = [
    *(("reference", mode, bi_packed) for bi_packed in (False, True) for mode in CASES),
    *(("cpu", mode, False) for mode in CPU_CASES),
    *(("cpu", mode, True) for mode in ("LSTM", "GRU")),
]


@pytest.mark.parametrize(
    "backend,mode,bi_packed",
    GRADGRAD,
    ids=[f"{b}-{m}-{'bi-packed' if p else 'uni-dense'}" for b, m, p in GRADGRAD],
)
def test_gradgradcheck(backend, mode, bi_packed):
    f, inputs = _function(mode, bi_packed, bi_packed, backend, cpu=backend == "cpu")
    # the full second-order Jacobian for the cpu backend's dense layout; projections elsewhere
    fast = bi_packed or backend == "reference"
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_gradcheck(cls, bias, cpu_backend):
    cell = getattr(fusedrnn, cls)(I, H, bias=bias, backend=cpu_backend).double()
    x, states = _leaf(B, I), [_leaf(B, H), _leaf(B, H)]  # (h, c): c only for the LSTMCell
    f, inputs = _as_function(
        cell, x, states, lambda call, x, hx: call(x, hx if cls == "LSTMCell" else hx[0])
    )
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    if cpu_backend == "reference":
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
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
