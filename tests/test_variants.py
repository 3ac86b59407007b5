"""Cell variants (layer norm, zoneout, peephole, CIFG) against an independent oracle.

The oracle below is written from the math in docs/variants.md as a per-sequence, per-step
loop of elementary vector ops (matrix-vector products, a hand-written layer norm, explicit
sigmoid). It shares no code with fusedrnn.ops.reference, and it runs every sequence
of a packed batch on its own, so it checks the cuDNN packed semantics independently too.
Each backend's layer op against the reference op, and the reference op's gradcheck, with every
option: tests/test_conformance.py.
"""

from __future__ import annotations

import copy
from itertools import combinations

import pytest
import torch
from layer_cases import Case, make_inputs
from module_testlib import assert_all_close, assert_outputs_close, flatten
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import variants

pytestmark = pytest.mark.usefixtures("one_thread")

T, B, I, H, P = 4, 3, 3, 5, 2
LENGTHS = [4, 3, 1]
EPS = 1e-5
TOL = {"rtol": 1e-10, "atol": 1e-10}
TOLS = {torch.float64: TOL, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)


# -- the independent oracle -------------------------------------------------------------------
def _sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _ln(x, w, b):
    mu = x.mean()
    y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean() + EPS) * w
    return y if b is None else y + b


def _zone(new, old, keep):
    """``keep`` (a training mask, or in evaluation the probability p) of the old state."""
    return new if keep is None else keep * old + (1 - keep) * new


def _pre(x, h, prm, kw):
    """The input and recurrent pre-activations, each layer-normalised before its bias."""
    a, r = prm["weight_ih"] @ x, prm["weight_hh"] @ h
    if kw.get("layer_norm"):
        a = _ln(a, prm["layer_norm_ih_weight"], prm.get("layer_norm_ih_bias"))
        r = _ln(r, prm["layer_norm_hh_weight"], prm.get("layer_norm_hh_bias"))
    if "bias_ih" in prm:
        a, r = a + prm["bias_ih"], r + prm["bias_hh"]
    return a, r


def _lstm_step(x, h, c, prm, kw, kh, kc):
    a, r = _pre(x, h, prm, kw)
    blocks = list((a + r).split(c.shape[0]))
    zi, zf, zg, zo = blocks[:1] + [None] + blocks[1:] if kw.get("cifg") else blocks
    if kw.get("peephole"):
        zi = zi + prm["weight_ch"][0] * c
        if zf is not None:
            zf = zf + prm["weight_ch"][1] * c
    i = _sig(zi)
    f = 1 - i if zf is None else _sig(zf)
    c_new = f * c + i * torch.tanh(zg)
    if kw.get("peephole"):
        zo = zo + prm["weight_ch"][-1] * c_new
    ln_c = (prm.get("layer_norm_c_weight"), prm.get("layer_norm_c_bias"))
    h_new = _sig(zo) * torch.tanh(_ln(c_new, *ln_c) if kw.get("layer_norm") else c_new)
    if "weight_hr" in prm:
        h_new = prm["weight_hr"] @ h_new
    return _zone(h_new, h, kh), _zone(c_new, c, kc)


def _gru_step(x, h, c, prm, kw, kh, kc):
    (a_r, a_z, a_n), (r_r, r_z, r_n) = (t.split(h.shape[0]) for t in _pre(x, h, prm, kw))
    r, z = _sig(a_r + r_r), _sig(a_z + r_z)
    return _zone((1 - z) * torch.tanh(a_n + r * r_n) + z * h, h, kh), None


