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
from module_testlib import assert_outputs_close, flatten
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrizations, parametrize

import fusedrnn

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]

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


def _pair(mode, backend, rnn_pair, dtype=torch.float64):
    cls, kw = MODES[mode]
    return rnn_pair(cls, I, H, backend=backend, dtype=dtype, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_keys_shapes_and_round_trip(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    ref_sd, sd = ref.state_dict(), mod.state_dict()
    assert list(sd) == list(ref_sd)
    for k in sd:
        assert sd[k].shape == ref_sd[k].shape and torch.equal(sd[k], ref_sd[k])
    # strict loading in both directions, no converter
    fresh = _new(fusedrnn, mode, backend=cpu_backend).double()
    assert not torch.equal(fresh.weight_hh_l0, mod.weight_hh_l0)
    result = fresh.load_state_dict(ref_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = _x()
    assert_outputs_close(flatten(fresh(x)), flatten(ref(x)))


def test_load_state_dict_rejects_mismatches():
    mod = fusedrnn.LSTM(I, H, num_layers=2, backend="reference")
    other = nn.LSTM(I, H, num_layers=1)
    with pytest.raises(RuntimeError, match="Missing key"):
        mod.load_state_dict(other.state_dict())
    wrong_shape = nn.LSTM(I, H + 1, num_layers=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        mod.load_state_dict(wrong_shape.state_dict())
    result = mod.load_state_dict(other.state_dict(), strict=False)
    assert "weight_ih_l1" in result.missing_keys


@pytest.mark.parametrize("mode", MODES)
def test_optimizer_step_is_seen(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (ref, mod)]
    x = _x()
    before = flatten(mod(x))
    for _ in range(2):
        for m, opt in zip((ref, mod), opts, strict=True):
            opt.zero_grad()
            sum(o.square().sum() for o in flatten(m(x))).backward()
            opt.step()
    after = flatten(mod(x))
    assert not torch.allclose(after[0], before[0])
    assert_outputs_close(after, flatten(ref(x)))


@pytest.mark.parametrize("mode", MODES)
def test_load_state_dict_after_forward_is_seen(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    x = _x()
    mod(x)
    other = _new(nn, mode).double()
    mod.load_state_dict(other.state_dict())
    assert_outputs_close(flatten(mod(x)), flatten(other(x)))


@pytest.mark.parametrize("mode", MODES)
def test_dtype_conversions_are_seen(mode, cpu_backend):
    mod, ref = _new(fusedrnn, mode, backend=cpu_backend), _new(nn, mode)
    ref.load_state_dict(mod.state_dict())
    x = _x(torch.float32)
    mod(x)  # a forward in float32 first: nothing may be cached
    for convert in (
        lambda m: m.double(),
        lambda m: m.to(torch.float64),
        lambda m: m.float(),
        lambda m: m.to(dtype=torch.float64),
    ):
        convert(mod)
        convert(ref)
        dtype = mod.weight_ih_l0.dtype
        assert all(p.dtype == dtype for p in mod.parameters())
        xx = x.to(dtype)
        assert_outputs_close(flatten(mod(xx)), flatten(ref(xx)), **TOLERANCES[dtype])


@pytest.mark.parametrize("mode", MODES)
def test_weight_reassignment_is_seen(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    x = _x()
    mod(x)
    new_hh = torch.randn_like(mod.weight_hh_l0)
    new_ih = torch.randn_like(mod.weight_ih_l0)
    for m in (ref, mod):
        m.weight_hh_l0 = nn.Parameter(new_hh.clone())  # a new Parameter object
        with torch.no_grad():
            m.weight_ih_l0.copy_(new_ih)  # in place
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)))
    assert mod.weight_hh_l0 is mod._flat_weights[1]
    assert any(p is mod.weight_hh_l0 for p in mod.parameters())
    # .data replacement
    new_data = torch.randn_like(mod.weight_hh_l0)
    for m in (ref, mod):
        m.weight_hh_l0.data = new_data.clone()
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)))
    # the new parameter is trained
    sum(o.sum() for o in flatten(mod(x))).backward()
    assert mod.weight_hh_l0.grad is not None


