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

import json
from pathlib import Path

import cuda_host
import pytest
import torch

from fusedrnn import cuda_report
from fusedrnn.ops import cuda as cv
from fusedrnn.ops import library
from fusedrnn.ops import reference as rv

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
NVCC = cuda_report.find_nvcc()

# relative tolerances (of the largest reference magnitude) per dtype, against a float64
# reference on the same (rounded) inputs, as in test_cuda_backend.py
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
DIFF = library.GRAD_INPUTS


# --------------------------------------------------------------------------------------------
# compile report
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA compile check needs it")
def test_variant_kernels_compile_without_spills():
    """Every template configuration the variant dispatch can select, for both archs; reuses
    build/cuda_report.json when it matches the current sources (else compiles, ~1 min)."""
    cache = ROOT / "build" / "cuda_report.json"
    key = cuda_report.sources_hash(NVCC, ["sm_80", "sm_90"])
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    if data.get("sources_hash") != key:
        rc = cuda_report.main(["--arch", "sm_80,sm_90", "--json", str(cache)])
        data = json.loads(cache.read_text())
        assert rc == 0
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


# --------------------------------------------------------------------------------------------
# CPU build of the kernels' code
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_layer():
    """fusedrnn.ops.cuda's layer op over the CPU build of the kernels (tests/cuda_host.py)."""
    if cuda_host.why_not():
        pytest.skip(cuda_host.why_not())
    return cuda_host.host_layer()


def _problem(cell, B, T, I, H, *, proj=0, bias=True, packed=False, ln=False, peep=False,
             cifg=False, zone="off", seed=0):  # fmt: skip
    """Random float64 layer inputs; zone: "off", "train" (masks) or "eval" (p only)."""
    g = torch.Generator().manual_seed(seed)
    G = (3 if cifg else 4) if cell == "lstm" else 3
    Hout = proj if proj else H

    def rnd(*shape, scale=0.5, center=0.0):
        return center + (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale

    batch_sizes = None
    if packed:
        lengths = sorted(torch.randint(1, T + 1, (B,), generator=g).tolist(), reverse=True)
        lengths[0] = T
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(T)])
        lead = (int(batch_sizes.sum()),)
    else:
        lead = (T, B)
    p = dict(
        cell=cell, x=rnd(*lead, I, scale=1.0), h0=rnd(B, Hout),
        c0=rnd(B, H) if cell == "lstm" else None, w_ih=rnd(G * H, I), w_hh=rnd(G * H, Hout),
        b_ih=rnd(G * H) if bias else None, b_hh=rnd(G * H) if bias else None,
        w_hr=rnd(Hout, H) if proj else None, batch_sizes=batch_sizes, cifg=cifg,
    )  # fmt: skip
    if ln:  # gains around 1, biases around 0, all random so that every gradient matters
        p.update(ln_ih_w=rnd(G * H, center=1.0), ln_hh_w=rnd(G * H, center=1.0))
        p.update(ln_ih_b=rnd(G * H) if bias else None, ln_hh_b=rnd(G * H) if bias else None)
        if cell == "lstm":
            p.update(ln_c_w=rnd(H, center=1.0), ln_c_b=rnd(H) if bias else None)
    if peep:
        p["w_ch"] = rnd(2 if cifg else 3, H)
    if zone != "off":
        p["zoneout_h"] = 0.3
        if cell == "lstm":
            p["zoneout_c"] = 0.4
        if zone == "train":
            p["mask_h"] = (torch.rand(*lead, Hout, generator=g) < 0.3).double()
            if cell == "lstm":
                p["mask_c"] = (torch.rand(*lead, H, generator=g) < 0.4).double()
    return p


def _cast(p, dtype, device=None):
    """Differentiable inputs (and masks) in dtype / on device; the rest as is."""
    out = {}
    for k, v in p.items():
        if torch.is_tensor(v) and v.is_floating_point():
            v = v.to(dtype=dtype, device=device)
        out[k] = v
    return out