def oracle(mode, params, kw, x, lengths, h0, c0, num_layers, bidir, keeps):
    """x [T, B, I] padded -> (y [T, B, D*Hout] zero-padded, h_n [L*D, B, Hout], c_n), each
    sequence on its own. keeps: per layer-direction (h's, c's) zoneout: in training the masks
    padded to [T, B, .], in evaluation the probabilities; None where off."""
    dirs, step = 2 if bidir else 1, _lstm_step if mode == "LSTM" else _gru_step
    sfx = [f"_l{k // dirs}" + ("_reverse" if k % dirs else "") for k in range(num_layers * dirs)]
    prms = [{k[: -len(s)]: v for k, v in params.items() if k.endswith(s)} for s in sfx]
    ys, h_n, c_n = [], [[] for _ in sfx], [[] for _ in sfx]
    for b, n in enumerate(lengths):
        seq = list(x[:n, b])
        for layer in range(num_layers):
            outs = []
            for d in range(dirs):
                idx = layer * dirs + d
                h, c, out = h0[idx, b], (c0[idx, b] if c0 is not None else None), [None] * n
                kh, kc = (k[:, b] if torch.is_tensor(k) else [k] * n for k in keeps[idx])
                for t in reversed(range(n)) if d else range(n):
                    h, c = step(seq[t], h, c, prms[idx], kw, kh[t], kc[t])
                    out[t] = h
                h_n[idx].append(h)
                c_n[idx].append(c)
                outs.append(out)
            seq = [torch.cat(hs) for hs in zip(*outs, strict=True)]  # directions side by side
        ys.append(torch.stack(seq + [seq[0].new_zeros(seq[0].shape)] * (x.shape[0] - n)))
    return (torch.stack(ys, 1), torch.stack([torch.stack(hs) for hs in h_n]),
            torch.stack([torch.stack(cs) for cs in c_n]) if c0 is not None else None)  # fmt: skip


# -- the module against the oracle ------------------------------------------------------------
def _make(mode, kw, num_layers=2, bidir=True, bias=True, proj=0, backend=None):
    kw = {**kw, **({"proj_size": proj} if proj else {})}  # GRU takes no proj_size at all
    m = getattr(fusedrnn, mode)(I, H, num_layers, bias=bias, bidirectional=bidir,
                                dtype=torch.float64, backend=backend, **kw)  # fmt: skip
    with torch.no_grad():  # every parameter random, LN gains around 1, so each one matters
        for name, p in m.named_parameters():
            p.uniform_(-0.6, 0.6).add_(float("layer_norm" in name and "weight" in name))
    return m


def _keeps(x, kw, is_lstm, hout, groups, dtype, training):
    """The oracle's zoneout of each layer-direction (h's, c's), None where p = 0: in evaluation
    p; in training the documented draw, h then c: uniform < p is Bernoulli(p), the module's
    draw number for number (run from the seed the module ran from), in float64, padded."""
    packed = isinstance(x, PackedSequence)

    def draw(p, width):
        mask = (torch.rand(*x.data.shape[: 2 - packed], width, dtype=dtype) < p).double()
        return pad_packed_sequence(PackedSequence(mask, x.batch_sizes))[0] if packed else mask

    zo = kw.get("zoneout", 0.0)
    zo = zo if isinstance(zo, tuple) else (zo, zo if is_lstm else 0.0)
    probs = list(zip(zo, (hout, H), strict=True))
    if not training:
        return [tuple(p or None for p, _ in probs)] * groups
    return [tuple(draw(p, w) if p else None for p, w in probs) for _ in range(groups)]


def _check_against_oracle(mode, kw, packed, training, num_layers=2, bidir=True, bias=True,
                          proj=0, lengths=None, dtype=torch.float64, backend=None):  # fmt: skip
    """The module (in ``dtype``) against the float64 oracle with the same weights and masks;
    outputs and the gradients of x, h0, c0 and every parameter."""
    m64 = _make(mode, kw, num_layers, bidir, bias, proj, backend)
    m = copy.deepcopy(m64).to(dtype).train(training)
    hout, n, n_states = proj or H, 3 if mode == "LSTM" else 2, num_layers * (2 if bidir else 1)
    lengths = lengths or LENGTHS
    lengths = lengths if packed else [max(lengths)] * len(lengths)
    batch = len(lengths)
    shapes = [(max(lengths), batch, I), (n_states, batch, hout), (n_states, batch, H)][:n]
    inputs = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    run_in = [t.detach().to(dtype).requires_grad_() for t in inputs]

    torch.manual_seed(1234)
    x = pack_padded_sequence(run_in[0], torch.tensor(lengths)) if packed else run_in[0]
    y, hn = m(x, tuple(run_in[1:]) if n == 3 else run_in[1])
    torch.manual_seed(1234)
    keeps = _keeps(x, kw, n == 3, hout, n_states, dtype, training)
    params = dict(m64.named_parameters())
    x0, h0, c0 = [*inputs, None][:3]
    outs_o = oracle(mode, params, kw, x0, lengths, h0, c0, num_layers, bidir, keeps)[:n]
    outs = [pad_packed_sequence(y)[0] if packed else y, *(hn if n == 3 else [hn])]
    assert_all_close(outs, [o.to(dtype) for o in outs_o], ["y", "h_n", "c_n"][:n], **TOLS[dtype])
    ups = [torch.randn_like(o) for o in outs_o]
    grads = torch.autograd.grad(outs, run_in + list(m.parameters()), [u.to(dtype) for u in ups])
    grads_o = torch.autograd.grad(outs_o, inputs + list(params.values()), ups)
    names = ["x", "h0", "c0"][:n] + list(params)
    assert_all_close(grads, [g.to(dtype) for g in grads_o], names, **TOLS[dtype])
    for name, g in zip(names, grads, strict=True):
        assert g.abs().sum() > 0 or name == "c0", f"grad of {name} is zero"


