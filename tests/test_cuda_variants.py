"""The CUDA cell-variant kernels (csrc/cuda/*variants*, zoneout) behind fusedrnn/ops/cuda.py.

Without a GPU:
* every variant kernel configuration compiles with nvcc for sm_80 and sm_90 without register
  spills (the report of python -m fusedrnn.cuda_report, shared with test_cuda_backend.py);
* a CPU build of the same code -- variant driver, Python glue, dispatch, row functors with
  their block reductions (each block's threads walked one after the other with the GPU's work
  partition and summation order), element functors -- runs behind cuda_variants' layer op on
  CPU tensors and is compared with reference.layer (every output and gradient, every
  option) in float64 and in the low-precision dtypes.
With a GPU (skipped here): cuda_variants.layer on CUDA tensors against the reference.
"""

from __future__ import annotations

from pathlib import Path

import cuda_host
import pytest
import torch
from layer_cases import Case

from fusedrnn import cuda_report
from fusedrnn.ops import cuda as cv
from fusedrnn.ops import library

NVCC = cuda_report.find_nvcc()


# -- compile report ---------------------------------------------------------------------------
@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA compile check needs it")
def test_variant_kernels_compile_without_spills():
    """Every template configuration the variant dispatch can select, for both archs
    (cuda_host.compile_report)."""
    data = cuda_host.compile_report()
    files = {"lstm_variants.cu", "gru_variants.cu", "zoneout.cu"}
    results = [r for r in data["results"] if Path(r["file"]).name in files]
    assert {Path(r["file"]).name for r in results} == files
    assert all(r["ok"] for r in results)
    kernels = [k for r in results for k in r["kernels"]]
    assert all(k["spill_stores"] == 0 and k["spill_loads"] == 0 for k in kernels)
    # 4 dtypes x (LSTM 2^3 (ln, peep, cifg) forward and backward, GRU 2 and 2, zoneout 1 + 1)
    want = {"LstmVarFwdOp": 32, "LstmVarBwdOp": 32, "GruVarFwdOp": 8, "GruVarBwdOp": 8,
            "ZoneFwdOp": 4, "ZoneBwdOp": 4}  # fmt: skip
    for arch in ("sm_80", "sm_90"):
        names = [k["name"] for k in kernels if k["arch"] == arch]
        assert len(names) == sum(want.values()), arch
        for op, n in want.items():
            assert sum(f"{op}<" in name for name in names) == n, (arch, op)


# -- CPU build of the kernels' code ----------------------------------------------------------
# the host_layer fixture: tests/conftest.py
# every variant, shape (the row launch shapes at the end of AWKWARD included) and option in
# float64 / float32 against the reference op (and gradcheck) on this host build:
# tests/test_conformance.py (backend "cuda-host"); the cases below are the GPU runs, half
# precision and the grid walks
SMALL = dict(B=4, T=5, I=3, H=6, packed=True)
TINY = dict(B=3, T=4, I=2, H=5)
GRID = dict(B=6, T=4, I=3, H=37, packed=True, reverse=True)


def _full(cell, **shape) -> Case:
    """Layer norm, zoneout masks and (LSTM) peepholes on."""
    return Case(cell, ln=True, peep=cell == "lstm", zone="hc", **shape)


HALF = (torch.float16, torch.bfloat16)
HOST_CHECKS = [  # (the cuda_host check, its case, its further arguments)
    # half precision against the reference op in float64 on the same rounded inputs
    *[(cuda_host.compare, case, (dtype,)) for dtype in HALF for case in [
        Case("lstm", proj=2, ln=True, peep=True, zone="hc", **SMALL),
        Case("lstm", ln=True, cifg=True, zone="eval", **SMALL),
        Case("gru", ln=True, zone="hc", **SMALL),
    ]],
    # T = 512 in bfloat16: rounding the running state, h W_hh^T or the running gradient to
    # bfloat16 every step would compound with T. A variant option on in each: the plain cells
    # run the plain kernels
    *[(cuda_host.check_long_sequence_bfloat16, Case(T=512, B=3, I=4, H=8, **options), ())
      for options in [dict(cell="gru", zone="eval"), dict(cell="gru", zone="hc"),
                      dict(cell="lstm", ln=True, peep=True)]],
    # without grad the driver writes scratch rows instead of the history: same outputs
    *[(cuda_host.check_inference_path, case, (dtype,)) for dtype in (torch.float32, torch.float16)
      for case in [Case("lstm", proj=2, ln=True, peep=True, cifg=True, zone="hc", **SMALL),
                   Case("gru", ln=True, zone="eval", **SMALL)]],
    # the meta implementation (used by torch.compile) promises the buffers the driver returns,
    # with and without the history saved for backward
    *[(cuda_host.check_fake_forward, case, (dtype, save)) for save in (True, False)
      for dtype in (torch.float64, torch.bfloat16) for case in [
          Case("lstm", proj=2, ln=True, peep=True, cifg=True, zone="hc", packed=True, **TINY),
          Case("lstm", bias=False, zone="eval", **TINY),
          Case("gru", ln=True, zone="eval", **TINY),
    ]],
    # under torch.autocast the variant op keeps its own dtypes (autocast is excluded inside
    # it): float32 operands give bitwise the float32 results. AutocastCPU, which the CPU build
    # exercises, retypes the same GEMMs that AutocastCUDA would on the GPU build
    *[(cuda_host.check_under_autocast, case, ()) for case in [
        Case("lstm", proj=2, ln=True, peep=True, zone="hc", packed=True, **TINY),
        Case("gru", ln=True, packed=True, **TINY),
    ]],
]  # fmt: skip


