"""The triton variant kernels (layer norm, zoneout, peephole, CIFG): what is particular to
them (the comparisons of every case with the reference op are tests/test_conformance.py).

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

import layer_cases  # noqa: E402
from layer_cases import Case, assert_close_all  # noqa: E402

from fusedrnn.ops import library, reference  # noqa: E402
from fusedrnn.ops.triton import launch_counter, poison_buffers  # noqa: E402
from fusedrnn.ops.triton import layer as triton_layer  # noqa: E402

INTERPRET = layer_cases.triton_interpreting()
HAS_CUDA = torch.cuda.is_available()

# the device of the tests that do not run on every device
DEVICE = "cpu" if INTERPRET else "cuda"
DEVICES = layer_cases.triton_devices() or layer_cases.skip_module_without_triton()


@pytest.fixture(autouse=True)
def _poison():
    with poison_buffers():
        yield


def make_inputs(cell, T, B, I, H, *, proj=0, bias=True, packed=False, ln=False, peep=False,
                cifg=False, zone="none", dtype=torch.float64, device=None, seed=0):  # fmt: skip
    """Positional layer-op inputs, batch_sizes and the variant keyword arguments
    (tests/layer_cases.py). zone: "none", "eval" (p without masks), "h" / "c" / "hc" (masks)."""
    case = Case(cell, T=T, B=B, I=I, H=H, proj=proj, bias=bias, packed=packed, ln=ln,
                peep=peep, cifg=cifg, zone=zone)  # fmt: skip
    a = layer_cases.make_inputs(case, dtype, device or DEVICE, seed)
    kw = {k: a[k] for k in library.OPTION_DEFAULTS if k in a}
    return [a[k] for k in library.NAMES[1:9]], a["batch_sizes"], kw


# Every option, shape and dtype against the reference op (outputs, every gradient, one output
# alone, gradient selection, repeatability, gradcheck) is tests/test_conformance.py; here are
# launch counts, torch.compile and the argument checks.


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