VARIANTS = {  # (mode, name) -> the module's variant options
    ("LSTM", "ln"): {"layer_norm": True},
    ("LSTM", "peephole"): {"peephole": True},
    ("LSTM", "cifg"): {"cifg": True},
    ("LSTM", "cifg_peephole"): {"cifg": True, "peephole": True},
    ("LSTM", "zoneout"): {"zoneout": 0.3},
    ("LSTM", "zoneout_hc"): {"zoneout": (0.2, 0.5)},
    ("LSTM", "zoneout_c_only"): {"zoneout": (0.0, 0.4)},
    ("LSTM", "all"): {"layer_norm": True, "zoneout": (0.25, 0.35), "peephole": True, "cifg": True},
    ("LSTM", "ln_peephole_zoneout"): {"layer_norm": True, "zoneout": 0.2, "peephole": True},
    ("GRU", "ln"): {"layer_norm": True},
    ("GRU", "zoneout"): {"zoneout": 0.3},
    ("GRU", "ln_zoneout"): {"layer_norm": True, "zoneout": 0.25},
}
MIXED = [("LSTM", "all"), ("LSTM", "ln_peephole_zoneout"), ("GRU", "ln_zoneout")]  # combined


def _rows(variants, trainings=(True, False), **setup):
    """Oracle cases: each (mode, name) of ``variants`` dense and packed, in each of
    ``trainings``, with ``setup`` (stack shape, lengths, dtype) for _check_against_oracle."""
    tags = [f"{k}={v}".replace("torch.", "").replace(" ", "") for k, v in setup.items()]
    return [
        pytest.param(mode, name, packed, training, setup, id="-".join(
            [mode, name, ("dense", "packed")[packed], ("eval", "train")[training], *tags]))
        for mode, name in variants for packed in (False, True) for training in trainings
    ]  # fmt: skip


ORACLE_CASES = [
    *_rows(VARIANTS),  # every variant in two bidirectional layers with biases
    *_rows(MIXED, [True], num_layers=1, bidir=False, bias=False),
    *_rows(MIXED[:2], [True], proj=P),
    *(row for lengths in ([1], [1, 1, 1], [5], [3, 3, 2, 1, 1])  # one step, one sequence
      for row in _rows(MIXED[::2], [True], lengths=lengths)),
    *_rows(MIXED, dtype=torch.float32),  # the module in float32, the oracle in float64
    *_rows([("LSTM", "cifg")], [True], backend="reference"),  # the default is "cpu"
]  # fmt: skip


@pytest.mark.parametrize("mode,variant,packed,training,setup", ORACLE_CASES)
def test_variant_matches_oracle(mode, variant, packed, training, setup):
    _check_against_oracle(mode, VARIANTS[mode, variant], packed, training, **setup)