@pytest.mark.parametrize(
    "check,case,args",
    HOST_CHECKS,
    ids=lambda v: getattr(v, "__name__", str(v).replace("torch.", "").replace(" ", "")),
)
def test_host(host_layer, check, case, args):
    check(host_layer, case, *args)


@pytest.mark.parametrize(
    "case",
    [_full("lstm", **GRID), _full("lstm", proj=5, **GRID), _full("gru", **GRID)],
    ids=str,
)
def test_host_grid_and_block_walk(host_layer, case):
    """Blocks and threads walked backwards give bitwise the same results (no thread reads
    another's output without a barrier in between); one block taking every row and 4 threads
    per block (several units per thread, a deeper reduction tree) still match the reference."""
    p = cuda_host.problem(case)
    ext = host_layer.ext
    base = cuda_host.run(host_layer, p, reverse=True)
    try:
        ext.set_grid(65535, True, 0)
        backwards = cuda_host.run(host_layer, p, reverse=True)
        ext.set_grid(1, True, 4)
        cuda_host.compare(host_layer, case, torch.float64)
    finally:
        ext.set_grid(65535, False, 0)
    cuda_host.assert_same(backwards, base)


def test_row_launch_shape(host_layer):
    shape = host_layer.ext.row_launch_shape
    assert shape(1, 1, 65535) == (1, 32)
    assert shape(5, 33, 65535) == (5, 64)
    assert shape(5, 256, 65535) == (5, 256)
    assert shape(5, 5000, 65535) == (5, 256)
    assert shape(10**6, 8, 65535) == (65535, 32)  # the row loop covers the rest


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fake_backward_strides_match_real(host_layer, cell):
    """batch_first modules pass the op a transposed x. The real backward returns contiguous
    gradients (dx is a view of a fresh [N, I] buffer); the fake must promise the same strides,
    or a compiled graph would be traced with layouts the op does not produce."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    case = Case(cell, ln=cell == "gru", peep=cell == "lstm", **TINY)
    p = cuda_host.cast(cuda_host.problem(case), torch.float32)
    p["x"] = p["x"].transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, I] of a [B, T, I]
    assert not p["x"].is_contiguous()
    args = cuda_host.op_args(p, True)
    buffers = host_layer.fwd_op(*args)
    upstream = 3 if cell == "lstm" else 2  # y, h_n and c_n, then the saved buffers
    grads = [torch.ones_like(b) if k < upstream else None for k, b in enumerate(buffers)]
    needs = [getattr(args, k) is not None for k in library.GRAD_INPUTS]
    real = host_layer.bwd_op(*args, buffers, grads, needs)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = host_layer.bwd_op(*args, buffers, grads, needs)
    assert real[0].shape == p["x"].shape
    assert [(t.shape, t.stride()) for t in fake] == [(t.shape, t.stride()) for t in real]


def test_host_rejects_bad_input(host_layer):
    p = cuda_host.problem(_full("lstm", B=2, T=3, I=2, H=3))
    run = lambda **kw: host_layer(**{**p, **kw}, reverse=False)  # noqa: E731
    with pytest.raises(ValueError, match="together"):
        run(ln_c_w=None)
    with pytest.raises(ValueError, match="peephole weights"):
        run(w_ch=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="share one dtype"):
        run(w_hh=p["w_hh"].float())
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        run(zoneout_h=1.0)
    with pytest.raises(ValueError, match="mask_h"):
        run(mask_h=torch.zeros(3, 2, 4, dtype=torch.float64))
    g = cuda_host.problem(Case("gru", T=3, B=2, I=2, H=3, ln=True))
    with pytest.raises(ValueError, match="LSTM-only"):
        host_layer(**{**g, "cifg": True}, reverse=False)
    with pytest.raises(TypeError, match="supports"):
        host_layer(**{k: v.int() if torch.is_tensor(v) and k != "batch_sizes" else v
                      for k, v in g.items()}, reverse=False)  # fmt: skip


# -- the real backend -------------------------------------------------------------------------
def gpu(test):
    """A test on CUDA tensors: marked gpu, skipped without a device and the built extension."""
    return pytest.mark.gpu(pytest.mark.skipif(
        not (torch.cuda.is_available() and cv.is_available()),
        reason="needs a CUDA device and fusedrnn._C_cuda built with the variant kernels",
    )(test))  # fmt: skip


GPU_CASES = [  # Case options; proj 18 is H // 2 at the H = 37 of the test
    dict(cell="lstm", ln=True),
    dict(cell="lstm", peep=True),
    dict(cell="lstm", cifg=True),
    dict(cell="lstm", zone="hc"),
    dict(cell="lstm", bias=False, zone="eval"),
    dict(cell="lstm", ln=True, peep=True, cifg=True, zone="hc"),
    dict(cell="lstm", ln=True, peep=True, proj=18, zone="hc"),
    dict(cell="lstm", ln=True, peep=True, cifg=True, proj=18, bias=False, zone="eval"),
    dict(cell="lstm", ln=True, bias=False),
    dict(cell="gru", ln=True),
    dict(cell="gru", zone="hc"),
    dict(cell="gru", ln=True, zone="hc"),
    dict(cell="gru", ln=True, bias=False, zone="eval"),
    dict(cell="gru", bias=False, zone="eval"),
]


@gpu  # float64 / float32 on CUDA tensors: tests/test_conformance.py (backend "cuda")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("options", GPU_CASES, ids=lambda o: str(Case(**o)))
def test_gpu_half_precision_matches_reference(options, reverse, packed, dtype):
    # H = 37: one warp and a few idle threads; proj_size H // 2, since h W_hh^T of rank 3
    # leaves layer norm too ill-conditioned for bfloat16 to resolve (see _compare)
    case = Case(**options, B=5, T=6, I=4, H=37, packed=packed, reverse=reverse)
    cuda_host.compare(cv.layer, case, dtype, device="cuda")


@gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_wide_rows(cell):
    """H = 300: several units per thread and a full 256-thread reduction tree."""
    cuda_host.compare(cv.layer, _full(cell, B=3, T=4, I=5, H=300), torch.float64, device="cuda")


@gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_deterministic(cell):
    """Row reductions and gradient column sums have a fixed order: bitwise equal reruns."""
    p = cuda_host.cast(cuda_host.problem(_full(cell, B=64, T=30, I=8, H=96)), torch.float32, "cuda")
    cuda_host.assert_same(cuda_host.run(cv.layer, p, False), cuda_host.run(cv.layer, p, False))


def test_host_torch_compile_fullgraph(host_layer):
    """The custom ops trace as two opaque nodes (fake implementations, registered autograd):
    compiled forward and backward equal eager ones."""
    p = cuda_host.problem(_full("lstm", B=3, T=4, I=2, H=5))
    eager = cuda_host.run(host_layer, p, reverse=False)
    torch._dynamo.reset()
    compiled = torch.compile(host_layer, fullgraph=True, backend="aot_eager")
    cuda_host.assert_same(cuda_host.run(compiled, p, reverse=False), eager)


@gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_module_matches_reference_module(cell, monkeypatch):
    """End to end through fusedrnn.LSTM / GRU (two bidirectional layers, every variant that
    applies, zoneout in evaluation so that no mask is drawn): outputs and parameter grads."""
    import fusedrnn

    kw = dict(num_layers=2, bidirectional=True, layer_norm=True, zoneout=0.2)
    if cell == "lstm":
        kw.update(proj_size=3, peephole=True)
    cls = fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU
    ref = cls(5, 8, backend="reference", **kw).double().eval()
    dev = cls(5, 8, backend="cuda", **kw).double().cuda().eval()
    dev.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    outs_ref, outs_dev = ref(x), dev(x.cuda())
    cuda_host.assert_close(outs_dev[0], outs_ref[0], cuda_host.TOL[torch.float64], "y")
    outs_ref[0].sum().backward()
    outs_dev[0].sum().backward()
    for (name, p_ref), p_dev in zip(ref.named_parameters(), dev.parameters(), strict=True):
        cuda_host.assert_close(p_dev.grad, p_ref.grad, cuda_host.TOL[torch.float64], f"d{name}")
