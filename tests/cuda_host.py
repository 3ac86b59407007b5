"""The CPU build of the CUDA backend (csrc/cuda/harness/host_driver.cpp) for the tests.

The same driver, glue, dispatch and functors as fusedrnn._C_cuda, with each kernel launch
replaced by a walk over its grid, behind :func:`fusedrnn.ops.cuda.make_layer`. It needs a C++
compiler and the CUDA headers (cuda_fp16.h, found beside nvcc); it is built once per process
into build/cuda_host_driver (rebuilt when a source changes).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import layer_cases
import torch
from layer_cases import Case
from misc_testlib import ROOT

from fusedrnn import cuda_report
from fusedrnn.ops import cuda, library, reference


def cuda_include() -> Path | None:
    nvcc = cuda_report.find_nvcc()
    inc = nvcc and Path(nvcc).resolve().parent.parent / "include"
    return inc if inc and (inc / "cuda_fp16.h").is_file() else None


def why_not() -> str | None:
    """Why the host build cannot be made here (None when it can)."""
    if cuda_include() is None:
        return "the CUDA headers (cuda_fp16.h) are needed to build the CPU walk of the kernels"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler"
    return None


@functools.cache
def host_layer():
    """fusedrnn.ops.cuda's layer op over the host build; ``.ext`` is the extension module."""
    from torch.utils.cpp_extension import load

    build = ROOT / "build" / "cuda_host_driver"
    try:
        build.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only checkout
        build = Path(tempfile.mkdtemp(prefix="cuda_host_driver"))
    ext = load(
        name="fusedrnn_cuda_host_driver",
        sources=[str(ROOT / "csrc" / "cuda" / "harness" / "host_driver.cpp")],
        extra_include_paths=[str(ROOT / "csrc"), str(cuda_include())],
        extra_cflags=["-O1"],
        build_directory=str(build),
    )
    layer = cuda.make_layer("cuda_host_test", lambda: ext, device_type="cpu")
    layer.ext = ext
    return layer


def compile_report() -> dict:
    """The nvcc report (python -m fusedrnn.cuda_report) for sm_80 and sm_90: reuses
    build/cuda_report.json when it was written (e.g. by CI's report step) for exactly the
    current sources, flags and nvcc; otherwise compiles and writes it (about a minute on 2
    cores)."""
    cache = ROOT / "build" / "cuda_report.json"
    key = cuda_report.sources_hash(cuda_report.find_nvcc(), ["sm_80", "sm_90"])
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    if data.get("sources_hash") != key:
        rc = cuda_report.main(["--arch", "sm_80,sm_90", "--json", str(cache)])
        data = json.loads(cache.read_text())
        assert rc == 0
    assert data["sources_hash"] == key
    return data


# -- what the cuda tests share: inputs, runs and comparisons in every dtype -----------------

# relative tolerances (of the largest reference magnitude) per dtype, against a float64
# reference on the same (rounded) inputs: a few units of the dtype's rounding error times the
# depth of the computation
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def problem(case: Case, dtype: torch.dtype = torch.float64, device=None) -> dict:
    """The layer op's keyword arguments for ``case`` in dtype: those of layer_cases.make_inputs
    (names, shapes, options; its random lengths for packed input), each value drawn again in
    make_inputs' order, in float64 uniformly in [-0.5, 0.5] (x in [-1, 1], layer-norm gains
    around 1), the bounds the half-precision tolerances were set on. Zoneout ("eval" or
    "hc"): p = 0.3 for h, 0.4 for c; "hc" draws the masks."""
    assert case.lengths is None and case.zone in ("none", "eval", "hc"), case
    g = torch.Generator().manual_seed(0)
    p = layer_cases.make_inputs(case, torch.float64)
    del p["reverse"]
    p["batch_sizes"] = layer_cases._batch_sizes(case, g)  # make_inputs' (seed 0's first draw)
    for k, v in p.items():
        if k.startswith(("zoneout_", "mask_")):
            prob = 0.3 if k.endswith("_h") else 0.4
            p[k] = prob if k[0] == "z" else (torch.rand(v.shape, generator=g) < prob).double()
        elif torch.is_tensor(v) and k != "batch_sizes":
            # gains around 1, biases around 0, all random so that every gradient matters
            center = 1.0 if k in ("ln_ih_w", "ln_hh_w", "ln_c_w") else 0.0
            u = torch.rand(v.shape, generator=g, dtype=torch.float64) * 2 - 1
            p[k] = center + u * (1.0 if k == "x" else 0.5)
    return cast(p, dtype, device)