def _run(layer, p, reverse, seed=1):
    """Outputs and the gradients of every present input for a fixed random output weighting."""
    args = dict(p)
    leaves = {k: args[k].detach().requires_grad_() for k in DIFF if args.get(k) is not None}
    if p["cell"] == "gru":
        leaves.pop("c0", None)
    args.update(leaves)
    y, h_n, c_n = layer(**args, reverse=reverse)
    outs = [y, h_n] + ([c_n] if p["cell"] == "lstm" else [])
    g = torch.Generator().manual_seed(seed)
    loss = sum(
        (o.double().cpu() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
        for o in outs
    )
    loss.backward()
    return [o.detach() for o in outs], {k: t.grad for k, t in leaves.items()}


def _assert_close(got, want, tol, what):
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def _rel_error(got, want):
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    return (got.double().cpu() - want).abs().max().item() / scale if want.numel() else 0.0


def _compare(layer, p, reverse, dtype, device=None):
    """Run `layer` in dtype (on device) and the reference in float64 on the same rounded
    inputs: every output and every gradient.

    Below float64 the bound is TOL[dtype], or 4x the largest relative error that the reference
    op itself, differentiated by autograd in that dtype, makes on this problem if that is
    larger: layer norm over few features (with a projection, h W_hh^T has rank Hout) and a
    few steps of recurrence amplify rounding errors beyond the plain cells' TOL, for PyTorch's
    own kernels as well; a wrong kernel is off by O(1), far outside either bound."""
    rounded = _cast(_cast(p, dtype), torch.float64)
    outs, grads = _run(layer, _cast(rounded, dtype, device), reverse)
    ref_outs, ref_grads = _run(rv.layer, rounded, reverse)
    tol = TOL[dtype]
    if dtype != torch.float64:
        own_outs, own_grads = _run(rv.layer, _cast(rounded, dtype), reverse)
        own = [_rel_error(o, r) for o, r in zip(own_outs, ref_outs, strict=True)]
        own += [_rel_error(own_grads[k], ref_grads[k]) for k in ref_grads]
        tol = max(tol, 4 * max(own))
    assert len(outs) == len(ref_outs)
    for name, o, r in zip(("y", "h_n", "c_n"), outs, ref_outs, strict=False):
        assert o.dtype == dtype, name
        _assert_close(o, r, tol, name)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k] is not None and grads[k].dtype == dtype, k
        _assert_close(grads[k], ref_grads[k], tol, f"d{k}")


# every variant, shape and option in float64 / float32 against the reference op (and gradcheck)
# on this host build: tests/test_conformance.py (backend "cuda-host"); the cases below are the
# GPU runs, half precision and the grid walks
LSTM_CASES = [  # (ln, peep, cifg, proj, bias, zone)
    (True, False, False, 0, True, "off"),
    (False, True, False, 0, True, "off"),
    (False, False, True, 0, True, "off"),
    (False, False, False, 0, True, "train"),
    (False, False, False, 0, False, "eval"),
    (True, True, True, 0, True, "train"),
    (True, True, False, 3, True, "train"),
    (True, True, True, 3, False, "eval"),
    (True, False, False, 0, False, "off"),
]
GRU_CASES = [  # (ln, bias, zone)
    (True, True, "off"),
    (False, True, "train"),
    (True, True, "train"),
    (True, False, "eval"),
    (False, False, "eval"),
]


def _op_args(p: dict, save: bool) -> library.LayerArgs:
    """The op's arguments for problem ``p`` (forward direction)."""
    a = {k: p.get(k, v) for k, v in library.OPTION_DEFAULTS.items()}
    c0 = p.get("c0") if p["cell"] == "lstm" else None
    return library.LayerArgs(p["cell"], p["x"], p["h0"], c0, p["w_ih"], p["w_hh"], p.get("b_ih"),
                             p.get("b_hh"), p.get("w_hr"), p.get("batch_sizes"), False, **a,
                             save=save)  # fmt: skip


def _lstm(ln, peep, cifg, proj, bias, zone, **kw):
    return _problem("lstm", proj=proj, bias=bias, ln=ln, peep=peep, cifg=cifg, zone=zone, **kw)


