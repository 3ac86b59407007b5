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

import json
from pathlib import Path

import cuda_host
import pytest
import torch

from fusedrnn import cuda_report
from fusedrnn.ops import cuda as cuda_ops
from fusedrnn.ops import library, reference

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
NVCC = cuda_report.find_nvcc()

# relative tolerances (of the largest reference magnitude) per dtype, against a float64
# reference on the same (rounded) inputs: a few units of the dtype's rounding error times the
# depth of the computation
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


# --------------------------------------------------------------------------------------------
# compile report
# --------------------------------------------------------------------------------------------
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


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA compile check needs it")
def test_report_fails_on_compile_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.cu").write_text("__global__ void k(float* x) { x[0] = undeclared; }\n")
    monkeypatch.setattr(cuda_report, "CUDA_DIR", tmp_path)
    assert cuda_report.main(["--arch", "sm_80"]) == 1
    assert "COMPILE ERROR" in capsys.readouterr().err


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA compile check needs it")
def test_every_kernel_compiles_without_spills():
    """Reuses build/cuda_report.json when it was written (e.g. by CI's report step) for exactly
    the current sources, flags and nvcc; otherwise compiles (about 15 s on 2 cores)."""
    cache = ROOT / "build" / "cuda_report.json"
    key = cuda_report.sources_hash(NVCC, ["sm_80", "sm_90"])
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    if data.get("sources_hash") != key:
        rc = cuda_report.main(["--arch", "sm_80,sm_90", "--json", str(cache)])
        data = json.loads(cache.read_text())
        assert rc == 0
    assert data["sources_hash"] == key
    results = data["results"]
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


# --------------------------------------------------------------------------------------------
# CPU build of the CUDA backend's code
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_layer():
    """fusedrnn.ops.cuda's layer op over the CPU build of the kernels (tests/cuda_host.py)."""
    if cuda_host.why_not():
        pytest.skip(cuda_host.why_not())
    return cuda_host.host_layer()


def _problem(cell, dtype, B, T, I, H, proj, bias, packed, seed=0):
    """Random layer inputs; for packed input, lengths sorted descending (PackedSequence)."""
    g = torch.Generator().manual_seed(seed)
    G = reference.GATES[cell]
    Hout = proj if proj else H

    def rnd(*shape, scale=0.5):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    batch_sizes = None
    if packed:
        lengths = sorted(torch.randint(1, T + 1, (B,), generator=g).tolist(), reverse=True)
        lengths[0] = T
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(T)])
        x = rnd(int(batch_sizes.sum()), I, scale=1.0)
    else:
        x = rnd(T, B, I, scale=1.0)
    return dict(
        cell=cell,
        x=x,
        h0=rnd(B, Hout),
        c0=rnd(B, H) if cell == "lstm" else None,
        w_ih=rnd(G * H, I),
        w_hh=rnd(G * H, Hout),
        b_ih=rnd(G * H) if bias else None,
        b_hh=rnd(G * H) if bias else None,
        w_hr=rnd(Hout, H) if proj else None,
        batch_sizes=batch_sizes,
    )


_DIFF = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def _run(layer, p, reverse, dtype=None, seed=1):
    """Outputs and the gradients of every input for a fixed random output weighting."""
    args = {k: (v.to(dtype) if dtype and k in _DIFF and v is not None else v) for k, v in p.items()}
    leaves = {k: args[k].detach().requires_grad_() for k in _DIFF if args[k] is not None}
    args.update(leaves)
    y, h_n, c_n = layer(**args, reverse=reverse)
    outs = [y, h_n] + ([c_n] if c_n is not None else [])
    g = torch.Generator().manual_seed(seed)
    loss = sum(
        (o.double().cpu() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
        for o in outs
    )
    loss.backward()
    grads = {k: t.grad for k, t in leaves.items()}
    return [o.detach() for o in outs], grads


def _assert_close(got, want, tol, what):
    scale = max(want.abs().max().item(), 1.0)
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def _compare(host_layer, p, reverse, dtype):
    """Run the CPU build in `dtype` and the reference in float64 on the same rounded inputs."""
    outs, grads = _run(host_layer, p, reverse, dtype)
    ref_outs, ref_grads = _run(reference.layer, p, reverse, torch.float64)
    assert len(outs) == len(ref_outs)
    for name, o, r in zip(("y", "h_n", "c_n")[: len(outs)], outs, ref_outs, strict=True):
        assert o.dtype == dtype
        _assert_close(o, r, TOL[dtype], name)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k] is not None and grads[k].dtype == dtype, k
        _assert_close(grads[k], ref_grads[k], TOL[dtype], f"d{k}")


