"""Cell variants (layer norm, zoneout, peephole, CIFG) against an independent oracle.

The oracle below is written from the math in docs/variants.md as a per-sequence, per-step
loop of elementary vector ops (matrix-vector products, a hand-written layer norm, explicit
sigmoid). It shares no code with fusedrnn.ops.reference, and it runs every sequence
of a packed batch on its own, so it checks the cuDNN packed semantics independently too.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import variants
from fusedrnn.ops import reference

pytestmark = pytest.mark.usefixtures("one_thread")

T, B, I, H, P = 4, 3, 3, 5, 2
LENGTHS = [4, 3, 1]
EPS = 1e-5
TOL = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)


# -- the independent oracle -------------------------------------------------------------------


def _sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _ln(x, w, b):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    y = (x - mu) / torch.sqrt(var + EPS) * w
    return y if b is None else y + b


def _zone(new, old, mask, p, training):
    if training and mask is not None:
        return mask * old + (1 - mask) * new
    if not training and p > 0:
        return p * old + (1 - p) * new
    return new


def _pre(x, h, prm, kw):
    """The input and recurrent pre-activations, each layer-normalised before its bias."""
    a = prm["weight_ih"] @ x
    r = prm["weight_hh"] @ h
    if kw.get("layer_norm"):
        a = _ln(a, prm["layer_norm_ih_weight"], prm.get("layer_norm_ih_bias"))
        r = _ln(r, prm["layer_norm_hh_weight"], prm.get("layer_norm_hh_bias"))
    if "bias_ih" in prm:
        a = a + prm["bias_ih"]
        r = r + prm["bias_hh"]
    return a, r


def _lstm_step(x, h, c, prm, kw, mh, mc, training):
    hid = c.shape[0]
    a, r = _pre(x, h, prm, kw)
    z = a + r
    blocks = [z[k * hid : (k + 1) * hid] for k in range(z.shape[0] // hid)]
    if kw.get("cifg"):
        zi, zg, zo = blocks
        zf = None
    else:
        zi, zf, zg, zo = blocks
    if kw.get("peephole"):
        w = prm["weight_ch"]
        zi = zi + w[0] * c
        if zf is not None:
            zf = zf + w[1] * c
    i = _sig(zi)
    f = 1 - i if zf is None else _sig(zf)
    c_new = f * c + i * torch.tanh(zg)
    if kw.get("peephole"):
        zo = zo + prm["weight_ch"][-1] * c_new
    cc = c_new
    if kw.get("layer_norm"):
        cc = _ln(c_new, prm["layer_norm_c_weight"], prm.get("layer_norm_c_bias"))
    h_new = _sig(zo) * torch.tanh(cc)
    if "weight_hr" in prm:
        h_new = prm["weight_hr"] @ h_new
    p_h, p_c = _probs(kw, True)
    return _zone(h_new, h, mh, p_h, training), _zone(c_new, c, mc, p_c, training)


def _gru_step(x, h, prm, kw, mh, training):
    hid = h.shape[0]
    a, r = _pre(x, h, prm, kw)
    rr = _sig(a[:hid] + r[:hid])
    zz = _sig(a[hid : 2 * hid] + r[hid : 2 * hid])
    n = torch.tanh(a[2 * hid :] + rr * r[2 * hid :])
    h_new = (1 - zz) * n + zz * h
    p_h, _ = _probs(kw, False)
    return _zone(h_new, h, mh, p_h, training)


def _probs(kw, is_lstm):
    zo = kw.get("zoneout", 0.0)
    if isinstance(zo, tuple):
        return zo
    return zo, (zo if is_lstm else 0.0)


def oracle(mode, params, kw, x, lengths, h0, c0, num_layers, bidir, masks, training):
    """x [T, B, I] padded -> (y [T, B, D*Hout] zero-padded, h_n [L*D, B, Hout], c_n).

    masks: per layer-direction (mask_h, mask_c) padded to [T, B, .], or None."""
    dirs = 2 if bidir else 1
    seq, batch = x.shape[0], x.shape[1]
    layer_in = [[x[t, b] for t in range(lengths[b])] for b in range(batch)]
    h_n, c_n = [], []
    for layer in range(num_layers):
        per_dir = []
        for d in range(dirs):
            idx = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            prm = {k[: -len(sfx)]: v for k, v in params.items() if k.endswith(sfx)}
            mh_all, mc_all = masks[idx] if masks is not None else (None, None)
            ys = [[None] * lengths[b] for b in range(batch)]
            hs, cs = [], []
            for b in range(batch):
                h = h0[idx, b]
                c = c0[idx, b] if c0 is not None else None
                steps = range(lengths[b])
                for t in reversed(steps) if d else steps:
                    mh = mh_all[t, b] if mh_all is not None else None
                    mc = mc_all[t, b] if mc_all is not None else None
                    if mode == "LSTM":
                        h, c = _lstm_step(layer_in[b][t], h, c, prm, kw, mh, mc, training)
                    else:
                        h = _gru_step(layer_in[b][t], h, prm, kw, mh, training)
                    ys[b][t] = h
                hs.append(h)
                cs.append(c)
            h_n.append(torch.stack(hs))
            if c0 is not None:
                c_n.append(torch.stack(cs))
            per_dir.append(ys)
        layer_in = [
            [torch.cat([per_dir[d][b][t] for d in range(dirs)]) for t in range(lengths[b])]
            for b in range(batch)
        ]
    width = layer_in[0][0].shape[0]
    zero = x.new_zeros(width)
    y = torch.stack(
        [
            torch.stack([layer_in[b][t] if t < lengths[b] else zero for b in range(batch)])
            for t in range(seq)
        ]
    )
    return y, torch.stack(h_n), torch.stack(c_n) if c0 is not None else None


def _packed_to_padded(data, batch_sizes, width):
    """Packed [N, K] (sorted batch) -> padded [T, B, K] with zeros."""
    out = data.new_zeros(len(batch_sizes), int(batch_sizes[0]), width)
    start = 0
    for t, n in enumerate(batch_sizes.tolist()):
        out[t, :n] = data[start : start + n]
        start += n
    return out


# -- helpers ----------------------------------------------------------------------------------


def _make(mode, kw, num_layers=2, bidir=True, bias=True, proj=0):
    extra = {"proj_size": proj} if proj else {}
    m = getattr(fusedrnn, mode)(
        I, H, num_layers, bias=bias, bidirectional=bidir, dtype=torch.float64, **extra, **kw
    )
    with torch.no_grad():  # every parameter random, LN gains around 1, so each one matters
        for name, p in m.named_parameters():
            p.uniform_(-0.6, 0.6)
            if "layer_norm" in name and "weight" in name:
                p.add_(1.0)
    return m


def _draw_masks(kw, is_lstm, lead, hout, groups, packed_sizes=None, dtype=torch.float64):
    """The documented draw: per layer-direction, h then c, only when p > 0 (training)."""
    p_h, p_c = _probs(kw, is_lstm)
    masks = []
    for _ in range(groups):
        width_in = lead  # every layer's masks take the input's leading shape
        # uniform < p is Bernoulli(p): the module's draw, number for number
        mh = (torch.rand(width_in + (hout,), dtype=dtype) < p_h).to(dtype) if p_h else None
        mc = (torch.rand(width_in + (H,), dtype=dtype) < p_c).to(dtype) if p_c else None
        mh = mh.double() if mh is not None else None
        mc = mc.double() if mc is not None else None
        if packed_sizes is not None:
            mh = _packed_to_padded(mh, packed_sizes, hout) if mh is not None else None
            mc = _packed_to_padded(mc, packed_sizes, H) if mc is not None else None
        masks.append((mh, mc))
    return masks


TOLS = {torch.float64: TOL, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


def _check_against_oracle(
    mode,
    kw,
    packed,
    num_layers,
    bidir,
    bias,
    proj,
    training,
    dtype=torch.float64,
    lengths=None,
):
    """The module (in ``dtype``) against the float64 oracle with the same weights and masks;
    outputs and the gradients of x, h0, c0 and every parameter."""
    m64 = _make(mode, kw, num_layers, bidir, bias, proj)
    m = m64 if dtype == torch.float64 else copy.deepcopy(m64).to(dtype)
    m.train(training)
    dirs = 2 if bidir else 1
    hout = proj or H
    is_lstm = mode == "LSTM"
    lengths = lengths or (LENGTHS if packed else [T] * B)
    seq_len, batch = max(lengths), len(lengths)
    if not packed:
        lengths = [seq_len] * batch
    x = torch.randn(seq_len, batch, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers * dirs, batch, hout, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(num_layers * dirs, batch, H, dtype=torch.float64, requires_grad=True)
    run_in = [
        t if dtype == torch.float64 else t.detach().to(dtype).requires_grad_() for t in (x, h0, c0)
    ]
    hx = (run_in[1], run_in[2]) if is_lstm else run_in[1]

    torch.manual_seed(1234)
    if packed:
        seq = pack_padded_sequence(run_in[0], torch.tensor(lengths))
        out, hn = m(seq, hx)
        y = pad_packed_sequence(out)[0]
        lead, sizes = (seq.data.shape[0],), seq.batch_sizes
    else:
        y, hn = m(run_in[0], hx)
        lead, sizes = (seq_len, batch), None
    torch.manual_seed(1234)
    masks = _draw_masks(kw, is_lstm, lead, hout, num_layers * dirs, sizes, dtype)
    params = dict(m64.named_parameters())
    run_params = list(m.parameters())
    y_o, h_o, c_o = oracle(
        mode,
        params,
        kw,
        x,
        lengths,
        h0,
        c0 if is_lstm else None,
        num_layers,
        bidir,
        masks,
        training,
    )

    outs = [y, hn[0], hn[1]] if is_lstm else [y, hn]
    outs_o = [y_o, h_o, c_o] if is_lstm else [y_o, h_o]
    tol = TOLS[dtype]
    for a, b in zip(outs, outs_o, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b.to(dtype), **tol)
    weights = [torch.randn_like(o) for o in outs_o]
    inputs = [x, h0] + ([c0] if is_lstm else []) + list(params.values())
    run_inputs = run_in[:2] + (run_in[2:] if is_lstm else []) + run_params
    if dtype == torch.float64:
        run_inputs = inputs
    grads = torch.autograd.grad(
        sum((o * w.to(dtype)).sum() for o, w in zip(outs, weights, strict=True)), run_inputs
    )
    grads_o = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(outs_o, weights, strict=True)), inputs
    )
    names = ["x", "h0"] + (["c0"] if is_lstm else []) + list(params)
    for name, g, g_o in zip(names, grads, grads_o, strict=True):
        torch.testing.assert_close(g, g_o.to(dtype), **tol, msg=lambda s, n=name: f"grad {n}: {s}")
        assert g.abs().sum() > 0 or name == "c0", f"grad of {name} is zero"


LSTM_VARIANTS = {
    "ln": {"layer_norm": True},
    "peephole": {"peephole": True},
    "cifg": {"cifg": True},
    "cifg_peephole": {"cifg": True, "peephole": True},
    "zoneout": {"zoneout": 0.3},
    "zoneout_hc": {"zoneout": (0.2, 0.5)},
    "zoneout_c_only": {"zoneout": (0.0, 0.4)},
    "all": {"layer_norm": True, "zoneout": (0.25, 0.35), "peephole": True, "cifg": True},
    "ln_peephole_zoneout": {"layer_norm": True, "zoneout": 0.2, "peephole": True},
}
GRU_VARIANTS = {
    "ln": {"layer_norm": True},
    "zoneout": {"zoneout": 0.3},
    "ln_zoneout": {"layer_norm": True, "zoneout": 0.25},
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("variant", list(LSTM_VARIANTS))
def test_lstm_variant_matches_oracle(variant, packed, training):
    _check_against_oracle("LSTM", LSTM_VARIANTS[variant], packed, 2, True, True, 0, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("variant", list(GRU_VARIANTS))
def test_gru_variant_matches_oracle(variant, packed, training):
    _check_against_oracle("GRU", GRU_VARIANTS[variant], packed, 2, True, True, 0, training)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize(
    "mode,variant", [("LSTM", "all"), ("LSTM", "ln_peephole_zoneout"), ("GRU", "ln_zoneout")]
)
def test_variant_no_bias_one_layer(mode, variant, packed):
    table = LSTM_VARIANTS if mode == "LSTM" else GRU_VARIANTS
    _check_against_oracle(mode, table[variant], packed, 1, False, False, 0, True)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("variant", ["all", "ln_peephole_zoneout"])
def test_lstm_variant_with_projection(variant, packed):
    _check_against_oracle("LSTM", LSTM_VARIANTS[variant], packed, 2, True, True, P, True)


# gradcheck of the reference op with every option: tests/test_conformance.py (backend
# "reference")


# -- zoneout ----------------------------------------------------------------------------------


def test_zoneout_masks_reproducible_under_seed():
    m = _make("LSTM", {"zoneout": 0.4})
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(7)
    a = m(x)[0]
    torch.manual_seed(7)
    b = m(x)[0]
    torch.manual_seed(8)
    c = m(x)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_zoneout_training_differs_from_eval_and_from_plain():
    kw = {"zoneout": 0.4}
    m = _make("GRU", kw)
    plain = fusedrnn.GRU(I, H, 2, bidirectional=True, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    train_out = m.train()(x)[0]
    eval_out = m.eval()(x)[0]
    assert not torch.allclose(train_out, eval_out)
    assert not torch.allclose(eval_out, plain(x)[0])
    assert not torch.allclose(train_out, plain(x)[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_zoneout_zero_is_plain_bit_for_bit(mode):
    cls = getattr(fusedrnn, mode)
    m = cls(I, H, 2, bidirectional=True, zoneout=0.0, backend="reference")
    plain = cls(I, H, 2, bidirectional=True, backend="reference")
    plain.load_state_dict(m.state_dict())
    assert not m.cell_options.enabled and list(m.state_dict()) == list(plain.state_dict())
    x = torch.randn(T, B, I)
    flat = [m.train()(x), plain.train()(x)]
    flat = [[o[0], *(o[1] if isinstance(o[1], tuple) else (o[1],))] for o in flat]
    for u, v in zip(*flat, strict=True):
        assert torch.equal(u, v)
    # the variant op itself, given all-zero masks, reproduces the plain op bit for bit
    cell = mode.lower()
    g = 4 if mode == "LSTM" else 3
    w = [torch.randn(g * H, I), torch.randn(g * H, H), torch.randn(g * H), torch.randn(g * H)]
    h0, c0 = torch.randn(B, H), (torch.randn(B, H) if mode == "LSTM" else None)
    zeros = torch.zeros(T, B, H)
    plain_out = reference.layer(cell, x, h0, c0, *w, None, None, True)
    var_out = reference.layer(
        cell,
        x,
        h0,
        c0,
        *w,
        None,
        None,
        True,
        mask_h=zeros,
        mask_c=zeros if mode == "LSTM" else None,
    )
    for u, v in zip(plain_out, var_out, strict=True):
        assert (u is None and v is None) or torch.equal(u, v)


def test_zoneout_masks_follow_p():
    """Training zoneout with p close to 1 keeps most of h0: a coarse rate check of the masks."""
    m = fusedrnn.LSTM(I, H, zoneout=(0.9, 0.0), dtype=torch.float64)
    x = torch.randn(1, 2000, I, dtype=torch.float64)
    h0 = torch.full((1, 2000, H), 7.0, dtype=torch.float64)  # |h~| < 1, so h == 7 marks a kept unit
    y = m(x, (h0, torch.zeros_like(h0)))[0]
    kept = (y == 7.0).double().mean().item()
    assert 0.88 < kept < 0.92


# -- layer norm -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_layer_norm_at_init(mode):
    cls = getattr(fusedrnn, mode)
    m = cls(I, H, 2, bidirectional=True, layer_norm=True, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters() if n.startswith("layer_norm")]
    assert len(names) == (6 if mode == "LSTM" else 4) * 4
    for n in names:
        value = 1.0 if "_weight_" in n else 0.0
        assert torch.equal(getattr(m, n), torch.full_like(getattr(m, n), value)), n
    m.reset_parameters()  # a later reset keeps the LN init
    assert torch.equal(m.layer_norm_ih_weight_l0, torch.ones(4 * H if mode == "LSTM" else 3 * H))
    plain = cls(I, H, 2, bidirectional=True, dtype=torch.float64)
    plain.load_state_dict(m.state_dict(), strict=False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out = m(x)[0]
    assert not torch.allclose(out, plain(x)[0])
    out.square().sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


# -- parameters, shapes, state_dict -----------------------------------------------------------


def test_cifg_shapes_and_state_dict():
    m = fusedrnn.LSTM(I, H, 2, cifg=True, peephole=True, proj_size=P)
    assert m.weight_ih_l0.shape == (3 * H, I)
    assert m.weight_hh_l0.shape == (3 * H, P)
    assert m.bias_ih_l1.shape == (3 * H,) and m.bias_hh_l1.shape == (3 * H,)
    assert m.weight_ih_l1.shape == (3 * H, P)
    assert m.weight_hr_l0.shape == (P, H)
    assert m.weight_ch_l0.shape == (2, H)
    assert fusedrnn.LSTM(I, H, peephole=True).weight_ch_l0.shape == (3, H)
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.LSTM(I, H, 2, proj_size=P).load_state_dict(m.state_dict(), strict=False)
    y, (h, c) = m(torch.randn(T, B, I))
    assert y.shape == (T, B, P) and h.shape == (2, B, P) and c.shape == (2, B, H)


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("LSTM", {"layer_norm": True, "peephole": True, "zoneout": 0.1}),
        ("LSTM", {"layer_norm": True}),
        ("GRU", {"layer_norm": True, "zoneout": 0.2}),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_superset_of_torch_nn(mode, kw, bias):
    ref = getattr(nn, mode)(I, H, 2, bias=bias, bidirectional=True)
    m = getattr(fusedrnn, mode)(I, H, 2, bias=bias, bidirectional=True, **kw)
    ref_keys, keys = list(ref.state_dict()), list(m.state_dict())
    assert keys[: len(ref_keys)] == ref_keys
    extra = keys[len(ref_keys) :]
    expected = [
        name for group in m.cell_options.param_names(mode, H, bias, 2, True) for name in group
    ]
    assert extra == expected
    if kw.get("layer_norm"):
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


def test_batch_first_and_unbatched_with_variants():
    m = _make("LSTM", {"layer_norm": True, "peephole": True}, num_layers=1, bidir=False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y = m(x)[0]
    m.batch_first = True
    torch.testing.assert_close(m(x.transpose(0, 1))[0].transpose(0, 1), y, **TOL)
    m.batch_first = False
    torch.testing.assert_close(m(x[:, 1])[0], y[:, 1], **TOL)


def test_repr_mentions_variants():
    text = repr(fusedrnn.LSTM(I, H, layer_norm=True, zoneout=(0.1, 0.2), cifg=True))
    assert "layer_norm=True" in text and "zoneout=(0.1, 0.2)" in text and "cifg=True" in text
    assert repr(fusedrnn.LSTM(I, H)) == "LSTM(3, 5)"


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
    ],
)
def test_invalid_options_raise(ctor, exc, match):
    with pytest.raises(exc, match=match):
        ctor()


def test_variants_are_keyword_only_and_rnn_unchanged():
    with pytest.raises(TypeError):
        fusedrnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, None, True)
    assert not fusedrnn.RNN(I, H).cell_options.enabled


@pytest.mark.parametrize("backend", fusedrnn.available_backends("cpu"))
def test_layer_op_is_one_op_with_variant_options(backend):
    """Each backend's one layer op takes the variants as keyword options (the face the stack
    driver calls for plain and variant layers alike) and refuses an option it does not know
    rather than running the plain cell."""
    layer = fusedrnn.backends.get(backend).layer
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w_ih = torch.randn(3 * H, I, dtype=torch.float64)
    w_hh = torch.randn(3 * H, H, dtype=torch.float64)
    args = ("gru", x, h0, None, w_ih, w_hh, None, None, None, None, False)
    ones = torch.ones(3 * H, dtype=torch.float64)
    got = layer(*args, ln_ih_w=ones, ln_hh_w=ones, zoneout_h=0.3)
    want = reference.layer(*args, ln_ih_w=ones, ln_hh_w=ones, zoneout_h=0.3)
    torch.testing.assert_close(got[0], want[0])
    plain = reference.layer(*args)
    assert not torch.allclose(got[0], plain[0])  # the options were not dropped on the way
    with pytest.raises(TypeError):
        layer(*args, layer_norm=True)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_variant_on_unavailable_backend_raises(backend):
    if backend in fusedrnn.available_backends("cpu"):
        pytest.skip(f"{backend} runs on CPU tensors here")
    m = fusedrnn.LSTM(I, H, layer_norm=True, backend=backend)
    with pytest.raises(fusedrnn.BackendUnavailableError, match=f"{backend!r}"):
        m(torch.randn(T, B, I))


def test_variant_module_runs_with_reference_backend_explicitly():
    m = fusedrnn.LSTM(I, H, cifg=True, backend="reference")
    assert m(torch.randn(T, B, I))[0].shape == (T, B, H)


def test_cell_options_helpers():
    opts = variants.parse("LSTM", True, 0.2, True, True)
    assert opts == variants.CellOptions(True, 0.2, 0.2, True, True)
    assert opts.gate_count("LSTM") == 3 and variants.CellOptions().gate_count("LSTM") == 4
    assert opts.names() == ["layer_norm", "zoneout", "peephole", "cifg"]
    assert variants.parse("GRU", zoneout=0.3) == variants.CellOptions(zoneout_h=0.3)
    specs = opts.param_specs("LSTM", H, bias=True)
    assert [s[:2] for s in specs] == [
        ("layer_norm_ih_weight", (3 * H,)),
        ("layer_norm_ih_bias", (3 * H,)),
        ("layer_norm_hh_weight", (3 * H,)),
        ("layer_norm_hh_bias", (3 * H,)),
        ("layer_norm_c_weight", (H,)),
        ("layer_norm_c_bias", (H,)),
        ("weight_ch", (2, H)),
    ]
    with pytest.raises(AttributeError):
        opts.cifg = False  # frozen


def test_variants_with_interlayer_dropout():
    m = _make("LSTM", {"layer_norm": True, "zoneout": 0.2}, num_layers=2, bidir=False)
    m.dropout = 0.5
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    a = m(x)[0]
    torch.manual_seed(3)
    assert torch.equal(a, m(x)[0])
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    m.eval()
    m_nodrop = _make("LSTM", {"layer_norm": True, "zoneout": 0.2}, num_layers=2, bidir=False)
    m_nodrop.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x)[0], m_nodrop.eval()(x)[0], **TOL)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize(
    "lengths", [[1], [1, 1, 1], [5], [3, 3, 2, 1, 1]], ids=["T1B1", "T1B3", "T5B1", "T3B5"]
)
@pytest.mark.parametrize("mode,variant", [("LSTM", "all"), ("GRU", "ln_zoneout")])
def test_variant_awkward_shapes(mode, variant, lengths, packed):
    table = LSTM_VARIANTS if mode == "LSTM" else GRU_VARIANTS
    _check_against_oracle(mode, table[variant], packed, 2, True, True, 0, True, lengths=lengths)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize(
    "mode,variant", [("LSTM", "all"), ("LSTM", "ln_peephole_zoneout"), ("GRU", "ln_zoneout")]
)
def test_variant_float32(mode, variant, packed, training):
    table = LSTM_VARIANTS if mode == "LSTM" else GRU_VARIANTS
    _check_against_oracle(
        mode, table[variant], packed, 2, True, True, 0, training, dtype=torch.float32
    )


def test_variant_module_compiles_fullgraph():
    m = fusedrnn.LSTM(I, H, layer_norm=True, peephole=True, zoneout=0.2, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled.eval()(x)[0], m.eval()(x)[0], **TOL)
    m.train()
    torch.manual_seed(5)
    a = compiled(x)[0]
    torch.manual_seed(5)
    assert torch.equal(a, m(x)[0])
