"""Run a torch.nn module and its fusedrnn twin (see conftest's ``rnn_pair``) on the same
input and compare the result's structure, every output and every gradient: of the input,
of the initial state and of each parameter."""

from __future__ import annotations

from functools import partial

import torch
from conftest import MODES, TOLERANCES
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._pytree import tree_map_only

LENGTHS = [4, 2, 5, 1, 2]  # a batch's sequence lengths: unsorted, with ties, max not first
MODE_PROJ = [(m, 0) for m in MODES] + [("LSTM", 2)]  # (mode, proj_size): a projection for the LSTM


def flatten(result) -> list[torch.Tensor]:
    """A module's or a cell's result (or a state) as a flat list of tensors:
    [output, h_n(, c_n)], [h(, c)]; a PackedSequence counts as its ``data``."""
    if isinstance(result, PackedSequence):
        return [result.data]
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for item in result for t in flatten(item)]


def _structure(result):
    if isinstance(result, PackedSequence | torch.Tensor):
        return type(result).__name__
    return type(result).__name__, [_structure(item) for item in result]


def outputs_and_grads(module, x, hx=None, *, pack=None, seed=1, draw_seed=None):
    """(result structure, outputs, grads) of ``module(x, hx)``, or of
    ``module(pack(x), hx)``, after ``torch.manual_seed(draw_seed)`` where given (dropout
    masks). The grads are those of the input, of each state tensor and of every parameter
    (None for a frozen one), under a seeded random linear loss on every output, the same for
    any module given the same seed."""
    x = x.detach().clone().requires_grad_()
    hx = tree_map_only(torch.Tensor, lambda t: t.detach().clone().requires_grad_(), hx)
    inp = x if pack is None else pack(x)
    if draw_seed is not None:
        torch.manual_seed(draw_seed)
    result = module(inp, hx)
    if pack is not None:  # the output keeps the input's batch layout and order
        out = result[0]
        for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, b = getattr(out, name), getattr(inp, name)
            assert (a is None and b is None) or torch.equal(a, b), name
    outs = flatten(result)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    params = list(module.parameters())
    trainable = [p for p in params if p.requires_grad]
    wrt = [x] if hx is None else [x, *flatten(hx)]
    found = iter(torch.autograd.grad(loss, wrt + trainable))
    grads = [next(found) for _ in wrt] + [next(found) if p.requires_grad else None for p in params]
    return _structure(result), [o.detach() for o in outs], grads


