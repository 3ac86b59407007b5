"""The compiled CPU backend (fusedrnn._C): what is particular to it.

Every cell, shape and option against the reference op (the gate-column chunks of H = 70
included) is tests/test_conformance.py (the modules against torch.nn:
tests/test_modules_forward.py); here are its thread splits, scratch-buffer reuse, the
single-step stack call, the ISA copies, half precision and argument errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import layer_cases
import pytest
import torch
from layer_cases import TOL, Case, call, with_leaves

from fusedrnn.ops import cpu, library, reference

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason="fusedrnn._C (the CPU extension) is not built"
)

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DTYPES = [torch.float32, torch.float64]
NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def make_inputs(cell, T, B, I, H, *, proj=0, bias=True, lengths=None, dtype=torch.float32,
                seed=0):  # fmt: skip
    """Random layer inputs (all requiring grad). lengths -> packed [N, I] plus batch_sizes."""
    case = Case(cell, T=T, B=B, I=I, H=H, proj=proj, bias=bias, lengths=lengths and tuple(lengths))
    return with_leaves(layer_cases.make_inputs(case, dtype, seed=seed))


def run(backend, cell, inp, reverse):
    return call(backend.layer, {**inp, "cell": cell, "reverse": reverse})


@pytest.mark.parametrize("cell", CELLS)
def test_rows_split_across_threads(cell):
    """33 x 130 units: the row-parallel kernels split a row between two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lengths = (4,) * 20 + (3,) * 10 + (1,) * 3
        packed = Case(cell, T=4, B=33, I=5, H=130, lengths=lengths, reverse=True)
        for dtype in DTYPES:
            tol = 1e-5 if dtype == torch.float32 else TOL[dtype]
            for case, seed in ((packed, 3), (Case(cell, T=3, B=33, I=5, H=130), 4)):
                a = layer_cases.make_inputs(case, dtype, seed=seed)
                layer_cases.compare(cpu.layer, a, tol)
    finally:
        torch.set_num_threads(threads)


def test_bad_input_errors():
    inp = make_inputs("lstm", 3, 2, 4, 5)
    with pytest.raises(RuntimeError, match="w_hh must have shape"):
        cpu.layer("lstm", inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"][:, :3],
                  None, None, None, None, False)  # fmt: skip
    with pytest.raises(RuntimeError, match="dtype"):
        cpu.layer("lstm", inp["x"].double(), inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"],
                  None, None, None, None, False)  # fmt: skip
    with pytest.raises(ValueError, match="unknown cell"):
        cpu.layer("lstmx", inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], None,
                  None, None, None, False)  # fmt: skip
    with pytest.raises(RuntimeError, match="batch_sizes"):
        cpu.layer("lstm", inp["x"].reshape(6, 4), inp["h0"], inp["c0"], inp["w_ih"],
                  inp["w_hh"], None, None, None, torch.tensor([2, 2, 3]), False)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    """bf16/fp16 (CPU autocast) run the float32 kernels and come back in the input dtype: equal
    to the reference on the same values in float32, rounded once at the end (float32 results
    that differ in the last bits may round to neighbouring values: one unit of the dtype)."""
    inp = make_inputs("lstm", 3, 2, 4, 5)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    low = {k: inp[k].to(dtype) for k in names}
    got = cpu.layer("lstm", *(low[k] for k in names), None, None, False)
    want = reference.layer("lstm", *(low[k].float() for k in names), None, None, False)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(g, w.to(dtype), rtol=eps, atol=eps)


def test_opcheck_fake_and_autograd_registration():
    """The custom ops' schema, fake (meta) implementation and autograd registration agree
    with the real kernels, which torch.compile(fullgraph=True) relies on."""
    for cell, proj, lengths in (("lstm", 2, None), ("gru", 0, [3, 1]), ("rnn_relu", 0, None)):
        inp = make_inputs(cell, 3, 2, 3, 4, proj=proj, lengths=lengths, dtype=torch.float64)
        args = library.LayerArgs(
            cell, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], inp["b_ih"],
            inp["b_hh"], inp["w_hr"], inp["batch_sizes"], True, **library.OPTION_DEFAULTS,
            save=True,
        )  # fmt: skip
        torch.library.opcheck(torch.ops.fusedrnn.cpu_layer_fwd.default, tuple(args))


def _nn_step_model(cell, I, H, L, proj):
    if cell == "lstm":
        return torch.nn.LSTM(I, H, L, proj_size=proj)
    if cell == "gru":
        return torch.nn.GRU(I, H, L)
    return torch.nn.RNN(I, H, L, nonlinearity=cell[4:])


@pytest.mark.parametrize("cell,proj", [(c, 0) for c in CELLS] + [("lstm", 3)])
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("layout", ["2-D", "time-major", "batch-first", "zero state"])
def test_stack_step_matches_torch_nn(cell, proj, B, layout):
    """x as [B, I] or as one step of a sequence ([1, B, I]; [B, 1, I] batch-first, y then in
    the same layout); an absent state is zeros, as in torch.nn."""
    torch.manual_seed(11)
    I, H, L = 6, 8, 3
    m = _nn_step_model(cell, I, H, L, proj).double()
    Hout = proj or H
    x = torch.randn(1, B, I, dtype=torch.float64)
    h = torch.randn(L, B, Hout, dtype=torch.float64)
    c = torch.randn(L, B, H, dtype=torch.float64)
    if layout == "zero state":
        h = c = None
    state = (h, c) if cell == "lstm" and h is not None else h
    x_in = {"2-D": x[0], "batch-first": x.transpose(0, 1)}.get(layout, x)
    with torch.no_grad():
        y_ref, st_ref = m(x, state)
        y, h_n, c_n = cpu.stack_step(cell, x_in, h, c if cell == "lstm" else None,
                                     m._flat_weights, L, True, proj, layout == "batch-first")  # fmt: skip
    y_ref = {"2-D": y_ref[0], "batch-first": y_ref.transpose(0, 1)}.get(layout, y_ref)
    tol = dict(rtol=TOL[torch.float64], atol=TOL[torch.float64])
    assert y.shape == y_ref.shape and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, **tol)
    if cell == "lstm":
        torch.testing.assert_close(h_n, st_ref[0], **tol)
        torch.testing.assert_close(c_n, st_ref[1], **tol)
    else:
        torch.testing.assert_close(h_n, st_ref, **tol)
        assert c_n is None


