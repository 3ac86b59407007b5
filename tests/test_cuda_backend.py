"""The CUDA backend (csrc/cuda, fusedrnn/ops/cuda.py) without a GPU.

* every kernel file compiles with nvcc for sm_80 and sm_90 without register spills
  (python -m fusedrnn.cuda_report);
* a CPU build of the same code with each launch replaced by a walk over its grid
  (tests/cuda_host.py, csrc/cuda/harness/host_driver.cpp) runs behind fusedrnn.ops.cuda's layer
  op on CPU tensors and is compared with the reference backend, every cell and variant.
The grid walks and the runs on a GPU: test_cuda_variants.py.
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import cuda_host
import pytest
import torch
from cuda_host import TINY, full
from layer_cases import Case

from fusedrnn import cuda_report
from fusedrnn.ops import cuda as cuda_ops

CUDA_SRC = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
needs_nvcc = pytest.mark.skipif(
    cuda_report.find_nvcc() is None, reason="nvcc not found: the CUDA compile check needs it"
)
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


# -- compile report --------------------------------------------------------------------------------


def test_ptxas_parser_and_report_exit_codes(monkeypatch, capsys):
    log = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 512 bytes smem, 364 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 364 bytes cmem[0]
"""
    for arch, want in (("sm_80", (255, 8, 4, 512)), ("sm_90", (40, 0, 0, 0))):
        (k,) = cuda_report.parse_ptxas(log, "k.cu", arch)
        assert (k.registers, k.spill_stores, k.spill_loads, k.smem) == want, arch
    spilled = cuda_report.parse_ptxas(log, "csrc/cuda/x.cu", "sm_80")
    fake = [cuda_report.CompileResult("csrc/cuda/x.cu", "sm_80", True, "", spilled)]
    monkeypatch.setattr(cuda_report, "find_nvcc", lambda: "/bin/true")
    monkeypatch.setattr(cuda_report, "compile_all", lambda *a, **k: fake)
    assert cuda_report.main(["--arch", "sm_80"]) == 1
    assert "SPILL" in capsys.readouterr().err
    # without nvcc the report fails unless told to skip
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
    """Every kernel file compiles for sm_80 and sm_90 (cuda_host.compile_report), and every
    template configuration the dispatch can select was instantiated for both archs: 4 dtypes x
    every combination of the runtime bools each functor is dispatched on (the elementwise
    kernels run torch.nn's cells, the row kernels any option on)."""
    results = cuda_host.compile_report()["results"]
    assert {Path(r["file"]).name for r in results} == {p.name for p in CUDA_SRC.glob("*.cu")}
    assert all(r["ok"] for r in results)
    kernels = [k for r in results for k in r["kernels"]]
    assert all(k["spill_stores"] == 0 and k["spill_loads"] == 0 for k in kernels)
    flags = {
        "lstm.cu": {"LstmFwdOp": "bias save proj", "LstmBwdOp": "proj",
                    "LstmRowFwdOp": "ln peep cifg", "LstmRowBwdOp": "ln peep cifg",
                    "ZoneFwdOp": "", "ZoneBwdOp": ""},
        "gru.cu": {"GruFwdOp": "bias save", "GruBwdOp": "", "GruRowFwdOp": "ln",
                   "GruRowBwdOp": "ln"},
        "rnn.cu": {"RnnFwdOp": "relu bias save", "RnnBwdOp": "relu"},
        "colsum.cu": {"ColSumPartialOp": "", "ColSumFinalOp": ""},
    }  # fmt: skip
    for arch, (file, ops) in itertools.product(("sm_80", "sm_90"), flags.items()):
        names = [k["name"] for k in kernels if k["arch"] == arch and Path(k["file"]).name == file]
        want = {op: 4 * 2 ** len(f.split()) for op, f in ops.items()}
        assert len(names) == sum(want.values()), (arch, file)
        for op, n in want.items():
            assert sum(f"{op}<" in name for name in names) == n, (arch, op)


# -- CPU build of the CUDA backend's code (the host_layer fixture: tests/conftest.py) --------------

# float64 / float32 on this host build: tests/test_conformance.py (backend "cuda-host"); below,
# half precision and the driver's paths, torch.nn's cells (elementwise kernels) then variants
_case = functools.partial(Case, B=4, T=5, I=3, H=6, packed=True)
_tiny = functools.partial(Case, **TINY)
_long = functools.partial(Case, T=512, B=3, I=4, H=8)

