"""Row statistics across tiles, and the state writes of the variant kernels.

Layer norm needs a statistic of whole rows (the mean and variance of ``h W_hh^T`` over all
G*H features, of the LSTM's ``c~`` over H; in the backward, two row means of the gradient),
while a program of a variant kernel (:mod:`.variant_step`) owns a tile: BLOCK_B rows x
BLOCK_H units with all gates of those units. Each tile therefore writes its share of a row
statistic into a partial buffer ``[column blocks, B, 2]`` (one slot pair per column block
of the step); after a grid barrier (or the next launch) every tile merges the partials of
its rows, always in column-block order, so the result is the same for any number of
programs and no atomics are needed.

Forward partials are a column block's mean and sum of squared deviations (M2), merged by
Chan et al.'s pairwise update (mean and M2 of two parts from their counts, means and M2s):
as exact as the two-pass variance over the row, unlike a sum of squares. Backward partials
are plain sums.
"""

import triton
import triton.language as tl

from .tiles import packed_ptrs, store_state


@triton.jit
def _sq_dev(v, mean, keep):
    d = tl.where(keep, v - mean[:, None], 0.0)
    return tl.sum(d * d, axis=1)


@triton.jit
def tile_moments(v0, v1, v2, v3, umask, G: tl.constexpr):
    """Per row of a tile: the mean and M2 of the values of its gate tiles q < G in the valid
    units ``umask`` (G times their count in all)."""
    keep = umask[None, :]
    n = G * tl.sum(umask.to(v0.dtype), axis=0)
    total = tl.sum(tl.where(keep, v0, 0.0), axis=1)
    if G > 1:
        total += tl.sum(tl.where(keep, v1, 0.0), axis=1) + tl.sum(tl.where(keep, v2, 0.0), axis=1)
    if G > 3:
        total += tl.sum(tl.where(keep, v3, 0.0), axis=1)
    mean = total / n
    m2 = _sq_dev(v0, mean, keep)
    if G > 1:
        m2 += _sq_dev(v1, mean, keep) + _sq_dev(v2, mean, keep)
    if G > 3:
        m2 += _sq_dev(v3, mean, keep)
    return mean, m2


@triton.jit
def store_partial(part_ptr, col_block, B, rows, rmask, a, b):
    """This tile's pair ``(a, b)`` ([BLOCK_B] each) of its rows' partials, at column block
    ``col_block`` of ``part`` [column blocks, B, 2]."""
    at = part_ptr + (col_block * B + rows) * 2
    tl.store(at, a, mask=rmask)
    tl.store(at + 1, b, mask=rmask)


@triton.jit
def merge_moments(part_ptr, rows, rmask, B, N, eps, G: tl.constexpr, ACC_TY: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    """Mean and ``1 / sqrt(var + eps)`` of the rows over G x N features, from the partial
    moments of the ``cdiv(N, BLOCK_H)`` column blocks (every block full but the last, so the
    count before block j is ``G * j * BLOCK_H``)."""
    mean = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    m2 = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    for j in range(0, tl.cdiv(N, BLOCK_H)):
        # as [BLOCK_B] vectors of the accumulation dtype (j is a Python int when interpreted)
        before = tl.zeros((BLOCK_B,), dtype=ACC_TY) + G * j * BLOCK_H
        n = tl.zeros((BLOCK_B,), dtype=ACC_TY) + G * tl.minimum(N - j * BLOCK_H, BLOCK_H)
        at = part_ptr + (j * B + rows) * 2
        delta = tl.load(at, mask=rmask, other=0.0) - mean
        mean += delta * (n / (before + n))
        m2 += tl.load(at + 1, mask=rmask, other=0.0) + delta * delta * (before * n / (before + n))
    return mean, 1.0 / tl.sqrt(m2 / (G * N) + eps)


@triton.jit
def merge_sums(part_ptr, rows, rmask, B, N, ACC_TY: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_H: tl.constexpr):  # fmt: skip
    """The two row sums of the backward's partials over the ``cdiv(N, BLOCK_H)`` column
    blocks, in block order."""
    a = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    b = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    for j in range(0, tl.cdiv(N, BLOCK_H)):
        at = part_ptr + (j * B + rows) * 2
        a += tl.load(at, mask=rmask, other=0.0)
        b += tl.load(at + 1, mask=rmask, other=0.0)
    return a, b


@triton.jit
def ln_grad_sums(sum_d, sum_dx, dy, w_ptr, xhat_ptr, fmask, mask):
    """The two row sums of the layer-norm backward, ``dy * w`` and ``dy * w * xhat``, with one
    more tile added: ``dy`` the gradient of a tile of layer-norm outputs, pointers to the
    tile's gain and saved normalised input."""
    d = dy * tl.load(w_ptr, mask=fmask, other=0.0)[None, :]
    sum_d += tl.sum(d, axis=1)
    sum_dx += tl.sum(d * tl.load(xhat_ptr, mask=mask, other=0.0), axis=1)
    return sum_d, sum_dx


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