def test_stack_step_names_what_does_not_fit_or_falls_back():
    """Each mismatch raises naming the problem; with fallback the call answers None instead
    (the modules' shortcut then takes the general path)."""
    torch.manual_seed(0)
    m = torch.nn.LSTM(6, 8, 2)
    w = m._flat_weights
    x, h, c = torch.randn(1, 3, 6), torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)
    cases = [
        ("float64", (x.double(), h, c, w), "dtype"),
        ("features", (torch.randn(1, 3, 5), h, c, w), "features"),
        ("two steps", (torch.randn(2, 3, 6), h, c, w), "one step"),
        ("4-D", (torch.randn(1, 1, 3, 6), h, c, w), "one step"),
        ("state batch", (x, torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), w), "hx must be"),
        ("state layers", (x, torch.zeros(1, 3, 8), c, w), "hx must be"),
        ("cell state", (x, h, torch.zeros(2, 3, 7), w), "cx must be"),
        ("cell state dtype", (x, h, c.double(), w), "cx must be"),
        ("cx missing", (x, h, None, w), "both hx and cx"),
        ("weight dtype", (x, h, c, [w[0].double(), *w[1:]]), "every weight"),
        ("weight count", (x, h, c, w[:-1]), "weights, got 7"),
    ]
    with torch.no_grad():
        assert cpu.stack_step("lstm", x, h, c, w, 2, True, 0, fallback=True) is not None
        for name, (xi, hi, ci, wi), message in cases:
            assert cpu.stack_step("lstm", xi, hi, ci, wi, 2, True, 0, fallback=True) is None, name
            with pytest.raises(RuntimeError, match=f"fusedrnn stack_step: .*{message}"):
                cpu.stack_step("lstm", xi, hi, ci, wi, 2, True, 0)


def test_stack_step_refuses_autograd():
    m = torch.nn.GRU(3, 4, 1)
    with pytest.raises(RuntimeError, match="does not record autograd"):
        cpu.stack_step("gru", torch.randn(2, 3), torch.zeros(1, 2, 4), None, m._flat_weights,
                       1, True, 0)  # fmt: skip


def test_kernel_isa_selection():
    from fusedrnn import _C

    forced = os.environ.get("FUSEDRNN_CPU_ISA")
    expected = {"generic", "avx2+fma", "avx512f"}
    if forced in ("generic", "avx2"):  # a cap, not a demand: the CPU may have less
        expected = {"generic"} if forced == "generic" else {"generic", "avx2+fma"}
    assert _C.kernel_isa() in expected
    # the packed GEMM's tile follows the pointwise kernels' ISA
    assert _C.sgemm_isa() in ("", _C.kernel_isa())


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_narrower_isa_copies_match_too(isa):
    """Each ISA copy of the kernels is compiled separately (baseline, AVX2, AVX-512): run the
    cpu conformance cases of torch.nn's cells and of the variants, the packed GEMM and the
    sampling loop's float16-weight product again with the choice capped at a narrower copy than
    this CPU's."""
    from fusedrnn import _C

    if os.environ.get("FUSEDRNN_CPU_ISA") in ("generic", isa) or _C.kernel_isa() == "generic" or (
            isa == "avx2" and _C.kernel_isa() == "avx2+fma"):  # fmt: skip
        pytest.skip(f"this process already runs the {isa} copy or a narrower one")
    env = dict(os.environ, FUSEDRNN_CPU_ISA=isa)
    here = Path(__file__).parent
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         str(here / "test_conformance.py"), str(here / "test_charlm_generate.py"),
         str(here / "test_cpu_sgemm.py"), "-k", "test_kernel_isa_selection or "
         "((test_plain_cells or test_variants_float) and cpu) or test_half_weights_state or "
         "test_gemm_matches"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


@pytest.mark.parametrize("cell", CELLS)
def test_scratch_reuse_leaves_earlier_results_intact(cell):
    """Layer calls reuse per-thread scratch buffers (gates, packed weights, dG): results and
    gradients of one call must survive later calls on other data, and freeing the buffers
    must not change anything."""

    def once(seed, lengths=None):
        inp = make_inputs(cell, 5, 7, 6, 70, lengths=lengths, seed=seed)
        with torch.no_grad():
            y_inf = run(cpu, cell, inp, False)[0]
        outs = run(cpu, cell, inp, False)
        grads = torch.autograd.grad(outs[0].sum(), [inp["x"], inp["w_hh"]])
        return [t.detach() for t in (y_inf, outs[0], *grads)], inp

    first, inp1 = once(21)
    kept = [t.clone() for t in first]
    once(22)
    once(23, lengths=[5, 5, 4, 3, 3, 2, 1])
    for a, b in zip(first, kept, strict=True):
        assert torch.equal(a, b)
    cpu.empty_cache()
    again, _ = once(21)
    for a, b in zip(again, kept, strict=True):
        assert torch.equal(a, b)