def _gru(ln, bias, zone, **kw):
    return _problem("gru", bias=bias, ln=ln, zone=zone, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: _lstm(True, True, False, 2, True, "train", **kw),
        lambda **kw: _lstm(True, False, True, 0, True, "eval", **kw),
        lambda **kw: _gru(True, True, "train", **kw),
    ],
    ids=["lstm-ln-peep-proj-zone", "lstm-ln-cifg-eval", "gru-ln-zone"],
)
def test_host_low_precision(host_layer, make, dtype):
    _compare(host_layer, make(B=4, T=5, I=3, H=6, packed=True), False, dtype)


@pytest.mark.parametrize("case", ["gru-zone-eval", "gru-zone", "lstm-ln-peep"])
def test_host_long_sequence_bfloat16(host_layer, case):
    """T = 512 in bfloat16 against float64 on the same bfloat16-rounded inputs, the update
    (GRU) or forget (LSTM) gate near 1 so that the state and its gradient carry over hundreds
    of steps. Rounding the running state, h W_hh^T or the running gradient to bfloat16 every
    step would compound with T; the bound is two units of bfloat16's spacing (2^-8) of the
    largest magnitude, the rounding of the stored outputs and inputs, the same for any T."""
    H = 8
    if case == "gru-zone-eval":  # a variant option on: the plain GRU runs the plain kernels
        p = _gru(False, True, "eval", B=3, T=512, I=4, H=H)
    elif case == "gru-zone":
        p = _gru(False, True, "train", B=3, T=512, I=4, H=H)
    else:
        p = _lstm(True, True, False, 0, True, "off", B=3, T=512, I=4, H=H)
    gate = "ln_ih_b" if case == "lstm-ln-peep" else "b_ih"
    p[gate][H : 2 * H] += 5.0  # forget (LSTM) / update (GRU) gate: long memory
    rounded = _cast(_cast(p, torch.bfloat16), torch.float64)
    outs, grads = _run(host_layer, _cast(rounded, torch.bfloat16), False)
    ref_outs, ref_grads = _run(rv.layer, rounded, False)
    for name, o, r in zip(("y", "h_n", "c_n"), outs, ref_outs, strict=False):
        _assert_close(o, r, 2 * 2.0**-8, name)
    for k in ref_grads:
        _assert_close(grads[k], ref_grads[k], 2 * 2.0**-8, f"d{k}")


@pytest.mark.parametrize(
    "B,T,I,H", [(1, 1, 1, 1), (1, 9, 3, 5), (7, 1, 2, 3), (3, 3, 5, 300)], ids=str
)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_host_awkward_shapes(host_layer, cell, B, T, I, H):
    # H = 300 > 256 threads: threads take several units and the row sums several elements each
    if cell == "lstm":
        p = _lstm(True, True, False, 0, True, "train", B=B, T=T, I=I, H=H)
    else:
        p = _gru(True, True, "train", B=B, T=T, I=I, H=H)
    _compare(host_layer, p, reverse=False, dtype=torch.float64)


@pytest.mark.parametrize("case", ["lstm", "lstm-proj", "gru"])
def test_host_grid_and_block_walk(host_layer, case):
    """Blocks and threads walked backwards give bitwise the same results (no thread reads
    another's output without a barrier in between); one block taking every row and 4 threads
    per block (several units per thread, a deeper reduction tree) still match the reference."""
    if case == "gru":
        p = _gru(True, True, "train", B=6, T=4, I=3, H=37, packed=True)
    else:
        proj = 5 if case == "lstm-proj" else 0
        p = _lstm(True, True, False, proj, True, "train", B=6, T=4, I=3, H=37, packed=True)
    ext = host_layer.ext
    base = _run(host_layer, p, reverse=True)
    try:
        ext.set_grid(65535, True, 0)
        backwards = _run(host_layer, p, reverse=True)
        ext.set_grid(1, True, 4)
        _compare(host_layer, p, True, torch.float64)
    finally:
        ext.set_grid(65535, False, 0)
    for a, b in zip(base[0], backwards[0], strict=True):
        assert torch.equal(a, b)
    for k in base[1]:
        assert torch.equal(base[1][k], backwards[1][k]), k


