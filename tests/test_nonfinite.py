"""NaN and ±inf flow through the fused layers as they do through torch.nn.

A model that diverges must show it: a non-finite value in the input, the initial state or a
weight has to reach the outputs and gradients it reaches in torch.nn, never be flattened into
a finite number by the fast activations. The property compared is the finite / non-finite
pattern of every output and every gradient (the values around a NaN are not comparable).

The triton case runs only under ``TRITON_INTERPRET=1`` (``.ci/run`` has a process for it).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layer_cases import triton_interpreting
from module_testlib import mode_pair, outputs_and_grads

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
SITES = ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


def _check(rnn_pair, cell, backend, site, value, where, T, B, I, H, layers, bidirectional):
    torch.manual_seed(1234)
    kw = dict(backend=backend, dtype=torch.float32, num_layers=layers, bidirectional=bidirectional)
    ref, mod = mode_pair(rnn_pair, cell.upper(), I, H, **kw)
    lead = (layers * (2 if bidirectional else 1), B)
    inputs = {"x": torch.randn(T, B, I), "h0": torch.randn(*lead, H), "c0": torch.randn(*lead, H)}
    if site == "c0" and cell != "lstm":
        site = "h0"
    with torch.no_grad():
        for t in [inputs[site]] if site in inputs else [getattr(m, site) for m in (ref, mod)]:
            t.view(-1)[where % t.numel()] = value
    x, h0, c0 = inputs.values()
    hx = (h0, c0) if cell == "lstm" else h0
    # a seeded random (finite) linear loss on every output, the same for both modules
    _, want_out, want_grad = outputs_and_grads(ref, x, hx)
    _, got_out, got_grad = outputs_and_grads(mod, x, hx)
    n = len(want_out)  # [y, h_n(, c_n)], their gradients [x, h0(, c0)]
    gnames = ["x", "h0", "c0"][:n] + [name for name, _ in mod.named_parameters()]
    names = ["y", "h_n", "c_n"][:n] + [f"grad of {name}" for name in gnames]
    for name, w, g in zip(names, want_out + want_grad, got_out + got_grad, strict=True):
        w, g = torch.isfinite(w), torch.isfinite(g)
        assert torch.equal(g, w), f"{name} ({site}={value}): torch.nn {w}\nfusedrnn {g}"


@pytest.mark.skipif(triton_interpreting(), reason="the CPU backends run in the ordinary process")
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    cell=st.sampled_from(CELLS), site=st.sampled_from(SITES),
    value=st.sampled_from([math.nan, math.inf, -math.inf]), where=st.integers(0, 10**6),
    T=st.integers(1, 4), B=st.integers(1, 3), I=st.integers(1, 5), H=st.integers(1, 5),
    layers=st.integers(1, 2), bidirectional=st.booleans(),
)  # fmt: skip
def test_nonfinite_pattern_matches_torch_nn(
    rnn_pair, cpu_backend, cell, site, value, where, **shape
):
    _check(rnn_pair, cell, cpu_backend, site, value, where, **shape)


@pytest.mark.skipif(not triton_interpreting(), reason="triton runs on CPU tensors when interpreted")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "site,value", [("x", math.nan), ("h0", math.inf), ("weight_hh_l0", -math.inf)]
)
def test_nonfinite_pattern_matches_torch_nn_triton(rnn_pair, cell, site, value):
    _check(rnn_pair, cell, "triton", site, value, 7, 3, 2, 3, 4, layers=1, bidirectional=False)
