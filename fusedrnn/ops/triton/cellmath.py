"""Per-element cell math shared by every Triton kernel of this backend.

All functions take and return tensors in the accumulation dtype (float32, or
float64 for float64 layers). ``tanh`` is written through ``sigmoid`` so that the
same code runs under ``TRITON_INTERPRET=1``, which has no libdevice.

Backward formulas (``d*`` are gradients of the loss, ``'`` marks derivatives):

LSTM: the variant LSTM below with every option off (no peepholes, no CIFG, ``l = c``, so the
total gradient of ``c`` is the incoming ``dc_in`` plus ``dl``).

GRU (``hn = W_hn h_prev + b_hn`` is the recurrent part of the new gate)::

    dn = dh (1 - z)              d(pre_n) = dn (1 - n^2)
    dz = dh (h_prev - n)         d(pre_z) = dz z (1 - z)
    dr = d(pre_n) hn             d(pre_r) = dr r (1 - r)
    d(hn) = d(pre_n) r           (gradient of the recurrent n-part, b_hn included)
    dh_prev = dh z + [d(pre_r), d(pre_z), d(hn)] W_hh

RNN: ``d(pre) = dh (1 - h^2)`` (tanh) or ``dh [h > 0]`` (relu), from the saved output.
"""

import triton
import triton.language as tl

from ..library import BOOL_OPTIONS

# the CELL constexpr of the kernels that serve every torch.nn cell (per-step, persistent)
LSTM, GRU, RNN_TANH, RNN_RELU = (tl.constexpr(code) for code in range(4))
CELL_CODE = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}
# The variant kernels' OPTIONS constexpr holds the layer op's bool options as bits, bit k for
# library.BOOL_OPTIONS[k]: a new bool option reaches every variant kernel through it, and only
# the math here reads its bit.
CIFG = tl.constexpr(1 << BOOL_OPTIONS.index("cifg"))


def option_bits(options: dict) -> int:
    """The OPTIONS constexpr of the bool options in ``options`` (by name)."""
    return sum(1 << k for k, name in enumerate(BOOL_OPTIONS) if options[name])


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def gru_fwd(xr, xz, xn, hr, hz, hn, h_prev, OPTIONS: tl.constexpr = 0):
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h_prev
    return r, z, n, h


@triton.jit
def gru_bwd(r, z, n, hn, h_prev, dh, OPTIONS: tl.constexpr = 0):
    d_n = dh * (1.0 - z) * (1.0 - n * n)
    d_z = dh * (h_prev - n) * z * (1.0 - z)
    d_r = d_n * hn * r * (1.0 - r)
    return d_r, d_z, d_n, d_n * r, dh * z


@triton.jit
def rnn_fwd(pre, RELU: tl.constexpr):
    if RELU:  # written so that NaN stays NaN, as torch.relu (tl.maximum may drop it)
        return tl.where(pre < 0.0, 0.0, pre)
    else:
        return tanh(pre)


@triton.jit
def rnn_bwd(h, dh, RELU: tl.constexpr):
    if RELU:
        return tl.where(h <= 0.0, 0.0, dh)  # a NaN h passes dh on, as threshold_backward
    else:
        return dh * (1.0 - h * h)