TINY = dict(B=3, T=4, I=2, H=5)


def full(cell: str, **shape) -> Case:
    """Layer norm, zoneout masks and (LSTM) peepholes on."""
    return Case(cell, ln=True, peep=cell == "lstm", zone="hc", **shape)


def cast(p: dict, dtype: torch.dtype, device=None) -> dict:
    """Floating-point inputs (and masks) in dtype / on device; the rest as is."""
    return {
        k: v.to(dtype=dtype, device=device) if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in p.items()
    }


OUTPUTS = ("y", "h_n", "c_n")


def run(layer, p: dict, reverse: bool = False) -> dict:
    """Every present output (y, h_n, c_n) and the gradient of every present input (dx, ...) by
    name, for a fixed random output weighting (drawn on the CPU in float64, so that every
    device and dtype gets the same one)."""
    outs, grads = layer_cases.outputs_and_grads(layer, {**p, "reverse": reverse})
    named = {k: o for k, o in zip(OUTPUTS, outs, strict=True) if o is not None}
    return named | {f"d{k}": g for k, g in grads.items()}


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute error over the largest reference magnitude (at least 1)."""
    if not want.numel():
        return 0.0
    scale = max(want.abs().max().item(), 1.0)
    return (got.double().cpu() - want.double().cpu()).abs().max().item() / scale


def assert_same(got: dict, want: dict, tol: float | None = None) -> None:
    """Two ``run`` results bitwise equal, dtypes included; with ``tol``, each element within
    ``tol`` instead."""
    assert got.keys() == want.keys(), (got.keys(), want.keys())
    for k, b in want.items():
        if tol is None:
            assert got[k].dtype == b.dtype and torch.equal(got[k], b), k
        else:
            assert got[k].shape == b.shape, (k, got[k].shape, b.shape)
            err = rel_error(got[k], b)
            assert err <= tol, f"{k}: max error {err:.3g} > {tol:g} (relative to max(|ref|, 1))"


def compare(layer, case: Case, dtype: torch.dtype, device=None, p=None, tol=None) -> None:
    """``layer`` in dtype (on device) against the reference op in float64 on the same inputs
    rounded to dtype (``p``, by default ``problem(case)``): every output and every gradient.

    The bound is ``tol``, by default TOL[dtype]. For the variant cells below float64 the
    default is 4x the largest relative error that the reference op itself, differentiated by
    autograd in that dtype, makes on this problem if that is larger: layer norm over few
    features (with a projection, h W_hh^T has rank Hout) and a few steps of recurrence amplify
    rounding errors beyond the plain cells' TOL, for PyTorch's own kernels as well; a wrong
    kernel is off by O(1), far outside either bound."""
    rounded = cast(cast(problem(case) if p is None else p, dtype), torch.float64)
    got = run(layer, cast(rounded, dtype, device), case.reverse)
    want = run(reference.layer, rounded, case.reverse)
    if tol is None:
        tol = TOL[dtype]
        if case.variant and dtype != torch.float64:
            own = run(reference.layer, cast(rounded, dtype), case.reverse)
            tol = max(tol, 4 * max(rel_error(own[k], want[k]) for k in want))
    assert all(a.dtype == dtype for a in got.values()), [a.dtype for a in got.values()]
    assert_same(got, want, tol)


# -- checks on the host build (test_cuda_backend.py's table runs them) ------------------------


def check_fake_ops(layer, case: Case, dtype: torch.dtype, save: bool) -> None:
    """The meta implementations (used by torch.compile) promise what the driver returns: the
    forward's buffers (shapes, dtypes) and, after a saving forward, the gradients' shapes and
    strides. A saving forward on dense x gets it transposed, as batch_first modules pass it: the
    real backward still returns contiguous gradients (dx is a view of a fresh [N, I] buffer),
    and a compiled graph traced with other layouts than the op produces would be wrong."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    p = problem(case, dtype)
    if save and not case.packed:  # [T, B, I] of a [B, T, I]
        p["x"] = p["x"].transpose(0, 1).contiguous().transpose(0, 1)
        assert not p["x"].is_contiguous()
    args = library.LayerArgs(**{**library.OPTION_DEFAULTS, **p}, reverse=False, save=save)
    real = layer.fwd_op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = layer.fwd_op(*args)
    assert all(isinstance(t, FakeTensor) for t in fake)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
    if not save:
        return
    upstream = 3 if case.cell == "lstm" else 2  # y, h_n and c_n, then the saved buffers
    grads = [torch.ones_like(b) if k < upstream else None for k, b in enumerate(real)]
    needs = [getattr(args, k) is not None for k in library.GRAD_INPUTS]
    real_grads = layer.bwd_op(*args, real, grads, needs)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_grads = layer.bwd_op(*args, real, grads, needs)
    assert real_grads[0].shape == p["x"].shape
    layout = [None if t is None else (t.shape, t.stride()) for t in real_grads]
    assert [None if t is None else (t.shape, t.stride()) for t in fake_grads] == layout


