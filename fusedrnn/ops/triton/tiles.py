"""Tile helpers shared by the per-step, variant and persistent kernels.

Triton inlines ``@triton.jit`` helpers into their callers, so a kernel built from
these compiles to the code it would have written out itself. Index arithmetic is
int64 wherever it reaches a sequence-long buffer: the row indices come out of
:func:`block_tile` / :func:`row_block` as int64, and packed rows go through
:func:`packed_ptrs` (see ``tests/test_triton_offsets.py``).

Gate blocks: the gate tensors of a cell (``xg``, saved gates, gate gradients, ``W_hh``,
``b_hh``) hold G blocks of H features side by side, gate q at feature offset ``q * H``.
The ``*_gates`` helpers take or return four tiles; with G < 4 the missing ones are
zeros (or are not stored) and compile away.
"""

import inspect

import triton
import triton.language as tl

# what changes from launch to launch besides the ``tl.int64`` offsets (rows, B, zoneout, phase,
# the variant kernels' run-time SYNC and REVERSE)
_PER_LAUNCH = ("row0", "xg_row0", "y_row0", "rows_active", "rows_prev", "B", "ZONE_H", "ZONE_C",
               "phases", "SYNC", "REVERSE")  # fmt: skip


def kernel_jit(fn):
    """``triton.jit`` of a launched kernel, ``do_not_specialize`` in the arguments annotated
    ``tl.int64`` and those in ``_PER_LAUNCH`` that are not constexprs, so a sequence compiles
    each kernel once (see ``tests/test_triton_offsets.py``)."""
    params = inspect.signature(fn).parameters.items()
    keep = [n for n, p in params if p.annotation in (tl.int64, "tl.int64")
            or n in _PER_LAUNCH and "constexpr" not in str(p.annotation)]  # fmt: skip
    return triton.jit(do_not_specialize=keep)(fn)


@triton.jit
def block_tile(tile, col_blocks, B, N, rows_active, BLOCK_B: tl.constexpr,
               BLOCK_H: tl.constexpr):  # fmt: skip
    """Tile ``tile`` of a ``[B, N]`` step (row block ``tile // col_blocks``, column block
    ``tile % col_blocks``): int64 ``rows`` and ``cols``, the masks ``rows < B`` and
    ``cols < N``, the rows active at this step and the tile's mask (``rmask & cmask``)."""
    col_block, row_block = tile % col_blocks, tile // col_blocks
    rows = row_block.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = col_block.to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < B
    cmask = cols < N
    return rows, cols, rmask, cmask, rows < rows_active, rmask[:, None] & cmask[None, :]


