"""LSTMCell / GRUCell / RNNCell against the torch.nn cells: construction, parameters,
values and gradients (batched, unbatched, hx None, bias False) and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from module_testlib import assert_outputs_close, assert_same, flatten, param_list, random_state
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


# (batch, or None for unbatched input, input_size, hidden_size)
SHAPES = [(B, I, H), (None, I, H)]
AWKWARD = [(1, 1, 1), (1, 2, 7), (3, 1, 2), (5, 4, 9), (0, I, H)]
GRID = [
    *itertools.product(CELLS, (True, False), SHAPES, (True, False)),
    *itertools.product(CELLS, (True,), AWKWARD, (True, False)),
]


@pytest.mark.parametrize("name,bias,shape,with_hx", GRID)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_matches_torch(name, bias, shape, with_hx, dtype, cpu_backend, tol, rnn_pair):
    batch, in_size, hidden = shape
    cls, extra = CELLS[name]
    ref, mod = rnn_pair(cls, in_size, hidden, bias=bias, backend=cpu_backend, dtype=dtype, **extra)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, in_size, dtype=dtype)
    hx = random_state(name, lead, hidden, dtype=dtype) if with_hx else None
    assert_same(ref, mod, x, hx, **tol(dtype))


@pytest.mark.parametrize("name", CELLS)
def test_cell_loop_over_time(name, cpu_backend, rnn_pair):
    """Gradients through several chained steps, as a user's own loop would run them."""
    cls, extra = CELLS[name]
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **extra)
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
    assert_outputs_close(results[1], results[0])


# arguments after input_size and hidden_size: bias, [nonlinearity,] device, dtype
BY_POSITION = {
    "LSTMCell": [(False,), (True, "cpu", torch.float64)],
    "GRUCell": [(False,), (True, "cpu", torch.float64)],
    "RNNCell_tanh": [(False,), (False, "tanh", "cpu")],
    "RNNCell_relu": [(True, "relu"), (True, "relu", None, torch.float64)],
}


@pytest.mark.parametrize("name", CELLS)
def test_cell_parameters_init_and_repr(name):
    cls, extra = CELLS[name]
    calls = [((), {**extra, **kw}) for kw in ({}, {"bias": False}, {"dtype": torch.float64})]
    for args, kwargs in calls + [(args, {}) for args in BY_POSITION[name]]:
        torch.manual_seed(4)
        ref = getattr(nn, cls)(I, H, *args, **kwargs)
        torch.manual_seed(4)
        mod = getattr(fusedrnn, cls)(I, H, *args, **kwargs)
        assert param_list(mod, "shape", "dtype") == param_list(ref, "shape", "dtype")
        for a, b in zip(mod.parameters(), ref.parameters(), strict=True):
            assert torch.equal(a, b)
            assert a.abs().max() <= 1 / math.sqrt(H)
        assert list(mod.state_dict()) == list(ref.state_dict())
        assert repr(mod) == repr(ref)
        assert (mod.bias_ih is None) == (ref.bias_ih is None)
        for attr in ("input_size", "hidden_size", "bias", "nonlinearity"):
            assert getattr(mod, attr, None) == getattr(ref, attr, None)
    cell = getattr(fusedrnn, cls)(3, 4, backend="reference")
    assert cell.backend == "reference" and repr(cell) == f"{cls}(3, 4, backend='reference')"


def _t(*shape, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype)


CELL_ERRORS = [
    ("input size", lambda n: (_t(3, 11), random_state(n, (3,), H))),
    ("hidden size", lambda n: (_t(3, I), random_state(n, (3,), H + 1))),
    ("batch size", lambda n: (_t(3, I), random_state(n, (5,), H))),
    ("input 3-D", lambda n: (_t(2, 3, I), None)),
    ("input 0-D", lambda n: (_t(), None)),
    ("hidden 3-D", lambda n: (_t(3, I), random_state(n, (1, 3), H))),
    ("hidden 4-D", lambda n: (_t(3, I), random_state(n, (3, 1, 1), H))),
    ("unbatched input, batched hidden", lambda n: (_t(I), random_state(n, (3,), H))),
    ("batched input, unbatched hidden", lambda n: (_t(3, I), random_state(n, (), H))),
    ("input dtype", lambda n: (_t(3, I, dtype=torch.float32), None)),
    ("hidden dtype", lambda n: (_t(3, I), random_state(n, (3,), H, dtype=torch.float32))),
    ("unbatched input size", lambda n: (_t(I + 1), random_state(n, (), H))),
    ("unbatched hidden size", lambda n: (_t(I), random_state(n, (), H - 1))),
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


# (backend, autograd on): "reference" with autograd takes the general path; "cpu" without
# takes the shortcut of a sampling call (RNNCellBase._one_step), which must hand every bad
# call to the general path
ERROR_MODES = [("reference", True), ("cpu", False)]


def _run_cell(mode, lib, cls, *args, **kwargs):
    """``lib``'s ``cls(I, H, **kwargs)`` in float64 on ``args``, in one of ERROR_MODES."""
    backend, grad = mode
    if backend not in fusedrnn.available_backends("cpu"):
        pytest.skip(f"the {backend} backend is not built")
    kwargs = {**kwargs, "backend": backend} if lib is fusedrnn else kwargs
    with torch.set_grad_enabled(grad):
        return getattr(lib, cls)(I, H, **kwargs).double()(*args)


@pytest.mark.parametrize("mode", ERROR_MODES, ids=["reference", "cpu-no_grad"])
@pytest.mark.parametrize("name,desc,make", ERROR_CASES, ids=[f"{c[0]}-{c[1]}" for c in ERROR_CASES])
def test_cell_errors_match_torch(name, desc, make, mode, same_error):
    cls, extra = CELLS[name]
    x, hx = make(name)
    same_error(lambda lib: _run_cell(mode, lib, cls, x, hx, **extra))


@pytest.mark.parametrize("mode", ERROR_MODES, ids=["reference", "cpu-no_grad"])
def test_rnn_cell_unknown_nonlinearity_fails_at_forward(mode, same_error):
    x = _t(2, I)  # the constructor accepts "gelu", as torch.nn's does
    same_error(lambda lib: _run_cell(mode, lib, "RNNCell", x, nonlinearity="gelu"), RuntimeError)
