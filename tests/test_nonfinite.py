"""NaN and ±inf flow through the fused layers as they do through torch.nn.

A model that diverges must show it: a non-finite value in the input, the initial state or a
weight has to reach the outputs and gradients it reaches in torch.nn, never be flattened into
a finite number by the fast activations. The property compared is the finite / non-finite
pattern of every output and every gradient (the values around a NaN are not comparable).

The triton case runs only under ``TRITON_INTERPRET=1`` (``.ci/run`` has a process for it).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from module_testlib import flatten

import fusedrnn

CELLS = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
SITES = ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
VALUES = [math.nan, math.inf, -math.inf]
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def _pair(cell, backend, I, H, layers, bidirectional):  # noqa: E741
    name, kw = CELLS[cell]
    kw = dict(kw, num_layers=layers, bidirectional=bidirectional)
    ref = getattr(torch.nn, name)(I, H, **kw)
    mod = getattr(fusedrnn, name)(I, H, backend=backend, **kw)
    mod.load_state_dict(ref.state_dict())
    return ref, mod


def _run(module, cell, x, h0, c0):
    """Outputs and every gradient (x, states, parameters) after one backward."""
    leaves = [t.clone().requires_grad_() for t in ((x, h0, c0) if cell == "lstm" else (x, h0))]
    x, *state = leaves
    outs = flatten(module(x, tuple(state) if cell == "lstm" else state[0]))  # [y, h_n(, c_n)]
    # a fixed, finite upstream gradient for every output, so each one is exercised
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    return [o.detach() for o in outs], list(grads)


def _check(cell, backend, site, value, where, T, B, I, H, layers, bidirectional):  # noqa: E741
    torch.manual_seed(1234)
    ref, mod = _pair(cell, backend, I, H, layers, bidirectional)
    dirs = 2 if bidirectional else 1
    x = torch.randn(T, B, I)
    h0 = torch.randn(layers * dirs, B, H)
    c0 = torch.randn(layers * dirs, B, H)
    if site == "c0" and cell != "lstm":
        site = "h0"
    if site in ("x", "h0", "c0"):
        target = {"x": x, "h0": h0, "c0": c0}[site]
        target.view(-1)[where % target.numel()] = value
    else:
        with torch.no_grad():
            for m in (ref, mod):
                p = getattr(m, site)
                p.view(-1)[where % p.numel()] = value
    want_out, want_grad = _run(ref, cell, x, h0, c0)
    got_out, got_grad = _run(mod, cell, x, h0, c0)
    n = len(want_out)  # [y, h_n(, c_n)], their gradients [x, h0(, c0)]
    gnames = ["x", "h0", "c0"][:n] + [name for name, _ in mod.named_parameters()]
    names = ["y", "h_n", "c_n"][:n] + [f"grad of {name}" for name in gnames]
    for name, w, g in zip(names, want_out + want_grad, got_out + got_grad, strict=True):
        if w is None:  # a gradient torch.nn leaves unset
            assert g is None or not g.any(), name
            continue
        assert torch.equal(torch.isfinite(g), torch.isfinite(w)), (
            f"{name}: finite pattern differs from torch.nn ({site}={value})\n"
            f"torch.nn {torch.isfinite(w).flatten().tolist()}\n"
            f"fusedrnn {torch.isfinite(g).flatten().tolist()}"
        )


_shapes = dict(
    T=st.integers(1, 4),
    B=st.integers(1, 3),
    I=st.integers(1, 5),
    H=st.integers(1, 5),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
)


@pytest.mark.skipif(INTERPRETING, reason="the CPU backends run in the ordinary test process")
@pytest.mark.parametrize(
    "backend", [b for b in ("reference", "cpu") if b in fusedrnn.available_backends("cpu")]
)
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    cell=st.sampled_from(list(CELLS)),
    site=st.sampled_from(SITES),
    value=st.sampled_from(VALUES),
    where=st.integers(0, 10**6),
    **_shapes,
)
def test_nonfinite_pattern_matches_torch_nn(backend, cell, site, value, where, **shape):
    _check(cell, backend, site, value, where, **shape)


@pytest.mark.skipif(not INTERPRETING, reason="triton runs on CPU tensors only when interpreted")
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(
    "site,value", [("x", math.nan), ("h0", math.inf), ("weight_hh_l0", -math.inf)]
)
def test_nonfinite_pattern_matches_torch_nn_triton(cell, site, value):
    if "triton" not in fusedrnn.available_backends("cpu"):
        pytest.skip("triton is not installed")
    _check(cell, "triton", site, value, 7, T=3, B=2, I=3, H=4, layers=1, bidirectional=False)
