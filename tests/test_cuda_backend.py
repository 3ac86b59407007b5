"""The CUDA backend (csrc/cuda, fusedrnn/ops/cuda.py) without and with a GPU.

Without a GPU:
* every kernel file compiles with nvcc for sm_80 and sm_90 without register spills
  (python -m fusedrnn.cuda_report);
* a CPU build of the same code -- layer driver, Python glue, dispatch, launch shapes,
  grid-stride loop and element functors, with each kernel launch replaced by a walk over every
  (block, thread) of its grid -- runs behind fusedrnn.ops.cuda's layer op on CPU tensors and is
  compared with the reference backend (forward and every gradient, every cell and option).
With a GPU (skipped here): fusedrnn.ops.cuda.layer on CUDA tensors against the reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import cuda_host
import pytest
import torch
from layer_cases import Case

from fusedrnn import cuda_report
from fusedrnn.ops import cuda as cuda_ops

CSRC = Path(__file__).resolve().parent.parent / "csrc"
NVCC = cuda_report.find_nvcc()
needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found: the CUDA compile check needs it"
)
F32, HALF = torch.float32, (torch.float16, torch.bfloat16)


# -- compile report --------------------------------------------------------------------------------


def test_ptxas_parser_flags_spills():
    log = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 512 bytes smem, 364 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 364 bytes cmem[0]
"""
    (k80,) = cuda_report.parse_ptxas(log, "k.cu", "sm_80")
    (k90,) = cuda_report.parse_ptxas(log, "k.cu", "sm_90")
    assert (k80.registers, k80.spill_stores, k80.spill_loads, k80.smem) == (255, 8, 4, 512)
    assert (k90.registers, k90.spill_stores, k90.spill_loads, k90.smem) == (40, 0, 0, 0)


def test_report_fails_on_spill(monkeypatch, capsys):
    spilled = cuda_report.KernelInfo("csrc/cuda/x.cu", "sm_80", "_Z1kPf", "k", 255, 8, 8, 8, 0)
    fake = [cuda_report.CompileResult("csrc/cuda/x.cu", "sm_80", True, "", [spilled])]
    monkeypatch.setattr(cuda_report, "find_nvcc", lambda: "/bin/true")
    monkeypatch.setattr(cuda_report, "compile_all", lambda *a, **k: fake)
    assert cuda_report.main(["--arch", "sm_80"]) == 1
    assert "SPILL" in capsys.readouterr().err


def test_report_missing_nvcc(monkeypatch, capsys):
    monkeypatch.setattr(cuda_report, "find_nvcc", lambda: None)
    assert cuda_report.main(["--allow-missing-nvcc"]) == 0
    assert "SKIP" in capsys.readouterr().out
    assert cuda_report.main([]) != 0


@needs_nvcc
def test_report_fails_on_compile_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.cu").write_text("__global__ void k(float* x) { x[0] = undeclared; }\n")
    monkeypatch.setattr(cuda_report, "CUDA_DIR", tmp_path)
    assert cuda_report.main(["--arch", "sm_80"]) == 1
    assert "COMPILE ERROR" in capsys.readouterr().err


@needs_nvcc
def test_every_kernel_compiles_without_spills():
    """Every kernel file compiles for sm_80 and sm_90 (cuda_host.compile_report)."""
    results = cuda_host.compile_report()["results"]
    files = {Path(r["file"]).name for r in results}
    assert files == {p.name for p in (CSRC / "cuda").glob("*.cu")}
    assert all(r["ok"] for r in results)
    kernels = [k for r in results for k in r["kernels"]]
    assert all(k["spill_stores"] == 0 and k["spill_loads"] == 0 for k in kernels)
    # every template configuration the dispatch can select was instantiated, for both archs:
    # 4 dtypes x (lstm 2^3 + 2, gru 2^2 + 1, rnn 2^3 + 2, column sum 2)
    plain = {"lstm.cu", "gru.cu", "rnn.cu", "colsum.cu"}  # the variants: test_cuda_variants.py
    for arch in ("sm_80", "sm_90"):
        names = [k["name"] for k in kernels if k["arch"] == arch and Path(k["file"]).name in plain]
        assert len(names) == 4 * (10 + 5 + 10 + 2), arch
        for op in ("LstmFwdOp", "LstmBwdOp", "GruFwdOp", "GruBwdOp", "RnnFwdOp", "RnnBwdOp"):
            assert any(op in n for n in names), (arch, op)


