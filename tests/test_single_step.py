"""The single-step fast path: ``module(x_t, state)`` with T=1 and no autograd runs the whole
stack in one backend call (``stack_step``) and must equal torch.nn exactly as the layer path
does."""

import itertools
from unittest import mock

import pytest
import torch
from conftest import MODES
from module_testlib import assert_outputs_close, assert_same, flatten, random_state

import fusedrnn
import fusedrnn.modules
from fusedrnn import backends

STEP_BACKENDS = [
    b for b in fusedrnn.available_backends("cpu") if hasattr(backends.get(b), "stack_step")
]
pytestmark = pytest.mark.skipif(not STEP_BACKENDS, reason="no backend with a stack_step fast path")


def _rows(cases):
    return [pytest.param(cls, kw, id=f"{cls}{kw}") for cls, kw in cases]


CASES = _rows([*MODES.values(), ("LSTM", {"proj_size": 3})])  # (class name, keyword arguments)
CELLS = _rows((f"{cls}Cell", kw) for cls, kw in MODES.values())
TOL = {torch.float32: {"rtol": 2e-6, "atol": 2e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}
F32 = TOL[torch.float32]


@pytest.fixture(params=STEP_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64])
def dtype(request):
    return request.param


@pytest.fixture
def count_steps(monkeypatch):
    calls = []
    for name in STEP_BACKENDS:
        mod = backends.get(name)

        def counted(*args, _original=mod.stack_step, **kwargs):
            out = _original(*args, **kwargs)
            if out is not None:  # None: a shortcut call whose tensors did not fit ran nothing
                calls.append(1)
            return out

        monkeypatch.setattr(mod, "stack_step", counted)
    return calls


@pytest.mark.parametrize("cls,kw", CASES)
def test_step_matches_torch_nn(backend, cls, kw, dtype, count_steps, rnn_pair):
    grid = itertools.product([1, 3], [1, 3], [True, False], [False, True])
    for layers, batch, bias, batch_first in grid:
        ref, mod = rnn_pair(cls, 5, 7, layers, bias=bias, batch_first=batch_first, dtype=dtype,
                            backend=backend, **kw)  # fmt: skip
        before, s_ref, s_mod = len(count_steps), None, None
        with torch.no_grad():
            for _ in range(3):  # the state carried from call to call, as in sampling
                x = torch.randn(*((batch, 1) if batch_first else (1, batch)), 5, dtype=dtype)
                (y_ref, s_ref), (y_mod, s_mod) = ref(x, s_ref), mod(x, s_mod)
                assert_outputs_close(flatten((y_mod, s_mod)), flatten((y_ref, s_ref)), **TOL[dtype])
        assert len(count_steps) - before == 3, "the fast path was not taken"


def test_fast_path_not_taken_when_autograd_or_dropout_needs_the_layer_path(backend, count_steps):
    mod = fusedrnn.LSTM(5, 7, 2, dropout=0.5, backend=backend)
    x = torch.randn(1, 2, 5)
    with torch.no_grad():
        mod.train()(x)  # training with inter-layer dropout: the layer path draws the masks
    y, _ = mod.eval()(x)  # autograd on: the layer path records the graph
    assert y.requires_grad and count_steps == []
    with torch.no_grad():
        mod(x)
        assert len(count_steps) == 1
        fusedrnn.GRU(5, 7, bidirectional=True, backend=backend)(x)
    assert len(count_steps) == 1


@pytest.mark.parametrize("cls,kw", CELLS)
def test_cell_without_autograd_takes_the_step_path(backend, cls, kw, dtype, count_steps, rnn_pair):
    """A cell call under no_grad is a one-layer stack_step; batch 6 is above the small-row
    product's limit."""
    grid = itertools.product([None, 0, 1, 6], [7, 70], [True, False], [True, False])
    for batch, hidden, bias, with_state in grid:
        ref, mod = rnn_pair(cls, 5, hidden, bias=bias, dtype=dtype, backend=backend, **kw)
        lead = () if batch is None else (batch,)
        x = torch.randn(*lead, 5, dtype=dtype)
        state = random_state(cls, lead, hidden, dtype=dtype) if with_state else None
        before = len(count_steps)
        with torch.no_grad():
            out_ref, out_mod = ref(x, state), mod(x, state)
        assert_outputs_close(flatten(out_mod), flatten(out_ref), **TOL[dtype])
        assert len(count_steps) - before == 1, "the cell did not take the step path"


