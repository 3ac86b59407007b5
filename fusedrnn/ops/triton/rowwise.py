"""Whole-row Triton helpers of the variant kernels (layer norm needs complete rows).

A variant program owns BLOCK_B batch rows and *all* features of those rows, looping
over them in BLOCK_H chunks, so a row statistic (mean and variance for layer norm,
or the two means of its backward) is a plain loop inside the program and needs no
communication between programs. Values produced in one pass and read in the next
go through a global buffer written by the same program; ``tl.debug_barrier`` between
the passes makes the writes of every thread of the program visible (the chunks are
not necessarily read by the thread that wrote them).
"""

import triton
import triton.language as tl

from .tiles import packed_ptrs, rec_tile, store_state


@triton.jit
def row_chunk(rows, rmask, f0, F, BLOCK_H: tl.constexpr):
    """Chunk ``f0 .. f0 + BLOCK_H`` of the F features of the program's rows: the features,
    ``feats < F``, the ``[BLOCK_B, BLOCK_H]`` mask ``rmask & fmask`` and the chunk's offsets in
    a ``[B, F]`` matrix."""
    feats = f0 + tl.arange(0, BLOCK_H)
    fmask = feats < F
    return feats, fmask, rmask[:, None] & fmask[None, :], rows[:, None] * F + feats[None, :]


@triton.jit
def row_rstd(buf_ptr, rows, act, mean, F, eps, ACC_TY: tl.constexpr, BLOCK_B: tl.constexpr,
             BLOCK_H: tl.constexpr):  # fmt: skip
    """``1 / sqrt(var + eps)`` of every row of ``buf`` [B, F] (already offset to the step),
    variance about the given ``mean`` [BLOCK_B] (two-pass variance: exact enough for float64
    comparisons, unlike sum-of-squares)."""
    ss = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    for f0 in range(0, F, BLOCK_H):
        _, _, m2, off = row_chunk(rows, act, f0, F, BLOCK_H)
        v = tl.load(buf_ptr + off, mask=m2, other=0.0)
        d = tl.where(m2, v - mean[:, None], 0.0)
        ss += tl.sum(d * d, axis=1)
    return 1.0 / tl.sqrt(ss / F + eps)


