"""The CUDA backend's grid walks on the CPU build of the kernels (tests/cuda_host.py), and
fusedrnn.ops.cuda.layer on CUDA tensors, every cell and variant (skipped without a GPU).
Float64 / float32 against the reference op for every variant, shape and option:
tests/test_conformance.py; half precision, the driver's paths and torch.compile on the CPU
build, and the nvcc compile check: test_cuda_backend.py.
"""

from __future__ import annotations

import cuda_host
import pytest
import torch
from cuda_host import full
from layer_cases import Case

from fusedrnn.ops import cuda as cv

# -- grid walks on the CPU build (the host_layer fixture: tests/conftest.py) ---------------

GRID = dict(B=6, T=4, I=3, packed=True, reverse=True)


@pytest.mark.parametrize("case,dtype", [
    *((Case(cell, H=70, proj=proj, **GRID), torch.float32)
      for cell, proj in [("lstm", 2), ("gru", 0), ("rnn_tanh", 0)]),
    *((full(cell, H=37, proj=proj, **GRID), torch.float64)
      for cell, proj in [("lstm", 0), ("lstm", 5), ("gru", 0)]),
], ids=str)  # fmt: skip
def test_host_walk_independent_of_grid_order(host_layer, case, dtype):
    """One block (the grid-stride and row loops take several turns) and every block, with
    (block, thread) walked backwards, give bitwise the same results: no element reads another
    element's output within a launch (which would be a race on the GPU) or, in a row kernel,
    without a barrier in between, and no element is skipped or doubled. One block of 4 threads
    (several units per thread, a deeper reduction tree) still matches the reference."""
    p = cuda_host.problem(case, dtype)
    base = cuda_host.run(host_layer, p, reverse=True)
    try:
        for blocks in (1, 65535):
            host_layer.ext.set_grid(blocks, True)
            cuda_host.assert_same(cuda_host.run(host_layer, p, reverse=True), base)
        host_layer.ext.set_grid(1, True, 4)
        cuda_host.compare(host_layer, case, torch.float64)
    finally:
        host_layer.ext.set_grid(65535, False, 0)


# -- the real backend -------------------------------------------------------------------------
def gpu(test):
    """A test on CUDA tensors: marked gpu, skipped without a device and the built extension."""
    return pytest.mark.gpu(pytest.mark.skipif(
        not (torch.cuda.is_available() and cv.is_available()),
        reason="needs a CUDA device and the built extension fusedrnn._C_cuda",
    )(test))  # fmt: skip


GPU_CASES = [  # Case options; proj 18 is H // 2 at the H = 37 of the test
    *(dict(cell=cell, bias=bias) for cell in ("lstm", "gru", "rnn_tanh") for bias in (True, False)),
    dict(cell="rnn_relu"), dict(cell="lstm", proj=3),
    dict(cell="lstm", ln=True), dict(cell="lstm", ln=True, bias=False),
    dict(cell="lstm", peep=True), dict(cell="lstm", cifg=True),
    dict(cell="lstm", zone="hc"), dict(cell="lstm", bias=False, zone="eval"),
    dict(cell="lstm", ln=True, peep=True, cifg=True, zone="hc"),
    dict(cell="lstm", ln=True, peep=True, proj=18, zone="hc"),
    dict(cell="lstm", ln=True, peep=True, cifg=True, proj=18, bias=False, zone="eval"),
    dict(cell="gru", ln=True), dict(cell="gru", ln=True, bias=False, zone="eval"),
    dict(cell="gru", zone="hc"), dict(cell="gru", ln=True, zone="hc"),
    dict(cell="gru", bias=False, zone="eval"),
]  # fmt: skip


GPU_COMPARE = [  # float64 / float32 on CUDA tensors: tests/test_conformance.py (backend "cuda")
    # H = 37: one warp and a few idle threads; proj_size H // 2 for layer norm, since h W_hh^T
    # of rank 3 leaves layer norm too ill-conditioned for bfloat16 to resolve
    *((Case(**options, B=5, T=6, I=4, H=37, packed=packed, reverse=reverse), dtype)
      for options in GPU_CASES for packed in (False, True) for reverse in (False, True)
      for dtype in (torch.float16, torch.bfloat16)),
    # H = 300: several units per thread and a full 256-thread reduction tree
    *((full(cell, B=3, T=4, I=5, H=300), torch.float64) for cell in ("lstm", "gru")),
]  # fmt: skip


@gpu
@pytest.mark.parametrize("case,dtype", GPU_COMPARE, ids=str)
def test_gpu_matches_reference(case, dtype):
    cuda_host.compare(cv.layer, case, dtype, device="cuda")


@gpu
@pytest.mark.parametrize("case", [Case("gru", B=64, T=50, I=8, H=96),
                                  full("lstm", B=64, T=30, I=8, H=96),
                                  full("gru", B=64, T=30, I=8, H=96)], ids=str)  # fmt: skip
def test_gpu_deterministic(case):
    """Gradient column sums (the bias gradients) and row reductions have a fixed order:
    bitwise equal reruns."""
    p = cuda_host.problem(case, torch.float32, "cuda")
    cuda_host.assert_same(cuda_host.run(cv.layer, p), cuda_host.run(cv.layer, p))


@gpu
@pytest.mark.parametrize("cls,kw", [("LSTM", dict(proj_size=3, peephole=True)), ("GRU", {})],
                         ids=["lstm", "gru"])  # fmt: skip
def test_gpu_module_matches_reference_module(cls, kw):
    """End to end through fusedrnn.LSTM / GRU (two bidirectional layers, every variant that
    applies, zoneout in evaluation so that no mask is drawn): outputs and parameter grads."""
    import fusedrnn

    kw = dict(num_layers=2, bidirectional=True, layer_norm=True, zoneout=0.2, **kw)
    ref = getattr(fusedrnn, cls)(5, 8, backend="reference", **kw).double().eval()
    dev = getattr(fusedrnn, cls)(5, 8, backend="cuda", **kw).double().cuda().eval()
    dev.load_state_dict(ref.state_dict())
    x, runs = torch.randn(6, 4, 5, dtype=torch.float64), []
    for m, device in ((dev, "cuda"), (ref, "cpu")):
        y = m(x.to(device))[0]
        y.sum().backward()
        runs.append({"y": y.detach(), **{f"d{n}": p.grad for n, p in m.named_parameters()}})
    cuda_host.assert_same(*runs, cuda_host.TOL[torch.float64])
