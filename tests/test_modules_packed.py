"""PackedSequence input: values, state order, gradients and round trips vs torch.nn,
and against an independent oracle (each sequence run alone, unpadded)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES
from torch.nn.utils.rnn import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)

import fusedrnn

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]

I, H, P = 3, 5, 2
LENGTHS = [4, 2, 5, 1, 2]  # unsorted, with ties, max not first


def _kwargs(mode, num_layers, bidirectional, batch_first=False, proj=0):
    cls, extra = MODES[mode]
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, **extra)
    if proj:
        kw["proj_size"] = proj
    return cls, kw


def _state(mode, num_layers, bidirectional, batch, proj=0, dtype=torch.float64):
    n = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(n, batch, proj or H, dtype=dtype)
    return (h0, torch.randn(n, batch, H, dtype=dtype)) if mode == "LSTM" else h0


def _flat_state(state):
    return list(state) if isinstance(state, tuple) else [state]


def _run(module, padded, lengths, hx, batch_first, enforce_sorted):
    """Pack, run, unpack; returns (padded output, out lengths, [h_n(, c_n)], grads of
    padded input, the initial state and every parameter)."""
    padded = padded.clone().requires_grad_()
    if hx is not None:
        hx = tuple(h.clone().requires_grad_() for h in _flat_state(hx))
        hx_arg = hx if len(hx) == 2 else hx[0]
    else:
        hx_arg = None
    packed = pack_padded_sequence(padded, lengths, batch_first, enforce_sorted)
    out, state = module(packed, hx_arg)
    assert isinstance(out, PackedSequence)
    assert out.batch_sizes is packed.batch_sizes or torch.equal(out.batch_sizes, packed.batch_sizes)
    for a, b in (
        (out.sorted_indices, packed.sorted_indices),
        (out.unsorted_indices, packed.unsorted_indices),
    ):
        assert (a is None and b is None) or torch.equal(a, b)
    unpacked, out_lengths = pad_packed_sequence(out, batch_first)
    states = _flat_state(state)
    gen = torch.Generator().manual_seed(7)
    loss = sum(
        (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [out.data, *states]
    )
    wrt = [padded, *(hx or ())] + list(module.parameters())
    grads = torch.autograd.grad(loss, wrt)
    return unpacked.detach(), out_lengths, [s.detach() for s in states], grads


def _assert_runs_equal(a, b, rtol, atol):
    out_a, len_a, st_a, gr_a = a
    out_b, len_b, st_b, gr_b = b
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=atol)
    assert torch.equal(len_a, len_b)
    assert len(st_a) == len(st_b)
    for x, y in zip(st_a, st_b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    for i, (x, y) in enumerate(zip(gr_a, gr_b, strict=True)):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=f"gradient {i}")


GRID = [
    pytest.param(
        mode,
        layers,
        bidir,
        batch_first,
        sorted_,
        proj,
        with_hx,
        id=f"{mode}-L{layers}-{'bi' if bidir else 'uni'}-{'bf' if batch_first else 'tf'}"
        f"-{'sorted' if sorted_ else 'unsorted'}-p{proj}-{'hx' if with_hx else 'nohx'}",
    )
    for mode, layers, bidir, batch_first, sorted_, proj, with_hx in itertools.product(
        MODES, (1, 2), (False, True), (False, True), (True, False), (0, P), (True, False)
    )
    if not (proj and mode != "LSTM")
]


@pytest.mark.parametrize(
    "mode,num_layers,bidirectional,batch_first,enforce_sorted,proj,with_hx", GRID
)
def test_packed_matches_torch(
    mode,
    num_layers,
    bidirectional,
    batch_first,
    enforce_sorted,
    proj,
    with_hx,
    cpu_backend,
    rnn_pair,
):
    cls, kw = _kwargs(mode, num_layers, bidirectional, batch_first, proj)
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **kw)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    batch, steps = len(lengths), max(lengths)
    padded = torch.randn(
        (batch, steps, I) if batch_first else (steps, batch, I), dtype=torch.float64
    )
    hx = _state(mode, num_layers, bidirectional, batch, proj) if with_hx else None
    _assert_runs_equal(
        _run(mod, padded, lengths, hx, batch_first, enforce_sorted),
        _run(ref, padded, lengths, hx, batch_first, enforce_sorted),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_float32_matches_torch(mode, bidirectional, cpu_backend, rnn_pair):
    cls, kw = _kwargs(mode, 2, bidirectional)
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, dtype=torch.float32, **kw)
    padded = torch.randn(max(LENGTHS), len(LENGTHS), I)
    hx = _state(mode, 2, bidirectional, len(LENGTHS), dtype=torch.float32)
    _assert_runs_equal(
        _run(mod, padded, LENGTHS, hx, False, False),
        _run(ref, padded, LENGTHS, hx, False, False),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("mode,proj", [(m, 0) for m in MODES] + [("LSTM", P)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_sequence_equals_running_it_alone(mode, bidirectional, proj, cpu_backend):
    """Independent of torch.nn: packing must equal running each sequence by itself,
    with h_n/c_n and the initial state in the caller's (unsorted) batch order."""
    cls, kw = _kwargs(mode, 2, bidirectional, proj=proj)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in LENGTHS]
    hx = _state(mode, 2, bidirectional, len(LENGTHS), proj)
    hx_arg = hx
    out, state = mod(pack_sequence(seqs, enforce_sorted=False), hx_arg)
    padded, lengths = pad_packed_sequence(out)
    assert lengths.tolist() == LENGTHS
    for b, seq in enumerate(seqs):
        alone_hx = tuple(h[:, b] for h in hx) if mode == "LSTM" else hx[:, b]
        alone_out, alone_state = mod(seq, alone_hx)  # unbatched 2-D input
        n = len(seq)
        torch.testing.assert_close(padded[:n, b], alone_out, rtol=1e-12, atol=1e-12)
        assert torch.all(padded[n:, b] == 0)
        for s, a in zip(_flat_state(state), _flat_state(alone_state), strict=True):
            torch.testing.assert_close(s[:, b], a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_pack_pad_round_trip_batch_first(mode, cpu_backend, rnn_pair):
    """pack_sequence → module → pad_packed_sequence(batch_first) equals torch.nn, and the
    padded dense run agrees with the packed run on every valid step of the forward
    direction (padding only follows the valid steps)."""
    cls, kw = _kwargs(mode, 2, False, batch_first=True)
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **kw)
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in LENGTHS]
    results = []
    for m in (ref, mod):
        out, _ = m(pack_sequence(seqs, enforce_sorted=False))
        results.append(pad_packed_sequence(out, batch_first=True, padding_value=-3.0))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    assert torch.equal(results[1][1], results[0][1])
    dense_out, _ = mod(pad_sequence(seqs, batch_first=True))
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(results[1][0][b, :n], dense_out[b, :n], rtol=1e-12, atol=1e-12)
        assert torch.all(results[1][0][b, n:] == -3.0)


@pytest.mark.parametrize("mode", MODES)
def test_all_lengths_equal_is_dense(mode, cpu_backend):
    cls, kw = _kwargs(mode, 2, True)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    x = torch.randn(4, 3, I, dtype=torch.float64)
    packed_out, packed_state = mod(pack_padded_sequence(x, [4, 4, 4]))
    dense_out, dense_state = mod(x)
    torch.testing.assert_close(pad_packed_sequence(packed_out)[0], dense_out, rtol=0, atol=1e-14)
    for a, b in zip(_flat_state(packed_state), _flat_state(dense_state), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_single_sequence_and_length_one(mode, cpu_backend, rnn_pair):
    cls, kw = _kwargs(mode, 1, True)
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, **kw)
    for lengths in ([1], [3], [1, 1, 1], [3, 1]):
        padded = torch.randn(max(lengths), len(lengths), I, dtype=torch.float64)
        _assert_runs_equal(
            _run(mod, padded, lengths, None, False, False),
            _run(ref, padded, lengths, None, False, False),
            rtol=1e-12,
            atol=1e-12,
        )