@triton.jit
def row_block(B, rows_active, BLOCK_B: tl.constexpr):
    """This program's int64 batch rows of a row-only grid, ``rows < B`` and the rows
    active at this step."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    return rows, rows < B, rows < rows_active


@triton.jit
def packed_ptrs(ptr, row0, rows, cols, N):
    """``[BLOCK_B, BLOCK_H]`` pointers to columns ``cols`` of rows ``row0 + rows`` of a
    packed ``[rows, N]`` matrix (x, xg, y and their gradients, zoneout masks)."""
    return ptr + (row0 + rows[:, None]).to(tl.int64) * N + cols[None, :]


@triton.jit
def tile_ptrs(ptr, rows, cols, N):
    """``[BLOCK_B, BLOCK_H]`` pointers to columns ``cols`` of rows ``rows`` of a ``[B, N]``
    matrix at ``ptr`` (e.g. a step of the saved gates, already offset)."""
    return ptr + rows[:, None] * N + cols[None, :]


@triton.jit
def rec_gates(a_ptr, w_ptr, rows, live, feats, fmask, H, K, stride_f, stride_k, G: tl.constexpr,
              ACC_TY: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """``sum_k a[rows, k] w_q(feats, k)`` for gates q < G, as four ``[BLOCK_B, BLOCK_H]``
    tiles accumulated over BLOCK_K chunks of K; each ``a`` chunk is loaded once for all
    gates. ``a`` [B, K] is the left operand (already offset to the step), read in the rows
    ``live`` (the others count as 0); gate q's weight element (f, k) is at
    ``(q * H + f) * stride_f + k * stride_k``, H features per gate block."""
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=live[:, None] & kmask[None, :],
                    other=0.0)  # fmt: skip
        # weight tiles [BLOCK_K, BLOCK_H]
        wmask = kmask[:, None] & fmask[None, :]
        if G == 1:
            # pointer first: w_ptr + feats * stride_f is loop-invariant and is hoisted
            w = tl.load(w_ptr + feats[None, :] * stride_f + ks[:, None] * stride_k, mask=wmask,
                        other=0.0)  # fmt: skip
        else:
            w_off = feats[None, :] * stride_f + ks[:, None] * stride_k
            w = tl.load(w_ptr + w_off, mask=wmask, other=0.0)
        acc0 = tl.dot(a, w, acc0, input_precision=PRECISION, out_dtype=ACC_TY)
        if G > 1:
            w = tl.load(w_ptr + H * stride_f + w_off, mask=wmask, other=0.0)
            acc1 = tl.dot(a, w, acc1, input_precision=PRECISION, out_dtype=ACC_TY)
            w = tl.load(w_ptr + 2 * H * stride_f + w_off, mask=wmask, other=0.0)
            acc2 = tl.dot(a, w, acc2, input_precision=PRECISION, out_dtype=ACC_TY)
        if G > 3:
            w = tl.load(w_ptr + 3 * H * stride_f + w_off, mask=wmask, other=0.0)
            acc3 = tl.dot(a, w, acc3, input_precision=PRECISION, out_dtype=ACC_TY)
    return acc0, acc1, acc2, acc3


@triton.jit
def resident_slice(w_ptr, feats, fmask, K, stride_f, stride_k, gate_stride, G: tl.constexpr,
                   CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The weights a program keeps on chip for a whole launch (the right operand of
    :func:`rec_gates_resident`): a tuple whose item ``c * G + q`` is gate q's
    ``[BLOCK_K, BLOCK_H]`` tile of chunk c (k in ``c * BLOCK_K ..``, zeros past K), weight
    element (f, k) of gate q at ``q * gate_stride + f * stride_f + k * stride_k``.

    Loaded before the step loop, the tiles are loop invariants: Triton writes them to shared
    memory once (its ``local_alloc`` of each is hoisted out of the loop) and every step reads
    them from there. Chunks, not one ``[K, BLOCK_H]`` tile per gate: a ``tl.dot`` loads its
    whole right operand into registers, which spills at K = 1024."""
    ws = ()
    for c in tl.static_range(CHUNKS):
        ks = c * BLOCK_K + tl.arange(0, BLOCK_K)
        off = feats[None, :] * stride_f + ks[:, None] * stride_k
        mask = (ks < K)[:, None] & fmask[None, :]
        for q in tl.static_range(G):
            ws = ws + (tl.load(w_ptr + q * gate_stride + off, mask=mask, other=0.0),)
    return ws


@triton.jit
def load_chunks(a_ptr, rows, live, K, FIRST: tl.constexpr, LAST: tl.constexpr,
                BLOCK_K: tl.constexpr):  # fmt: skip
    """Chunks ``FIRST .. LAST - 1`` of ``a`` [B, K] (BLOCK_K columns each, zeros past K), read in
    the rows ``live``, as a tuple of ``[BLOCK_B, BLOCK_K]`` tiles: a group of
    :func:`rec_gates_resident`'s left operand."""
    chunks = ()
    for c in tl.static_range(FIRST, LAST):
        ks = c * BLOCK_K + tl.arange(0, BLOCK_K)
        chunks = chunks + (tl.load(a_ptr + rows[:, None] * K + ks[None, :],
                                   mask=live[:, None] & (ks < K)[None, :], other=0.0),)  # fmt: skip
    return chunks


