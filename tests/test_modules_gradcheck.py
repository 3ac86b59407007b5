"""gradcheck / gradgradcheck of the modules in float64 on tiny sizes, with respect to
the input, the initial state and every parameter (passed through functional_call), and
second-order gradients (``create_graph=True`` then a second backward) against torch.nn."""

from __future__ import annotations

import pytest
import torch
from conftest import MODES
from misc_testlib import needs_cpu
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
SIZES = (3, 2, 2, 3)  # T, B, I, H
CPU_SIZES = (3, 2, 3, 2)
LENGTHS = [2, 3]


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _function(
    mode, bidirectional=False, packed=False, backend="cpu", num_layers=1, cpu=False, cell=False,
    bias=True,
):  # fmt: skip
    """(f, inputs) for gradcheck / gradgradcheck of a float64 module of ``mode`` (CPU_CASES at
    CPU_SIZES when ``cpu``), or of its ``cell``: f(x, *states, *params) runs it with those
    parameters (through functional_call)."""
    cls, kw = (CPU_CASES if cpu else CASES)[mode]
    t, b, i, h = CPU_SIZES if cpu else SIZES
    layout = {} if cell else dict(num_layers=num_layers, bidirectional=bidirectional)
    mod = getattr(fusedrnn, cls + "Cell" * cell)(i, h, bias=bias, backend=backend, **layout, **kw)
    mod, lstm, x = mod.double(), cls == "LSTM", _leaf(*(b, i) if cell else (t, b, i))
    lead = (b,) if cell else (num_layers * (2 if bidirectional else 1), b)
    states = flatten(random_state(cls, lead, h, kw.get("proj_size", 0)))
    states = [s.requires_grad_() for s in states]
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mod.parameters()]

    def f(x, *rest):
        weights = dict(zip(names, rest[len(states) :], strict=True))
        hx = rest[: len(states)]
        inp = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
        out = functional_call(mod, weights, (inp, hx if lstm else hx[0]))
        return tuple(flatten(out))  # a packed output as its data

    return f, (x, *states, *params)


# every layout of one layer, a bidirectional stack, and the cell with and without a bias
BI, PACKED = dict(bidirectional=True), dict(packed=True)
LAYOUTS = {
    "uni-dense": {}, "uni-packed": PACKED, "bi-dense": BI, "bi-packed": {**BI, **PACKED},
    "bi-dense-L2": {**BI, "num_layers": 2}, "cell": dict(cell=True),
    "cell-no_bias": dict(cell=True, bias=False),
}  # fmt: skip
CELL_CASES = [m for m in CASES if m != "LSTM_PROJ"]  # a cell takes no projection


@pytest.mark.parametrize(
    "mode,layout", [(m, k) for k in LAYOUTS for m in (CELL_CASES if "cell" in k else CASES)]
)
def test_gradcheck(mode, layout, cpu_backend):
    f, inputs = _function(mode, backend=cpu_backend, **LAYOUTS[layout])
    # the full Jacobian for the simplest layout and the cell; random projections of it elsewhere
    fast = layout.startswith("bi") or "packed" in layout
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


# (backend, mode, layout): torch.nn supports double backward; the reference backend is
# autograd differentiated twice, the cpu backend has its own
GRADGRAD = [
    *(("reference", mode, layout) for layout in ("uni-dense", "bi-packed") for mode in CASES),
    *(("reference", mode, layout) for layout in ("cell", "cell-no_bias") for mode in CELL_CASES),
    *(("cpu", mode, "uni-dense") for mode in CPU_CASES),
    *(("cpu", mode, "bi-packed") for mode in ("LSTM", "GRU")),
]


@pytest.mark.parametrize("backend,mode,layout", GRADGRAD)
def test_gradgradcheck(backend, mode, layout):
    f, inputs = _function(mode, backend=backend, cpu=backend == "cpu", **LAYOUTS[layout])
    # the full second-order Jacobian for the cpu backend's dense layout; projections elsewhere
    fast = layout != "uni-dense" or backend == "reference"
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


@needs_cpu
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
