"""The single-step fast path: ``module(x_t, state)`` with T=1 and no autograd runs the whole
stack in one backend call (``stack_step``) and must equal torch.nn exactly as the layer path
does."""

import itertools
from unittest import mock

import pytest
import torch
from conftest import MODES, TOLERANCES
from module_testlib import assert_outputs_close, assert_same, flatten, random_state

import fusedrnn
import fusedrnn.modules
from fusedrnn import backends

STEP_BACKENDS = [
    b for b in fusedrnn.available_backends("cpu") if hasattr(backends.get(b), "stack_step")
]
pytestmark = pytest.mark.skipif(not STEP_BACKENDS, reason="no backend with a stack_step fast path")


# (class name, keyword arguments): the modules, an LSTM with a projection, the cells
CASES = [*MODES.values(), ("LSTM", {"proj_size": 3}), *((c + "Cell", k) for c, k in MODES.values())]
CASES = [pytest.param(cls, kw, id=f"{cls}{kw}") for cls, kw in CASES]
TOL = {**TOLERANCES, torch.float32: {"rtol": 2e-6, "atol": 2e-6}}  # float32 tighter


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


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,kw", CASES)
def test_one_step_matches_torch_nn(backend, cls, kw, dtype, count_steps, rnn_pair):
    """Without autograd every call is one stack_step: a module's, over three calls carrying
    the state as sampling does (none at first: zeros, as in torch.nn); a cell's, one layer,
    unbatched (batch None) or batched, with or without a state (5 and 6 are above the
    small-row product's limit). Each module step also goes to stack_step directly with x as
    [B, I] (y then [B, Hout]), a layout only cells pass otherwise. With autograd a single step
    runs the layer op, which multiplies unpacked weights (one step packs none): outputs and
    every gradient against torch.nn, at hidden 70."""
    cell = cls.endswith("Cell")
    if cell:  # (size arguments, batch, with a state, batch_first)
        grid = itertools.product([(5, 7), (5, 70)], [None, 0, 1, 6], [True, False], [False])
    else:
        grid = itertools.product([(5, 7, 1), (5, 7, 3)], [1, 3, 5], [False], [False, True])
    for (args, batch, with_state, batch_first), bias in itertools.product(grid, [True, False]):
        layout = {} if cell else {"batch_first": batch_first}
        ref, mod = rnn_pair(cls, *args, bias=bias, dtype=dtype, backend=backend, **layout, **kw)
        lead = () if batch is None else (batch,)
        shape = lead if cell else (batch, 1) if batch_first else (1, batch)
        s_ref = s_mod = random_state(cls, lead, args[1], dtype=dtype) if with_state else None
        before, calls = len(count_steps), 1 if cell else 3
        with torch.no_grad():
            for _ in range(calls):
                x = torch.randn(*shape, 5, dtype=dtype)
                out_ref, out_mod = ref(x, s_ref), mod(x, s_mod)
                want, got = flatten(out_ref), flatten(out_mod)
                assert_outputs_close(got, want, **TOL[dtype])
                assert got[0].is_contiguous()
                if not cell:
                    h, c = s_mod if isinstance(s_mod, tuple) else (s_mod, None)
                    y, h_n, c_n = backends.get(backend).stack_step(
                        mod.mode.lower(), x.reshape(-1, 5), h, c, mod._flat_weights, args[2],
                        bias, kw.get("proj_size", 0),
                    )  # fmt: skip
                    assert y.is_contiguous() and (c_n is None) == (cls != "LSTM")
                    want[0] = want[0].reshape(y.shape)
                    direct = [t for t in (y, h_n, c_n) if t is not None]
                    assert_outputs_close(direct, want, **TOL[dtype])
                s_ref, s_mod = (out_ref, out_mod) if cell else (out_ref[1], out_mod[1])
        # a module's step counts twice: its own call and the direct one
        assert len(count_steps) - before == calls * (2 - cell), "the fast path was not taken"
    before = len(count_steps)
    ref, mod = rnn_pair(cls, 5, 70, *(() if cell else (2,)), dtype=dtype, backend=backend, **kw)
    x = torch.randn(*((6,) if cell else (1, 6)), 5, dtype=dtype)
    assert_same(ref, mod, x, **TOLERANCES[dtype])
    assert len(count_steps) == before


@pytest.mark.skipif("cpu" not in STEP_BACKENDS, reason="the shortcuts call the cpu backend")
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_shortcut_skips_the_general_path_only_for_its_calls(
    cls, monkeypatch, count_steps, rnn_pair, same_error
):
    """A sampling call (no autograd; a module's of one step, a cell's batched, with or without
    a state) goes from forward straight to stack_step (``_one_step``); every other call, in
    particular an invalid one, takes the general path (rnn_stack, cell_step) and fails there
    with torch.nn's message, and an unbatched one reaches stack_step through it."""
    cell = cls.endswith("Cell")
    name = "cell_step" if cell else "rnn_stack"
    general = mock.Mock(wraps=getattr(fusedrnn.modules, name))  # counts the general path's calls
    monkeypatch.setattr(fusedrnn.modules, name, general)
    ref, mod = rnn_pair(cls, 5, 7, *(() if cell else (2,)), backend=None, dtype=torch.float32)
    of = {torch.nn: ref, fusedrnn: mod}

    def state(batch, dtype=torch.float32):
        return random_state(cls, (batch,) if cell else (2, batch), 7, dtype=dtype)

    def same(x, s):
        torch.testing.assert_close(mod(x, s), ref(x, s), **TOL[torch.float32])

    with torch.no_grad():
        x = torch.randn(3, 5) if cell else torch.randn(1, 3, 5)
        shortcut = [(x, state(3)), *([(x, None)] if cell else [])]
        for x, s in shortcut:
            same(x, s)
        assert (len(count_steps), general.call_count) == (len(shortcut), 0)
        same(torch.randn(5) if cell else torch.randn(1, 5), None)
        if not cell:
            bad = [
                (torch.randn(1, 3, 5), state(4)),  # state batch != input batch
                (torch.randn(1, 3, 6), state(3)),  # feature size
                (torch.randn(1, 3, 5, dtype=torch.float64), state(3)),  # dtype vs weights
            ]
            for x, s in bad:
                same_error(lambda lib, x=x, s=s: of[lib](x, s), (RuntimeError, ValueError))
            # torch.nn names no tensor here (oneDNN: "unsupported data type"); the op does
            with pytest.raises(RuntimeError, match="h0 has dtype Double but x has dtype Float"):
                mod(torch.randn(1, 3, 5), state(3, torch.float64))
            # valid, but not a shortcut call: two steps, another backend
            same(torch.randn(2, 3, 5), state(3))
            # nor, reaching stack_step by no path, one with inter-layer dropout in training (the
            # layer path draws the masks) or a second direction; in evaluation the first one is
            x, mod.dropout = torch.randn(1, 3, 5), 0.5
            mod(x)
            rnn_pair(cls, 5, 7, bidirectional=True, backend=None, dtype=torch.float32)[1](x)
            assert len(count_steps) == 2
            mod.eval()(x)
            assert len(count_steps) == 3
            monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
            same(torch.randn(1, 3, 5), state(3))
    # the bad calls failed before reaching rnn_stack (the state dtype inside it)
    assert (len(count_steps), general.call_count) == ((3, 1) if cell else (3, 6))
