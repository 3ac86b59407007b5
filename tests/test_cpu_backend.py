"""The compiled CPU backend (fusedrnn._C) against the reference backend and torch.nn.

Every cell, dense and packed, both directions, with and without biases, with a projection,
awkward shapes, float32 and float64: the forward outputs and every gradient are compared with
``fusedrnn.ops.reference.layer`` (differentiated by autograd) on fresh random data.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fusedrnn.ops import cpu, library, reference

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason="fusedrnn._C (the CPU extension) is not built"
)

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def make_inputs(cell, T, B, I, H, *, proj=0, bias=True, lengths=None, dtype=torch.float32,
                seed=0):  # fmt: skip
    """Random layer inputs (all requiring grad). lengths -> packed [N, I] plus batch_sizes."""
    g = torch.Generator().manual_seed(seed)
    G = reference.GATES[cell]
    Hout = proj if proj else H

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    batch_sizes = None
    if lengths is not None:
        assert sorted(lengths, reverse=True) == list(lengths) and len(lengths) == B
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])
        x = rnd(int(batch_sizes.sum()), I)
    else:
        x = rnd(T, B, I)
    k = H**-0.5
    return dict(
        x=x,
        h0=rnd(B, Hout, scale=0.5),
        c0=rnd(B, H, scale=0.5) if cell == "lstm" else None,
        w_ih=rnd(G * H, I, scale=k),
        w_hh=rnd(G * H, Hout, scale=k),
        b_ih=rnd(G * H, scale=k) if bias else None,
        b_hh=rnd(G * H, scale=k) if bias else None,
        w_hr=rnd(Hout, H, scale=k) if proj else None,
        batch_sizes=batch_sizes,
    )


def run(backend, cell, inp, reverse):
    return backend.layer(
        cell, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], inp["b_ih"],
        inp["b_hh"], inp["w_hr"], inp["batch_sizes"], reverse,
    )  # fmt: skip


def compare(cell, inp, reverse, dtype, *, seed=1):
    """Forward outputs and every gradient of cpu vs reference under the same upstream grads."""
    outs_ref = run(reference, cell, inp, reverse)
    outs_cpu = run(cpu, cell, inp, reverse)
    tol = TOL[dtype]
    for name, a, b in zip(("y", "h_n", "c_n"), outs_cpu, outs_ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{n}: {m}")

    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs_ref if o is not None]
    leaves = [(n, inp[n]) for n in NAMES if inp[n] is not None]
    tensors = [t for _, t in leaves]

    def grads(outs):
        loss = sum((o * u).sum() for o, u in zip([o for o in outs if o is not None], ups,
                                                 strict=True))  # fmt: skip
        return torch.autograd.grad(loss, tensors)

    for (name, _), a, b in zip(leaves, grads(outs_cpu), grads(outs_ref), strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("cell", CELLS)
def test_layer_matches_reference(cell, packed, reverse, bias, dtype):
    lengths = [6, 4, 4, 1] if packed else None
    inp = make_inputs(cell, 6, 4, 7, 9, bias=bias, lengths=lengths, dtype=dtype)
    compare(cell, inp, reverse, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_lstm_projection(packed, reverse, dtype):
    lengths = [5, 5, 3] if packed else None
    inp = make_inputs("lstm", 5, 3, 4, 7, proj=3, lengths=lengths, dtype=dtype)
    compare("lstm", inp, reverse, dtype)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "T,B,I,H,lengths",
    [
        (1, 1, 3, 5, None),  # one step, one row
        (1, 3, 2, 4, [1, 1, 1]),  # packed single step
        (7, 1, 1, 1, None),  # H = 1, I = 1
        (5, 5, 3, 6, [5, 4, 2, 2, 1]),  # every row ends at a different step
        (3, 2, 4, 3, [3, 3]),  # packed, all full
    ],
)
def test_awkward_shapes(cell, T, B, I, H, lengths):
    for reverse in (False, True):
        inp = make_inputs(cell, T, B, I, H, lengths=lengths, dtype=torch.float64, seed=T * B)
        compare(cell, inp, reverse, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_rows_split_across_threads(cell):
    """33 x 130 units: the row-parallel kernels split a row between two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lengths = [4] * 20 + [3] * 10 + [1] * 3
        for dtype in DTYPES:
            inp = make_inputs(cell, 4, 33, 5, 130, lengths=lengths, dtype=dtype, seed=3)
            compare(cell, inp, True, dtype)
            inp = make_inputs(cell, 3, 33, 5, 130, dtype=dtype, seed=4)
            compare(cell, inp, False, dtype)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_several_unit_chunks(cell, dtype):
    """H = 70 spans three unit chunks (32, 32, 6) of the kernels' gate-column layout, so the
    weight permutation and the gradients' way back to PyTorch's gate order are exercised."""
    for packed, reverse in ((False, False), (True, True)):
        lengths = [4, 3, 3] if packed else None
        proj = 5 if cell == "lstm" and packed else 0
        inp = make_inputs(cell, 4, 3, 6, 70, proj=proj, lengths=lengths, dtype=dtype, seed=9)
        compare(cell, inp, reverse, dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_outputs_fully_written(cell):
    """Outputs are allocated uninitialised; fill freed memory with NaN first so that a row or
    unit the kernels miss shows up as NaN instead of a lucky zero."""
    for packed in (False, True):
        lengths = [5, 3, 2] if packed else None
        inp = make_inputs(cell, 5, 3, 4, 6, proj=2 if cell == "lstm" else 0, lengths=lengths,
                          dtype=torch.float32, seed=7)  # fmt: skip
        for reverse in (False, True):
            junk = [torch.full((n,), float("nan")) for n in (16, 64, 256, 1024, 4096) * 4]
            del junk
            compare(cell, inp, reverse, torch.float32)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_gradcheck(cell, packed):
    lengths = [3, 2] if packed else None
    proj = 2 if cell == "lstm" else 0
    for reverse in (False, True):
        inp = make_inputs(cell, 3, 2, 3, 3, proj=proj, lengths=lengths, dtype=torch.float64)
        names = [n for n in NAMES if inp[n] is not None]

        def fn(*ts, reverse=reverse, inp=inp, names=names):
            d = dict(inp, **dict(zip(names, ts, strict=True)))
            return tuple(o for o in run(cpu, cell, d, reverse) if o is not None)

        assert torch.autograd.gradcheck(fn, tuple(inp[n] for n in names))


def test_only_requested_gradients():
    """Weights frozen: only dx is produced, and no grad at all skips saving."""
    inp = make_inputs("lstm", 4, 3, 5, 6)
    for n in NAMES:
        if inp[n] is not None and n != "x":
            inp[n].requires_grad_(False)
    y, _, _ = run(cpu, "lstm", inp, False)
    (dx,) = torch.autograd.grad(y.sum(), [inp["x"]])
    y_ref, _, _ = run(reference, "lstm", inp, False)
    (dx_ref,) = torch.autograd.grad(y_ref.sum(), [inp["x"]])
    torch.testing.assert_close(dx, dx_ref, **TOL[torch.float32])
    with torch.no_grad():
        y2, _, _ = run(cpu, "lstm", inp, False)
    assert not y2.requires_grad
    torch.testing.assert_close(y2, y.detach(), rtol=0, atol=0)


def test_non_contiguous_input():
    inp = make_inputs("gru", 5, 4, 6, 5)
    inp["x"] = inp["x"].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not inp["x"].is_contiguous()
    compare("gru", inp, False, torch.float32)


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
def test_stack_step_matches_torch_nn(cell, proj, B):
    torch.manual_seed(11)
    I, H, L = 6, 8, 3
    m = _nn_step_model(cell, I, H, L, proj).double()
    Hout = proj or H
    x = torch.randn(1, B, I, dtype=torch.float64)
    h = torch.randn(L, B, Hout, dtype=torch.float64)
    c = torch.randn(L, B, H, dtype=torch.float64)
    with torch.no_grad():
        y_ref, st_ref = m(x, (h, c) if cell == "lstm" else h)
        y, h_n, c_n = cpu.stack_step(cell, x[0], h, c if cell == "lstm" else None,
                                     m._flat_weights, L, True, proj)  # fmt: skip
    tol = TOL[torch.float64]
    torch.testing.assert_close(y, y_ref[0], **tol)
    if cell == "lstm":
        torch.testing.assert_close(h_n, st_ref[0], **tol)
        torch.testing.assert_close(c_n, st_ref[1], **tol)
    else:
        torch.testing.assert_close(h_n, st_ref, **tol)
        assert c_n is None


def test_stack_step_refuses_autograd():
    m = torch.nn.GRU(3, 4, 1)
    with pytest.raises(RuntimeError, match="does not record autograd"):
        cpu.stack_step("gru", torch.randn(2, 3), torch.zeros(1, 2, 4), None, m._flat_weights,
                       1, True, 0)  # fmt: skip


def _modules_available():
    try:
        import fusedrnn

        return hasattr(fusedrnn, "LSTM")
    except ImportError:
        return False


@pytest.mark.skipif(not _modules_available(), reason="fusedrnn modules not importable")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_fusedrnn_lstm_module_equals_torch_nn(bidirectional):
    import fusedrnn

    torch.manual_seed(5)
    ref = torch.nn.LSTM(7, 9, num_layers=2, bidirectional=bidirectional)
    mod = fusedrnn.LSTM(7, 9, num_layers=2, bidirectional=bidirectional, backend="cpu")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 7, requires_grad=True)
    y_ref, (h_ref, c_ref) = ref(x)
    y, (h, c) = mod(x)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(h, h_ref, **tol)
    torch.testing.assert_close(c, c_ref, **tol)
    up = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * up).sum() + h_ref.sum(), [x, *ref.parameters()])
    g = torch.autograd.grad((y * up).sum() + h.sum(), [x, *mod.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_kernel_isa_selection():
    from fusedrnn import _C

    expected = {"generic"} if os.environ.get("FUSEDRNN_CPU_ISA") == "generic" else {
        "generic", "avx2+fma"}  # fmt: skip
    assert _C.kernel_isa() in expected


@pytest.mark.skipif(os.environ.get("FUSEDRNN_CPU_ISA") == "generic", reason="already generic")
def test_generic_isa_copy_matches_too():
    """The baseline-ISA copy of the kernels (what CPUs without AVX2 run) is compiled separately
    from the AVX2 one; run part of this file again with it forced."""
    env = dict(os.environ, FUSEDRNN_CPU_ISA="generic")
    select = "test_kernel_isa_selection or (test_layer_matches_reference and -bias-)"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", select.replace("-bias-", "bias and not nobias")],
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


@pytest.mark.parametrize("which", ["y", "h_n", "c_n"])
def test_loss_on_one_output_only(which):
    """Output gradients autograd does not produce reach the backward as None (nothing is
    materialised); each output alone must still give the reference gradients."""
    inp = make_inputs("lstm", 5, 3, 4, 40, dtype=torch.float64, seed=31)
    k = ("y", "h_n", "c_n").index(which)
    leaves = [inp[n] for n in NAMES if inp[n] is not None]
    got = torch.autograd.grad(run(cpu, "lstm", inp, False)[k].sum(), leaves)
    want = torch.autograd.grad(run(reference, "lstm", inp, False)[k].sum(), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
