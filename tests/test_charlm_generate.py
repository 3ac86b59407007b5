"""The fused sampling loop (fusedrnn._C.generate) against the Python per-character loop.

The Python loop (one model call, softmax and draw per character) is the oracle: for the same
generator seed both must choose the same characters, for every cell, variant, input kind,
dtype, batch size and choice rule.
"""

from __future__ import annotations

import copy
import zlib
from functools import partial
from unittest import mock

import pytest
import torch

from fusedrnn import backends
from fusedrnn.charlm import sample as sampling
from fusedrnn.charlm.data import Vocab
from fusedrnn.charlm.errors import DataError
from fusedrnn.charlm.model import CharRNN
from fusedrnn.charlm.sample import fused_unsupported, generate, generate_batch, half_weight_model

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
VOCAB = Vocab(sorted(set(TEXT)))
V = len(VOCAB.chars)

pytestmark = pytest.mark.skipif(
    fused_unsupported(CharRNN(V, "lstm", 8, 1, 4)) is not None,
    reason="the compiled CPU backend (fusedrnn._C) is not built",
)


def _model(cell, embed=8, layers=2, hidden=24, dtype=torch.float32, **variants) -> CharRNN:
    torch.manual_seed(zlib.crc32(repr((cell, embed, layers, hidden, dtype, variants)).encode()))
    m = CharRNN(V, cell, hidden, layers, embed, **variants).to(dtype)
    with torch.no_grad():  # peaked distributions: the choice depends on every logit
        m.decoder.weight.mul_(6.0)
        for p in m.rnns.parameters():  # (a relu stack would blow up: its weights stay)
            p.mul_(1.0 if cell == "rnn_relu" else 2.0)
    return m


def _runs(model, *kinds, seed=3, **kw) -> list[list[str]]:
    """generate_batch once per (model or its float16-rounded copy, fused, half_weights), each
    with a fresh generator of the same seed."""
    out = []
    for target, fused, half in kinds:
        g = torch.Generator().manual_seed(seed)
        m = half_weight_model(model) if target == "rounded" else model
        out.append(generate_batch(m, VOCAB, generator=g, fused=fused, half_weights=half, **kw))
    return out


# the samples that must agree: the fused loop and the Python loop; with half=True, both with
# float16 weights and the fused loop in float32 on the rounded copy
FUSED_AND_PYTHON = ("model", True, False), ("model", False, False)
HALF = ("model", True, True), ("model", False, True), ("rounded", True, False)


def _c_args(m, cell: str, h, c, length: int, **over) -> dict:
    """The arguments of the extension's sampling loop for a plain model: its weights, the state
    (h, c) that it updates in place and the first logits (zeros)."""
    weights = [p.detach() for rnn in m.rnns for p in rnn._flat_weights]
    return {**dict(
        cell=cell, embed=m.embed.weight.detach(), flat_weights=weights, num_layers=len(m.rnns),
        has_bias=True, variant_weights=[], cifg=False, zoneout_h=0.0, zoneout_c=0.0, eps=1e-5,
        dec_w=m.decoder.weight.detach(), dec_b=m.decoder.bias.detach(), h=h, c=c, generator=None,
        logits=torch.zeros(h.shape[1], V), length=length, temperature=1.0, top_k=0, argmax=False,
    ), **over}  # fmt: skip


CELLS = [  # every plain cell, then the variants each alone and all together
    ("lstm", {}), ("gru", {}), ("rnn", {}), ("rnn_relu", {}),
    ("lstm", {"layer_norm": True}), ("lstm", {"zoneout": 0.3}), ("lstm", {"peephole": True}),
    ("lstm", {"cifg": True}),
    ("lstm", {"layer_norm": True, "peephole": True, "cifg": True, "zoneout": 0.2}),
    ("gru", {"layer_norm": True}), ("gru", {"zoneout": 0.25}),
]  # fmt: skip
DETERMINISTIC = [{"top_k": 1}, {"argmax": True}, {"temperature": 0.0}]  # rows repeat each other
RULES = [{"temperature": 0.7}, {"temperature": 1.3, "top_k": 4}, *DETERMINISTIC]
MATCHES = (  # (the model, how it is sampled): pytest ids name both
    # every cell and variant, reading an embedding or one-hot input
    [(dict(cell=c, embed=e, **v), dict(prime="Fir", length=120)) for c, v in CELLS for e in (8, 0)]
    # every choice rule, on two rows
    + [(dict(cell=c, layers=1, hidden=17), dict(prime="B", length=80, num_samples=2, **r))
       for c in ("lstm", "gru", "rnn") for r in RULES]
    # float64 models, alone and in a batch
    + [(dict(cell=c, layers=3, hidden=9, dtype=torch.float64),
        dict(prime="hear", length=60, num_samples=n, seed=11))
       for c in ("lstm", "gru", "rnn_relu") for n in (1, 4)]
    # a float64 batch of variant cells; an unprimed start from a line of real text
    + [(dict(cell="lstm", hidden=12, dtype=torch.float64, layer_norm=True, cifg=True),
        dict(prime="me", length=50, num_samples=3, top_k=6)),
       (dict(cell="gru", hidden=10),
        dict(prime="", length=40, seed=8, context=["Before we proceed\n", "hear me speak.\n"]))]
    # float16 weights: the float16 product is the float32 one on the widened weights, sum for
    # sum; H = 21 and E = 11 give column blocks of 8, 4 and 1 and a tail of each dot product,
    # H = 24 the fused loop's interleaved blocks (w_hh, the second layer's w_ih)
    + [(dict(cell=c, embed=e, hidden=21 if e else 24),
        dict(prime="Fir", length=150, num_samples=n, seed=5, half=True))
       for c in ("lstm", "gru", "rnn", "rnn_relu") for e in (11, 0) for n in (1, 3)]
)  # fmt: skip