@pytest.mark.parametrize("cls,kw", CASES + CELLS)
def test_one_step_with_autograd_at_wide_hidden(backend, cls, kw, dtype, count_steps, tol, rnn_pair):
    """With autograd a single step runs the layer op, which multiplies unpacked weights (one
    step packs none): outputs and every gradient against torch.nn, at hidden 70."""
    layer = not cls.endswith("Cell")
    args = (5, 70, 2) if layer else (5, 70)
    ref, mod = rnn_pair(cls, *args, dtype=dtype, backend=backend, **kw)
    x = torch.randn(*((1, 6) if layer else (6,)), 5, dtype=dtype)
    assert_same(ref, mod, x, **tol(dtype))
    assert count_steps == []


@pytest.mark.skipif("cpu" not in STEP_BACKENDS, reason="the module shortcut calls the cpu backend")
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_module_shortcut_skips_the_general_path_only_for_valid_calls(
    cls, monkeypatch, count_steps, rnn_pair, same_error
):
    """A sampling call (one step, no autograd) goes from forward straight to stack_step
    (RNNBase._one_step); every other call, in particular an invalid one, takes the general
    path and fails there with torch.nn's message."""
    general = mock.Mock(wraps=fusedrnn.modules.rnn_stack)  # counts the general path's calls
    monkeypatch.setattr(fusedrnn.modules, "rnn_stack", general)
    ref, mod = rnn_pair(cls, 5, 7, 2, backend=None, dtype=torch.float32)
    of = {torch.nn: ref, fusedrnn: mod}

    def state(batch, dtype=torch.float32):
        return random_state(cls, (2, batch), 7, dtype=dtype)

    def same(x, s):
        torch.testing.assert_close(mod(x, s), ref(x, s), **F32)

    with torch.no_grad():
        same(torch.randn(1, 3, 5), state(3))
        assert (len(count_steps), general.call_count) == (1, 0)
        bad = [
            (torch.randn(1, 3, 5), state(4)),  # state batch != input batch
            (torch.randn(1, 3, 6), state(3)),  # feature size
            (torch.randn(1, 3, 5, dtype=torch.float64), state(3)),  # dtype vs weights
        ]
        for x, s in bad:
            same_error(lambda lib, x=x, s=s: of[lib](x, s), (RuntimeError, ValueError))
        # torch.nn names no tensor here (oneDNN: "unsupported data type"); the layer op does
        with pytest.raises(RuntimeError, match="h0 has dtype Double but x has dtype Float"):
            mod(torch.randn(1, 3, 5), state(3, torch.float64))
        # valid, but not a shortcut call: two steps, unbatched input, another backend
        same(torch.randn(2, 3, 5), state(3))
        same(torch.randn(1, 5), None)
        monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
        same(torch.randn(1, 3, 5), state(3))
    # the bad calls failed before reaching rnn_stack (the state dtype inside it); the
    # unbatched one reached stack_step through it
    assert (general.call_count, len(count_steps)) == (4, 2)


@pytest.mark.skipif("cpu" not in STEP_BACKENDS, reason="the cell shortcut calls the cpu backend")
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_shortcut_skips_the_general_path_for_batched_calls(
    cls, monkeypatch, count_steps, rnn_pair
):
    """A batched cell call without autograd goes from forward straight to stack_step
    (RNNCellBase._one_step), with or without a state; an unbatched one takes the general path
    (cell_step), which reaches stack_step too."""
    general = mock.Mock(wraps=fusedrnn.modules.cell_step)  # counts the general path's calls
    monkeypatch.setattr(fusedrnn.modules, "cell_step", general)
    ref, mod = rnn_pair(cls, 5, 7, backend=None, dtype=torch.float32)
    with torch.no_grad():
        h = random_state(cls, (3,), 7, dtype=torch.float32)
        for x, s in [(torch.randn(3, 5), None), (torch.randn(3, 5), h)]:
            torch.testing.assert_close(mod(x, s), ref(x, s), **F32)
        assert (len(count_steps), general.call_count) == (2, 0)
        x = torch.randn(5)
        torch.testing.assert_close(mod(x), ref(x), **F32)
    assert (len(count_steps), general.call_count) == (3, 1)