@triton.jit
def rec_gates_resident(a_ptr, ws, rows, live, K, G: tl.constexpr, ACC_TY: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_K: tl.constexpr, CHUNKS: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """:func:`rec_gates` with the weights held on chip (``ws`` from :func:`resident_slice`):
    ``sum_k a[rows, k] w_q(f, k)`` for gates q < G, ``a`` [B, K] read in the rows ``live``.

    ``a`` is loaded ``GROUP`` chunks at a time, all of a group before any of its products:
    a ``tl.dot`` stages its left operand in shared memory, and with a load before each
    product the compiler reuses one staging buffer, so each load waits for the one before
    (one L2 round trip per chunk, 12 per step at K = 768 in the sm_90 code). A group costs
    one round trip and ``GROUP`` staging buffers of shared memory (see
    :func:`.configs.resident_load_group`). The products run in chunk order whatever
    ``GROUP`` is: the same sums, bit for bit.

    The first group's loads are issued where the call stands, so a step issues its other
    loads before the call: the compiler stages a group in shared memory right after its
    loads, behind a CTA barrier that no later load is issued across (see
    :func:`.common.late`)."""
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    for first in tl.static_range(0, CHUNKS, GROUP):
        chunks = load_chunks(a_ptr, rows, live, K, first, smaller(first + GROUP, CHUNKS),
                             BLOCK_K)  # fmt: skip
        for c in tl.static_range(first, smaller(first + GROUP, CHUNKS)):
            a = chunks[c - first]
            acc0 = tl.dot(a, ws[c * G], acc0, input_precision=PRECISION, out_dtype=ACC_TY)
            if G > 1:
                acc1 = tl.dot(a, ws[c * G + 1], acc1, input_precision=PRECISION, out_dtype=ACC_TY)
                acc2 = tl.dot(a, ws[c * G + 2], acc2, input_precision=PRECISION, out_dtype=ACC_TY)
            if G > 3:
                acc3 = tl.dot(a, ws[c * G + 3], acc3, input_precision=PRECISION, out_dtype=ACC_TY)
    return acc0, acc1, acc2, acc3


@triton.constexpr_function
def smaller(a, b):
    return min(a, b)


@triton.jit
def rec_tile(a_ptr, w_ptr, rows, live, feats, fmask, K, stride_f, stride_k, ACC_TY: tl.constexpr,
             PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
             BLOCK_K: tl.constexpr):  # fmt: skip
    """``sum_k a[rows, k] w(feats, k)`` as one ``[BLOCK_B, BLOCK_H]`` tile (:func:`rec_gates`
    of one gate: ``w(f, k)`` at ``f * stride_f + k * stride_k``)."""
    acc, _, _, _ = rec_gates(a_ptr, w_ptr, rows, live, feats, fmask, 0, K, stride_f, stride_k, 1,
                             ACC_TY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    return acc


@triton.jit
def load_gates(ptr, H, mask, G: tl.constexpr):
    """The tiles of gates q < G at ``ptr + q * H`` (zeros for q >= G)."""
    g0 = tl.load(ptr, mask=mask, other=0.0)
    g1 = tl.zeros_like(g0)
    g2 = tl.zeros_like(g0)
    g3 = tl.zeros_like(g0)
    if G > 1:
        g1 = tl.load(ptr + H, mask=mask, other=0.0)
        g2 = tl.load(ptr + 2 * H, mask=mask, other=0.0)
    if G > 3:
        g3 = tl.load(ptr + 3 * H, mask=mask, other=0.0)
    return g0, g1, g2, g3


@triton.jit
def add_gates(acc0, acc1, acc2, acc3, ptr, H, mask, G: tl.constexpr):
    """``acc_q + (gate q at ptr + q * H)`` in the accumulators' dtype, q < G (a row of
    gate values, e.g. a bias, adds to every row)."""
    g0, g1, g2, g3 = load_gates(ptr, H, mask, G)
    return add_loaded(acc0, acc1, acc2, acc3, g0, g1, g2, g3, G)


@triton.jit
def add_loaded(acc0, acc1, acc2, acc3, g0, g1, g2, g3, G: tl.constexpr):
    """``acc_q + g_q`` in the accumulators' dtype, q < G (:func:`add_gates` of tiles loaded
    earlier)."""
    acc0 += g0.to(acc0.dtype)
    if G > 1:
        acc1 += g1.to(acc1.dtype)
        acc2 += g2.to(acc2.dtype)
    if G > 3:
        acc3 += g3.to(acc3.dtype)
    return acc0, acc1, acc2, acc3


@triton.jit
def store_gates(ptr, H, act, mask, g0, g1, g2, g3, G: tl.constexpr):
    """Stores the tiles of gates q < G at ``ptr + q * H``, zero in inactive rows (the
    GEMMs over all steps read every row); cast to the pointer's dtype."""
    a = act[:, None]
    tl.store(ptr, tl.where(a, g0, 0.0), mask=mask)
    if G > 1:
        tl.store(ptr + H, tl.where(a, g1, 0.0), mask=mask)
        tl.store(ptr + 2 * H, tl.where(a, g2, 0.0), mask=mask)
    if G > 3:
        tl.store(ptr + 3 * H, tl.where(a, g3, 0.0), mask=mask)


@triton.jit
def store_state(new, old, hs_ptr, y_ptr, row0, rows, rmask, act, cols, cmask, N, WRITE_Y):
    """Writes the new state ``new`` (the state ``old`` read at this step, in the history's
    dtype, in inactive rows: every slot holds the full batch) into the history slot ``hs``
    [B, N] (already offset) and, for the active rows, into the packed output ``y`` [rows, N]
    (WRITE_Y; this step's rows from ``row0``)."""
    h = tl.where(act[:, None], new.to(old.dtype), old)
    # the offsets as one term: the same values as the caller's load of ``old`` (shared)
    state = rows[:, None] * N + cols[None, :]
    tl.store(hs_ptr + state, h, mask=rmask[:, None] & cmask[None, :])
    if WRITE_Y:
        tl.store(packed_ptrs(y_ptr, row0, rows, cols, N), h, mask=act[:, None] & cmask[None, :])
