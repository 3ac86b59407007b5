"""Random configurations against torch.nn in float32: outputs, final states and the
gradients of the input, the initial state and every parameter, with the same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import MODES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from module_testlib import assert_mode_same

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = st.integers(1, 37)


@st.composite
def configs(draw):
    mode, hidden = draw(st.sampled_from(list(MODES))), draw(SIZE)
    proj = 0
    if mode == "LSTM" and hidden > 1 and draw(st.booleans()):
        proj = draw(st.integers(1, hidden - 1))
    batch, seq_len, packed = draw(SIZE), draw(SIZE), draw(st.booleans())
    lengths = None
    if packed:
        lengths = draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch))
        lengths[draw(st.integers(0, batch - 1))] = seq_len  # the padded length is the max
    flag, backend = st.booleans(), draw(st.sampled_from(["cpu", "reference"]))
    return dict(  # assert_mode_same's arguments
        mode=mode, backend=backend, sizes=(seq_len, batch, draw(SIZE), hidden), proj=proj,
        num_layers=draw(st.integers(1, 3)), bidirectional=draw(flag), batch_first=draw(flag),
        bias=draw(flag), lengths=lengths, enforce_sorted=packed and draw(flag), with_hx=draw(flag),
    )  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])  # fmt: skip
@given(c=configs())
def test_random_configuration_matches_torch_nn(c, rnn_pair):
    # the weights come from the global generator: one seed per example makes a failure replay
    seq_len, batch = c["sizes"][:2]
    seed = seq_len * 1000 + batch
    torch.manual_seed(seed)
    # the float32 tolerances, relative to the tensor's largest entry when that exceeds 1: a
    # weight gradient here sums up to 37 * 37 products through 3 layers, and two float32
    # summation orders of entries that large differ by more than 1e-5 (torch.nn's own float32
    # result is that far from its float64 one)
    gen = torch.Generator().manual_seed(seed)
    assert_mode_same(rnn_pair, dtype=torch.float32, gen=gen, scaled=True, what=str(c), **c)
