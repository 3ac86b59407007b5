"""LSTMCell / GRUCell / RNNCell against the torch.nn cells: construction, parameters,
values and gradients (batched, unbatched, hx None, bias False) and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from module_testlib import assert_same, flatten, param_list, random_state
from torch import nn

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

CELLS = {
    "LSTMCell": ("LSTMCell", {}),
    "GRUCell": ("GRUCell", {}),
    "RNNCell_tanh": ("RNNCell", {"nonlinearity": "tanh"}),
    "RNNCell_relu": ("RNNCell", {"nonlinearity": "relu"}),
}
I, H, B = 3, 5, 4


def _pair(rnn_pair, name, backend, dtype=torch.float64, input_size=I, hidden=H, **kwargs):
    cls, extra = CELLS[name]
    return rnn_pair(cls, input_size, hidden, backend=backend, dtype=dtype, **extra, **kwargs)


def _state(name, lead, hidden=H, dtype=torch.float64):
    return random_state(name, lead, hidden, dtype=dtype)


GRID = list(itertools.product(CELLS, (True, False), (True, False), (True, False)))


@pytest.mark.parametrize("name,bias,batched,with_hx", GRID)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_matches_torch(name, bias, batched, with_hx, dtype, cpu_backend, tol, rnn_pair):
    ref, mod = _pair(rnn_pair, name, cpu_backend, dtype, bias=bias)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=dtype)
    hx = _state(name, lead, dtype=dtype) if with_hx else None
    assert_same(ref, mod, x, hx, **tol(dtype))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batch,input_size,hidden", [(1, 1, 1), (1, 2, 7), (3, 1, 2), (5, 4, 9)])
def test_cell_awkward_shapes(name, batch, input_size, hidden, cpu_backend, rnn_pair):
    ref, mod = _pair(rnn_pair, name, cpu_backend, input_size=input_size, hidden=hidden)
    x = torch.randn(batch, input_size, dtype=torch.float64)
    assert_same(ref, mod, x, _state(name, (batch,), hidden), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_cell_loop_over_time(name, cpu_backend, rnn_pair):
    """Gradients through several chained steps, as a user's own loop would run them."""
    ref, mod = _pair(rnn_pair, name, cpu_backend)
    xs = torch.randn(6, B, I, dtype=torch.float64)
    results = []
    for cell in (ref, mod):
        x = xs.clone().requires_grad_()
        state = None
        total = 0
        for t in range(x.shape[0]):
            state = cell(x[t], state)
            total = total + (flatten(state)[0] * (t + 1)).sum()
        results.append(torch.autograd.grad(total, [x, *cell.parameters()]))
    for a, b in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_cell_parameters_init_and_repr(name):
    cls, extra = CELLS[name]
    for kwargs in ({}, {"bias": False}, {"dtype": torch.float64}):
        torch.manual_seed(4)
        ref = getattr(nn, cls)(I, H, **extra, **kwargs)
        torch.manual_seed(4)
        mod = getattr(fusedrnn, cls)(I, H, **extra, **kwargs)
        assert param_list(mod, "shape", "dtype") == param_list(ref, "shape", "dtype")
        for a, b in zip(mod.parameters(), ref.parameters(), strict=True):
            assert torch.equal(a, b)
            assert a.abs().max() <= 1 / math.sqrt(H)
        assert list(mod.state_dict()) == list(ref.state_dict())
        assert repr(mod) == repr(ref)
        assert (mod.bias_ih is None) == (ref.bias_ih is None)
        for attr in ("input_size", "hidden_size", "bias"):
            assert getattr(mod, attr) == getattr(ref, attr)


def test_rnn_cell_positional_arguments():
    # input_size, hidden_size, bias, nonlinearity, device, dtype
    rnn_args = [(3, 4), (3, 4, False), (3, 4, True, "relu"), (3, 4, False, "tanh", "cpu")]
    for args in [*rnn_args, (3, 4, True, "relu", None, torch.float64)]:
        ref, mod = nn.RNNCell(*args), fusedrnn.RNNCell(*args)
        assert (mod.nonlinearity, mod.bias) == (ref.nonlinearity, ref.bias)
        assert mod.weight_hh.dtype == ref.weight_hh.dtype
        assert repr(mod) == repr(ref)
    for cls in ("LSTMCell", "GRUCell"):
        for args in [(3, 4, False), (3, 4, True, "cpu", torch.float64)]:
            ref, mod = getattr(nn, cls)(*args), getattr(fusedrnn, cls)(*args)
            assert param_list(mod, "dtype") == param_list(ref, "dtype")
    cell = fusedrnn.GRUCell(3, 4, backend="reference")
    assert cell.backend == "reference" and repr(cell) == "GRUCell(3, 4, backend='reference')"


def _t(*shape, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype)


