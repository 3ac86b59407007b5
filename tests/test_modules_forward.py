"""Outputs and gradients of LSTM / GRU / RNN against torch.nn with identical weights.

Every output (output, h_n, c_n) and every gradient (input, h0, c0, each parameter)
is compared, over the full argument grid, on every backend that runs on CPU tensors.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES
from torch import nn

import fusedrnn

T, B, I, H, P = 3, 2, 3, 5, 2

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


def _grid(num_layers_options, hx_options=(False, True)):
    for mode, layers, bidir, batch_first, bias, proj, batched, with_hx in itertools.product(
        MODES,
        num_layers_options,
        (False, True),
        (False, True),
        (True, False),
        (0, P),
        (True, False),
        hx_options,
    ):
        if proj and mode != "LSTM":
            continue
        yield pytest.param(
            mode,
            layers,
            bidir,
            batch_first,
            bias,
            proj,
            batched,
            with_hx,
            id=f"{mode}-L{layers}-{'bi' if bidir else 'uni'}-{'bf' if batch_first else 'tf'}"
            f"-{'bias' if bias else 'nobias'}-p{proj}-{'3d' if batched else '2d'}"
            f"-{'hx' if with_hx else 'nohx'}",
        )


def make_inputs(
    mode,
    num_layers,
    bidirectional,
    batch_first,
    proj,
    batched,
    with_hx,
    dtype,
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


def _leaves(x, hx):
    x = x.clone().requires_grad_()
    if hx is None:
        return x, None, [x]
    if isinstance(hx, tuple):
        hx = tuple(h.clone().requires_grad_() for h in hx)
        return x, hx, [x, *hx]
    hx = hx.clone().requires_grad_()
    return x, hx, [x, hx]


def outputs_and_grads(module, x, hx, seed=1):
    """(outputs, grads): outputs = [output, h_n(, c_n)], grads w.r.t. the input,
    the initial state and every parameter (in named_parameters order), of a random
    linear function of all outputs (a fixed seed makes it the same for both modules)."""
    x, hx, wrt = _leaves(x, hx)
    out, state = module(x, hx)
    outs = [out, *state] if isinstance(state, tuple) else [out, state]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    params = list(module.parameters())
    trainable = [p for p in params if p.requires_grad]
    found = iter(torch.autograd.grad(loss, wrt + trainable, allow_unused=True))
    grads = [next(found) for _ in wrt] + [next(found) if p.requires_grad else None for p in params]
    return [o.detach() for o in outs], grads


def assert_same(ref_module, mod, x, hx, rtol, atol):
    ref_outs, ref_grads = outputs_and_grads(ref_module, x, hx)
    outs, grads = outputs_and_grads(mod, x, hx)
    assert len(outs) == len(ref_outs)
    for i, (a, b) in enumerate(zip(outs, ref_outs, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"output {i}"
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"output {i}")
    names = ["input"] + [f"state{i}" for i in range(len(ref_grads) - 1)]
    names[len(ref_grads) - len(list(ref_module.parameters())) :] = [
        n for n, _ in ref_module.named_parameters()
    ]
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        assert b is not None, name
        assert a is not None, f"no gradient for {name}"
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"grad of {name}")


def _check_grid(mode, num_layers, bidirectional, batch_first, bias, proj, batched, with_hx,
                backend, rnn_pair, dtype, tol):  # fmt: skip
    cls, extra = MODES[mode]
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                  bias=bias, **extra)  # fmt: skip
    if proj:
        kwargs["proj_size"] = proj
    ref, mod = rnn_pair(cls, I, H, backend=backend, dtype=dtype, **kwargs)
    x, hx = make_inputs(mode, num_layers, bidirectional, batch_first, proj, batched, with_hx, dtype)
    assert_same(ref, mod, x, hx, rtol=tol, atol=tol)


GRID_ARGS = "mode,num_layers,bidirectional,batch_first,bias,proj,batched,with_hx"


@pytest.mark.parametrize(GRID_ARGS, list(_grid((1, 2, 3))))
def test_float64_full_grid(mode, num_layers, bidirectional, batch_first, bias, proj, batched,
                           with_hx, cpu_backend, rnn_pair):  # fmt: skip
    _check_grid(mode, num_layers, bidirectional, batch_first, bias, proj, batched, with_hx,
                cpu_backend, rnn_pair, torch.float64, 1e-12)  # fmt: skip


@pytest.mark.parametrize(GRID_ARGS, list(_grid((1, 2), (True,))))
def test_float32_grid(mode, num_layers, bidirectional, batch_first, bias, proj, batched,
                      with_hx, cpu_backend, rnn_pair):  # fmt: skip
    _check_grid(mode, num_layers, bidirectional, batch_first, bias, proj, batched, with_hx,
                cpu_backend, rnn_pair, torch.float32, 1e-5)  # fmt: skip


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
    cls, extra = MODES[mode]
    kwargs = dict(num_layers=2, bidirectional=True, **extra)
    if proj:
        kwargs["proj_size"] = proj
    ref, mod = rnn_pair(cls, input_size, hidden, backend=cpu_backend, dtype=dtype, **kwargs)
    x, hx = make_inputs(
        mode,
        2,
        True,
        False,
        proj,
        True,
        True,
        dtype,
        seq_len=seq_len,
        batch=batch,
        input_size=input_size,
        hidden=hidden,
    )
    assert_same(ref, mod, x, hx, **tol(dtype))


@pytest.mark.parametrize("mode", MODES)
def test_weights_loaded_the_other_way(mode, cpu_backend):
    """fusedrnn's own weights loaded into torch.nn give torch.nn's results."""
    cls, extra = MODES[mode]
    kwargs = dict(num_layers=2, bidirectional=True, **extra)
    if mode == "LSTM":
        kwargs["proj_size"] = 3
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kwargs).double()
    ref = getattr(nn, cls)(I, H, **kwargs).double()
    ref.load_state_dict(mod.state_dict())
    x, hx = make_inputs(mode, 2, True, False, kwargs.get("proj_size", 0), True, True, torch.float64)
    assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous_input_and_state(mode, cpu_backend, rnn_pair):
    cls, extra = MODES[mode]
    ref, mod = rnn_pair(cls, I, H, num_layers=2, backend=cpu_backend, **extra)
    x = torch.randn(I, B, 2 * T, dtype=torch.float64).permute(2, 1, 0)[::2]  # [T, B, I]
    assert not x.is_contiguous()
    h0 = torch.randn(H, B, 2, dtype=torch.float64).permute(2, 1, 0)
    hx = (h0, torch.randn(2, B, 2 * H, dtype=torch.float64)[..., ::2]) if cls == "LSTM" else h0
    assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_output_shapes(mode, cpu_backend):
    cls, extra = MODES[mode]
    for bidir, batch_first, proj in itertools.product((False, True), (False, True), (0, 2)):
        if proj and cls != "LSTM":
            continue
        kw = {"proj_size": proj} if proj else {}
        m = getattr(fusedrnn, cls)(
            I,
            H,
            3,
            batch_first=batch_first,
            bidirectional=bidir,
            backend=cpu_backend,
            **extra,
            **kw,
        )
        d, h_out = (2 if bidir else 1), (proj or H)
        x = torch.randn((B, T, I) if batch_first else (T, B, I))
        out, state = m(x)
        assert out.shape == ((B, T, d * h_out) if batch_first else (T, B, d * h_out))
        h_n = state[0] if cls == "LSTM" else state
        assert h_n.shape == (3 * d, B, h_out)
        if cls == "LSTM":
            assert state[1].shape == (3 * d, B, H)
            assert isinstance(state, tuple) and len(state) == 2
        out, state = m(torch.randn(T, I))
        assert out.shape == (T, d * h_out)
        assert (state[0] if cls == "LSTM" else state).shape == (3 * d, h_out)


@pytest.mark.parametrize("mode", MODES)
def test_no_grad_and_requires_grad_flags(mode, cpu_backend, rnn_pair):
    cls, extra = MODES[mode]
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **extra)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        out, _ = mod(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-12, atol=1e-12)
    # frozen weights get no gradient; the others still match torch.nn
    for m in (ref, mod):
        m.weight_ih_l0.requires_grad_(False)
    ref_outs, ref_grads = outputs_and_grads(ref, x, None)
    outs, grads = outputs_and_grads(mod, x, None)
    assert grads[1] is None and ref_grads[1] is None
    for a, b in zip(grads[2:], ref_grads[2:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_input_without_grad_still_trains_weights(mode, cpu_backend, rnn_pair):
    cls, extra = MODES[mode]
    ref, mod = rnn_pair(cls, I, H, num_layers=2, backend=cpu_backend, **extra)
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


def test_lstm_cell_state_of_narrower_dtype_is_promoted(cpu_backend, rnn_pair):
    """torch.nn uses c only elementwise: a float32 c in a float64 LSTM is promoted."""
    ref, mod = rnn_pair("LSTM", I, H, num_layers=2, backend=cpu_backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = (torch.randn(2, B, H, dtype=torch.float64), torch.randn(2, B, H))
    assert_same(ref, mod, x, hx, rtol=1e-12, atol=1e-12)


def test_lstm_state_as_a_list(cpu_backend, rnn_pair):
    ref, mod = rnn_pair("LSTM", I, H, backend=cpu_backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h, c = torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    out, (h_n, c_n) = mod(x, [h, c])
    ref_out, (ref_h, ref_c) = ref(x, [h, c])
    for a, b in ((out, ref_out), (h_n, ref_h), (c_n, ref_c)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_equals_a_batch_of_one(mode, batch_first, cpu_backend):
    """The no-batch-dim contract of torch.nn's ModuleInfo tests, checked without torch.nn."""
    cls, extra = MODES[mode]
    kw = {"proj_size": P} if mode == "LSTM" else {}
    mod = getattr(fusedrnn, cls)(
        I, H, 2, batch_first=batch_first, bidirectional=True, backend=cpu_backend, **extra, **kw
    ).double()
    x, hx = make_inputs(
        mode, 2, True, batch_first, kw.get("proj_size", 0), False, True, torch.float64
    )
    out, state = mod(x, hx)
    batched_hx = tuple(h.unsqueeze(1) for h in hx) if mode == "LSTM" else hx.unsqueeze(1)
    out1, state1 = mod(x.unsqueeze(0 if batch_first else 1), batched_hx)
    torch.testing.assert_close(out, out1.squeeze(0 if batch_first else 1), rtol=0, atol=1e-14)
    for a, b in zip(
        state if mode == "LSTM" else [state], state1 if mode == "LSTM" else [state1], strict=True
    ):
        torch.testing.assert_close(a, b.squeeze(1), rtol=0, atol=1e-14)


def test_rnn_nonlinearity_is_fixed_at_construction(cpu_backend, rnn_pair):
    """As in torch.nn, the mode is decided by the constructor; the attribute is a record."""
    ref, mod = rnn_pair("RNN", I, H, backend=cpu_backend, nonlinearity="tanh")
    for m in (ref, mod):
        m.nonlinearity = "relu"
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(mod(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
    assert (mod(x)[0] < 0).any()