def assert_all_close(got, want, names, *, rtol, atol, scaled=False):
    """Tensor by tensor, with the same shape and dtype; None exactly where ``want`` has None.
    ``scaled`` divides both by the expected tensor's largest magnitude where that exceeds 1."""
    assert len(got) == len(want) == len(names), (len(got), len(want))
    for name, a, b in zip(names, got, want, strict=True):
        if b is None:
            assert a is None, f"{name} should be None"
            continue
        assert a is not None, f"{name} missing"
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape)
        scale = max(1.0, b.abs().max().item()) if scaled and b.numel() else 1.0
        torch.testing.assert_close(
            a / scale, b / scale, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


def assert_outputs_close(got, want, *, rtol=1e-12, atol=1e-12):
    """Two lists of outputs (see ``flatten``), by default to float64 round-off."""
    assert_all_close(got, want, [f"output {i}" for i in range(len(want))], rtol=rtol, atol=atol)


def assert_same(
    ref, mod, x, hx=None, *, rtol, atol, pack=None, scaled=False, what="", draw_seed=None
):
    """``mod`` gives ``ref``'s result structure, outputs and gradients on ``x`` and ``hx``."""
    run = dict(pack=pack, draw_seed=draw_seed)
    ref_structure, ref_outs, ref_grads = outputs_and_grads(ref, x, hx, **run)
    structure, outs, grads = outputs_and_grads(mod, x, hx, **run)
    assert structure == ref_structure, what
    params = [n for n, _ in ref.named_parameters()]
    states = [f"state {i}" for i in range(len(ref_grads) - 1 - len(params))]
    names = [f"output {i} {what}" for i in range(len(ref_outs))]
    assert_all_close(outs, ref_outs, names, rtol=rtol, atol=atol, scaled=scaled)
    names = [f"grad of {n} {what}" for n in ["input", *states, *params]]
    assert_all_close(grads, ref_grads, names, rtol=rtol, atol=atol, scaled=scaled)


def random_state(mode: str, lead, hidden: int, proj: int = 0, *, dtype=torch.float64, gen=None):
    """A random initial state ``h`` of shape ``(*lead, proj or hidden)``; for an LSTM (or
    LSTMCell) ``(h, c)`` with ``c`` of shape ``(*lead, hidden)``."""
    h = torch.randn(*lead, proj or hidden, dtype=dtype, generator=gen)
    if not mode.startswith("LSTM"):
        return h
    return h, torch.randn(*lead, hidden, dtype=dtype, generator=gen)


def module_input(cls: str) -> torch.Tensor:
    """A float32 input for ``cls(3, hidden)``: [B=2, 3] for a cell, [T=5, B=2, 3] otherwise."""
    return torch.randn(2, 3) if cls.endswith("Cell") else torch.randn(5, 2, 3)


def mode_kwargs(mode: str, proj: int = 0, **kwargs) -> tuple[str, dict]:
    """(class name, constructor keyword arguments) for one of conftest's MODES, with
    ``proj_size=proj`` where ``proj`` is nonzero."""
    cls, extra = MODES[mode]
    return cls, {**extra, **kwargs, **({"proj_size": proj} if proj else {})}


def mode_pair(rnn_pair, mode: str, *args, proj: int = 0, **kwargs):
    """conftest's ``rnn_pair`` for one of its MODES (see ``mode_kwargs``)."""
    cls, kw = mode_kwargs(mode, proj, **kwargs)
    return rnn_pair(cls, *args, **kw)


def assert_mode_same(
    rnn_pair, mode, sizes, *, dtype, backend, num_layers=1, bidirectional=False,
    batch_first=False, bias=True, proj=0, batched=True, with_hx=True, lengths=None,
    enforce_sorted=False, gen=None, cell=False, **compare,
):  # fmt: skip
    """``mode_pair``'s two modules (or, with ``cell``, the mode's two cells, which take no
    layout) give the same results (``assert_same``, at TOLERANCES[dtype] unless ``compare`` says
    otherwise) on a random input and (``with_hx``) initial state shaped as torch.nn expects,
    drawn from ``gen`` (the global generator by default), packed with ``lengths`` (sorted first
    where ``enforce_sorted``) where given. ``sizes`` = (seq_len, batch, input_size, hidden); a
    cell's one step has no seq_len, no layers or directions."""
    seq_len, batch, input_size, hidden = sizes
    layout = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    cls, kw = mode_kwargs(mode, proj, bias=bias, **({} if cell else layout))
    ref, mod = rnn_pair(cls + "Cell" * cell, input_size, hidden, backend=backend, dtype=dtype, **kw)
    lead = (batch,) if batched else ()
    steps = ((batch, seq_len) if batch_first else (seq_len, batch)) if batched else (seq_len,)
    x = torch.randn(*(lead if cell else steps), input_size, dtype=dtype, generator=gen)
    n = () if cell else (num_layers * (2 if bidirectional else 1),)
    hx = random_state(mode, (*n, *lead), hidden, proj, dtype=dtype, gen=gen) if with_hx else None
    pack = None
    if lengths is not None:
        lengths = sorted(lengths, reverse=True) if enforce_sorted else lengths
        options = dict(batch_first=batch_first, enforce_sorted=enforce_sorted)
        pack = partial(pack_padded_sequence, lengths=lengths, **options)
    assert_same(ref, mod, x, hx, pack=pack, **{**TOLERANCES[dtype], **compare})
