"""Inter-layer dropout: applied only in training, between layers (never after the last),
read from ``module.dropout`` at every call, and drawn exactly as torch.nn draws it."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import MODES
from module_testlib import assert_outputs_close, assert_same, mode_pair, outputs_and_grads
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

T, B, I, H = 4, 3, 3, 5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers,p", [(3, 0.3), (3, 0.7), (3, 1.0), (1, 0.9)])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last")
def test_training_dropout_draws_like_torch(
    mode, bidirectional, num_layers, p, packed, cpu_backend, rnn_pair
):
    """With the same seed, torch.nn and fusedrnn drop the same elements: the masks are
    drawn once per layer output (both directions together), as ATen does. ``module.dropout``
    is read at every call, and dropout is off in evaluation."""
    layout = dict(num_layers=num_layers, dropout=p, bidirectional=bidirectional)
    ref, mod = mode_pair(rnn_pair, mode, I, H, backend=cpu_backend, **layout)
    x = torch.randn(T, B, I, dtype=torch.float64)
    pack = partial(pack_padded_sequence, lengths=[2, 4, 3], enforce_sorted=False)
    pack = pack if packed else None

    def outputs(module, seed=11):
        return outputs_and_grads(module, x, pack=pack, draw_seed=seed)[1]

    assert_same(ref, mod, x, rtol=1e-12, atol=1e-12, pack=pack, draw_seed=11)
    outs, other_seed = outputs(mod), outputs(mod, 12)
    assert all(torch.isfinite(o).all() for o in outs)
    # nothing random is left where p=1 zeroes every inter-layer activation, or where there
    # is a single layer: never dropout after the last
    if p == 1 or num_layers == 1:
        assert_outputs_close(other_seed, outs, rtol=0, atol=0)
    else:
        assert not torch.allclose(other_seed[0], outs[0])
    no_dropout = outputs(mod.eval())
    assert_outputs_close(no_dropout, outputs(ref.eval()))
    mod.train().dropout = 0.0  # in training with p=0: deterministic
    assert_outputs_close(outputs(mod), no_dropout, rtol=0, atol=0)
    mod.dropout = p
    assert_outputs_close(outputs(mod), outs, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.25, 0.6])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_statistics(p, bidirectional, cpu_backend):
    """Make layer 0 pass its input through (relu, identity input weights, no
    recurrence) and layer 1 likewise: the output is then exactly dropout(x). Check
    the fraction of zeros, the scaling of survivors and the mean over many draws."""
    n = 8
    layout = dict(num_layers=2, dropout=p, bidirectional=bidirectional)
    mod = fusedrnn.RNN(n, n, nonlinearity="relu", backend=cpu_backend, **layout).double()
    d = 2 if bidirectional else 1
    with torch.no_grad():
        for name, w in mod.named_parameters():
            w.zero_()
            if name.startswith("weight_ih"):
                w[:, :n] = torch.eye(n)  # reads the forward direction of the layer below
    x = torch.rand(6, 5, n, dtype=torch.float64) + 0.5  # positive: relu is the identity
    # [200, 6, 5, n]; with two directions both halves read the same dropped features
    draws = torch.stack([mod(x)[0][..., :n] for _ in range(200)])
    survivors = draws != 0
    frac_zero = 1 - survivors.double().mean().item()
    assert abs(frac_zero - p) < 5 * math.sqrt(p * (1 - p) / draws.numel())
    scaled = (x / (1 - p)).expand_as(draws)
    torch.testing.assert_close(draws[survivors], scaled[survivors], rtol=1e-12, atol=0)
    # E[dropout(x)] = x, per element, within 6 standard errors
    std_err = x * math.sqrt(p / (1 - p) / draws.shape[0])
    assert ((draws.mean(0) - x).abs() <= 6 * std_err).all()
    # masks differ between time steps and batch rows
    masks = survivors[0].reshape(-1, n)
    assert len({tuple(row.tolist()) for row in masks}) > masks.shape[0] // 2
    mod.eval()
    torch.testing.assert_close(mod(x)[0], x.repeat(1, 1, d), rtol=1e-12, atol=0)