@pytest.mark.parametrize(
    "model,sample", MATCHES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items())
)
def test_fused_loop_chooses_what_the_python_loop_chooses(model, sample):
    sample = {"num_samples": 1, **sample}
    kinds = HALF if sample.pop("half", False) else FUSED_AND_PYTHON
    fused, *others = _runs(_model(**model), *kinds, **sample)
    assert all(o == fused for o in others) and len(fused) == sample["num_samples"]
    if not any(r.items() <= sample.items() for r in DETERMINISTIC):
        assert len(set(fused[0])) > 5  # a real sample, not a constant run
        assert sample["num_samples"] == 1 or len(set(fused)) > 1  # independent rows, not copies


@pytest.mark.parametrize("length", [0, 1, 2, 63, 64, 65, 200])
def test_streaming_pieces_join_to_the_text_and_match(length):
    """Either loop leaves the model as it was (weights, train mode); the fused one reads the
    prime through the model and then never calls it again, and streams its text in pieces."""
    model, pieces, texts = _model("lstm", layers=2, hidden=16).train(), [], []
    run = partial(generate, model, VOCAB, "Fi", length)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fused, calls, on_text in ((True, 1, pieces.append), (False, max(length, 1), None)):
        g = torch.Generator().manual_seed(2)
        with mock.patch.object(model, "forward_layers", wraps=model.forward_layers) as spy:
            texts.append(run(generator=g, on_text=on_text, fused=fused))
        assert spy.call_count == calls and model.training
        torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)
    assert "".join(pieces) == texts[0] == texts[1] and len(texts[0]) == length
    # whole STREAM_CHUNKs, the rest in one last piece
    assert len(pieces) == -(-length // sampling.STREAM_CHUNK)
    assert all(len(p) == sampling.STREAM_CHUNK for p in pieces[:-1])


def test_which_loop_runs_and_what_is_refused(monkeypatch):
    """The fused loop refuses by name what it cannot run, the Python loop then samples (the
    rounded copy with half_weights); weights beyond float16's range are refused by name, and
    the extension's loop refuses arguments that do not fit together."""
    model, ln = (_model("lstm", layers=1, hidden=8, **v) for v in ({}, {"layer_norm": True}))
    torch_model = CharRNN(V, "lstm", 8, 1, 4, impl="torch")
    refused = [  # a model, half_weights, why the fused loop cannot run it
        (torch_model, False, "torch.nn"),
        (CharRNN(V, "lstm", 8, 1, 4).to(torch.bfloat16), False, "float32 or float64"),
        (CharRNN(V, "gru", 8, 1, 4, backend="reference"), False, "'reference' backend"),
        (ln, True, "plain cells"),
        (_model("gru", layers=1, hidden=8, dtype=torch.float64), True, "float32"),
    ]
    for m, half, why in refused:
        assert why in fused_unsupported(m, half_weights=half), why
        with pytest.raises(DataError, match="fused sampling loop cannot run this model"):
            generate(m, VOCAB, "F", 5, fused=True, half_weights=half)
    assert fused_unsupported(model) is None and fused_unsupported(ln) is None
    # the automatic choice falls back to the Python loop, and still samples
    assert len(generate(torch_model, VOCAB, "F", 5)) == 5
    before = {k: v.clone() for k, v in ln.state_dict().items()}
    kinds = ("model", None, True), ("rounded", False, False)  # automatic choice; the oracle
    auto, rounded = _runs(ln, *kinds, prime="F", length=40, num_samples=1, seed=5)
    assert auto == rounded
    torch.testing.assert_close(ln.state_dict(), before, rtol=0, atol=0)
    big = _model("rnn", layers=1, hidden=8)
    with torch.no_grad():
        big.rnns[0].weight_hh_l0[0, 0] = 7e4
    for fused in (True, False):
        with pytest.raises(DataError, match=r"weight_hh_l0 has values up to 70000"):
            generate(big, VOCAB, "F", 5, fused=fused, half_weights=True)
    with pytest.raises(DataError, match="on_text streams one sample"):
        generate_batch(model, VOCAB, "F", 5, 2, on_text=print)
    with pytest.raises(DataError, match="num_samples must be >= 1"):
        generate_batch(model, VOCAB, "F", 5, 0)
    reader = mock.Mock(side_effect=BrokenPipeError("the reader went away"))
    with pytest.raises(BrokenPipeError, match="the reader went away"):
        generate(model, VOCAB, "F", 500, on_text=reader, fused=True)
    # the extension checks its arguments itself
    _C = backends.get("cpu")._C
    good = _c_args(model, "lstm", torch.zeros(1, 1, 8), torch.zeros(1, 1, 8), 3)
    assert _C.generate(**good).shape == (1, 3)
    bad = [({"c": None}, "LSTM needs a contiguous c"),
           ({"logits": torch.zeros(1, V + 1)}, "logits must be a contiguous float32"),
           ({"dec_w": torch.zeros(V, 9)}, "decoder weight must be"),
           ({"flat_weights": good["flat_weights"][:3]}, "expected 4 layer weights"),
           ({"embed": torch.zeros(V + 2, 8)}, "embedding must be"),
           ({"variant_weights": [None] * 3}, "expected 7 variant weights"),
           ({"logits": torch.full((1, V), float("nan"))}, "probability tensor contains"),
           ({"h": torch.zeros(2, 1, 8)}, "h must be a contiguous"),
           ({"h": torch.zeros(1, 1, 6), "c": torch.zeros(1, 1, 6), "dec_w": torch.zeros(V, 6)},
            r"w_hh must be \[G\*H, 6\] for h's H")]  # fmt: skip
    for change, message in bad:
        with pytest.raises(RuntimeError, match=message):
            _C.generate(**{**good, **change})
    # a backend chosen by the environment is respected
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
    assert "'reference' backend" in fused_unsupported(model)
    monkeypatch.setenv("FUSEDRNN_BACKEND", "no-such-backend")
    assert "unknown fusedrnn backend" in fused_unsupported(model)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_half_weights_state_is_the_rounded_models_bit_for_bit(cell, batch):
    """The extension's final state with float16 weights equals, bit for bit, the float32 run on
    the rounded weights (any batch: the half product serves every row count), and differs from
    the float32 run on the weights as given (the flag is not ignored)."""
    model = _model(cell, 11, layers=2, hidden=21)

    def final_state(m, half):
        h = torch.full((2, batch, 21), 0.1)
        c = torch.full((2, batch, 21), -0.2) if cell == "lstm" else None
        name = cell if cell != "rnn" else "rnn_tanh"
        args = _c_args(m, name, h, c, 40, temperature=0.0, argmax=True, half_weights=half)
        backends.get("cpu")._C.generate(**args)
        return h if c is None else torch.cat([h, c])

    half = final_state(model, True)
    # the float32 run takes the same small-row product (bit for bit) only up to 4 rows
    exact = dict(rtol=0, atol=0) if batch <= 4 else {}
    torch.testing.assert_close(half, final_state(half_weight_model(model), False), **exact)
    assert not torch.equal(half, final_state(model, False))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_half_weights_move_each_distribution_by_little(cell):
    """What half_weights changes, statistically: teacher-forced over 1,500 characters, the
    total-variation distance between the model's next-character distribution and the rounded
    model's. Rounding to float16 (unit roundoff 2^-11) must move it far less than rounding to
    bfloat16 (2^-8) does, and by little in absolute terms; a sampled text of n characters then
    differs in law from the float32 one by at most n times the per-step distance."""
    model = _model(cell, 16, layers=2, hidden=64)
    ids = torch.tensor([VOCAB.encode((TEXT * 30)[:1500])])
    bf16 = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in bf16.rnns.named_parameters():
            if "weight_ih" in name or "weight_hh" in name:
                p.copy_(p.bfloat16().float())
        models = (model, half_weight_model(model), bf16)
        probs = [m.forward_layers(ids)[0].softmax(-1) for m in models]
    tv16, tvbf = (0.5 * (probs[0] - q).abs().sum(-1) for q in probs[1:])
    assert tv16.mean() * 4 < tvbf.mean()
    assert tv16.max() < 5e-3