def check_same_results(layer, case: Case, dtype: torch.dtype, how: str) -> None:
    """Bitwise a plain call's outputs and gradients, dtypes included, ``how``: "no_grad", its
    outputs alone (in reverse) without grad, where the driver runs the kernels' no-save paths
    (the variants write scratch rows instead of the history); "autocast", under torch.autocast
    (CPU, bfloat16), since the op excludes every autocast dispatch key for its body (a CPU
    build can only exercise AutocastCPU, which retypes the same GEMMs (mm, addmm) to bfloat16
    that AutocastCUDA retypes on the GPU build); "compiled", through
    torch.compile(fullgraph=True), where the custom ops trace as two opaque nodes (fake
    implementations, registered autograd)."""
    p = problem(case, dtype)
    want = run(layer, p, reverse=how == "no_grad")
    if how == "compiled":
        torch._dynamo.reset()
        layer = torch.compile(layer, fullgraph=True, backend="aot_eager")
    if how == "no_grad":
        with torch.no_grad():
            outs = layer(**p, reverse=True)
        got = {k: t for k, t in zip(OUTPUTS, outs, strict=True) if t is not None}
        want = {k: want[k] for k in OUTPUTS if k in want}
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            got = run(layer, p)
    assert all(t.dtype == dtype for t in got.values())
    assert_same(got, want)


def check_long_sequence_bfloat16(layer, case: Case) -> None:
    """``case`` (T in the hundreds) in bfloat16 against float64 on the same bfloat16-rounded
    inputs, the LSTM's forget / the GRU's update gate biased towards 1, so that the state and
    its gradient carry over hundreds of steps: rounding the running state, the pre-activation
    (h W_hh^T) or the running gradient to bfloat16 every step would compound with T. The bound
    is two units of bfloat16's spacing (2^-8 at 1) of the largest magnitude, the rounding of the
    stored outputs and gradients and of the inputs alone, the same for any T."""
    p, H = problem(case), case.H
    if case.cell in ("lstm", "gru"):
        p["ln_ih_b" if case.ln else "b_ih"][H : 2 * H] += 5.0
    compare(layer, case, torch.bfloat16, p=p, tol=2 * 2.0**-8)