@pytest.mark.parametrize("mode", MODES)
def test_functional_call_uses_substituted_params(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    params = {
        name: (torch.randn_like(p) * 0.5).requires_grad_() for name, p in mod.named_parameters()
    }
    x = _x()
    own = flatten(mod(x))
    got = flatten(functional_call(mod, params, (x,)))
    want = flatten(functional_call(ref, params, (x,)))
    assert_outputs_close(got, want)
    assert not torch.allclose(got[0], own[0])
    # gradients flow to the substituted tensors, not to the module's parameters
    grads = torch.autograd.grad(sum(o.sum() for o in got), list(params.values()))
    ref_grads = torch.autograd.grad(sum(o.sum() for o in want), list(params.values()))
    for name, a, b in zip(params, grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **EXACT, msg=name)
    assert all(p.grad is None for p in mod.parameters())
    # the module is unchanged afterwards
    assert_outputs_close(flatten(mod(x)), own)


@pytest.mark.parametrize("mode", MODES)
def test_functional_call_with_some_params_and_grad_transform(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    x = _x()
    w = torch.randn_like(mod.weight_hh_l0)

    def loss(m, weight):
        out = functional_call(m, {"weight_hh_l0": weight}, (x,))
        return out[0].square().sum()

    torch.testing.assert_close(
        torch.func.grad(lambda w_: loss(mod, w_))(w),
        torch.func.grad(lambda w_: loss(ref, w_))(w),
        **EXACT,
    )


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("kind", ["weight_norm", "orthogonal", "custom"])
def test_parametrized_weight_hh(mode, kind, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)

    class Scale(nn.Module):
        def forward(self, w):
            return 0.5 * w

    for m in (ref, mod):
        if kind == "weight_norm":
            parametrizations.weight_norm(m, "weight_hh_l0")
        elif kind == "orthogonal":
            parametrizations.orthogonal(m, "weight_hh_l0")
        else:
            parametrize.register_parametrization(m, "weight_hh_l0", Scale())
    mod.load_state_dict(ref.state_dict())
    assert list(mod.state_dict()) == list(ref.state_dict())
    x = _x()
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)))
    # training the parametrization's own parameters changes what the forward sees
    opts = [torch.optim.SGD(m.parameters(), lr=0.3) for m in (ref, mod)]
    for m, opt in zip((ref, mod), opts, strict=True):
        sum(o.square().sum() for o in flatten(m(x))).backward()
        opt.step()
    orig = mod.parametrizations.weight_hh_l0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in orig.parameters())
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)), rtol=1e-10, atol=1e-10)
    # removing the parametrization keeps the current value
    for m in (ref, mod):
        parametrize.remove_parametrizations(m, "weight_hh_l0")
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_deepcopy_is_independent(mode, cpu_backend):
    mod = _new(fusedrnn, mode, backend=cpu_backend).double()
    x = _x()
    want = flatten(mod(x))
    clone = copy.deepcopy(mod)
    assert clone.backend == cpu_backend
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(1.0)
    assert_outputs_close(flatten(clone(x)), want, rtol=0, atol=0)
    assert not torch.allclose(flatten(mod(x))[0], want[0])


@pytest.mark.parametrize("mode", MODES)
def test_pickle_round_trip(mode, cpu_backend):
    mod = _new(fusedrnn, mode, batch_first=True, backend=cpu_backend).double()
    mod.eval()
    x = _x().transpose(0, 1)
    loaded = pickle.loads(pickle.dumps(mod))
    assert type(loaded) is type(mod) and repr(loaded) == repr(mod)
    assert not loaded.training and loaded.batch_first and loaded.backend == cpu_backend
    assert_outputs_close(flatten(loaded(x)), flatten(mod(x)), rtol=0, atol=0)


