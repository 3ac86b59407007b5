"""Outputs and gradients of LSTM / GRU / RNN against torch.nn with identical weights.

Every output (output, h_n, c_n: values, shapes, dtypes, tuple structure) and every gradient
(input, h0, c0, each parameter) is compared, over the full argument grid, on every backend
that runs on CPU tensors.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES
from module_testlib import assert_same, flatten, mode_kwargs, mode_pair
from torch import nn

import fusedrnn

T, B, I, H, P = 3, 2, 3, 5, 2

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


def _grid(dtype, num_layers_options, hx_options=(False, True)):
    for case in itertools.product(
        MODES,
        num_layers_options,
        (False, True),
        (False, True),
        (True, False),
        (0, P),
        (True, False),
        hx_options,
    ):
        mode, layers, bidir, batch_first, bias, proj, batched, with_hx = case
        if proj and mode != "LSTM":
            continue
        yield pytest.param(
            dtype,
            case,
            id=f"{str(dtype)[6:]}-{mode}-L{layers}-{'bi' if bidir else 'uni'}"
            f"-{'bf' if batch_first else 'tf'}-{'bias' if bias else 'nobias'}-p{proj}"
            f"-{'3d' if batched else '2d'}-{'hx' if with_hx else 'nohx'}",
        )


def make_inputs(
    mode,
    dtype,
    num_layers=2,
    bidirectional=True,
    batch_first=False,
    proj=0,
    batched=True,
    with_hx=True,
    seq_len=T,
    batch=B,
    input_size=I,
    hidden=H,
):
    """Random input and (optionally) initial state, shaped as torch.nn expects."""
    dirs = 2 if bidirectional else 1
    h_out = proj if proj else hidden
    if batched:
        shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
        state = (num_layers * dirs, batch)
    else:
        shape = (seq_len, input_size)
        state = (num_layers * dirs,)
    x = torch.randn(shape, dtype=dtype)
    if not with_hx:
        return x, None
    h0 = torch.randn(*state, h_out, dtype=dtype)
    if mode == "LSTM":
        return x, (h0, torch.randn(*state, hidden, dtype=dtype))
    return x, h0


# float64 over the full grid; float32 with fewer layers, always with an initial state
@pytest.mark.parametrize(
    "dtype,case", [*_grid(torch.float64, (1, 2, 3)), *_grid(torch.float32, (1, 2), (True,))]
)
def test_grid(dtype, case, cpu_backend, rnn_pair, tol):
    mode, num_layers, bidirectional, batch_first, bias, proj, batched, with_hx = case
    layout = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ref, mod = mode_pair(
        rnn_pair, mode, I, H, proj=proj, bias=bias, backend=cpu_backend, dtype=dtype, **layout
    )
    x, hx = make_inputs(mode, dtype, proj=proj, batched=batched, with_hx=with_hx, **layout)
    assert_same(ref, mod, x, hx, **tol(dtype))


AWKWARD = [
    # (seq_len, batch, input_size, hidden, proj)
    (1, 1, 1, 1, 0),
    (1, 4, 2, 3, 0),
    (6, 1, 1, 7, 0),
    (5, 3, 1, 2, 1),
    (7, 5, 4, 9, 4),
    (2, 1, 3, 3, 2),
]


@pytest.mark.parametrize(
    "mode,seq_len,batch,input_size,hidden,proj",
    [(mode, *shape) for mode in MODES for shape in AWKWARD if mode == "LSTM" or not shape[-1]],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_awkward_shapes(
    mode, seq_len, batch, input_size, hidden, proj, dtype, cpu_backend, tol, rnn_pair
):
    cls, kwargs = mode_kwargs(mode, proj, num_layers=2, bidirectional=True)
    ref, mod = rnn_pair(cls, input_size, hidden, backend=cpu_backend, dtype=dtype, **kwargs)
    x, hx = make_inputs(
        mode, dtype, proj=proj, seq_len=seq_len, batch=batch, input_size=input_size, hidden=hidden
    )
    assert_same(ref, mod, x, hx, **tol(dtype))


@pytest.mark.parametrize("mode", MODES)
def test_weights_loaded_the_other_way(mode, cpu_backend):
    """fusedrnn's own weights loaded into torch.nn give torch.nn's results."""
    proj = 3 if mode == "LSTM" else 0
    cls, kwargs = mode_kwargs(mode, proj, num_layers=2, bidirectional=True)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kwargs).double()
    ref = getattr(nn, cls)(I, H, **kwargs).double()
    ref.load_state_dict(mod.state_dict())
    x, hx = make_inputs(mode, torch.float64, proj=proj)
    assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous_input_and_state(mode, cpu_backend, rnn_pair):
    ref, mod = mode_pair(rnn_pair, mode, I, H, num_layers=2, backend=cpu_backend)
    x = torch.randn(I, B, 2 * T, dtype=torch.float64).permute(2, 1, 0)[::2]  # [T, B, I]
    assert not x.is_contiguous()
    h0 = torch.randn(H, B, 2, dtype=torch.float64).permute(2, 1, 0)
    hx = (h0, torch.randn(2, B, 2 * H, dtype=torch.float64)[..., ::2]) if mode == "LSTM" else h0
    assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_no_grad_and_requires_grad_flags(mode, cpu_backend, rnn_pair):
    ref, mod = mode_pair(rnn_pair, mode, I, H, backend=cpu_backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        out, _ = mod(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-12, atol=1e-12)
    # frozen weights get no gradient (None, as in torch.nn); the others still match
    for m in (ref, mod):
        m.weight_ih_l0.requires_grad_(False)
    assert_same(ref, mod, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_input_without_grad_still_trains_weights(mode, cpu_backend, rnn_pair):
    ref, mod = mode_pair(rnn_pair, mode, I, H, num_layers=2, backend=cpu_backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for m in (ref, mod):
        m(x)[0].square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), mod.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_autocast_bfloat16_input_matches_torch(cpu_backend, rnn_pair):
    """Under CPU autocast torch.nn accepts a bfloat16 input with float32 weights."""
    ref, mod = rnn_pair("LSTM", I, H, num_layers=2, backend=cpu_backend, dtype=torch.float32)
    x = torch.randn(T, B, I).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_out, (ref_h, ref_c) = ref(x)
        out, (h, c) = mod(x)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=5e-2)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_state_forms(num_layers, cpu_backend, rnn_pair):
    """The state may be a list; torch.nn uses c only elementwise, so a float32 c in a
    float64 LSTM is promoted."""
    ref, mod = rnn_pair("LSTM", I, H, num_layers=num_layers, backend=cpu_backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.randn(num_layers, B, H, dtype=torch.float64)
    c = torch.randn(num_layers, B, H)
    for hx in ([h, c.double()], (h, c)):
        assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_equals_a_batch_of_one(mode, batch_first, cpu_backend):
    """The no-batch-dim contract of torch.nn's ModuleInfo tests, checked without torch.nn."""
    proj = P if mode == "LSTM" else 0
    cls, kw = mode_kwargs(mode, proj, num_layers=2, batch_first=batch_first, bidirectional=True)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    x, hx = make_inputs(mode, torch.float64, batch_first=batch_first, proj=proj, batched=False)
    out, state = mod(x, hx)
    batched_hx = tuple(h.unsqueeze(1) for h in hx) if mode == "LSTM" else hx.unsqueeze(1)
    out1, state1 = mod(x.unsqueeze(0 if batch_first else 1), batched_hx)
    torch.testing.assert_close(out, out1.squeeze(0 if batch_first else 1), rtol=0, atol=1e-14)
    for a, b in zip(flatten(state), flatten(state1), strict=True):
        torch.testing.assert_close(a, b.squeeze(1), rtol=0, atol=1e-14)


def test_rnn_nonlinearity_is_fixed_at_construction(cpu_backend, rnn_pair):
    """As in torch.nn, the mode is decided by the constructor; the attribute is a record."""
    ref, mod = rnn_pair("RNN", I, H, backend=cpu_backend, nonlinearity="tanh")
    for m in (ref, mod):
        m.nonlinearity = "relu"
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(mod(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
    assert (mod(x)[0] < 0).any()
