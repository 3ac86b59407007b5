"""The fused sampling loop (fusedrnn._C.generate) against the Python per-character loop.

The Python loop (one model call, softmax and draw per character) is the oracle: for the same
generator seed both must choose the same characters, for every cell, variant, input kind,
dtype, batch size and choice rule.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from fusedrnn.charlm.data import Vocab
from fusedrnn.charlm.errors import DataError
from fusedrnn.charlm.model import CharRNN
from fusedrnn.charlm.sample import fused_unsupported, generate, generate_batch

VOCAB = Vocab(sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n")))


def _fused_available() -> bool:
    return fused_unsupported(CharRNN(len(VOCAB.chars), "lstm", 8, 1, 4)) is None


pytestmark = pytest.mark.skipif(
    not _fused_available(), reason="the compiled CPU backend (fusedrnn._C) is not built"
)


def _model(
    cell: str, embed: int = 8, layers: int = 2, hidden: int = 24, dtype=torch.float32, **variants
) -> CharRNN:
    torch.manual_seed(zlib.crc32(repr((cell, embed, layers, hidden, dtype, variants)).encode()))
    m = CharRNN(len(VOCAB.chars), cell, hidden, layers, embed, **variants).to(dtype)
    with torch.no_grad():  # peaked distributions: the choice depends on every logit
        m.decoder.weight.mul_(6.0)
        for p in m.rnns.parameters():  # (a relu stack would blow up: its weights stay)
            p.mul_(1.0 if cell == "rnn_relu" else 2.0)
    return m


def _both(model, **kw) -> tuple[list[str], list[str]]:
    seed = kw.pop("seed", 3)
    runs = []
    for fused in (True, False):
        g = torch.Generator().manual_seed(seed)
        runs.append(generate_batch(model, VOCAB, generator=g, fused=fused, **kw))
    return runs[0], runs[1]


CASES = [
    ("lstm", {}),
    ("gru", {}),
    ("rnn", {}),
    ("rnn_relu", {}),
    ("lstm", {"layer_norm": True}),
    ("lstm", {"zoneout": 0.3}),
    ("lstm", {"peephole": True}),
    ("lstm", {"cifg": True}),
    ("lstm", {"layer_norm": True, "peephole": True, "cifg": True, "zoneout": 0.2}),
    ("gru", {"layer_norm": True}),
    ("gru", {"zoneout": 0.25}),
]


@pytest.mark.parametrize("cell,variants", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("embed", [8, 0], ids=["embedding", "one-hot"])
def test_fused_loop_chooses_what_the_python_loop_chooses(cell, variants, embed):
    model = _model(cell, embed, **variants)
    fused, python = _both(model, prime="Fir", length=120, num_samples=1)
    assert fused == python
    assert len(set(fused[0])) > 5  # a real sample, not a constant run


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(
    "rule",
    [
        {"temperature": 0.7},
        {"temperature": 1.3, "top_k": 4},
        {"top_k": 1},
        {"argmax": True},
        {"temperature": 0.0},
    ],
    ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()),
)
def test_every_choice_rule_matches(cell, rule):
    model = _model(cell, layers=1, hidden=17)
    fused, python = _both(model, prime="B", length=80, num_samples=2, **rule)
    assert fused == python


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("num_samples", [1, 4])
def test_float64_models_and_batches_match(cell, num_samples):
    model = _model(cell, layers=3, hidden=9, dtype=torch.float64)
    fused, python = _both(model, prime="hear", length=60, num_samples=num_samples, seed=11)
    assert fused == python
    assert len(fused) == num_samples
    if num_samples > 1:  # the rows are independent draws, not copies
        assert len(set(fused)) > 1


def test_lstm_variants_float64_batch_matches():
    model = _model("lstm", layers=2, hidden=12, dtype=torch.float64, layer_norm=True, cifg=True)
    fused, python = _both(model, prime="me", length=50, num_samples=3, top_k=6)
    assert fused == python


@pytest.mark.parametrize("length", [0, 1, 2, 63, 64, 65, 200])
def test_streaming_pieces_join_to_the_text_and_match(length):
    model = _model("lstm", layers=2, hidden=16)
    pieces: list[str] = []
    text = generate(
        model, VOCAB, "F", length, generator=torch.Generator().manual_seed(2),
        on_text=pieces.append, fused=True,
    )  # fmt: skip
    assert "".join(pieces) == text and len(text) == length
    python = generate(
        model, VOCAB, "F", length, generator=torch.Generator().manual_seed(2), fused=False
    )
    assert text == python


def test_unprimed_context_start_matches():
    model = _model("gru", layers=2, hidden=10)
    context = ["Before we proceed\n", "hear me speak.\n"]
    fused, python = _both(model, prime="", length=40, num_samples=1, context=context, seed=8)
    assert fused == python


def test_fused_loop_calls_the_model_once():
    """The fused path reads the prime through the model and then never calls it again."""
    model = _model("lstm", layers=2, hidden=16)
    calls = []
    real = model.forward_layers
    model.forward_layers = lambda *a, **k: calls.append(1) or real(*a, **k)
    generate(model, VOCAB, "Fi", 50, generator=torch.Generator().manual_seed(0), fused=True)
    assert len(calls) == 1
    calls.clear()
    generate(model, VOCAB, "Fi", 50, generator=torch.Generator().manual_seed(0), fused=False)
    assert len(calls) == 50


def test_auto_choice_uses_the_fused_loop_where_it_can():
    model = _model("rnn", layers=1, hidden=8)
    assert fused_unsupported(model) is None
    torch_model = CharRNN(len(VOCAB.chars), "lstm", 8, 1, 4, impl="torch")
    assert "torch.nn" in fused_unsupported(torch_model)
    with pytest.raises(DataError, match="fused sampling loop cannot run this model"):
        generate(torch_model, VOCAB, "F", 5, fused=True)
    bf16 = CharRNN(len(VOCAB.chars), "lstm", 8, 1, 4).to(torch.bfloat16)
    assert "float32 or float64" in fused_unsupported(bf16)
    # the automatic choice falls back to the Python loop for both, and still samples
    assert len(generate(torch_model, VOCAB, "F", 5)) == 5
    reference = CharRNN(len(VOCAB.chars), "gru", 8, 1, 4, backend="reference")
    assert "'reference' backend" in fused_unsupported(reference)


def test_backend_chosen_by_the_environment_is_respected(monkeypatch):
    model = _model("lstm", layers=1, hidden=8)
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
    assert "'reference' backend" in fused_unsupported(model)
    monkeypatch.setenv("FUSEDRNN_BACKEND", "no-such-backend")
    assert "unknown fusedrnn backend" in fused_unsupported(model)


def test_model_state_and_mode_are_left_alone():
    model = _model("lstm", layers=2, hidden=16)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, VOCAB, "F", 30, generator=torch.Generator().manual_seed(0), fused=True)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batch_with_streaming_is_refused():
    model = _model("lstm", layers=1, hidden=8)
    with pytest.raises(DataError, match="on_text streams one sample"):
        generate_batch(model, VOCAB, "F", 5, 2, on_text=print)
    with pytest.raises(DataError, match="num_samples must be >= 1"):
        generate_batch(model, VOCAB, "F", 5, 0)


def test_extension_refuses_mismatched_arguments():
    from fusedrnn import backends

    _C = backends.get("cpu")._C
    model = _model("lstm", layers=1, hidden=8)
    w = [p.detach() for p in model.rnns[0]._flat_weights]
    V = len(VOCAB.chars)
    h = torch.zeros(1, 1, 8)
    good = dict(
        cell="lstm", embed=model.embed.weight.detach(), flat_weights=w, num_layers=1,
        has_bias=True, variant_weights=[], cifg=False, zoneout_h=0.0, zoneout_c=0.0, eps=1e-5,
        dec_w=model.decoder.weight.detach(), dec_b=model.decoder.bias.detach(), h=h,
        c=torch.zeros(1, 1, 8), logits=torch.zeros(1, V), length=3,
        temperature=1.0, top_k=0, argmax=False, generator=None,
    )  # fmt: skip
    assert _C.generate(**good).shape == (1, 3)
    bad = [
        ({"c": None}, "LSTM needs a contiguous c"),
        ({"logits": torch.zeros(1, V + 1)}, "logits must be a contiguous float32"),
        ({"dec_w": torch.zeros(V, 9)}, "decoder weight must be"),
        ({"flat_weights": w[:3]}, "expected 4 layer weights"),
        ({"embed": torch.zeros(V + 2, 8)}, "embedding must be"),
        ({"variant_weights": [None] * 3}, "expected 7 variant weights"),
        ({"h": torch.zeros(2, 1, 8)}, "h must be a contiguous"),
        ({"logits": torch.full((1, V), float("nan"))}, "probability tensor contains"),
    ]
    for change, message in bad:
        with pytest.raises(RuntimeError, match=message):
            _C.generate(**{**good, **change})


def test_streaming_arrives_in_pieces_and_a_failing_reader_stops_the_loop():
    from fusedrnn.charlm.sample import STREAM_CHUNK

    model = _model("gru", layers=1, hidden=8)
    pieces: list[str] = []
    generate(model, VOCAB, "F", 3 * STREAM_CHUNK + 5, on_text=pieces.append, fused=True)
    assert [len(p) for p in pieces] == [STREAM_CHUNK] * 3 + [5]

    def reader(text):
        raise BrokenPipeError("the reader went away")

    with pytest.raises(BrokenPipeError, match="the reader went away"):
        generate(model, VOCAB, "F", 500, on_text=reader, fused=True)