def test_unpickling_state_without_backend_attribute():
    """Pickles written before ``backend`` existed load with backend=None."""
    for cls in (fusedrnn.GRU, fusedrnn.GRUCell):
        state = cls(I, H).__getstate__().copy()
        del state["backend"]
        restored = cls.__new__(cls)
        restored.__setstate__(state)
        assert restored.backend is None, cls


@pytest.mark.parametrize("mode", MODES)
def test_torch_save_and_load(mode, cpu_backend, rnn_pair):
    ref, mod = _pair(mode, cpu_backend, rnn_pair)
    x = _x()
    want = flatten(mod(x))
    # the whole module (needs weights_only=False: it is arbitrary Python)
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    assert type(whole) is type(mod)
    assert_outputs_close(flatten(whole(x)), want, rtol=0, atol=0)
    # a state_dict loads with weights_only=True, into either library
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh = _new(fusedrnn, mode, backend=cpu_backend).double()
    fresh.load_state_dict(sd)
    assert_outputs_close(flatten(fresh(x)), want, rtol=0, atol=0)
    ref2 = _new(nn, mode).double()
    ref2.load_state_dict(sd)
    assert_outputs_close(flatten(ref2(x)), flatten(ref(x)), rtol=0, atol=0)


def test_zero_grad_and_accumulation(cpu_backend, rnn_pair):
    ref, mod = _pair("LSTM", cpu_backend, rnn_pair)
    x = _x()
    for m in (ref, mod):
        for _ in range(2):  # gradients accumulate over two backward passes
            m(x)[0].sum().backward()
    for (name, p), q in zip(ref.named_parameters(), mod.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **EXACT, msg=name)
    mod.zero_grad()
    assert all(p.grad is None for p in mod.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_meta_init_to_empty_and_skip_init(mode, cpu_backend, rnn_pair, same_error):
    cls, kw = MODES[mode]
    ref, _ = _pair(mode, cpu_backend, rnn_pair)
    x = _x()
    meta = _new(fusedrnn, mode, device="meta", backend=cpu_backend)
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    assert all(p.device.type == "cpu" and p.abs().max() <= H**-0.5 for p in meta.parameters())
    meta.double().load_state_dict(ref.state_dict())
    assert_outputs_close(flatten(meta(x)), flatten(ref(x)))
    # torch.nn.utils.skip_init looks for a named ``device`` argument, which neither
    # torch.nn's nor fusedrnn's (*args, **kwargs) constructors show
    same_error(lambda lib: torch.nn.utils.skip_init(getattr(lib, cls), I, H, **kw))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_conversion_with_swapped_module_params(mode, cpu_backend, rnn_pair):
    """With swap_module_params_on_conversion, .double() swaps the Parameter objects'
    contents in place; nothing cached may go stale."""
    mod = _new(fusedrnn, mode, backend=cpu_backend)
    # torch.nn's own modules cannot be swapped (they keep weakrefs to their weights),
    # so the oracle is converted the ordinary way
    ref = _new(nn, mode)
    ref.load_state_dict(mod.state_dict())
    ref.double()
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        mod(_x(torch.float32))
        params = list(mod.parameters())
        mod.double()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    assert all(a is b for a, b in zip(params, mod.parameters(), strict=True))
    assert all(p.dtype == torch.float64 for p in mod.parameters())
    x = _x()
    assert_outputs_close(flatten(mod(x)), flatten(ref(x)))


def test_state_dict_of_a_model_holding_the_module(cpu_backend):
    """A model built on fusedrnn saves a checkpoint that loads into the same model built
    on torch.nn, and the other way round."""

    def model(lib, **kw):
        return nn.ModuleDict(
            {"rnn": lib.LSTM(I, H, num_layers=2, **kw), "head": nn.Linear(H, 2)}
        ).double()

    ours, theirs = model(fusedrnn, backend=cpu_backend), model(nn)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "rnn.weight_hh_l1" in ours.state_dict()
    x = _x()
    torch.testing.assert_close(
        ours["head"](ours["rnn"](x)[0]), theirs["head"](theirs["rnn"](x)[0]), **EXACT
    )
    ours.load_state_dict(model(nn).state_dict())
