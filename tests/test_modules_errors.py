"""Bad input to LSTM / GRU / RNN and to their cells: the same exception type and message as
torch.nn, built from the same arguments and run on the same input (torch.nn.LSTM on packed
input's padded form: see test_bad_input_same_error)."""

from __future__ import annotations

import pytest
import torch
from conftest import MODES
from module_testlib import mode_kwargs, random_state
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

F32 = torch.float32
I, H = 4, 6  # every module and cell here: input_size 4, hidden_size 6
# (backend, autograd on): "reference" with autograd takes the general path; "cpu" without
# takes a cell's shortcut for a sampling call (RNNCellBase._one_step), which must hand every
# bad call to the general path
RUNS = [("reference", True), ("cpu", False)]


def _module(lib, mode, cell=False, backend="reference", dtype=torch.float64, **kwargs):
    """``lib``'s module (or cell) ``(I, H)`` of one of conftest's MODES in ``dtype``;
    fusedrnn's on ``backend``."""
    if backend not in fusedrnn.available_backends("cpu"):
        pytest.skip(f"the {backend} backend is not built")
    cls, kw = mode_kwargs(mode, **kwargs)
    kw = {**kw, "backend": backend} if lib is fusedrnn else kw
    return getattr(lib, cls + ("Cell" if cell else ""))(I, H, **kw).to(dtype)


def _t(*shape, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype)


# (description, constructor kwargs, input, hx or None): a shape (for an LSTM, h and c of
# that shape) or a factory of the mode
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
    ("hx dtype", {}, (5, 3, 4), lambda m: random_state(m, (1, 3), 6, dtype=F32)),
    ("hx not a tensor", {}, (5, 3, 4), lambda m: [[0.0] * 6] * 3),
    ("input not a tensor", {}, lambda: [[0.0] * 4] * 5, None),
    # several mistakes at once: the first check torch.nn makes decides the error
    ("input size and hx layers", {}, (5, 3, 7), (2, 3, 6)),
    ("input 4-D and dtype", {}, lambda: _t(2, 3, 5, 4, dtype=F32), None),
    ("input dtype and size", {}, lambda: _t(5, 3, 7, dtype=F32), None),
    ("hx dims and hidden", {}, (5, 3, 4), (3, 5)),
]
LSTM_CASES = [
    ("c hidden", {}, (5, 3, 4), lambda m: (_t(1, 3, 6), _t(1, 3, 5))),
    ("c batch", {}, (5, 3, 4), lambda m: (_t(1, 3, 6), _t(1, 2, 6))),
    ("c layers", {}, (5, 3, 4), lambda m: (_t(1, 3, 6), _t(2, 3, 6))),
    ("c 2-D for batched", {}, (5, 3, 4), lambda m: (_t(1, 3, 6), _t(3, 6))),
    ("h 2-D for batched", {}, (5, 3, 4), lambda m: (_t(3, 6), _t(1, 3, 6))),
    ("c 3-D for unbatched", {}, (5, 4), lambda m: (_t(1, 6), _t(1, 1, 6))),
    ("h of cell size with proj", {"proj_size": 2}, (5, 3, 4), (1, 3, 6)),
    ("c of proj size", {"proj_size": 2}, (5, 3, 4), (1, 3, 2)),
    ("hx a single tensor", {}, (5, 3, 4), lambda m: _t(1, 3, 6)),
    ("hx a 1-tuple", {}, (5, 3, 4), lambda m: (_t(1, 3, 6),)),
    ("hx a 3-tuple", {}, (5, 3, 4), lambda m: (_t(1, 3, 6),) * 3),
    ("hx a 3-tuple seq len 0", {}, (0, 3, 4), lambda m: (_t(1, 3, 6),) * 3),
    ("h dtype", {}, (5, 3, 4), lambda m: (_t(1, 3, 6, dtype=F32), _t(1, 3, 6))),
]
CELL_CASES = [
    ("input size", {}, (3, 11), (3, H)),
    ("hidden size", {}, (3, I), (3, H + 1)),
    ("batch size", {}, (3, I), (5, H)),
    ("input 3-D", {}, (2, 3, I), None),
    ("input 0-D", {}, (), None),
    ("hidden 3-D", {}, (3, I), (1, 3, H)),
    ("hidden 4-D", {}, (3, I), (3, 1, 1, H)),
    ("unbatched input, batched hidden", {}, (I,), (3, H)),
    ("batched input, unbatched hidden", {}, (3, I), (H,)),
    ("input dtype", {}, lambda: _t(3, I, dtype=F32), None),
    ("hidden dtype", {}, (3, I), lambda m: random_state(m, (3,), H, dtype=F32)),
    ("unbatched input size", {}, (I + 1,), (H,)),
    ("unbatched hidden size", {}, (I,), (H - 1,)),
]
LSTM_CELL_CASES = [
    ("c size", {}, (3, I), lambda m: (_t(3, H), _t(3, H + 1))),
    ("c batch", {}, (3, I), lambda m: (_t(3, H), _t(2, H))),
    ("c 3-D", {}, (3, I), lambda m: (_t(3, H), _t(1, 3, H))),
    ("hx a 1-tuple", {}, (3, I), lambda m: (_t(3, H),)),
    ("hx a 3-tuple", {}, (3, I), lambda m: (_t(3, H),) * 3),
    ("hx a 1-tuple with bad input", {}, (3, I + 1), lambda m: (_t(3, H),)),
    ("unbatched hx a 1-tuple", {}, (I,), lambda m: (_t(H),)),
    ("hx a tensor", {}, (3, I), lambda m: _t(3, H)),
]
# the constructor accepts "gelu", as torch.nn's does: the forward fails
RNN_CELL_CASES = [("unknown nonlinearity", {"nonlinearity": "gelu"}, (2, I), None)]


