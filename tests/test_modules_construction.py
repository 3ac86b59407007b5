"""Construction of LSTM / GRU / RNN: arguments, validation, parameters, init, repr.

Every check compares with torch.nn built from the same arguments.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import MODES
from torch import nn

import fusedrnn

CLASSES = ["LSTM", "GRU", "RNN"]
CONFIG_ATTRS = (
    "input_size hidden_size bias num_layers batch_first dropout bidirectional proj_size mode "
    "nonlinearity"
).split()


def _recorded(lib, cls, *args, **kwargs):
    """(``lib``'s ``cls(*args, **kwargs)``, the warnings it gave). backend= is left out so that
    Python's own argument errors read the same; nothing here runs a forward pass."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        return getattr(lib, cls)(*args, **kwargs), caught


def _build(lib, cls, *args, **kwargs):
    return _recorded(lib, cls, *args, **kwargs)[0]


# -- the same module as torch.nn's, or the same error -------------------------------------

# fmt: off
# input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional (LSTM and GRU)
_GATED = [(3, 5), (3, 5, 2), (3, 5, 2, False), (3, 5, 2, True, True),
          (3, 5, 3, True, True, 0.25), (3, 5, 2, False, True, 0.5, True)]
POSITIONAL = {
    # ..., then proj_size, device, dtype
    "LSTM": [*_GATED, (3, 5, 2, True, False, 0.0, True, 2),
             (3, 5, 1, True, False, 0.0, False, 4, "cpu", torch.float64)],
    # the 8th positional of RNNBase is proj_size; 0 is accepted for GRU and RNN
    "GRU": [*_GATED, (3, 5, 2, True, False, 0.0, True, 0)],
    # RNN takes nonlinearity as its 4th positional argument
    "RNN": [(3, 5), (3, 5, 2), (3, 5, 2, "relu"), (3, 5, 2, "tanh", False),
            (3, 5, 2, "relu", True, True), (3, 5, 3, "relu", False, True, 0.25),
            (3, 5, 2, "tanh", True, False, 0.5, True),
            (3, 5, 2, "relu", True, False, 0.0, True, 0, "cpu", torch.float64)],
    # the cells: bias, [nonlinearity,] device, dtype
    **dict.fromkeys(["LSTMCell", "GRUCell"], [(3, 5, False), (3, 5, True, "cpu", torch.float64)]),
    "RNNCell": [(3, 5), (3, 5, False), (3, 5, False, "tanh", "cpu"), (3, 5, True, "relu"),
                (3, 5, True, "relu", None, torch.float64)],
}
KEYWORDS = [
    ("LSTM", {"input_size": 2, "hidden_size": 7}),
    ("LSTM", {"input_size": 2, "hidden_size": 7, "num_layers": 3, "proj_size": 3}),
    ("LSTM", {"input_size": 1, "hidden_size": 1, "bias": False, "batch_first": True}),
    ("GRU", {"input_size": 2, "hidden_size": 7, "bidirectional": True, "dropout": 0.3}),
    ("GRU", {"input_size": 4, "hidden_size": 3, "num_layers": 2, "bias": False}),
    ("RNN", {"input_size": 2, "hidden_size": 7, "nonlinearity": "relu", "num_layers": 2}),
    ("RNN", {"input_size": 2, "hidden_size": 7, "nonlinearity": "tanh", "batch_first": True}),
    ("RNN", {"input_size": 2, "hidden_size": 7, "dtype": torch.float64, "device": "cpu"}),
]
# (3, 5, **kwargs), each with batch_first False and True
LAYOUTS = [
    ("LSTM", {}), ("LSTM", {"num_layers": 3, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "proj_size": 2}), ("LSTM", {"num_layers": 2, "bias": False}),
    ("LSTM", {"num_layers": 2, "proj_size": 3, "bias": False, "bidirectional": True}),
    ("GRU", {}), ("GRU", {"num_layers": 3, "bidirectional": True}),
    ("GRU", {"num_layers": 2, "bias": False, "bidirectional": True}),
    ("RNN", {"nonlinearity": "relu"}), ("RNN", {"dropout": 0.5}),
    ("RNN", {"num_layers": 3, "bidirectional": True, "bias": False}),
]
# fmt: on
SAME_AS_NN = [(cls, args, {}) for cls, cases in POSITIONAL.items() for args in cases]
SAME_AS_NN += [(cls, (), kwargs) for cls, kwargs in KEYWORDS]
SAME_AS_NN += [(c, (3, 5), {**kw, "batch_first": bf}) for c, kw in LAYOUTS for bf in (False, True)]
SAME_AS_NN += [(c + "Cell", (3, 5), {**kw, **more}) for c, kw in MODES.values()
               for more in ({}, {"bias": False}, {"dtype": torch.float64})]  # fmt: skip


# argument lists, and single keyword arguments after (4, 3), that torch.nn rejects or that
# only some classes accept
BAD_POSITIONAL = [(4, 0), (4, -1), (0, 3), (-2, 3), (4.0, 3), (4, 3.0), ("4", 3), (4, 3, 0)]
BAD_POSITIONAL += [(4, 3, -1), (4, 3, 1.5), (4, 3, 2, "gelu"), (), (4,)]
BAD_POSITIONAL += [(4, 3, 1, True, False, 0.0, False, 0, None, None, None)]
BAD_KEYWORDS = {
    "num_layers": ["2"],
    "bias": [1, None],
    "batch_first": [0],
    "dropout": [1.5, -0.1, True, "0.1", None],
    # GRU and RNN refuse a proj_size other than 0, LSTM one that is not in [0, hidden_size)
    "proj_size": [0, 1, 2, 3, 5, -1, 1.5],
    "nonlinearity": ["relu", "sigmoid", None],
    "unknown": [1],
    "input_size": [4],
    "dtype": [torch.int32],
}
BAD_ARGS = [(args, {}) for args in BAD_POSITIONAL]
BAD_ARGS += [((4, 3), {k: v}) for k, values in BAD_KEYWORDS.items() for v in values]
BAD_ARGS += [((4, 3, 2, "relu"), {"nonlinearity": "tanh"})]
SAME_AS_NN += [(cls, args, kwargs) for cls in CLASSES for args, kwargs in BAD_ARGS]
# dropout with a single layer warns (a p of 1 written as an int, too), with more layers not
SAME_AS_NN += [(cls, (3, 4), {"num_layers": n, "dropout": p}) for cls in CLASSES
               for n, p in [(1, 0.2), (1, 1), (1, 1.0), (2, 0.5), (1, 0.0)]]  # fmt: skip


@pytest.mark.parametrize("cls,args,kwargs", SAME_AS_NN)
def test_same_module_as_torch_nn(cls, args, kwargs, same_error):
    """Where torch.nn raises, fusedrnn raises the same (type and message); where it accepts
    (e.g. RNN's nonlinearity keyword), fusedrnn builds the same module: configuration;
    parameter names, shapes, dtypes, order and, from the same seed, initial values (torch.nn's
    U(-1/sqrt(H), 1/sqrt(H))); the same warnings; the same repr when no backend is named, and
    that backend shown last when one is. The modules and the cells."""
    torch.manual_seed(123)
    try:
        ref, ref_w = _recorded(nn, cls, *args, **kwargs)
    except Exception:
        err = same_error(lambda lib: _build(lib, cls, *args, **kwargs))
        if "proj_size" in kwargs and cls != "LSTM":
            assert isinstance(err, ValueError) and "only supported for LSTM" in str(err)
        return
    torch.manual_seed(123)
    mod, mod_w = _recorded(fusedrnn, cls, *args, **kwargs)
    assert len(ref_w) == (getattr(ref, "dropout", 0) > 0 and ref.num_layers == 1)
    seen = [[(w.category, str(w.message)) for w in ws] for ws in (ref_w, mod_w)]
    assert seen[0] == seen[1]
    # the warning points at the user's line, not into fusedrnn
    assert all(w.filename == __file__ for w in mod_w)
    for attr in CONFIG_ATTRS:  # absent alike: a cell has fewer, an LSTM or GRU no nonlinearity
        got, want = (getattr(m, attr, AttributeError) for m in (mod, ref))
        assert got == want and type(got) is type(want), attr
    assert isinstance(mod, nn.Module) and type(mod).__name__ == cls
    assert repr(mod) == repr(ref) and mod.backend is None
    # backend is keyword-only: an 11th positional argument is refused as by torch.nn (see
    # BAD_POSITIONAL)
    named = _build(fusedrnn, cls, *args, **kwargs, backend="reference")
    assert named.backend == "reference" and repr(named) == f"{repr(ref)[:-1]}, backend='reference')"
    # names and order (no buffers: the state_dict holds the parameters alone), then shapes,
    # dtypes and values
    assert list(mod.named_buffers()) == []
    assert list(mod.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(list(mod.parameters()), list(ref.parameters()), rtol=0, atol=0)
    assert all(p.requires_grad for p in mod.parameters())
    if cls.endswith("Cell"):  # without a bias, bias_ih is None, as in torch.nn
        assert (mod.bias_ih is None) == (ref.bias_ih is None)
        return
    assert mod._flat_weights_names == ref._flat_weights_names
    shapes = [[[w.shape for w in ws] for ws in m.all_weights] for m in (mod, ref)]
    assert shapes[0] == shapes[1]
    # all_weights and _flat_weights hold the registered parameters themselves
    params = dict(mod.named_parameters())
    flat = [params[n] for n in mod._flat_weights_names]
    assert all(a is b for a, b in zip(mod._flat_weights, flat, strict=True))
    nested = [w for ws in mod.all_weights for w in ws]
    assert all(a is b for a, b in zip(nested, flat, strict=True))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_factory_kwargs_and_default_dtype(cls, dtype):
    mod = _build(fusedrnn, cls, 3, 4, 2, device=torch.device("cpu"), dtype=dtype)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in mod.parameters())
    meta = _build(fusedrnn, cls, 3, 4, device="meta", dtype=dtype)
    assert all(p.is_meta and p.dtype == dtype for p in meta.parameters())
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        mod = _build(fusedrnn, cls, 3, 4)
    finally:
        torch.set_default_dtype(old)
    assert all(p.dtype == dtype for p in mod.parameters())


# -- initialisation -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("hidden_size", [1, 7, 64])
def test_init_and_reset_are_uniform_in_plus_minus_one_over_sqrt_h(cls, hidden_size):
    mod = _build(fusedrnn, cls, 16, hidden_size, num_layers=2, bidirectional=True)
    bound = 1.0 / math.sqrt(hidden_size)
    values = torch.cat([p.detach().flatten() for p in mod.parameters()]).double()
    n = values.numel()
    assert values.abs().max() <= bound
    # U(-b, b): mean 0 and variance b^2/3; allow 5 standard errors
    assert abs(values.mean().item()) < 5 * bound / math.sqrt(3 * n)
    var = values.var().item()
    assert abs(var - bound**2 / 3) < 5 * bound**2 * math.sqrt(4 / (45 * n))
    # roughly flat: each of 4 bins holds a quarter of the values
    hist = torch.histc(values, bins=4, min=-bound, max=bound) / n
    assert torch.allclose(hist, torch.full_like(hist, 0.25), atol=5 * math.sqrt(0.1875 / n))
    # every parameter (weights and biases of every layer) is initialised, not left empty
    assert all(p.numel() < 4 or p.detach().std() > 0 for p in mod.parameters())
    # reset_parameters draws every parameter anew, within the same bound
    before = [p.detach().clone() for p in mod.parameters()]
    mod.reset_parameters()
    for a, b in zip(before, mod.parameters(), strict=True):
        assert not torch.equal(a, b)
        assert b.abs().max() <= bound
