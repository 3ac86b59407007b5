"""state_dict, serialization and stale-weight detection: whatever changes the weights
(an optimizer step, load_state_dict, .to(), reassignment, functional_call,
parametrizations) is seen by the next forward, exactly as torch.nn sees it."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from conftest import TOLERANCES
from module_testlib import assert_all_close, assert_outputs_close, flatten
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrizations, parametrize

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")

MODES = {
    "LSTM": ("LSTM", {"num_layers": 2, "bidirectional": True}),
    "LSTM_PROJ": ("LSTM", {"num_layers": 2, "proj_size": 2}),
    "GRU": ("GRU", {"num_layers": 2, "bidirectional": True}),
    "RNN_TANH": ("RNN", {"num_layers": 2}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu", "bias": False, "bidirectional": True}),
}
T, B, I, H = 4, 3, 3, 5
EXACT = {"rtol": 1e-12, "atol": 1e-12}


def _x(dtype=torch.float64):
    return torch.randn(T, B, I, dtype=dtype)


def _new(lib, mode, **kwargs):
    """A fresh float32 module of ``mode`` from ``lib`` (fusedrnn or torch.nn)."""
    cls, kw = MODES[mode]
    return getattr(lib, cls)(I, H, **kw, **kwargs)


def _pair(mode, backend, rnn_pair):
    cls, kw = MODES[mode]
    return rnn_pair(cls, I, H, backend=backend, **kw)


def _same(mod, ref, x, **tol):
    """``mod(x)`` gives ``ref(x)``'s outputs, by default to float64 round-off."""
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)), **tol)


def _step(modules, x, lr):
    """One SGD step of each module on the same squared-output loss."""
    for m in modules:
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        opt.zero_grad()
        sum(o.square().sum() for o in flatten(m(x))).backward()
        opt.step()