HOST_CHECKS = [  # (check, its cases, the values of each further argument): every combination
    (cuda_host.compare, [_case("lstm"), _case("lstm", proj=2), _case("gru"), _case("rnn_relu"),
     _case("lstm", proj=2, ln=True, peep=True, zone="hc"),
     _case("lstm", ln=True, cifg=True, zone="eval"), _case("gru", ln=True, zone="hc")],
     (F16, BF16)),
    (cuda_host.check_same_results, [_case("lstm"), _case("lstm", proj=2, bias=False),
     _case("gru"), _case("gru", bias=False), _case("rnn_relu"),
     _case("lstm", proj=2, ln=True, peep=True, cifg=True, zone="hc"),
     _case("gru", ln=True, zone="eval")], (F32, F16), ("no_grad",)),
    # with and without the history saved for backward
    (cuda_host.check_fake_ops, [_tiny("lstm", proj=2, packed=True), _tiny("gru", packed=True),
     _tiny("rnn_tanh", packed=True),
     _tiny("lstm", proj=2, ln=True, peep=True, cifg=True, zone="hc", packed=True),
     _tiny("lstm", bias=False, zone="eval"), _tiny("gru", ln=True, zone="eval"),
     _tiny("lstm", peep=True), _tiny("gru", ln=True)], (F64, BF16), (True, False)),
    (cuda_host.check_same_results, [_case("lstm"), _case("lstm", proj=2), _case("gru"),
     _case("rnn_tanh"), _tiny("lstm", proj=2, ln=True, peep=True, zone="hc", packed=True),
     _tiny("gru", ln=True, packed=True)], (F32,), ("autocast",)),
    (cuda_host.check_same_results, [full("lstm", **TINY)], (F64,), ("compiled",)),
    (cuda_host.check_long_sequence_bfloat16, [_long("lstm"), _long("gru"), _long("rnn_tanh"),
     _long("gru", zone="eval"), _long("gru", zone="hc"), _long("lstm", ln=True, peep=True)]),
]  # fmt: skip


@pytest.mark.parametrize("check,case,args", [
    (check, case, args) for check, cases, *values in HOST_CHECKS
    for args in itertools.product(*values) for case in cases
], ids=lambda v: getattr(v, "__name__", str(v).replace("torch.", "").replace(" ", "")))  # fmt: skip
def test_host(host_layer, check, case, args):
    check(host_layer, case, *args)


def test_launch_shapes(host_layer):
    shape, rows = host_layer.ext.launch_shape, host_layer.ext.row_launch_shape
    assert shape(1, 65535) == shape(256, 65535) == (1, 256)
    assert shape(257, 65535) == (2, 256)
    assert shape(10**9, 65535) == (65535, 256)  # the stride loop covers the rest
    assert shape(1000, 2) == (2, 256)
    assert rows(1, 1, 65535) == (1, 32)
    assert rows(5, 33, 65535) == (5, 64)
    assert rows(5, 256, 65535) == rows(5, 5000, 65535) == (5, 256)
    assert rows(10**6, 8, 65535) == (65535, 32)  # the row loop covers the rest


def test_every_op_holds_device_guard_and_excludes_autocast():
    """Every exported op is defined by def_op, whose body constructs the Launch's device guard
    for x's device (the CUDA build's Guard is c10::cuda::CUDAGuard) and excludes autocast before
    any tensor work. The host build runs the same body with a no-op guard, so which device
    becomes current can only be observed on a machine with more than one GPU; this checks the
    source."""
    assert "using Guard = c10::cuda::CUDAGuard;" in (CUDA_SRC / "bindings.cpp").read_text()
    source = (CUDA_SRC / "layer_module.h").read_text()
    (body,) = source.split("m.def(")[1:]
    assert re.findall(r'def_op\(m, "(\w+)"', source) == ["layer_forward", "layer_backward"]
    guard = body.find("typename Launch::Guard guard(x.device());")
    no_autocast = body.find("const NoAutocast no_autocast(c10::autocast_dispatch_keyset);")
    operands = body.find("const Layer layer = layer_of(")
    launch = body.find("Launch launch;")
    assert 0 <= no_autocast < operands < launch and 0 <= guard < operands
    assert body.count("Launch launch;") == 1


SHAPE = dict(B=2, T=3, I=2, H=3)
GRU, GRU_LN = Case("gru", **SHAPE), Case("gru", ln=True, **SHAPE)
LSTM_FULL = Case("lstm", ln=True, peep=True, zone="hc", **SHAPE)
BAD_INPUTS = [  # (case, dtype, the arguments -> the changed ones, error, message)
    (GRU, F32, lambda p: {"w_hh": p["w_hh"].double()}, TypeError,
     "w_hh is torch.float64 but x is torch.float32.*share one"),
    (GRU, F32, lambda p: {"w_hr": torch.zeros(3, 3)}, ValueError, "no projection"),
    (GRU, F32, lambda p: {k: v.int() for k, v in p.items() if torch.is_tensor(v)}, TypeError,
     "supports"),
    (LSTM_FULL, F64, lambda p: {"ln_c_w": None}, ValueError, "together"),
    (LSTM_FULL, F64, lambda p: {"w_ch": torch.zeros(2, 3, dtype=F64)}, ValueError,
     "peephole weights"),
    (LSTM_FULL, F64, lambda p: {"zoneout_h": 1.0}, ValueError, r"\[0, 1\)"),
    (LSTM_FULL, F64, lambda p: {"mask_h": torch.zeros(3, 2, 4, dtype=F64)}, ValueError, "mask_h"),
    (GRU_LN, F64, lambda p: {"cifg": True}, ValueError, "LSTM-only"),
]  # fmt: skip


@pytest.mark.parametrize(
    "case,dtype,change,error,match", BAD_INPUTS, ids=[r[-1] for r in BAD_INPUTS]
)
def test_host_rejects_bad_input(host_layer, case, dtype, change, error, match):
    p = cuda_host.problem(case, dtype)
    with pytest.raises(error, match=match):
        host_layer(**{**p, **change(p)}, reverse=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_backend_unavailable_without_gpu():
    assert cuda_ops.is_available() is False
    p = cuda_host.problem(Case("lstm", B=2, T=2, I=2, H=3), F32)
    with pytest.raises(ValueError, match="needs cuda tensors"):
        cuda_ops.layer(**p, reverse=False)