# -- zoneout ----------------------------------------------------------------------------------
def _seeded(seed, f, *args):
    torch.manual_seed(seed)
    return f(*args)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_zoneout_masks_follow_the_seed_and_zero_is_plain(mode):
    """Training masks follow the seed, and differ from evaluation and from the plain cell;
    zoneout 0 is the plain cell bit for bit."""
    cls = getattr(fusedrnn, mode)
    m = _make(mode, {"zoneout": 0.4})
    plain = cls(I, H, 2, bidirectional=True, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    a, b, c = (_seeded(seed, m.train(), x)[0] for seed in (7, 7, 8))
    outs = (a, c, m.eval()(x)[0], plain(x)[0])  # two seeds, evaluation, the plain cell
    assert torch.equal(a, b) and not any(torch.allclose(u, v) for u, v in combinations(outs, 2))
    m = cls(I, H, 2, bidirectional=True, zoneout=0.0, backend="reference")
    plain = cls(I, H, 2, bidirectional=True, backend="reference")
    plain.load_state_dict(m.state_dict())
    assert not m.cell_options.enabled and list(m.state_dict()) == list(plain.state_dict())
    x = torch.randn(T, B, I)
    assert_outputs_close(flatten(m.train()(x)), flatten(plain.train()(x)), rtol=0, atol=0)


# -- parameters, shapes, state_dict -----------------------------------------------------------
def test_cifg_shapes_options_and_repr():
    kw = {"layer_norm": True, "zoneout": (0.1, 0.2), "peephole": True, "cifg": True}
    m = fusedrnn.LSTM(I, H, 2, proj_size=P, **kw)
    assert m.weight_ih_l0.shape == (3 * H, I) and m.weight_hh_l0.shape == (3 * H, P)
    assert m.bias_ih_l1.shape == (3 * H,) and m.bias_hh_l1.shape == (3 * H,)
    assert m.weight_ih_l1.shape == (3 * H, P) and m.weight_hr_l0.shape == (P, H)
    assert m.weight_ch_l0.shape == (2, H)
    assert fusedrnn.LSTM(I, H, peephole=True).weight_ch_l0.shape == (3, H)
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.LSTM(I, H, 2, proj_size=P).load_state_dict(m.state_dict(), strict=False)
    y, (h, c) = m(torch.randn(T, B, I))
    assert y.shape == (T, B, P) and h.shape == (2, B, P) and c.shape == (2, B, H)
    opts = variants.parse("LSTM", True, 0.2, True, True)
    assert opts == variants.CellOptions(True, 0.2, 0.2, True, True)
    assert opts.gate_count("LSTM") == 3 and variants.CellOptions().gate_count("LSTM") == 4
    assert opts.names() == ["layer_norm", "zoneout", "peephole", "cifg"]
    assert not fusedrnn.RNN(I, H).cell_options.enabled
    assert variants.parse("GRU", zoneout=0.3) == variants.CellOptions(zoneout_h=0.3)
    want = [(f"layer_norm_{k}", (3 * H,)) for k in ("ih_weight", "ih_bias", "hh_weight", "hh_bias")]
    want += [("layer_norm_c_weight", (H,)), ("layer_norm_c_bias", (H,)), ("weight_ch", (2, H))]
    assert [s[:2] for s in opts.param_specs("LSTM", H, bias=True)] == want
    with pytest.raises(AttributeError):
        opts.cifg = False  # frozen
    assert all(f"{k}={v}" in repr(m) for k, v in kw.items())


@pytest.mark.parametrize("mode,kw", [
    ("LSTM", {"layer_norm": True, "peephole": True, "zoneout": 0.1}), ("LSTM", {"layer_norm": True}),
    ("GRU", {"layer_norm": True, "zoneout": 0.2}), ("GRU", {"layer_norm": True}),
])  # fmt: skip
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_superset_of_torch_nn(mode, kw, bias):
    """torch.nn's keys first, then the variants'. The layer norm starts (and is reset) at
    gains 1 and biases 0; with a torch.nn state_dict loaded (strict=False) it still changes
    the outputs, and every parameter gets a gradient."""
    ref = getattr(nn, mode)(I, H, 2, bias=bias, bidirectional=True, dtype=torch.float64)
    m = getattr(fusedrnn, mode)(I, H, 2, bias=bias, bidirectional=True, dtype=torch.float64, **kw)
    ln = [n for n, _ in m.named_parameters() if n.startswith("layer_norm")]
    assert len(ln) == (3 if mode == "LSTM" else 2) * (2 if bias else 1) * 4
    for _ in range(2):  # at init, and after a reset
        for n in ln:
            assert torch.equal(getattr(m, n), torch.full_like(getattr(m, n), "_weight_" in n)), n
        m.reset_parameters()
    ref_keys = list(ref.state_dict())
    extra = [n for group in m.cell_options.param_names(mode, H, bias, 2, True) for n in group]
    assert list(m.state_dict()) == ref_keys + extra
    assert "layer_norm_ih_weight_l1_reverse" in extra
    assert ("layer_norm_hh_bias_l0" in extra) == bias
    assert ("layer_norm_c_weight_l0" in extra) == (mode == "LSTM")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    result = m.load_state_dict(ref.state_dict(), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == extra
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k] if k in ref_keys else before[k])
    with pytest.raises(RuntimeError, match="Missing key"):
        m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    out = m.eval()(x)[0]
    assert not torch.allclose(out, ref(x)[0])
    out.square().sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_layouts_compile_and_dropout_with_variants():
    """batch_first, unbatched and compiled calls give the plain call's results; zoneout and
    inter-layer dropout draw from the seed together, and dropout is off in evaluation."""
    m = _make("LSTM", {"layer_norm": True, "peephole": True, "zoneout": 0.2}, bidir=False).eval()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y = m(x)[0]
    m.batch_first = True
    torch.testing.assert_close(m(x.transpose(0, 1))[0].transpose(0, 1), y, **TOL)
    m.batch_first = False
    torch.testing.assert_close(m(x[:, 1])[0], y[:, 1], **TOL)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x)[0], y, **TOL)
    m.train()  # the compiled module draws the same zoneout masks from the same seed
    assert torch.equal(_seeded(5, compiled, x)[0], _seeded(5, m, x)[0])
    m.dropout = 0.5
    a = _seeded(3, m, x)[0]
    assert torch.equal(a, _seeded(3, m, x)[0])
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(m.eval()(x)[0], y, **TOL)


