"""PackedSequence input: values, state order, gradients and round trips vs torch.nn,
and against an independent oracle (each sequence run alone, unpadded)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES, TOLERANCES
from module_testlib import assert_same, flatten, mode_kwargs, mode_pair, random_state
from torch.nn.utils.rnn import (
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


def _state(mode, num_layers, bidirectional, batch, proj=0, dtype=torch.float64):
    lead = (num_layers * (2 if bidirectional else 1), batch)
    return random_state(mode, lead, H, proj, dtype=dtype)


def _assert_packed_same(ref, mod, lengths, hx=None, batch_first=False, enforce_sorted=False):
    """``mod`` equals ``ref`` (and keeps the input's packing) on a random padded batch of
    ``lengths``, packed, in the modules' dtype."""
    batch, steps, dtype = len(lengths), max(lengths), ref.weight_ih_l0.dtype
    padded = torch.randn((batch, steps, I) if batch_first else (steps, batch, I), dtype=dtype)

    def pack(x):
        return pack_padded_sequence(x, lengths, batch_first, enforce_sorted)

    assert_same(ref, mod, padded, hx, pack=pack, **TOLERANCES[dtype])


MODE_PROJ = [(m, 0) for m in MODES] + [("LSTM", P)]  # a projection only for the LSTM
# (dtype, num_layers, batch_first, enforce_sorted, with_hx): float64 over every layout,
# float32 for two time-major layers, unsorted, with an initial state
LAYOUTS = [(torch.float64, *c) for c in itertools.product((1, 2), *[(False, True)] * 3)]
LAYOUTS += [(torch.float32, 2, False, False, True)]


@pytest.mark.parametrize("mode,proj", MODE_PROJ)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype,num_layers,batch_first,enforce_sorted,with_hx", LAYOUTS)
def test_packed_matches_torch(
    mode, proj, bidirectional, dtype, num_layers, batch_first, enforce_sorted, with_hx,
    cpu_backend, rnn_pair,
):  # fmt: skip
    layout = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ref, mod = mode_pair(
        rnn_pair, mode, I, H, proj=proj, backend=cpu_backend, dtype=dtype, **layout
    )
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    hx = _state(mode, num_layers, bidirectional, len(lengths), proj, dtype) if with_hx else None
    _assert_packed_same(ref, mod, lengths, hx, batch_first, enforce_sorted)


@pytest.mark.parametrize("mode,proj", MODE_PROJ)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_sequence_equals_running_it_alone(mode, bidirectional, proj, cpu_backend):
    """Independent of torch.nn: packing must equal running each sequence by itself,
    with h_n/c_n and the initial state in the caller's (unsorted) batch order."""
    cls, kw = mode_kwargs(mode, proj, num_layers=2, bidirectional=bidirectional)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in LENGTHS]
    hx = _state(mode, 2, bidirectional, len(LENGTHS), proj)
    out, state = mod(pack_sequence(seqs, enforce_sorted=False), hx)
    padded, lengths = pad_packed_sequence(out)
    assert lengths.tolist() == LENGTHS
    for b, seq in enumerate(seqs):
        alone_hx = tuple(h[:, b] for h in hx) if mode == "LSTM" else hx[:, b]
        alone_out, alone_state = mod(seq, alone_hx)  # unbatched 2-D input
        n = len(seq)
        torch.testing.assert_close(padded[:n, b], alone_out, rtol=1e-12, atol=1e-12)
        assert torch.all(padded[n:, b] == 0)
        for s, a in zip(flatten(state), flatten(alone_state), strict=True):
            torch.testing.assert_close(s[:, b], a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_pack_pad_round_trip_batch_first(mode, cpu_backend, rnn_pair):
    """pack_sequence → module → pad_packed_sequence(batch_first) equals torch.nn, and the
    padded dense run agrees with the packed run on every valid step of the forward
    direction (padding only follows the valid steps)."""
    ref, mod = mode_pair(rnn_pair, mode, I, H, backend=cpu_backend, num_layers=2, batch_first=True)
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
    cls, kw = mode_kwargs(mode, num_layers=2, bidirectional=True)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    x = torch.randn(4, 3, I, dtype=torch.float64)
    packed_out, packed_state = mod(pack_padded_sequence(x, [4, 4, 4]))
    dense_out, dense_state = mod(x)
    torch.testing.assert_close(pad_packed_sequence(packed_out)[0], dense_out, rtol=0, atol=1e-14)
    for a, b in zip(flatten(packed_state), flatten(dense_state), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_single_sequence_and_length_one(mode, cpu_backend, rnn_pair):
    ref, mod = mode_pair(rnn_pair, mode, I, H, backend=cpu_backend, bidirectional=True)
    for lengths in ([1], [3], [1, 1, 1], [3, 1]):
        _assert_packed_same(ref, mod, lengths)
