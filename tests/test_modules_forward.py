"""Outputs and gradients of LSTM / GRU / RNN against torch.nn with identical weights.

Every output (output, h_n, c_n: values, shapes, dtypes, tuple structure) and every gradient
(input, h0, c0, each parameter) is compared, over the full argument grid, on every backend
that runs on CPU tensors.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MODES
from module_testlib import assert_same, flatten, mode_kwargs, mode_pair, random_state
from torch import nn

import fusedrnn

T, B, I, H, P = 3, 2, 3, 5, 2

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


MODE_PROJ = [(m, 0) for m in MODES] + [("LSTM", P)]  # a projection only for the LSTM
# float64 over the full grid; float32 with fewer layers, always with an initial state
DTYPE_LAYERS_HX = [(torch.float64, n, hx) for n in (1, 2, 3) for hx in (False, True)]
DTYPE_LAYERS_HX += [(torch.float32, n, True) for n in (1, 2)]


def make_inputs(
    mode, dtype, num_layers=2, bidirectional=True, batch_first=False, proj=0, batched=True,
    with_hx=True, sizes=(T, B, I, H),
):  # fmt: skip
    """Random input and (optionally) initial state, shaped as torch.nn expects.
    ``sizes`` = (seq_len, batch, input_size, hidden)."""
    seq_len, batch, input_size, hidden = sizes
    lead = (batch,) if batched else ()
    steps = ((batch, seq_len) if batch_first else (seq_len, batch)) if batched else (seq_len,)
    x = torch.randn(*steps, input_size, dtype=dtype)
    n = num_layers * (2 if bidirectional else 1)
    return x, random_state(mode, (n, *lead), hidden, proj, dtype=dtype) if with_hx else None


@pytest.mark.parametrize("mode,proj", MODE_PROJ, ids=[f"{m}-p{p}" for m, p in MODE_PROJ])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["3d", "2d"])
@pytest.mark.parametrize(
    "dtype,num_layers,with_hx",
    DTYPE_LAYERS_HX,
    ids=[f"{str(d)[6:]}-L{n}-{'hx' if h else 'nohx'}" for d, n, h in DTYPE_LAYERS_HX],
)
def test_grid(
    mode, proj, bidirectional, batch_first, bias, batched, dtype, num_layers, with_hx,
    cpu_backend, rnn_pair, tol,
):  # fmt: skip
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
    x, hx = make_inputs(mode, dtype, proj=proj, sizes=(seq_len, batch, input_size, hidden))
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
def test_weight_grads_without_input_grad_accumulate_and_clear(mode, cpu_backend, rnn_pair):
    ref, mod = mode_pair(rnn_pair, mode, I, H, num_layers=2, backend=cpu_backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for m in (ref, mod):
        for _ in range(2):  # gradients accumulate over two backward passes
            m(x)[0].square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), mod.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12, msg=name)
    mod.zero_grad()
    assert all(p.grad is None for p in mod.parameters())


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
