"""The single-step fast path: ``module(x_t, state)`` with T=1 and no autograd runs the whole
stack in one backend call (``stack_step``) and must equal torch.nn exactly as the layer path
does."""

import itertools

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import backends

STEP_BACKENDS = [
    b for b in fusedrnn.available_backends("cpu") if hasattr(backends.get(b), "stack_step")
]
pytestmark = pytest.mark.skipif(not STEP_BACKENDS, reason="no backend with a stack_step fast path")

CASES = [
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
    ("GRU", {}),
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
]
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def _states(s):
    return s if isinstance(s, tuple) else (s,)


@pytest.fixture
def count_steps(monkeypatch):
    calls = []
    for name in STEP_BACKENDS:
        mod = backends.get(name)
        original = mod.stack_step

        def counted(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(mod, "stack_step", counted)
    return calls


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c}{k}" for c, k in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_matches_torch_nn(backend, cls, kw, dtype, count_steps):
    for layers, batch, bias, batch_first in itertools.product(
        [1, 3], [1, 3], [True, False], [False, True]
    ):
        ref = getattr(nn, cls)(5, 7, layers, bias=bias, batch_first=batch_first, dtype=dtype, **kw)
        mod = getattr(fusedrnn, cls)(
            5, 7, layers, bias=bias, batch_first=batch_first, dtype=dtype, backend=backend, **kw
        )
        mod.load_state_dict(ref.state_dict())
        before = len(count_steps)
        s_ref = s_mod = None
        with torch.no_grad():
            for _ in range(3):  # the state carried from call to call, as in sampling
                x = torch.randn(batch, 1, 5, dtype=dtype)
                x = x if batch_first else x.transpose(0, 1).contiguous()
                y_ref, s_ref = ref(x, s_ref)
                y_mod, s_mod = mod(x, s_mod)
                for a, b in zip((y_ref, *_states(s_ref)), (y_mod, *_states(s_mod)), strict=True):
                    assert a.shape == b.shape
                    torch.testing.assert_close(b, a, rtol=TOL[dtype], atol=TOL[dtype])
        assert len(count_steps) - before == 3, "the fast path was not taken"


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_fast_path_not_taken_when_autograd_or_dropout_needs_the_layer_path(backend, count_steps):
    mod = fusedrnn.LSTM(5, 7, 2, dropout=0.5, backend=backend)
    x = torch.randn(1, 2, 5)
    mod.train()
    with torch.no_grad():
        mod(x)  # training with inter-layer dropout: the layer path draws the masks
    mod.eval()
    y, _ = mod(x)  # autograd on: the layer path records the graph
    assert y.requires_grad
    assert count_steps == []
    with torch.no_grad():
        mod(x)
    assert len(count_steps) == 1
    bidir = fusedrnn.GRU(5, 7, bidirectional=True, backend=backend)
    with torch.no_grad():
        bidir(x)
    assert len(count_steps) == 1