def test_row_launch_shape(host_layer):
    shape = host_layer.ext.row_launch_shape
    assert shape(1, 1, 65535) == (1, 32)
    assert shape(5, 33, 65535) == (5, 64)
    assert shape(5, 256, 65535) == (5, 256)
    assert shape(5, 5000, 65535) == (5, 256)
    assert shape(10**6, 8, 65535) == (65535, 32)  # the row loop covers the rest


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_host_inference_path(host_layer, cell, dtype):
    """Without grad the driver writes scratch rows instead of the history: same outputs."""
    if cell == "lstm":
        p = _lstm(True, True, True, 2, True, "train", B=4, T=5, I=3, H=6, packed=True)
    else:
        p = _gru(True, True, "eval", B=4, T=5, I=3, H=6, packed=True)
    p = _cast(p, dtype)
    train, _ = _run(host_layer, p, reverse=True)
    with torch.no_grad():
        infer = host_layer(**p, reverse=True)
    for a, b in zip(train, infer, strict=False):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["lstm-all", "lstm-zoneout", "gru-ln"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("save", [True, False], ids=["save", "nosave"])
def test_fake_forward_matches_real_buffers(host_layer, case, dtype, save):
    """The meta implementation (used by torch.compile) promises the buffers the driver returns."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    if case == "lstm-all":
        p = _lstm(True, True, True, 2, True, "train", B=3, T=4, I=2, H=5, packed=True)
    elif case == "lstm-zoneout":
        p = _lstm(False, False, False, 0, False, "eval", B=3, T=4, I=2, H=5)
    else:
        p = _gru(True, True, "eval", B=3, T=4, I=2, H=5)
    p = _cast(p, dtype)
    args = _op_args(p, save)
    real = host_layer.fwd_op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = host_layer.fwd_op(*args)
    assert all(isinstance(t, FakeTensor) for t in fake)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


@pytest.mark.parametrize("case", ["lstm-ln-peep-proj-zone", "gru"])
def test_host_under_autocast_matches_float32(host_layer, case):
    """Under torch.autocast the variant op keeps its own dtypes (autocast is excluded inside
    it): float32 operands give bitwise the float32 results. AutocastCPU, which the CPU build
    exercises, retypes the same GEMMs that AutocastCUDA would on the GPU build."""
    if case == "gru":
        p = _gru(True, True, "off", B=3, T=4, I=2, H=5, packed=True)
    else:
        p = _lstm(True, True, False, 2, True, "train", B=3, T=4, I=2, H=5, packed=True)
    p = _cast(p, torch.float32)
    want_outs, want_grads = _run(host_layer, p, reverse=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs, grads = _run(host_layer, p, reverse=False)
    for o, w in zip(outs, want_outs, strict=True):
        assert o.dtype == torch.float32 and torch.equal(o, w)
    for k, w in want_grads.items():
        assert grads[k].dtype == torch.float32 and torch.equal(grads[k], w), k


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fake_backward_strides_match_real(host_layer, cell):
    """batch_first modules pass the op a transposed x. The real backward returns contiguous
    gradients (dx is a view of a fresh [N, I] buffer); the fake must promise the same strides,
    or a compiled graph would be traced with layouts the op does not produce."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if cell == "lstm":
        p = _lstm(False, True, False, 0, True, "off", B=3, T=4, I=2, H=5)
    else:
        p = _gru(True, True, "off", B=3, T=4, I=2, H=5)
    p = _cast(p, torch.float32)
    p["x"] = p["x"].transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, I] of a [B, T, I]
    assert not p["x"].is_contiguous()
    args = _op_args(p, True)
    buffers = host_layer.fwd_op(*args)
    grads = [torch.ones_like(buffers[0]), torch.ones_like(buffers[1])]
    grads.append(torch.ones_like(buffers[2]) if cell == "lstm" else None)
    grads += [None] * (len(buffers) - 3)
    needs = [getattr(args, k) is not None for k in DIFF]
    real = host_layer.bwd_op(*args, buffers, grads, needs)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = host_layer.bwd_op(*args, buffers, grads, needs)
    assert real[0].shape == p["x"].shape
    assert [(t.shape, t.stride()) for t in fake] == [(t.shape, t.stride()) for t in real]


