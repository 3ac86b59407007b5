"""LSTMCell / GRUCell / RNNCell against the torch.nn cells: values and gradients (batched,
unbatched, hx None, bias False); their construction is checked in
test_modules_construction.py, their errors in test_modules_errors.py."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES, TOLERANCES
from module_testlib import assert_outputs_close, assert_same, flatten, random_state

pytestmark = pytest.mark.usefixtures("one_thread")

CELLS = {mode: (cls + "Cell", kwargs) for mode, (cls, kwargs) in MODES.items()}
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
def test_cell_matches_torch(name, bias, shape, with_hx, dtype, cpu_backend, rnn_pair):
    batch, in_size, hidden = shape
    cls, extra = CELLS[name]
    ref, mod = rnn_pair(cls, in_size, hidden, bias=bias, backend=cpu_backend, dtype=dtype, **extra)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, in_size, dtype=dtype)
    hx = random_state(name, lead, hidden, dtype=dtype) if with_hx else None
    assert_same(ref, mod, x, hx, **TOLERANCES[dtype])


@pytest.mark.parametrize("name", CELLS)
def test_cell_loop_over_time(name, cpu_backend, rnn_pair):
    """Gradients through several chained steps, as a user's own loop would run them."""
    cls, extra = CELLS[name]
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **extra)
    xs = torch.randn(6, B, I, dtype=torch.float64)
    results = []
    for cell in (ref, mod):
        x, state, total = xs.clone().requires_grad_(), None, 0
        for t in range(x.shape[0]):
            state = cell(x[t], state)
            total = total + (flatten(state)[0] * (t + 1)).sum()
        results.append(torch.autograd.grad(total, [x, *cell.parameters()]))
    assert_outputs_close(results[1], results[0])
