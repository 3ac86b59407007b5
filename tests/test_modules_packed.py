"""PackedSequence input against an independent oracle: each sequence run alone, unpadded
(against torch.nn: test_modules_forward.py)."""

from __future__ import annotations

import pytest
import torch
from module_testlib import LENGTHS, MODE_PROJ, flatten, mode_kwargs, random_state
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence, pad_sequence
from torch.utils._pytree import tree_map_only

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

I, H = 3, 5


@pytest.mark.parametrize("mode,proj", MODE_PROJ)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [LENGTHS, [4, 4, 4]], ids=["ragged", "equal"])
@pytest.mark.parametrize(
    "batch_first,with_hx", [(False, True), (True, False), (True, True)],
    ids=["time_major-hx", "batch_first", "batch_first-hx"],
)  # fmt: skip
def test_packed_equals_each_sequence_alone_and_the_padded_run(
    mode, proj, bidirectional, lengths, batch_first, with_hx, cpu_backend
):
    """Independent of torch.nn: pack_sequence → module → pad_packed_sequence equals running
    each sequence alone, unbatched (the no-batch-dim contract of torch.nn's ModuleInfo tests),
    h_n/c_n and the initial state (where given) in the caller's (unsorted) batch order, with
    the padding value after each sequence; and equals the module run on the padded batch at
    every valid step (padding only follows them), with equal lengths in the final states too.
    Run dense, a ragged batch's backward direction reads the padding first: there one
    direction only."""
    layout = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    cls, kw = mode_kwargs(mode, proj, **layout)
    mod = getattr(fusedrnn, cls)(I, H, backend=cpu_backend, **kw).double()
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in lengths]
    lead = (2 + 2 * bidirectional, len(lengths))
    hx = random_state(mode, lead, H, proj) if with_hx else None
    out, state = mod(pack_sequence(seqs, enforce_sorted=False), hx)
    padded, padded_lengths = pad_packed_sequence(out, batch_first=True, padding_value=-3.0)
    assert padded_lengths.tolist() == lengths
    dense_out, dense_state = mod(pad_sequence(seqs, batch_first=batch_first), hx)
    dense_out = dense_out if batch_first else dense_out.transpose(0, 1)
    ragged = len(set(lengths)) > 1
    for b, seq in enumerate(seqs):
        n, alone_hx = len(seq), tree_map_only(torch.Tensor, lambda h, b=b: h[:, b], hx)
        got = [padded[b, :n], *(s[:, b] for s in flatten(state))]
        torch.testing.assert_close(got, flatten(mod(seq, alone_hx)), rtol=0, atol=1e-14)
        assert torch.all(padded[b, n:] == -3.0)
        if not (ragged and bidirectional):
            torch.testing.assert_close(padded[b, :n], dense_out[b, :n], rtol=0, atol=1e-14)
    if not ragged:
        torch.testing.assert_close(flatten(state), flatten(dense_state), rtol=0, atol=1e-14)