def test_host_rejects_bad_input(host_layer):
    p = _lstm(True, True, False, 0, True, "train", B=2, T=3, I=2, H=3)
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
    g = _gru(True, True, "off", B=2, T=3, I=2, H=3)
    with pytest.raises(ValueError, match="LSTM-only"):
        host_layer(**{**g, "cifg": True}, reverse=False)
    with pytest.raises(TypeError, match="supports"):
        host_layer(**{k: v.int() if torch.is_tensor(v) and k != "batch_sizes" else v
                      for k, v in g.items()}, reverse=False)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the real backend
# --------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and cv.is_available()),
    reason="needs a CUDA device and fusedrnn._C_cuda built with the variant kernels",
)


GPU_CASES = [("lstm", c) for c in LSTM_CASES] + [("gru", c) for c in GRU_CASES]


@gpu
@pytest.mark.gpu
# float64 / float32 on CUDA tensors: tests/test_conformance.py (backend "cuda")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,case", GPU_CASES, ids=str)
def test_gpu_half_precision_matches_reference(cell, case, reverse, packed, dtype):
    # H = 37: one warp and a few idle threads; proj_size H // 2, since h W_hh^T of rank 3
    # leaves layer norm too ill-conditioned for bfloat16 to resolve (see _compare)
    if cell == "lstm":
        ln, peep, cifg, proj, bias, zone = case
        p = _lstm(ln, peep, cifg, proj and 18, bias, zone, B=5, T=6, I=4, H=37, packed=packed)
    else:
        p = _gru(*case, B=5, T=6, I=4, H=37, packed=packed)
    _compare(cv.layer, p, reverse, dtype, device="cuda")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_wide_rows(cell):
    """H = 300: several units per thread and a full 256-thread reduction tree."""
    if cell == "lstm":
        p = _lstm(True, True, False, 0, True, "train", B=3, T=4, I=5, H=300)
    else:
        p = _gru(True, True, "train", B=3, T=4, I=5, H=300)
    _compare(cv.layer, p, False, torch.float64, device="cuda")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_deterministic(cell):
    """Row reductions and gradient column sums have a fixed order: bitwise equal reruns."""
    if cell == "lstm":
        p = _lstm(True, True, False, 0, True, "train", B=64, T=30, I=8, H=96)
    else:
        p = _gru(True, True, "train", B=64, T=30, I=8, H=96)
    p = _cast(p, torch.float32, "cuda")
    a_out, a_grads = _run(cv.layer, p, False)
    b_out, b_grads = _run(cv.layer, p, False)
    for a, b in zip(a_out, b_out, strict=True):
        assert torch.equal(a, b)
    for k in a_grads:
        assert torch.equal(a_grads[k], b_grads[k]), k


def test_host_torch_compile_fullgraph(host_layer):
    """The custom ops trace as two opaque nodes (fake implementations, registered autograd):
    compiled forward and backward equal eager ones."""
    p = _lstm(True, True, False, 0, True, "train", B=3, T=4, I=2, H=5)
    eager = _run(host_layer, p, reverse=False)
    torch._dynamo.reset()
    compiled = _run(torch.compile(host_layer, fullgraph=True, backend="aot_eager"), p, False)
    for a, b in zip(eager[0], compiled[0], strict=True):
        assert torch.equal(a, b)
    for k in eager[1]:
        assert torch.equal(eager[1][k], compiled[1][k]), k


@gpu
@pytest.mark.gpu
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
    _assert_close(outs_dev[0], outs_ref[0], TOL[torch.float64], "y")
    outs_ref[0].sum().backward()
    outs_dev[0].sum().backward()
    for (name, p_ref), p_dev in zip(ref.named_parameters(), dev.parameters(), strict=True):
        _assert_close(p_dev.grad, p_ref.grad, TOL[torch.float64], f"d{name}")