def _saved(obj, weights_only):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_keys_shapes_and_round_trip(mode, cpu_backend, rnn_pair, same_error):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    ref_sd, sd = ref.state_dict(), mod.state_dict()  # keys as torch.nn's: test_modules_construction
    # a module made on the meta device, then materialised and initialised
    fresh = _new(fusedrnn, mode, device="meta", backend=cpu_backend)
    fresh.to_empty(device="cpu")
    fresh.reset_parameters()
    assert all(p.device.type == "cpu" and p.abs().max() <= H**-0.5 for p in fresh.parameters())
    # torch.nn.utils.skip_init looks for a named ``device`` argument, which neither
    # torch.nn's nor fusedrnn's (*args, **kwargs) constructors show
    cls, kw = MODES[mode]
    same_error(lambda lib: torch.nn.utils.skip_init(getattr(lib, cls), I, H, **kw))
    # strict loading in both directions, no converter, into a module that already ran
    x = _x()
    fresh.double()(x)
    assert not torch.equal(fresh.weight_hh_l0, mod.weight_hh_l0)
    result = fresh.load_state_dict(ref_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _same(fresh, ref, x)
    # refused: keys missing (strict=False lists them) or of another size
    fewer = getattr(nn, cls)(I, H, **{**kw, "num_layers": 1, "bidirectional": False}).state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(fewer)
    missing = fresh.load_state_dict(fewer, strict=False).missing_keys
    assert missing == [k for k in sd if k not in fewer] != []
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(getattr(nn, cls)(I, H + 1, **kw).state_dict())
    # a saved state_dict loads with weights_only=True, into either library (and so does a
    # checkpoint of a model holding the module: its keys are these under a prefix)
    saved = _saved(sd, weights_only=True)
    fresh, ref2 = _new(fusedrnn, mode, backend=cpu_backend).double(), _new(nn, mode).double()
    fresh.load_state_dict(saved)
    ref2.load_state_dict(saved)
    _same(fresh, mod, x, rtol=0, atol=0)
    _same(ref2, ref, x, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_weight_changes_are_seen(mode, cpu_backend, monkeypatch):
    """dtype conversions (the last one swapping the Parameters' contents in place), then
    optimizer steps, a new Parameter object, an in-place copy, a ``.data`` assignment, and
    functional_call's substituted parameters."""
    mod, ref = _new(fusedrnn, mode, backend=cpu_backend), _new(nn, mode)
    ref.load_state_dict(mod.state_dict())
    x = _x(torch.float32)
    mod(x)  # a forward in float32 first: nothing may be cached

    def swapped_double(m):
        """With swap_module_params_on_conversion, .double() swaps the Parameter objects'
        contents in place. torch.nn's own modules cannot be swapped (they keep weakrefs to
        their weights), so the oracle is converted the ordinary way."""
        if m is ref:
            return m.double()
        params = list(m.parameters())
        with monkeypatch.context() as patch:
            patch.setattr(torch.__future__, "_swap_module_params_on_conversion", True)
            m.double()
        assert all(a is b for a, b in zip(params, m.parameters(), strict=True))

    conversions = [nn.Module.double, lambda m: m.to(torch.float64), nn.Module.float]
    conversions += [lambda m: m.to(dtype=torch.float64), nn.Module.float, swapped_double]
    for convert in conversions:
        convert(mod)
        convert(ref)
        dtype = mod.weight_ih_l0.dtype
        assert all(p.dtype == dtype for p in mod.parameters())
        _same(mod, ref, x.to(dtype), **TOLERANCES[dtype])
    x = x.double()  # swapped_double came last
    before = flatten(mod(x))
    for _ in range(2):
        _step((ref, mod), x, lr=0.5)
    assert not torch.allclose(flatten(mod(x))[0], before[0])
    _same(mod, ref, x)
    new_hh, new_ih = torch.randn_like(mod.weight_hh_l0), torch.randn_like(mod.weight_ih_l0)
    for m in (ref, mod):
        m.weight_hh_l0 = nn.Parameter(new_hh.clone())  # a new Parameter object
        with torch.no_grad():
            m.weight_ih_l0.copy_(new_ih)  # in place
    _same(mod, ref, x)
    assert mod.weight_hh_l0 is mod._flat_weights[1]
    assert any(p is mod.weight_hh_l0 for p in mod.parameters())
    new_data = torch.randn_like(mod.weight_hh_l0)
    for m in (ref, mod):
        m.weight_hh_l0.data = new_data.clone()
    _same(mod, ref, x)
    # the new parameter is trained
    sum(o.sum() for o in flatten(mod(x))).backward()
    assert mod.weight_hh_l0.grad is not None
    mod.zero_grad()
    # functional_call: substituted tensors are used and get the gradients, not the module's
    params = {n: (torch.randn_like(p) * 0.5).requires_grad_() for n, p in mod.named_parameters()}
    own = flatten(mod(x))
    got = flatten(functional_call(mod, params, (x,)))
    want = flatten(functional_call(ref, params, (x,)))
    assert_outputs_close(got, want)
    assert not torch.allclose(got[0], own[0])
    grads = torch.autograd.grad(sum(o.sum() for o in got), list(params.values()))
    ref_grads = torch.autograd.grad(sum(o.sum() for o in want), list(params.values()))
    assert_all_close(grads, ref_grads, list(params), **EXACT)
    assert all(p.grad is None for p in mod.parameters())
    assert_outputs_close(flatten(mod(x)), own)  # the module is unchanged afterwards
    # one substituted parameter, under a grad transform
    w = torch.randn_like(mod.weight_hh_l0)

    def grad_of_loss(m):
        return torch.func.grad(
            lambda w_: functional_call(m, {"weight_hh_l0": w_}, (x,))[0].square().sum()
        )(w)

    torch.testing.assert_close(grad_of_loss(mod), grad_of_loss(ref), **EXACT)


class _Half(nn.Module):
    def forward(self, w):
        return 0.5 * w


PARAMETRIZE = {
    "weight_norm": lambda m: parametrizations.weight_norm(m, "weight_hh_l0"),
    "orthogonal": lambda m: parametrizations.orthogonal(m, "weight_hh_l0"),
    "custom": lambda m: parametrize.register_parametrization(m, "weight_hh_l0", _Half()),
}


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("kind", PARAMETRIZE)
def test_parametrized_weight_hh(mode, kind, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    for m in (ref, mod):
        PARAMETRIZE[kind](m)
    mod.load_state_dict(ref.state_dict())
    assert list(mod.state_dict()) == list(ref.state_dict())
    x = _x()
    _same(mod, ref, x)
    # training the parametrization's own parameters changes what the forward sees
    _step((ref, mod), x, lr=0.3)
    orig = mod.parametrizations.weight_hh_l0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in orig.parameters())
    _same(mod, ref, x, rtol=1e-10, atol=1e-10)
    # removing the parametrization keeps the current value
    for m in (ref, mod):
        parametrize.remove_parametrizations(m, "weight_hh_l0")
    _same(mod, ref, x, rtol=1e-10, atol=1e-10)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    # the whole module needs weights_only=False: it is arbitrary Python
    "torch.save": lambda m: _saved(m, weights_only=False),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", COPIES)
def test_copy_is_equal_and_independent(mode, how, cpu_backend):
    mod = _new(fusedrnn, mode, batch_first=True, backend=cpu_backend).double().eval()
    x = _x().transpose(0, 1)
    want = flatten(mod(x))
    clone = COPIES[how](mod)
    assert type(clone) is type(mod) and repr(clone) == repr(mod)
    assert not clone.training and clone.batch_first and clone.backend == cpu_backend
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(1.0)
    assert_outputs_close(flatten(clone(x)), want, rtol=0, atol=0)
    assert not torch.allclose(flatten(mod(x))[0], want[0])


def test_unpickling_state_without_backend_attribute():
    """Pickles written before ``backend`` existed load with backend=None."""
    for cls in (fusedrnn.GRU, fusedrnn.GRUCell):
        state = cls(I, H).__getstate__().copy()
        del state["backend"]
        restored = cls.__new__(cls)
        restored.__setstate__(state)
        assert restored.backend is None, cls