# ---- cell variants (layer norm, zoneout, peephole, cifg; math in docs/variants.md) ----------
#
# Zoneout ``out = k * old + (1 - k) * new`` with keep weight ``k``: the mask (MODE 1,
# training), the probability p (MODE 2, evaluation), or 0 (MODE 0, off); so
# ``d new = (1 - k) d out`` and ``d old = k d out``.
#
# Layer norm ``y = xhat * w + b``, ``xhat = (x - mean) * rstd`` over a row of K
# features: with ``dxhat = dy * w``,
# ``dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``.
#
# LSTM variant, with ``f = 1 - i`` under CIFG and peepholes ``w_ci, w_cf, w_co``::
#
#     i = sigmoid(pre_i + w_ci c_prev)   f = sigmoid(pre_f + w_cf c_prev)   g = tanh(pre_g)
#     c = f c_prev + i g                 o = sigmoid(pre_o + w_co c)        m = o tanh(l)
#
# where ``l = LN_c(c)`` or ``c``. Backward from ``dm`` and the total ``dc`` of ``c``:
# ``d(pre_o) = dm tanh(l) o (1 - o)``, ``dl = dm o (1 - tanh(l)^2)``, ``dc += d(pre_o) w_co``
# (done by the kernel), then ``d(pre_i) = dc (g - c_prev) i (1 - i)`` under CIFG (``f``
# depends on ``i``) else ``dc g i (1 - i)``, ``d(pre_f) = dc c_prev f (1 - f)``,
# ``d(pre_g) = dc i (1 - g^2)``, ``dc_prev = dc f + d(pre_i) w_ci + d(pre_f) w_cf``.


@triton.jit
def layer_norm_bwd(dxhat, xhat, rstd, mean_d, mean_dx):
    """Input gradient of layer norm from ``dxhat = dy * w`` and the row means
    ``mean(dxhat)``, ``mean(dxhat * xhat)`` ([BLOCK_B] each)."""
    return rstd[:, None] * (dxhat - mean_d[:, None] - xhat * mean_dx[:, None])


@triton.jit
def lstm_variant_fwd(pre_i, pre_f, pre_g, c_prev, w_ci, w_cf, PEEPHOLE: tl.constexpr,
                     OPTIONS: tl.constexpr):  # fmt: skip
    """i, f, g and the candidate cell state; w_ci / w_cf are [BLOCK_H] peephole rows."""
    if PEEPHOLE:
        pre_i = pre_i + w_ci[None, :] * c_prev
        if not (CIFG & OPTIONS):
            pre_f = pre_f + w_cf[None, :] * c_prev
    i = sigmoid(pre_i)
    if CIFG & OPTIONS:
        f = 1.0 - i
    else:
        f = sigmoid(pre_f)
    g = tanh(pre_g)
    return i, f, g, f * c_prev + i * g


@triton.jit
def lstm_variant_out_bwd(o, l, dm):
    """``(d pre_o, dl)`` of ``m = o * tanh(l)``."""
    th = tanh(l)
    return dm * th * o * (1.0 - o), dm * o * (1.0 - th * th)


@triton.jit
def lstm_variant_bwd(i, f, g, c_prev, dc, w_ci, w_cf, PEEPHOLE: tl.constexpr,
                     OPTIONS: tl.constexpr):  # fmt: skip
    """``(d pre_i, d pre_f, d pre_g, dc_prev)`` from the total gradient ``dc`` of the
    candidate cell state (``d pre_f`` is 0 under CIFG)."""
    if CIFG & OPTIONS:
        d_i = dc * (g - c_prev) * i * (1.0 - i)
        d_f = 0.0 * dc
    else:
        d_i = dc * g * i * (1.0 - i)
        d_f = dc * c_prev * f * (1.0 - f)
    d_g = dc * i * (1.0 - g * g)
    dc_prev = dc * f
    if PEEPHOLE:
        dc_prev += d_i * w_ci[None, :]
        if not (CIFG & OPTIONS):
            dc_prev += d_f * w_cf[None, :]
    return d_i, d_f, d_g, dc_prev


@triton.jit
def lstm_fwd(pre_i, pre_f, pre_g, pre_o, c_prev):
    i, f, g, c = lstm_variant_fwd(pre_i, pre_f, pre_g, c_prev, 0.0, 0.0, False, 0)
    o = sigmoid(pre_o)
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def lstm_bwd(i, f, g, o, c_prev, c, dm, dc_in):
    d_o, dl = lstm_variant_out_bwd(o, c, dm)
    d_i, d_f, d_g, dc_prev = lstm_variant_bwd(i, f, g, c_prev, dc_in + dl, 0.0, 0.0, False, 0)
    return d_i, d_f, d_g, d_o, dc_prev
