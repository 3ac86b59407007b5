"""The triton variant kernels (layer norm, zoneout, peephole, CIFG) against the reference.

The oracle is :func:`fusedrnn.ops.reference.layer` (plain PyTorch, autograd).
Like ``test_triton_backend.py`` this runs on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1`` in the environment of the pytest process, set before triton is
imported) or on CUDA tensors, and skips otherwise. Every buffer the kernels write is
NaN-poisoned first, so an element a kernel forgets to write shows up. Every output and
the gradient of every input (LN gains and biases and peephole weights included) is
compared on fresh seeded random data.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import triton.language.standard  # noqa: E402

from fusedrnn.ops import reference  # noqa: E402
from fusedrnn.ops.triton import launch_counter, poison_buffers  # noqa: E402
from fusedrnn.ops.triton import layer as triton_layer  # noqa: E402

INTERPRET = type(triton.language.standard.zeros).__name__ == "InterpretedFunction"
HAS_CUDA = torch.cuda.is_available()
# dtype -> tolerance against the reference in the same dtype (as test_triton_backend.py)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
GPU_TOL = {torch.float32: 5e-3}  # TF32 tl.dot on GPUs

# the device of the tests that do not run on every device
DEVICE = "cpu" if INTERPRET else "cuda"
DEVICES = []
if INTERPRET:
    DEVICES.append("cpu")
if HAS_CUDA:
    DEVICES.append(pytest.param("cuda", marks=pytest.mark.gpu))
if not DEVICES:
    pytest.skip(
        "the triton backend needs CUDA, or TRITON_INTERPRET=1 in the environment of the "
        "pytest process (set before triton is imported)",
        allow_module_level=True,
    )

KW_TENSORS = ("ln_ih_w", "ln_ih_b", "ln_hh_w", "ln_hh_b", "ln_c_w", "ln_c_b", "w_ch")


@pytest.fixture(autouse=True)
def _poison():
    with poison_buffers():
        yield


def random_lengths(batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """batch_sizes [T] of a random non-increasing set of lengths with max seq_len."""
    lens = sorted(torch.randint(1, seq_len + 1, (batch,), generator=gen).tolist(), reverse=True)
    lens[0] = seq_len
    return torch.tensor([sum(n > t for n in lens) for t in range(seq_len)], dtype=torch.int64)


def make_inputs(cell, T, B, I, H, *, proj=0, bias=True, packed=False, ln=False, peep=False,
                cifg=False, zone="none", dtype=torch.float64, device=None, seed=0):  # fmt: skip
    """Positional layer-op inputs, batch_sizes and the variant keyword arguments.
    zone: "none", "eval" (p without masks), "h" / "c" / "hc" (training masks)."""
    gen = torch.Generator().manual_seed(seed)
    G = (3 if cifg else 4) if cell == "lstm" else 3
    Hout = proj or H
    lstm = cell == "lstm"
    device = device or DEVICE

    def rnd(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
        return t.to(dtype=dtype, device=device)

    bs = random_lengths(B, T, gen) if packed else None
    x = rnd(int(bs.sum()), I) if packed else rnd(T, B, I)
    lead = (x.shape[0],) if packed else (T, B)
    args = [
        x,
        rnd(B, Hout),
        rnd(B, H) if lstm else None,
        rnd(G * H, I, scale=0.4),
        rnd(G * H, Hout, scale=0.4),
        rnd(G * H) if bias else None,
        rnd(G * H) if bias else None,
        rnd(Hout, H, scale=0.4) if proj else None,
    ]
    kw = dict(cifg=cifg)
    if ln:
        kw.update(
            ln_ih_w=rnd(G * H, scale=0.3, shift=1.0), ln_hh_w=rnd(G * H, scale=0.3, shift=1.0)
        )
        kw.update(ln_ih_b=rnd(G * H, scale=0.3) if bias else None)
        kw.update(ln_hh_b=rnd(G * H, scale=0.3) if bias else None)
        if lstm:
            kw.update(
                ln_c_w=rnd(H, scale=0.3, shift=1.0), ln_c_b=rnd(H, scale=0.3) if bias else None
            )
    if peep:
        kw["w_ch"] = rnd(2 if cifg else 3, H, scale=0.5)
    if zone == "eval":
        kw.update(zoneout_h=0.3, zoneout_c=0.15 if lstm else 0.0)
    if zone in ("h", "hc"):
        kw["mask_h"] = (torch.rand(*lead, Hout, generator=gen) < 0.3).to(dtype=dtype, device=device)
    if zone in ("c", "hc"):
        kw["mask_c"] = (torch.rand(*lead, H, generator=gen) < 0.3).to(dtype=dtype, device=device)
    return args, bs, kw


def run_layer(fn, cell, args, bs, reverse, kw, seed=1):
    """Outputs and the gradients of every differentiable input under a random linear loss."""
    leaves = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    kw = {k: v.detach().clone().requires_grad_() if k in KW_TENSORS and v is not None else v
          for k, v in kw.items()}  # fmt: skip
    y, h_n, c_n = fn(cell, *leaves, bs, reverse, **kw)
    outs = [y, h_n] + ([c_n] if c_n is not None else [])
    gen = torch.Generator().manual_seed(seed)
    loss = sum(
        (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outs
    )
    loss.backward()
    grads = [a.grad if a is not None else None for a in leaves]
    grads += [kw[k].grad if kw.get(k) is not None else None for k in KW_TENSORS]
    return outs, grads


def assert_close_all(got, want, tol, what):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None, f"{what}[{k}] should be None"
            continue
        assert g is not None, f"{what}[{k}] missing"
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}[{k}] {g.shape} vs {w.shape}"
        assert torch.isfinite(g).all(), f"{what}[{k}] has non-finite values (unwritten?)"
        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=lambda m, k=k: f"{what}[{k}]: {m}")


def _case(cell, T, B, I, H, *, id, **opts):  # noqa: A002
    return pytest.param(cell, T, B, I, H, opts, id=id)


# a covering subset of cell x layer norm x peephole x cifg x zoneout x bias x proj x
# dense/packed x reverse, with B=1, T=1, odd H and B > 16 (several programs)
CASES = [
    _case("lstm", 3, 2, 3, 5, id="lstm-plain"),
    _case("lstm", 3, 1, 3, 33, ln=True, zone="eval", id="lstm-ln-eval-B1-H33"),
    _case("lstm", 4, 4, 3, 7, peep=True, zone="hc", packed=True, reverse=True,
          id="lstm-peep-masks-packed-reverse"),
    _case("lstm", 3, 3, 2, 5, cifg=True, bias=False, zone="h", reverse=True,
          id="lstm-cifg-nobias-maskh-reverse"),
    _case("lstm", 4, 3, 3, 9, ln=True, peep=True, cifg=True, proj=3, zone="c", packed=True,
          id="lstm-ln-peep-cifg-proj-maskc-packed"),
    _case("lstm", 3, 2, 4, 6, ln=True, proj=4, bias=False, zone="eval", reverse=True,
          id="lstm-ln-proj-nobias-eval-reverse"),
    _case("lstm", 3, 20, 2, 17, ln=True, peep=True, proj=5, zone="hc", packed=True,
          reverse=True, id="lstm-all-B20-packed-reverse"),
    _case("lstm", 1, 1, 3, 5, ln=True, peep=True, cifg=True, zone="eval", id="lstm-T1-B1"),
    _case("lstm", 3, 2, 3, 33, peep=True, proj=7, zone="eval", id="lstm-peep-proj-eval-H33"),
    _case("lstm", 3, 3, 3, 5, cifg=True, zone="hc", packed=True, id="lstm-cifg-masks-packed"),
    _case("gru", 3, 2, 3, 5, id="gru-plain"),
    _case("gru", 3, 1, 3, 33, ln=True, zone="eval", id="gru-ln-eval-B1-H33"),
    _case("gru", 4, 4, 3, 7, ln=True, bias=False, zone="h", packed=True, reverse=True,
          id="gru-ln-nobias-maskh-packed-reverse"),
    _case("gru", 3, 3, 2, 9, zone="h", reverse=True, id="gru-maskh-reverse"),
    _case("gru", 1, 1, 3, 5, ln=True, zone="eval", id="gru-T1-B1"),
    _case("gru", 3, 20, 2, 6, ln=True, zone="h", packed=True, id="gru-ln-B20-packed"),
]  # fmt: skip
FP32_CASES = [CASES[k] for k in (1, 4, 6, 12)]


def _compare(cell, T, B, I, H, opts, dtype, device):
    opts = dict(opts)
    reverse = opts.pop("reverse", False)
    args, bs, kw = make_inputs(cell, T, B, I, H, dtype=dtype, device=device, **opts)
    out, grads = run_layer(triton_layer, cell, args, bs, reverse, kw)
    ref_out, ref_grads = run_layer(reference.layer, cell, args, bs, reverse, kw)
    tol = TOL[dtype] if device == "cpu" else GPU_TOL.get(dtype, TOL[dtype])
    assert_close_all(out, ref_out, tol, "output")
    assert_close_all(grads, ref_grads, tol, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,T,B,I,H,opts", CASES)
def test_matches_reference_fp64(cell, T, B, I, H, opts, device):
    _compare(cell, T, B, I, H, opts, torch.float64, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,T,B,I,H,opts", FP32_CASES)
def test_matches_reference_fp32(cell, T, B, I, H, opts, device):
    _compare(cell, T, B, I, H, opts, torch.float32, device)


@pytest.mark.skipif(not INTERPRET, reason="float64 gradcheck runs under the interpreter")
@pytest.mark.parametrize(
    "cell,opts",
    [
        ("lstm", dict(ln=True, peep=True, proj=2, zone="hc", packed=True, reverse=True)),
        ("gru", dict(ln=True, zone="eval")),
    ],
    ids=["lstm-ln-peep-proj-masks-packed-reverse", "gru-ln-eval"],
)
def test_gradcheck(cell, opts):
    """Numerical gradients of x, h0, c0, w_hh, w_hr and every variant parameter (w_ih,
    b_ih and b_hh are left out to save interpreter time: their gradients are sums of
    the same dG as those of x and the layer-norm biases)."""
    opts = dict(opts)
    reverse = opts.pop("reverse", False)
    args, bs, kw = make_inputs(cell, 2, 2, 2, 3, seed=7, **opts)
    names = [f"a{k}" for k in range(len(args))] + [k for k in KW_TENSORS if kw.get(k) is not None]
    values = [*args] + [kw[k] for k in KW_TENSORS if kw.get(k) is not None]
    const = ("a3", "a5", "a6")  # w_ih, b_ih, b_hh
    present = [(n, v) for n, v in zip(names, values, strict=True)
               if v is not None and n not in const]  # fmt: skip

    def fn(*tensors):
        given = dict(zip([n for n, _ in present], tensors, strict=True))
        pos = [given.get(f"a{k}", args[k]) for k in range(len(args))]
        extra = {k: v for k, v in kw.items() if k not in KW_TENSORS} | {
            k: given[k] for k in KW_TENSORS if k in given
        }
        y, h, c = triton_layer(cell, *pos, bs, reverse, **extra)
        return (y, h) if c is None else (y, h, c)

    inputs = [v.clone().requires_grad_() for _, v in present]
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_some_outputs_unused(cell):
    """Gradients arriving through only one output (the others get no gradient buffer)."""
    args, bs, kw = make_inputs(cell, 3, 3, 2, 6, ln=True, zone="h", packed=True, seed=3)
    for pick in range(3 if cell == "lstm" else 2):
        got = [a.clone().requires_grad_() if a is not None else None for a in args]
        want = [a.clone().requires_grad_() if a is not None else None for a in args]
        triton_layer(cell, *got, bs, False, **kw)[pick].sum().backward()
        reference.layer(cell, *want, bs, False, **kw)[pick].sum().backward()
        assert_close_all([a.grad if a is not None else None for a in got],
                         [a.grad if a is not None else None for a in want], 1e-10,
                         f"grad via output {pick}")  # fmt: skip


def test_only_requested_gradients():
    """Inputs without requires_grad get None, the rest still match the reference."""
    args, bs, kw = make_inputs("lstm", 3, 2, 3, 5, ln=True, peep=True, zone="eval")
    x = args[0].clone().requires_grad_()
    ln_c_w = kw["ln_c_w"].clone().requires_grad_()
    y, h, c = triton_layer("lstm", x, *args[1:], None, False, **(kw | dict(ln_c_w=ln_c_w)))
    (y.sum() + c.sum()).backward()
    x_r = args[0].clone().requires_grad_()
    ln_c_w_r = kw["ln_c_w"].clone().requires_grad_()
    y, h, c = reference.layer("lstm", x_r, *args[1:], None, False, **(kw | dict(ln_c_w=ln_c_w_r)))
    (y.sum() + c.sum()).backward()
    torch.testing.assert_close(x.grad, x_r.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ln_c_w.grad, ln_c_w_r.grad, rtol=1e-10, atol=1e-10)


def test_deterministic_gradients():
    """Two backward passes give bit-identical gradients (no atomics)."""
    args, bs, kw = make_inputs("lstm", 3, 20, 2, 9, ln=True, peep=True, zone="hc", packed=True)
    _, g1 = run_layer(triton_layer, "lstm", args, bs, True, kw)
    _, g2 = run_layer(triton_layer, "lstm", args, bs, True, kw)
    for a, b in zip(g1, g2, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_launch_per_step(cell):
    args, bs, kw = make_inputs(cell, 4, 3, 2, 5, ln=True, zone="eval", proj=3 * (cell == "lstm"))
    leaves = [a.requires_grad_() if a is not None else None for a in args]
    with launch_counter() as fwd:
        y, h, c = triton_layer(cell, *leaves, bs, False, **kw)
    with launch_counter() as bwd:
        (y.sum() + h.sum()).backward()
    assert (fwd.total, bwd.total) == (4, 4)


def test_torch_compile_traces_the_op():
    """fullgraph: the op is two opaque nodes with fake (meta) implementations."""
    args, bs, kw = make_inputs("lstm", 3, 2, 3, 5, ln=True, peep=True, zone="c", packed=True)

    def fn(*a):
        y, h, c = triton_layer("lstm", *a, bs, True, **kw)
        return y.square().sum() + h.sum() + c.sum()

    leaves = [a.clone().requires_grad_() if a is not None else None for a in args]
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    compiled(*leaves).backward()
    eager = [a.clone().requires_grad_() if a is not None else None for a in args]
    fn(*eager).backward()
    assert_close_all([a.grad if a is not None else None for a in leaves],
                     [a.grad if a is not None else None for a in eager], 1e-12, "grad")  # fmt: skip


def _bad_calls():
    args, bs, kw = make_inputs("lstm", 2, 2, 3, 4, ln=True, peep=True)
    g_args, _, g_kw = make_inputs("gru", 2, 2, 3, 4)
    no_c = dict(kw, ln_c_w=None, ln_c_b=None)
    return [
        ("rnn_tanh", args, kw),
        ("gru", g_args, dict(g_kw, cifg=True)),
        ("gru", g_args, dict(g_kw, zoneout_c=0.2)),
        ("lstm", args, no_c),
        ("lstm", args, dict(kw, cifg=True)),
        ("lstm", args, dict(kw, w_ch=kw["w_ch"][:2])),
    ]


@pytest.mark.parametrize("k", range(6))
def test_errors_match_reference(k):
    cell, args, kw = _bad_calls()[k]
    with pytest.raises(ValueError) as want:
        reference.layer(cell, *args, None, False, **kw)
    with pytest.raises(ValueError) as got:
        triton_layer(cell, *args, None, False, **kw)
    assert str(got.value) == str(want.value)


def test_bad_shapes_and_dtypes():
    args, bs, kw = make_inputs("lstm", 2, 2, 3, 4, ln=True, zone="h")
    with pytest.raises(ValueError, match="mask_h has shape"):
        triton_layer("lstm", *args, bs, False, **dict(kw, mask_h=kw["mask_h"][:, :1]))
    with pytest.raises(ValueError, match="ln_c_w has shape"):
        triton_layer("lstm", *args, bs, False, **dict(kw, ln_c_w=kw["ln_c_w"][:-1]))
    with pytest.raises(TypeError, match="share one dtype"):
        triton_layer("lstm", *args, bs, False, **dict(kw, ln_hh_w=kw["ln_hh_w"].float()))

    # half inputs (autocast) are computed in float32, which the kernels take, and returned in
    # half: the float32 result on the same values, rounded once
    def cast(ts, dtype):
        return [t.to(dtype) if torch.is_tensor(t) else t for t in ts]

    def cast_kw(d, dtype):
        return {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in d.items()}

    half, half_kw = cast(args, torch.half), cast_kw(kw, torch.half)
    got = triton_layer("lstm", *half, bs, False, **half_kw)
    want = triton_layer(
        "lstm", *cast(half, torch.float), bs, False, **cast_kw(half_kw, torch.float)
    )
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float16 and torch.equal(g, w.half())
    with pytest.raises(ValueError, match="c0 must be given"):
        triton_layer("lstm", args[0], args[1], None, *args[3:], bs, False)