def _packed(rows, sorts=(True, False)):
    """``(desc, kwargs, input_size, hx)`` rows as cases of packed input, sorted and not."""
    return [
        (f"packed {desc}{'' if s else ' unsorted'}", kw, lambda s=s, n=n: pack_padded_sequence(
            _t(4, 3, n), [4, 3, 1] if s else [3, 4, 1], enforce_sorted=s), hx)
        for s in sorts for desc, kw, n, hx in rows
    ]  # fmt: skip


# every mode; the LSTM also with a wrong c, and its 3-tuple and wrong batch only on sorted
# input (unsorted input permutes the state first: no error of torch.nn.LSTM's to compare with)
PACKED_ROWS = [("input size", {}, 5, None), ("module dtype", {"dtype": F32}, I, None),
               ("hx hidden", {}, I, (1, 3, 5)), ("hx layers", {}, I, (2, 3, 6))]  # fmt: skip
BATCH = ("hx batch", {}, I, (1, 2, 6))
PACKED_CASES = _packed([*PACKED_ROWS, BATCH])
LSTM_PACKED_CASES = [
    *_packed([*PACKED_ROWS, ("c hidden", {}, I, lambda m: (_t(1, 3, 6), _t(1, 3, 5)))]),
    *_packed([BATCH, ("hx a 3-tuple", {}, I, lambda m: (_t(1, 3, 6),) * 3)], sorts=(True,)),
]  # fmt: skip


# (cell or not, mode, *case, *run): every mode meets CASES and CELL_CASES, only the LSTM (its
# (h, c) state) LSTM_CASES and LSTM_CELL_CASES; the cells on every run, the modules on the first
ALL_CASES = [
    *((False, m, *c, *RUNS[0]) for c in CASES for m in MODES),
    *((False, m, *c, *RUNS[0]) for c in PACKED_CASES for m in MODES if m != "LSTM"),
    *((False, "LSTM", *c, *RUNS[0]) for c in LSTM_CASES + LSTM_PACKED_CASES),
    *((True, m, *c, *run) for run in RUNS for c in CELL_CASES for m in MODES),
    *((True, "LSTM", *c, *run) for run in RUNS for c in LSTM_CELL_CASES),
    *((True, "RNN_TANH", *c, *run) for run in RUNS for c in RNN_CELL_CASES),
]


@pytest.mark.parametrize(
    "cell,mode,desc,kwargs,x,hx,backend,grad",
    ALL_CASES,
    ids=[f"{m}{'Cell' if cell else ''}-{d}-{b}" for cell, m, d, _, _, _, b, _ in ALL_CASES],
)
def test_bad_input_same_error(cell, mode, desc, kwargs, x, hx, backend, grad, same_error):
    x = _t(*x) if isinstance(x, tuple) else x()
    if isinstance(hx, tuple):  # a shape: for an LSTM, c is shaped like h
        hx = random_state(mode, hx[:-1], hx[-1])
    hx = hx(mode) if callable(hx) else hx
    # torch.nn.LSTM skips its Python checks for packed input and fails later inside ATen ("got
    # an incorrect number of RNN parameters", a matmul shape error, ...); fusedrnn checks packed
    # input as torch.nn.GRU does, with the errors torch.nn.LSTM gives for the padded input
    lstm_packed = mode == "LSTM" and isinstance(x, PackedSequence)
    inp = {torch.nn: pad_packed_sequence(x)[0] if lstm_packed else x, fusedrnn: x}
    with torch.set_grad_enabled(grad):
        same_error(lambda lib: _module(lib, mode, cell, backend, **kwargs)(inp[lib], hx))


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