@triton.jit
def recurrent_part(
    h_ptr, w_ptr, b_ptr, lnw_ptr, shat_ptr, mean, rstd, rows, rmask, act, feats, fmask, GH, HOUT,
    HAS_BIAS, LAYER_NORM: tl.constexpr, ACC_TY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``LN_hh(h W_hh^T)[feats] + b`` or ``h W_hh^T + b`` for the gate features ``feats``, from
    the previous state ``h`` [B, HOUT] and ``W_hh`` [GH, HOUT]; ``b`` [GH] is b_hh plus the LN
    bias. With layer norm the raw projection in ``shat`` [B, GH] and its row ``mean`` and
    ``rstd`` come from the forward kernel's first pass; the normalised values replace the raw
    ones."""
    if LAYER_NORM:
        off = rows[:, None] * GH + feats[None, :]
        m2 = rmask[:, None] & fmask[None, :]
        raw = tl.load(shat_ptr + off, mask=m2, other=0.0)
        xhat = tl.where(act[:, None], (raw - mean[:, None]) * rstd[:, None], 0.0)
        tl.store(shat_ptr + off, xhat, mask=m2)
        s = xhat * tl.load(lnw_ptr + feats, mask=fmask, other=0.0)[None, :]
    else:
        s = rec_tile(h_ptr, w_ptr, rows, act, feats, fmask, HOUT, HOUT, 1, ACC_TY, PRECISION,
                     BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    if HAS_BIAS:
        s += tl.load(b_ptr + feats, mask=fmask, other=0.0)[None, :]
    return s


@triton.jit
def recurrent_gates(
    h_ptr, w_ptr, b_ptr, lnw_ptr, shat_ptr, mean, rstd, rows, rmask, act, units, umask, H, GH,
    HOUT, HAS_BIAS, G: tl.constexpr, LAYER_NORM: tl.constexpr, ACC_TY: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """:func:`recurrent_part` of the units in each gate block q < G (at feature ``q * H``);
    the third block again for q >= G."""
    s0 = recurrent_part(h_ptr, w_ptr, b_ptr, lnw_ptr, shat_ptr, mean, rstd, rows, rmask, act,
                        units, umask, GH, HOUT, HAS_BIAS, LAYER_NORM, ACC_TY, PRECISION, BLOCK_B,
                        BLOCK_H, BLOCK_K)  # fmt: skip
    s1 = recurrent_part(h_ptr, w_ptr, b_ptr, lnw_ptr, shat_ptr, mean, rstd, rows, rmask, act,
                        H + units, umask, GH, HOUT, HAS_BIAS, LAYER_NORM, ACC_TY, PRECISION,
                        BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    s2 = recurrent_part(h_ptr, w_ptr, b_ptr, lnw_ptr, shat_ptr, mean, rstd, rows, rmask, act,
                        2 * H + units, umask, GH, HOUT, HAS_BIAS, LAYER_NORM, ACC_TY, PRECISION,
                        BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    s3 = s2
    if G > 3:
        s3 = recurrent_part(h_ptr, w_ptr, b_ptr, lnw_ptr, shat_ptr, mean, rstd, rows, rmask, act,
                            3 * H + units, umask, GH, HOUT, HAS_BIAS, LAYER_NORM, ACC_TY,
                            PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    return s0, s1, s2, s3


@triton.jit
def emit_state(h_new, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act, cols, cmask,
               HOUT, ZONE_H, WRITE_Y):  # fmt: skip
    """Zoneout of the candidate state ``h_new`` of columns ``cols`` (:func:`zoneout_weight`:
    the mask ``mh`` [N, HOUT] or ``p_h``), then the new state (the old one in inactive rows)
    into the history ``Hs`` [T+1, B, HOUT] (slots at ``hs_r`` read / ``hs_w`` written) and the
    packed output ``y`` [N, HOUT] (WRITE_Y; the step's rows from ``row0``, as the mask's)."""
    h_prev = tl.load(hs_ptr + hs_r + (rows[:, None] * HOUT + cols[None, :]),
                     mask=rmask[:, None] & cmask[None, :], other=0.0)  # fmt: skip
    k = zoneout_weight(mh_ptr, p_h, ZONE_H, row0, rows, act, cols, cmask, HOUT, h_new)
    store_state(k * h_prev + (1.0 - k) * h_new, h_prev, hs_ptr + hs_w, y_ptr, row0, rows, rmask,
                act, cols, cmask, HOUT, WRITE_Y)  # fmt: skip


@triton.jit
def zoneout_weight(mask_ptr, p, MODE, row0, rows, act, cols, cmask, F, like):
    """Keep weight of the old value for the tile (zoneout, see :mod:`.cellmath`): MODE 1 the
    mask [N, F] laid out like y from ``row0`` (loaded only then), 2 evaluation ``p``, 0 off;
    ``like`` is a tile of the accumulation dtype. MODE is a run-time value (one compile serves
    every zoneout setting), hence the selects."""
    if MODE == 1:
        m = tl.load(packed_ptrs(mask_ptr, row0, rows, cols, F), mask=act[:, None] & cmask[None, :],
                    other=0.0)  # fmt: skip
    else:
        m = tl.zeros_like(like)
    return tl.where(MODE == 1, m, tl.where(MODE == 2, p + 0.0 * m, 0.0 * m))


@triton.jit
def ln_grad_sums(sum_d, sum_dx, dy, w_ptr, xhat_ptr, fmask, mask):
    """The two running row sums of the layer-norm backward (read by the variant backward
    kernel's last pass), ``dy * w`` and ``dy * w * xhat``, with one more chunk added: ``dy``
    the gradient of a chunk of layer-norm outputs, pointers to the chunk's gain and saved
    normalised input."""
    d = dy * tl.load(w_ptr, mask=fmask, other=0.0)[None, :]
    sum_d += tl.sum(d, axis=1)
    sum_dx += tl.sum(d * tl.load(xhat_ptr, mask=mask, other=0.0), axis=1)
    return sum_d, sum_dx
