"""Bad input to LSTM / GRU / RNN: the same exception type and message as torch.nn, built
from the same arguments and run on the same input."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
CLASSES = {"LSTM": {}, "GRU": {}, "RNN": {}, "RNN_RELU": {"nonlinearity": "relu"}}


def _module(lib, name, *args, **kwargs):
    cls = "RNN" if name.startswith("RNN") else name
    backend = {"backend": "reference"} if lib is fusedrnn else {}
    return getattr(lib, cls)(*args, **CLASSES[name], **kwargs, **backend).to(D)


def _t(*shape, dtype=D):
    return torch.randn(shape, dtype=dtype)


def _state(name, h):
    """GRU/RNN take h; LSTM takes (h, c), with c shaped like h."""
    return (h, h.clone()) if name == "LSTM" else h


# (description, constructor kwargs, input, hx or None): a shape (for an LSTM, h and c of
# that shape) or a factory of the class name
F32 = torch.float32
CASES = [
    ("input size 3-D", {}, (5, 3, 7), None),
    ("input size 2-D", {}, (5, 7), None),
    ("input size batch_first", {"batch_first": True}, (3, 5, 7), None),
    ("input 1-D", {}, (4,), None),
    ("input 4-D", {}, (2, 3, 5, 4), None),
    ("input 0-D", {}, (), None),
    ("input dtype float32", {}, lambda: _t(5, 3, 4, dtype=F32), None),
    ("input dtype int64", {}, lambda: torch.ones(5, 3, 4, dtype=torch.int64), None),
    ("input dtype unbatched", {}, lambda: _t(5, 4, dtype=F32), None),
    ("seq len 0", {}, (0, 3, 4), None),
    ("seq len 0 unbatched", {}, (0, 4), None),
    ("seq len 0 batch_first", {"batch_first": True}, (3, 0, 4), None),
    ("seq len 0 with hx", {}, (0, 3, 4), (1, 3, 6)),
    ("hx layers", {}, (5, 3, 4), (2, 3, 6)),
    ("hx layers bidir", {"bidirectional": True}, (5, 3, 4), (1, 3, 6)),
    ("hx layers stacked", {"num_layers": 3}, (5, 3, 4), (2, 3, 6)),
    ("hx batch", {}, (5, 3, 4), (1, 2, 6)),
    ("hx batch batch_first", {"batch_first": True}, (3, 5, 4), (1, 5, 6)),
    ("hx hidden", {}, (5, 3, 4), (1, 3, 5)),
    ("hx 2-D for batched", {}, (5, 3, 4), (3, 6)),
    ("hx 4-D for batched", {}, (5, 3, 4), (1, 1, 3, 6)),
    ("hx 3-D for unbatched", {}, (5, 4), (1, 1, 6)),
    ("hx 1-D for unbatched", {}, (5, 4), (6,)),
    ("hx hidden unbatched", {}, (5, 4), (1, 5)),
    ("hx layers unbatched", {}, (5, 4), (3, 6)),
    ("hx dtype", {}, (5, 3, 4), lambda n: _state(n, _t(1, 3, 6, dtype=F32))),
    ("hx not a tensor", {}, (5, 3, 4), lambda n: [[0.0] * 6] * 3),
    ("input not a tensor", {}, lambda: [[0.0] * 4] * 5, None),
    # several mistakes at once: the first check torch.nn makes decides the error
    ("input size and hx layers", {}, (5, 3, 7), (2, 3, 6)),
    ("input 4-D and dtype", {}, lambda: _t(2, 3, 5, 4, dtype=F32), None),
    ("input dtype and size", {}, lambda: _t(5, 3, 7, dtype=F32), None),
    ("hx dims and hidden", {}, (5, 3, 4), (3, 5)),
]
LSTM_CASES = [
    ("c hidden", {}, (5, 3, 4), lambda n: (_t(1, 3, 6), _t(1, 3, 5))),
    ("c batch", {}, (5, 3, 4), lambda n: (_t(1, 3, 6), _t(1, 2, 6))),
    ("c layers", {}, (5, 3, 4), lambda n: (_t(1, 3, 6), _t(2, 3, 6))),
    ("c 2-D for batched", {}, (5, 3, 4), lambda n: (_t(1, 3, 6), _t(3, 6))),
    ("h 2-D for batched", {}, (5, 3, 4), lambda n: (_t(3, 6), _t(1, 3, 6))),
    ("c 3-D for unbatched", {}, (5, 4), lambda n: (_t(1, 6), _t(1, 1, 6))),
    ("h of cell size with proj", {"proj_size": 2}, (5, 3, 4), (1, 3, 6)),
    ("c of proj size", {"proj_size": 2}, (5, 3, 4), (1, 3, 2)),
    ("hx a single tensor", {}, (5, 3, 4), lambda n: _t(1, 3, 6)),
    ("hx a 1-tuple", {}, (5, 3, 4), lambda n: (_t(1, 3, 6),)),
    ("hx a 3-tuple", {}, (5, 3, 4), lambda n: (_t(1, 3, 6),) * 3),
    ("hx a 3-tuple seq len 0", {}, (0, 3, 4), lambda n: (_t(1, 3, 6),) * 3),
    ("h dtype", {}, (5, 3, 4), lambda n: (_t(1, 3, 6, dtype=F32), _t(1, 3, 6))),
]


# every class meets CASES; only LSTM meets LSTM_CASES (its (h, c) state)
ALL_CASES = [(n, *c) for c in CASES for n in CLASSES] + [("LSTM", *c) for c in LSTM_CASES]


@pytest.mark.parametrize(
    "name,desc,kwargs,x,hx", ALL_CASES, ids=[f"{c[0]}-{c[1]}" for c in ALL_CASES]
)
def test_bad_input_same_error(name, desc, kwargs, x, hx, same_error):
    x = _t(*x) if isinstance(x, tuple) else x()
    hx = _state(name, _t(*hx)) if isinstance(hx, tuple) else hx(name) if hx else None
    same_error(lambda lib: _module(lib, name, 4, 6, **kwargs)(x, hx))


@pytest.mark.parametrize("name", ["GRU", "RNN", "RNN_RELU"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_bad_packed_input_same_error(name, enforce_sorted, same_error):
    lengths = [4, 3, 1] if enforce_sorted else [3, 4, 1]
    packed = pack_padded_sequence(_t(4, 3, 4), lengths, enforce_sorted=enforce_sorted)
    wrong_size = pack_padded_sequence(_t(4, 3, 5), lengths, enforce_sorted=enforce_sorted)
    same_error(lambda lib: _module(lib, name, 4, 6)(wrong_size))
    same_error(lambda lib: _module(lib, name, 4, 6)(packed, _t(1, 3, 5)))
    same_error(lambda lib: _module(lib, name, 4, 6)(packed, _t(2, 3, 6)))
    same_error(lambda lib: _module(lib, name, 4, 6)(packed, _t(1, 2, 6)))
    same_error(lambda lib: _module(lib, name, 4, 6).float()(packed))


def test_bad_packed_lstm_input_gives_clear_errors():
    """torch.nn.LSTM skips its Python checks for packed input and fails later inside
    ATen ("got an incorrect number of RNN parameters", a matmul shape error, ...).
    fusedrnn checks packed input as torch.nn.GRU does: the same exception types as
    torch.nn.LSTM for sizes, with torch.nn's own clear messages."""
    x = _t(4, 3, 4)
    packed = pack_padded_sequence(x, [3, 4, 1], enforce_sorted=False)
    lstm = _module(fusedrnn, "LSTM", 4, 6)
    h, c = _t(1, 3, 6), _t(1, 3, 6)
    sorted_packed = pack_padded_sequence(x, [4, 3, 1])
    size = "input.size(-1) must be equal to input_size. Expected 4, got 5"
    hidden = "Expected hidden[{}] size (1, 3, 6), got [{}, 3, {}]"
    cases = [
        (lambda: lstm(pack_padded_sequence(_t(4, 3, 5), [4, 3, 1])), size),
        (lambda: lstm(packed, (_t(1, 3, 5), c)), hidden.format(0, 1, 5)),
        (lambda: lstm(packed, (h, _t(1, 3, 5))), hidden.format(1, 1, 5)),
        (lambda: lstm(packed, (_t(2, 3, 6), _t(2, 3, 6))), hidden.format(0, 2, 6)),
        (lambda: lstm(sorted_packed, (h, c, c)), "lstm expects two hidden states"),
    ]
    for fn, message in cases:
        with pytest.raises(RuntimeError) as info:
            fn()
        assert str(info.value) == message
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match"):
        lstm.float()(packed)


# (class, what lives on the meta device: the state h, the LSTM's cell state c, or the weights)
PLACEMENTS = [
    (cls, where)
    for cls in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")
    for where in ("h", "c", "weights")
    if where != "c" or "LSTM" in cls
]


@pytest.mark.parametrize("cls,where", PLACEMENTS)
def test_mixed_devices_rejected(same_error, cls, where):
    """A state or weight on another device (meta, the one device every machine has besides
    the CPU) is refused instead of being read as if it lived beside the input."""
    cell = cls.endswith("Cell")
    x, lead = (torch.randn(2, 4), (2,)) if cell else (torch.randn(3, 2, 4), (1, 2))

    def run(lib):
        on = {w: "meta" if w == where else "cpu" for w in ("weights", "h", "c")}
        mod = getattr(lib, cls)(4, 5).to(on["weights"])
        h, c = torch.zeros(*lead, 5, device=on["h"]), torch.zeros(*lead, 5, device=on["c"])
        return mod(x, (h, c) if "LSTM" in cls else h)

    if not cell:  # torch.nn's cells fail later, inside ATen, with a vaguer message
        same_error(run, RuntimeError)
    with pytest.raises(RuntimeError, match="not at the same device, found input tensor at cpu"):
        run(fusedrnn)
