"""The CPU backend's packed float32 GEMM (csrc/cpu/sgemm*.{h,cpp}) against float64 matmul.

``gemm()`` sends float32 products with at least 128 rows and k > 1 to the packed kernel, and
the step loops multiply every step against recurrent weights packed once per call. Checked:
every transposition, alpha / beta (beta == 0 must not read C), leading dimensions larger than
the row, edge tiles (rows not a multiple of 6, columns not a multiple of 16 or 32), inner
dimensions across the 256-deep blocks, and layers whose step products take the packed path,
with either tile width of the kernel and with the BLAS.
"""

from __future__ import annotations

import itertools

import layer_cases
import pytest
import torch
from conftest import num_threads, switched
from layer_cases import Case
from misc_testlib import needs_cpu
from test_cpu_backend import needs_test_hooks

from fusedrnn.ops import cpu, reference

_C = cpu._C
pytestmark = [needs_cpu, needs_test_hooks]


@pytest.fixture(params=["avx512f", "avx2+fma", ""], ids=["own-avx512", "own-avx2", "blas"])
def own_sgemm(request):
    """The packed kernel with its 6x32 AVX-512 tile, with its 6x16 AVX2 tile, or the BLAS."""
    own, avx512 = request.param != "", request.param == "avx512f"
    with switched(_C._set_own_sgemm, own, True), switched(_C._set_sgemm_avx512, avx512, True):
        if _C.sgemm_isa() != request.param:  # the defaults come back after a skip too
            pytest.skip(f"this CPU or build has no {request.param} packed GEMM")
        yield request.param


@pytest.fixture(params=[1, 2])
def threads(request):
    with num_threads(request.param):
        yield request.param


def strided(rows, cols, g, pad=3):
    """[rows, cols] float32 view with leading dimension cols + pad (padding = NaN sentinel)."""
    base = torch.full((rows, cols + pad), float("nan"))
    base[:, :cols] = torch.randn(rows, cols, generator=g)
    return base, base[:, :cols]


SHAPES = [  # (m, n, k): edges of the 6-row / 16- and 32-column tiles and of the 256-deep K blocks;
    # A is read in place (its last panel packed) unless transposed or 4 KiB-strided
    (128, 16, 256), (129, 17, 257),
    (133, 1, 1),  # k == 1 goes to the BLAS (an outer product)
    (140, 18, 2),  # the smallest k the packed kernel takes
    (150, 40, 513), (300, 7, 31), (144, 33, 600), (290, 64, 255),
    (133, 20, 1021),  # A's rows 1024 floats apart (k + 3): A packed, not read in place
]  # fmt: skip


def gemm_vs_float64(ta, tb, alpha, A, B, beta, C, *, rtol, atol, what):
    """C <- alpha op(A) op(B) + beta C by _C._gemm, against float64 torch.matmul. With beta == 0
    C is first filled with NaN: a C that is read anyway leaves NaN in the result."""
    c_in = C.clone()
    if beta == 0.0:
        C.fill_(float("nan"))
    _C._gemm(ta, tb, alpha, A, B, beta, C)
    want = alpha * ((A.t() if ta else A).double() @ (B.t() if tb else B).double())
    want += beta * c_in.double()
    torch.testing.assert_close(C.double(), want, rtol=rtol, atol=atol, msg=lambda s: f"{what}: {s}")


@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_gemm_matches_float64(own_sgemm, ta, tb, threads):
    g = torch.Generator().manual_seed(7)
    for (m, n, k), (alpha, beta) in zip(SHAPES, itertools.cycle([(1.0, 0.0), (0.5, 1.0),
                                                                 (-2.0, 0.75)])):  # fmt: skip
        _, A = strided(k, m, g) if ta else strided(m, k, g)
        _, B = strided(n, k, g) if tb else strided(k, n, g)
        c_base, C = strided(m, n, g, pad=5)
        # float32 accumulation of k products of unit-variance values
        tol = 1e-6 * k**0.5 * 8 * abs(alpha)
        gemm_vs_float64(ta, tb, alpha, A, B, beta, C, rtol=1e-5, atol=tol, what=(m, n, k))
        assert torch.isnan(c_base[:, n:]).all(), "wrote past the last column of C"


def compare_to_float64(case: Case, seed: int) -> None:
    """The cpu op in float32 must be as close to the float64 reference as the float32 reference
    itself is (within 4x), on every output and every gradient: at these sizes float32 rounding
    alone exceeds a fixed 1e-5, so the float64 run is the oracle and the float32 reference
    calibrates what float32 can achieve."""
    a = layer_cases.make_inputs(case, torch.float64, seed=seed)

    def results(layer, dtype):  # one draw serves the float32 and the float64 runs
        outs, grads = layer_cases.outputs_and_grads(
            layer, {k: layer_cases.cast(v, dtype) for k, v in a.items()}
        )
        return [t.double() for t in (*(o for o in outs if o is not None), *grads.values())]

    truth = results(reference.layer, torch.float64)
    ref32, got = results(reference.layer, torch.float32), results(cpu.layer, torch.float32)
    for i, (t, r, c) in enumerate(zip(truth, ref32, got, strict=True)):
        err_ref, err = ((v - t).abs().max().item() for v in (r, c))
        assert err <= 4 * err_ref + 1e-6 * (1 + t.abs().max().item()), (
            f"result {i}: cpu float32 error {err:.3g}, reference float32 error {err_ref:.3g}"
        )


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_layer_with_packed_step_products(own_sgemm, cell, threads):
    """B = 13 rows per step (above the small-product path), H = 300 (column blocks of the step
    products ending in a partial one, recurrent products 300 deep in the forward and G*300 in
    the backward), N = 143 rows of input projection; dense forward and packed reverse; an
    LSTM's projection."""
    compare_to_float64(Case(cell, T=11, B=13, I=270, H=300), seed=11)
    lengths = (11,) * 6 + (9,) * 4 + (5, 2, 1)
    compare_to_float64(Case(cell, T=11, B=13, I=270, H=300, lengths=lengths, reverse=True), 12)
    if cell == "lstm":
        compare_to_float64(Case("lstm", T=9, B=16, I=140, H=260, proj=131), seed=13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_small_m_products_match_float64(dtype, m):
    """gemm() sends x W^T with at most four rows to the dot-product kernel (sampling steps):
    blocks of eight rows of W with a shuffle-tree lane sum, then four, then single rows, and
    a scalar tail of k."""
    g = torch.Generator().manual_seed(m)
    eps = torch.finfo(dtype).eps
    for n, k in itertools.product([1, 7, 8, 9, 16, 68, 515], [1, 7, 8, 9, 64, 130]):
        A = torch.randn(m, k, generator=g).to(dtype)
        W = torch.randn(n, k, generator=g).to(dtype)
        for beta in (0.0, 1.0):
            C = torch.randn(m, n, generator=g).to(dtype)
            gemm_vs_float64(False, True, 1.0, A, W, beta, C, rtol=0, atol=8 * eps * k**0.5 * 4,
                            what=(n, k))  # fmt: skip
