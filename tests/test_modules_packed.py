"""PackedSequence input: values, state order, gradients and round trips vs torch.nn,
and against an independent oracle (each sequence run alone, unpadded)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MODES, TOLERANCES
from module_testlib import assert_same, flatten, mode_kwargs, mode_pair, module_inputs, random_state
from torch.nn.utils.rnn import (
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)
from torch.utils._pytree import tree_map_only

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

I, H, P = 3, 5, 2
LENGTHS = [4, 2, 5, 1, 2]  # unsorted, with ties, max not first


MODE_PROJ = [(m, 0) for m in MODES] + [("LSTM", P)]  # a projection only for the LSTM
# (dtype, num_layers, batch_first, enforce_sorted, with_hx, lengths): float64 over every
# layout, float32 for two time-major layers, unsorted, with an initial state; short batches
LAYOUTS = [(torch.float64, *c, LENGTHS) for c in itertools.product((1, 2), *[(False, True)] * 3)]
LAYOUTS += [(torch.float32, 2, False, False, True, LENGTHS)]
LAYOUTS += [(torch.float64, 1, False, False, False, n) for n in ([1], [3], [1, 1, 1], [3, 1])]


@pytest.mark.parametrize("mode,proj", MODE_PROJ)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype,num_layers,batch_first,enforce_sorted,with_hx,lengths", LAYOUTS)
def test_packed_matches_torch(
    mode, proj, bidirectional, dtype, num_layers, batch_first, enforce_sorted, with_hx, lengths,
    cpu_backend, rnn_pair,
):  # fmt: skip
    """The same results as torch.nn, in the input's packing, on a random padded batch."""
    layout = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ref, mod = mode_pair(
        rnn_pair, mode, I, H, proj=proj, backend=cpu_backend, dtype=dtype, **layout
    )
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    sizes = (max(lengths), len(lengths), I, H)
    padded, hx = module_inputs(mode, dtype, sizes, proj=proj, with_hx=with_hx, **layout)
    pack = lambda x: pack_padded_sequence(x, lengths, batch_first, enforce_sorted)  # noqa: E731
    assert_same(ref, mod, padded, hx, pack=pack, **TOLERANCES[dtype])


@pytest.mark.parametrize("mode,proj", MODE_PROJ)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [LENGTHS, [4, 4, 4]], ids=["ragged", "equal"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major-hx", "batch_first"])
def test_packed_equals_each_sequence_alone_and_the_padded_run(
    mode, proj, bidirectional, lengths, batch_first, cpu_backend
):
    """Independent of torch.nn: pack_sequence → module → pad_packed_sequence equals running
    each sequence alone, h_n/c_n and the initial state (given time-major) in the caller's
    (unsorted) batch order, with the padding value after each sequence; and equals the module
    run on the padded batch at every valid step (padding only follows them), with equal
    lengths in the final states too. Run dense, a ragged batch's backward direction reads the
    padding first: there one direction only."""
    layout = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    cls, kw = mode_kwargs(mode, proj, **layout)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in lengths]
    hx = None if batch_first else random_state(mode, (2 + 2 * bidirectional, len(lengths)), H, proj)
    out, state = mod(pack_sequence(seqs, enforce_sorted=False), hx)
    padded, padded_lengths = pad_packed_sequence(out, batch_first=True, padding_value=-3.0)
    assert padded_lengths.tolist() == lengths
    dense_out, dense_state = mod(pad_sequence(seqs, batch_first=batch_first), hx)
    dense_out = dense_out if batch_first else dense_out.transpose(0, 1)
    ragged = len(set(lengths)) > 1
    for b, seq in enumerate(seqs):
        n, alone_hx = len(seq), tree_map_only(torch.Tensor, lambda h, b=b: h[:, b], hx)
        got = [padded[b, :n], *(s[:, b] for s in flatten(state))]
        torch.testing.assert_close(got, flatten(mod(seq, alone_hx)), rtol=1e-12, atol=1e-12)
        assert torch.all(padded[b, n:] == -3.0)
        if not (ragged and bidirectional):
            torch.testing.assert_close(padded[b, :n], dense_out[b, :n], rtol=0, atol=1e-14)
    if not ragged:
        torch.testing.assert_close(flatten(state), flatten(dense_state), rtol=0, atol=1e-14)