# every cell, shape and option in float64 / float32 against the reference op (and gradcheck) on
# this host build: tests/test_conformance.py (backend "cuda-host"); the cases below are the GPU
# runs, half precision and the grid walks
CASES = [  # (cell, proj, bias)
    ("lstm", 0, True),
    ("lstm", 0, False),
    ("lstm", 3, True),
    ("gru", 0, True),
    ("gru", 0, False),
    ("rnn_tanh", 0, True),
    ("rnn_tanh", 0, False),
    ("rnn_relu", 0, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_relu", 0)])
def test_host_walk_matches_reference_low_precision(host_layer, cell, proj, dtype):
    p = _problem(cell, torch.float64, B=4, T=5, I=3, H=6, proj=proj, bias=True, packed=True)
    p = {k: (v.to(dtype).double() if torch.is_tensor(v) and v.is_floating_point() else v)
         for k, v in p.items()}  # fmt: skip
    _compare(host_layer, p, reverse=False, dtype=dtype)


@pytest.mark.parametrize(
    "B,T,I,H", [(1, 1, 1, 1), (1, 9, 3, 5), (7, 1, 2, 3), (3, 4, 5, 300)], ids=str
)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_host_walk_awkward_shapes(host_layer, cell, B, T, I, H):
    # H = 300: rows * H exceeds one 256-thread block, so the grid has several blocks
    p = _problem(cell, torch.float64, B=B, T=T, I=I, H=H, proj=0, bias=True, packed=False)
    _compare(host_layer, p, reverse=False, dtype=torch.float64)


@pytest.mark.parametrize("cell,proj", [("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
def test_host_walk_independent_of_grid_order(host_layer, cell, proj):
    """Few blocks (the grid-stride loop takes several turns) and (block, thread) walked
    backwards give bitwise the same results: no element reads another element's output
    within a launch (which would be a race on the GPU), and no element is skipped or doubled."""
    p = _problem(cell, torch.float32, B=6, T=4, I=3, H=70, proj=proj, bias=True, packed=True)
    ext = host_layer.ext
    base = _run(host_layer, p, reverse=True)
    try:
        ext.set_grid(1, True)
        other = _run(host_layer, p, reverse=True)
    finally:
        ext.set_grid(65535, False)
    for a, b in zip(base[0], other[0], strict=True):
        assert torch.equal(a, b)
    for k in base[1]:
        assert torch.equal(base[1][k], other[1][k]), k


def test_launch_shape(host_layer):
    shape = host_layer.ext.launch_shape
    assert shape(1, 65535) == (1, 256)
    assert shape(256, 65535) == (1, 256)
    assert shape(257, 65535) == (2, 256)
    assert shape(10**9, 65535) == (65535, 256)  # the stride loop covers the rest
    assert shape(1000, 2) == (2, 256)


def test_bias_grad_is_column_sum(host_layer):
    """The two-pass column sum over many rows (several partial chunks) equals torch.sum."""
    p = _problem("rnn_tanh", torch.float64, B=9, T=40, I=2, H=3, proj=0, bias=True, packed=False)
    _compare(host_layer, p, reverse=False, dtype=torch.float64)


@pytest.mark.parametrize("cell,proj,bias", [("lstm", 0, True), ("lstm", 2, False), ("gru", 0, True),
                                            ("gru", 0, False), ("rnn_relu", 0, True)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_host_walk_inference_path(host_layer, cell, proj, bias, dtype):
    """Without grad the driver runs the kernels' no-save variants: bitwise the same outputs."""
    p = _problem(cell, dtype, B=4, T=5, I=3, H=6, proj=proj, bias=bias, packed=True)
    train, _ = _run(host_layer, p, reverse=True)
    with torch.no_grad():
        infer = host_layer(**p, reverse=True)
    assert len(train) == sum(t is not None for t in infer)
    for a, b in zip(train, infer, strict=False):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell,proj", [("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("save", [True, False], ids=["save", "nosave"])
def test_fake_forward_matches_real_buffers(host_layer, cell, proj, dtype, save):
    """The meta implementation (used by torch.compile) promises the buffers the driver returns."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    p = _problem(cell, dtype, B=3, T=4, I=2, H=5, proj=proj, bias=True, packed=True)
    args = library.LayerArgs(*[p[k] for k in ("cell", *_DIFF, "batch_sizes")], False,
                             **library.OPTION_DEFAULTS, save=save)  # fmt: skip
    real = host_layer.fwd_op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = host_layer.fwd_op(*args)
    assert all(isinstance(t, FakeTensor) for t in fake)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
def test_host_walk_under_autocast_matches_float32(host_layer, cell, proj):
    """Under torch.autocast the op keeps its own dtypes: float32 operands give bitwise the
    float32 outputs and gradients. The op excludes every autocast dispatch key for its body;
    a CPU build can only exercise AutocastCPU (CPU tensors), which retypes the same GEMMs
    (mm, addmm) to bfloat16 that AutocastCUDA retypes on the GPU build."""
    p = _problem(cell, torch.float32, B=4, T=5, I=3, H=6, proj=proj, bias=True, packed=True)
    want_outs, want_grads = _run(host_layer, p, reverse=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs, grads = _run(host_layer, p, reverse=False)
    for o, w in zip(outs, want_outs, strict=True):
        assert o.dtype == torch.float32 and torch.equal(o, w)
    for k, w in want_grads.items():
        assert grads[k].dtype == torch.float32 and torch.equal(grads[k], w), k


# one unit of bfloat16's spacing at 1 (2^-8, twice the unit roundoff): outputs and gradients
# are stored in bfloat16, and so are the operands they are computed from
BF16_ULP = 2.0**-8


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_host_walk_long_sequence_bfloat16(host_layer, cell):
    """T = 512 in bfloat16 against float64 on the same bfloat16-rounded inputs. The forget gate
    (LSTM) or update gate (GRU) sits near 1, so the state and its gradient carry over hundreds
    of steps: rounding the running state, the pre-activation or the running gradient to
    bfloat16 every step compounds with T. The tolerance is that of bfloat16 storage of the
    outputs and inputs alone, the same for any T."""
    H = 8
    p = _problem(cell, torch.float64, B=3, T=512, I=4, H=H, proj=0, bias=True, packed=False)
    if cell in ("lstm", "gru"):
        p["b_ih"][H : 2 * H] += 5.0  # forget (LSTM) / update (GRU) gate bias: long memory
    p = {k: (v.to(torch.bfloat16).double() if torch.is_tensor(v) and v.is_floating_point()
             else v) for k, v in p.items()}  # fmt: skip
    outs, grads = _run(host_layer, p, False, torch.bfloat16)
    ref_outs, ref_grads = _run(reference.layer, p, False, torch.float64)
    for name, o, r in zip(("y", "h_n", "c_n"), outs, ref_outs, strict=False):
        _assert_close(o, r, 2 * BF16_ULP, name)
    for k in ref_grads:
        _assert_close(grads[k], ref_grads[k], 2 * BF16_ULP, f"d{k}")


def test_every_op_holds_device_guard_and_excludes_autocast():
    """Each exported op body constructs the Launch's device guard for x's device (the CUDA
    build's Guard is c10::cuda::CUDAGuard) and excludes autocast before any tensor work. The
    host build runs the same bodies with a no-op guard, so which device becomes current can
    only be observed on a machine with more than one GPU; this checks the source."""
    import re

    bindings = (CSRC / "cuda" / "bindings.cpp").read_text()
    assert re.search(r"using Guard = c10::cuda::CUDAGuard;", bindings)
    n_ops = 0
    for name in ("layer_module.h", "variant_module.h"):
        src = (CSRC / "cuda" / name).read_text()
        bodies = src.split("m.def(")[1:]
        assert bodies, name
        for body in bodies:
            n_ops += 1
            op = re.search(r'"(\w+)"', body).group(1)
            guard = body.find("typename Launch::Guard guard(x.device());")
            no_autocast = body.find("const NoAutocast no_autocast(c10::autocast_dispatch_keyset);")
            launch = body.find("Launch launch;")
            assert 0 <= no_autocast < launch and 0 <= guard < launch, (name, op)
            assert body.count("Launch launch;") == 1, (name, op)
    assert n_ops == 4


def test_host_walk_rejects_bad_input(host_layer):
    p = _problem("gru", torch.float32, B=2, T=3, I=2, H=3, proj=0, bias=True, packed=False)
    with pytest.raises(TypeError, match="w_hh is torch.float64 but x is torch.float32.*share one"):
        host_layer(**{**p, "w_hh": p["w_hh"].double()}, reverse=False)
    with pytest.raises(ValueError, match="no projection"):
        host_layer(**{**p, "w_hr": torch.zeros(3, 3)}, reverse=False)
    with pytest.raises(TypeError, match="supports"):
        host_layer(**{k: v.int() if torch.is_tensor(v) else v for k, v in p.items()}, reverse=False)


# --------------------------------------------------------------------------------------------
# the real backend
# --------------------------------------------------------------------------------------------
def test_cuda_backend_unavailable_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cuda_ops.is_available() is False
    p = _problem("lstm", torch.float32, B=2, T=2, I=2, H=3, proj=0, bias=True, packed=False)
    with pytest.raises(ValueError, match="needs cuda tensors"):
        cuda_ops.layer(**p, reverse=False)


gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and cuda_ops.is_available()),
    reason="needs a CUDA device and the built extension fusedrnn._C_cuda",
)


@gpu
@pytest.mark.gpu
# float64 / float32 on CUDA tensors: tests/test_conformance.py (backend "cuda")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,proj,bias", CASES)
def test_gpu_matches_reference(cell, proj, bias, reverse, packed, dtype):
    p = _problem(cell, torch.float64, B=5, T=6, I=4, H=37, proj=proj, bias=bias, packed=packed)
    p = {k: (v.to(dtype).double() if torch.is_tensor(v) and v.is_floating_point() else v)
         for k, v in p.items()}  # fmt: skip
    dev = {k: (v.cuda() if k in _DIFF and v is not None else v) for k, v in p.items()}
    outs, grads = _run(cuda_ops.layer, dev, reverse, dtype)
    ref_outs, ref_grads = _run(reference.layer, p, reverse, torch.float64)
    assert len(outs) == len(ref_outs)
    for name, o, r in zip(("y", "h_n", "c_n")[: len(outs)], outs, ref_outs, strict=True):
        _assert_close(o.cpu(), r, TOL[dtype], name)
    for k in ref_grads:
        _assert_close(grads[k].cpu(), ref_grads[k], TOL[dtype], f"d{k}")


@gpu
@pytest.mark.gpu
def test_gpu_bias_grads_deterministic():
    p = _problem("gru", torch.float32, B=64, T=50, I=8, H=96, proj=0, bias=True, packed=False)
    dev = {k: (v.cuda() if k in _DIFF and v is not None else v) for k, v in p.items()}
    a = _run(cuda_ops.layer, dev, False)[1]
    b = _run(cuda_ops.layer, dev, False)[1]
    assert torch.equal(a["b_ih"], b["b_ih"]) and torch.equal(a["b_hh"], b["b_hh"])
