"""Double backward (``create_graph=True`` then a second backward) on the cpu backend:
gradgradcheck in float64 on tiny sizes, and second-order gradients against torch.nn."""

from __future__ import annotations

import pytest
import torch
from conftest import MODES, module_as_function
from torch.autograd import gradgradcheck

pytestmark = pytest.mark.usefixtures("one_thread")

T, B, I, H = 3, 2, 3, 2
LENGTHS = [2, 3]
# torch.nn's modes, the LSTM also with a projection and with layer norm
CASES = {
    **MODES,
    "LSTM_PROJ": ("LSTM", {"proj_size": 1}),
    "LSTM_LN": ("LSTM", {"layer_norm": True}),
}


def _function(mode, bidirectional=False, packed=False, backend="cpu"):
    cls, kw = CASES[mode]
    return module_as_function(cls, kw, (T, B, I, H), LENGTHS, bidirectional=bidirectional,
                              packed=packed, backend=backend)  # fmt: skip


@pytest.mark.parametrize("mode", CASES)
def test_gradgradcheck_cpu(mode):
    f, inputs = _function(mode)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradgradcheck_cpu_bidirectional_packed(mode):
    f, inputs = _function(mode, bidirectional=True, packed=True)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_second_order_matches_torch_nn(rnn_pair):
    ref, mod = rnn_pair("LSTM", I, H, num_layers=2, backend="cpu", dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    grads = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_()
        out, (h_n, c_n) = m(xi)
        loss = (out**2).sum() + (h_n * c_n).sum()
        params = list(m.parameters())
        first = torch.autograd.grad(loss, [xi, *params], create_graph=True)
        penalty = sum((g**2).sum() for g in first)
        grads.append(torch.autograd.grad(penalty, [xi, *params]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