# -- invalid options and backends -------------------------------------------------------------
@pytest.mark.parametrize(
    "ctor,exc,match",
    [
        (lambda: fusedrnn.GRU(I, H, peephole=True), ValueError, "peephole is an LSTM-only"),
        (lambda: fusedrnn.GRU(I, H, cifg=True), ValueError, "cifg is an LSTM-only"),
        (lambda: fusedrnn.GRU(I, H, zoneout=(0.1, 0.2)), ValueError, "GRU has no cell state"),
        (lambda: fusedrnn.RNN(I, H, layer_norm=True), ValueError, "LSTM and GRU only, not RNN"),
        (lambda: fusedrnn.RNN(I, H, zoneout=0.1), ValueError, "LSTM and GRU only"),
        (lambda: fusedrnn.LSTM(I, H, zoneout=1.0), ValueError, r"zoneout should be .*\[0, 1\)"),
        (lambda: fusedrnn.LSTM(I, H, zoneout=-0.1), ValueError, "zoneout should be"),
        (lambda: fusedrnn.LSTM(I, H, zoneout=(0.1, 1.5)), ValueError, "zoneout should be"),
        (lambda: fusedrnn.LSTM(I, H, zoneout=(0.1,)), ValueError, r"pair \(p_h, p_c\)"),
        (lambda: fusedrnn.LSTM(I, H, zoneout=True), ValueError, "zoneout should be"),
        (lambda: fusedrnn.LSTM(I, H, zoneout="0.1"), ValueError, "zoneout should be"),
        (lambda: fusedrnn.LSTM(I, H, layer_norm=1), TypeError, "layer_norm should be of type"),
        (lambda: fusedrnn.LSTM(I, H, cifg="yes"), TypeError, "cifg should be of type bool"),
        # the variant options are keyword-only
        (lambda: fusedrnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, None, True),
         TypeError, None),
    ],
)  # fmt: skip
def test_invalid_options_raise(ctor, exc, match):
    with pytest.raises(exc, match=match):
        ctor()


@pytest.mark.parametrize("backend", fusedrnn.backends.BACKENDS)
def test_each_backend_takes_or_refuses_the_variants(backend):
    """A backend that runs on CPU tensors here: its one layer op takes the variants as keyword
    options (the face the stack driver calls for plain and variant layers alike; their results
    against the reference op's, so none is dropped: tests/test_conformance.py) and refuses an
    option it does not know rather than running the plain cell. Any other: a variant module
    on it raises an error that names it."""
    if backend in fusedrnn.available_backends("cpu"):
        plain = make_inputs(Case("gru", bias=False), torch.float64)  # the positional arguments
        with pytest.raises(TypeError):
            fusedrnn.backends.get(backend).layer(*plain.values(), layer_norm=True)
    else:
        with pytest.raises(fusedrnn.BackendUnavailableError, match=f"{backend!r}"):
            fusedrnn.LSTM(I, H, layer_norm=True, backend=backend)(torch.randn(T, B, I))