# -- CPU build of the CUDA backend's code (the host_layer fixture: tests/conftest.py) --------------

# every cell, shape (the launch shapes of GRIDS included) and option in float64 / float32 against
# the reference op (and gradcheck) on this host build: tests/test_conformance.py (backend
# "cuda-host"); the cases below are the GPU runs, half precision and the grid walks; the
# variants: tests/test_cuda_variants.py


def _case(cell, B=4, T=5, I=3, H=6, proj=0, bias=True, packed=True, reverse=False):  # noqa: E741
    return Case(cell, T=T, B=B, I=I, H=H, proj=proj, bias=bias, packed=packed, reverse=reverse)


def _problem(case: Case, device=None) -> dict:
    """The layer op's float32 keyword arguments for ``case`` (tests/cuda_host.py)."""
    return cuda_host.cast(cuda_host.problem(case), F32, device)


TINY = dict(B=3, T=4, I=2, H=5)
HOST_CHECKS = [  # (the cuda_host check, its case, its further arguments)
    # half precision against the reference op in float64 on the same rounded inputs
    *[(cuda_host.compare, _case(cell, proj=proj), (dtype,)) for dtype in HALF
      for cell, proj in [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_relu", 0)]],
    # without grad the driver runs the kernels' no-save variants: bitwise the same outputs
    *[(cuda_host.check_inference_path, case, (dtype,)) for dtype in (F32, torch.float16)
      for case in [_case("lstm"), _case("lstm", proj=2, bias=False), _case("gru"),
                   _case("gru", bias=False), _case("rnn_relu")]],
    # the meta implementation (used by torch.compile) promises the buffers the driver returns
    *[(cuda_host.check_fake_forward, case, (dtype, save)) for save in (True, False)
      for dtype in (torch.float64, torch.bfloat16) for case in [
          _case("lstm", proj=2, **TINY), _case("gru", **TINY), _case("rnn_tanh", **TINY)]],
    # under torch.autocast the op keeps its own dtypes: float32 operands give bitwise the
    # float32 outputs and gradients. The op excludes every autocast dispatch key for its body;
    # a CPU build can only exercise AutocastCPU (CPU tensors), which retypes the same GEMMs
    # (mm, addmm) to bfloat16 that AutocastCUDA retypes on the GPU build
    *[(cuda_host.check_under_autocast, _case(cell, proj=proj), ())
      for cell, proj in [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0)]],
    # T = 512 in bfloat16 against float64 on the same bfloat16-rounded inputs. The forget gate
    # (LSTM) or update gate (GRU) sits near 1, so the state and its gradient carry over hundreds
    # of steps: rounding the running state, the pre-activation or the running gradient to
    # bfloat16 every step compounds with T. The tolerance is that of bfloat16 storage of the
    # outputs and inputs alone, the same for any T
    *[(cuda_host.check_long_sequence_bfloat16, Case(cell, T=512, B=3, I=4, H=8), ())
      for cell in ("lstm", "gru", "rnn_tanh")],
]  # fmt: skip


@pytest.mark.parametrize(
    "check,case,args",
    HOST_CHECKS,
    ids=lambda v: getattr(v, "__name__", str(v).replace("torch.", "").replace(" ", "")),
)
def test_host(host_layer, check, case, args):
    check(host_layer, case, *args)


@pytest.mark.parametrize("cell,proj", [("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
def test_host_walk_independent_of_grid_order(host_layer, cell, proj):
    """Few blocks (the grid-stride loop takes several turns) and (block, thread) walked
    backwards give bitwise the same results: no element reads another element's output
    within a launch (which would be a race on the GPU), and no element is skipped or doubled."""
    p = _problem(_case(cell, B=6, T=4, I=3, H=70, proj=proj))
    base = cuda_host.run(host_layer, p, reverse=True)
    try:
        host_layer.ext.set_grid(1, True)
        other = cuda_host.run(host_layer, p, reverse=True)
    finally:
        host_layer.ext.set_grid(65535, False)
    cuda_host.assert_same(other, base)


def test_launch_shape(host_layer):
    shape = host_layer.ext.launch_shape
    assert shape(1, 65535) == shape(256, 65535) == (1, 256)
    assert shape(257, 65535) == (2, 256)
    assert shape(10**9, 65535) == (65535, 256)  # the stride loop covers the rest
    assert shape(1000, 2) == (2, 256)


def test_every_op_holds_device_guard_and_excludes_autocast():
    """Each exported op body constructs the Launch's device guard for x's device (the CUDA
    build's Guard is c10::cuda::CUDAGuard) and excludes autocast before any tensor work. The
    host build runs the same bodies with a no-op guard, so which device becomes current can
    only be observed on a machine with more than one GPU; this checks the source."""
    assert "using Guard = c10::cuda::CUDAGuard;" in (CSRC / "cuda" / "bindings.cpp").read_text()
    bodies = (CSRC / "cuda" / "layer_module.h").read_text().split("m.def(")[1:]
    assert len(bodies) == 2
    for body in bodies:
        op = re.search(r'"(\w+)"', body).group(1)
        guard = body.find("typename Launch::Guard guard(x.device());")
        no_autocast = body.find("const NoAutocast no_autocast(c10::autocast_dispatch_keyset);")
        launch = body.find("Launch launch;")
        assert 0 <= no_autocast < launch and 0 <= guard < launch, op
        assert body.count("Launch launch;") == 1, op


def test_host_walk_rejects_bad_input(host_layer):
    p = _problem(_case("gru", B=2, T=3, I=2, H=3, packed=False))
    with pytest.raises(TypeError, match="w_hh is torch.float64 but x is torch.float32.*share one"):
        host_layer(**{**p, "w_hh": p["w_hh"].double()}, reverse=False)
    with pytest.raises(ValueError, match="no projection"):
        host_layer(**{**p, "w_hr": torch.zeros(3, 3)}, reverse=False)
    with pytest.raises(TypeError, match="supports"):
        host_layer(**{k: v.int() if torch.is_tensor(v) else v for k, v in p.items()}, reverse=False)


# -- the real backend ------------------------------------------------------------------------------


def test_cuda_backend_unavailable_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cuda_ops.is_available() is False
    p = _problem(_case("lstm", B=2, T=2, I=2, H=3, packed=False))
    with pytest.raises(ValueError, match="needs cuda tensors"):
        cuda_ops.layer(**p, reverse=False)


gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and cuda_ops.is_available()),
    reason="needs a CUDA device and the built extension fusedrnn._C_cuda",
)


@gpu
@pytest.mark.gpu
# float64 / float32 on CUDA tensors: tests/test_conformance.py (backend "cuda")
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "cell,proj,bias",
    [("lstm", 0, True), ("lstm", 0, False), ("lstm", 3, True), ("gru", 0, True), ("gru", 0, False),
     ("rnn_tanh", 0, True), ("rnn_tanh", 0, False), ("rnn_relu", 0, True)],
)  # fmt: skip
def test_gpu_matches_reference(cell, proj, bias, reverse, packed, dtype):
    case = _case(cell, B=5, T=6, I=4, H=37, proj=proj, bias=bias, packed=packed, reverse=reverse)
    cuda_host.compare(cuda_ops.layer, case, dtype, device="cuda")


@gpu
@pytest.mark.gpu
def test_gpu_bias_grads_deterministic():
    p = _problem(_case("gru", B=64, T=50, I=8, H=96, packed=False), "cuda")
    a, b = (cuda_host.run(cuda_ops.layer, p, False)[1] for _ in range(2))
    assert torch.equal(a["b_ih"], b["b_ih"]) and torch.equal(a["b_hh"], b["b_hh"])