CELL_ERRORS = [
    ("input size", lambda n: (_t(3, 11), _state(n, (3,)))),
    ("hidden size", lambda n: (_t(3, I), _state(n, (3,), H + 1))),
    ("batch size", lambda n: (_t(3, I), _state(n, (5,)))),
    ("input 3-D", lambda n: (_t(2, 3, I), None)),
    ("input 0-D", lambda n: (_t(), None)),
    ("hidden 3-D", lambda n: (_t(3, I), _state(n, (1, 3)))),
    ("hidden 4-D", lambda n: (_t(3, I), _state(n, (3, 1, 1)))),
    ("unbatched input, batched hidden", lambda n: (_t(I), _state(n, (3,)))),
    ("batched input, unbatched hidden", lambda n: (_t(3, I), _state(n, ()))),
    ("input dtype", lambda n: (_t(3, I, dtype=torch.float32), None)),
    ("hidden dtype", lambda n: (_t(3, I), _state(n, (3,), dtype=torch.float32))),
    ("unbatched input size", lambda n: (_t(I + 1), _state(n, ()))),
    ("unbatched hidden size", lambda n: (_t(I), _state(n, (), H - 1))),
]
LSTM_CELL_ERRORS = [  # LSTMCell only
    ("c size", lambda n: (_t(3, I), (_t(3, H), _t(3, H + 1)))),
    ("c batch", lambda n: (_t(3, I), (_t(3, H), _t(2, H)))),
    ("c 3-D", lambda n: (_t(3, I), (_t(3, H), _t(1, 3, H)))),
    ("hx a 1-tuple", lambda n: (_t(3, I), (_t(3, H),))),
    ("hx a 3-tuple", lambda n: (_t(3, I), (_t(3, H),) * 3)),
    ("hx a 1-tuple with bad input", lambda n: (_t(3, I + 1), (_t(3, H),))),
    ("unbatched hx a 1-tuple", lambda n: (_t(I), (_t(H),))),
    ("hx a tensor", lambda n: (_t(3, I), _t(3, H))),
]
ERROR_CASES = [(n, d, m) for d, m in CELL_ERRORS for n in CELLS] + [
    ("LSTMCell", d, m) for d, m in LSTM_CELL_ERRORS
]


# "reference" with autograd: the general path; "cpu" without: the shortcut of a sampling
# call (RNNCellBase._one_step), which must hand every bad call to the general path
ERROR_MODES = ["reference", "cpu no_grad"]


def _call_in(mode: str, lib, cell, *args):
    if lib is torch.nn or mode == "reference":
        return cell(*args)
    if "cpu" not in fusedrnn.available_backends("cpu"):
        pytest.skip("the cpu backend is not built")
    with torch.no_grad():
        return cell(*args)


def _backend(mode: str, lib) -> dict:
    return {"backend": mode.split()[0]} if lib is fusedrnn else {}


@pytest.mark.parametrize("mode", ERROR_MODES)
@pytest.mark.parametrize("name,desc,make", ERROR_CASES, ids=[f"{c[0]}-{c[1]}" for c in ERROR_CASES])
def test_cell_errors_match_torch(name, desc, make, mode, same_error):
    cls, extra = CELLS[name]
    x, hx = make(name)

    def run(lib):
        cell = getattr(lib, cls)(I, H, **extra, **_backend(mode, lib)).double()
        return _call_in(mode, lib, cell, x, hx)

    same_error(run)


@pytest.mark.parametrize("mode", ERROR_MODES)
def test_rnn_cell_unknown_nonlinearity_fails_at_forward(mode, same_error):
    def run(lib):  # the constructor accepts it, as torch.nn's does
        cell = lib.RNNCell(I, H, nonlinearity="gelu", **_backend(mode, lib))
        return _call_in(mode, lib, cell, torch.randn(2, I))

    same_error(run, RuntimeError)


def test_lstm_cell_promotes_a_cell_state_of_another_dtype(cpu_backend, rnn_pair):
    """torch.nn only multiplies c elementwise, so a float32 c with float64 weights is
    promoted rather than rejected."""
    ref, mod = _pair(rnn_pair, "LSTMCell", cpu_backend)
    hx = (_t(3, H), _t(3, H, dtype=torch.float32))
    assert_same(ref, mod, _t(3, I), hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_cell_empty_batch(name, cpu_backend, rnn_pair):
    ref, mod = _pair(rnn_pair, name, cpu_backend)
    x = torch.randn(0, I, dtype=torch.float64)
    for u, v in zip(flatten(mod(x)), flatten(ref(x)), strict=True):
        assert u.shape == v.shape


def test_rnn_cell_nonlinearity_is_read_at_every_call(cpu_backend, rnn_pair):
    ref, mod = _pair(rnn_pair, "RNNCell_tanh", cpu_backend)
    x, h = _t(3, I), _t(3, H)
    for cell in (ref, mod):
        cell.nonlinearity = "relu"
    out = mod(x, h)
    assert (out >= 0).all()
    torch.testing.assert_close(out, ref(x, h), rtol=1e-12, atol=1e-12)
