"""The triton variant kernels (layer norm, zoneout, peephole, CIFG): what is particular to
them, launch counts, torch.compile and the argument checks. Every option, shape and dtype
against the reference op (outputs, every gradient, one output alone, gradient selection,
repeatability, gradcheck) is tests/test_conformance.py.

Like ``test_triton_backend.py`` this runs on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1`` in the environment of the pytest process, set before triton is
imported) or on CUDA tensors, and skips otherwise. Every buffer the kernels write is
NaN-poisoned first, so an element a kernel forgets to write shows up.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import layer_cases  # noqa: E402
from layer_cases import Case, assert_close, cast  # noqa: E402

from fusedrnn.ops import library, reference  # noqa: E402
from fusedrnn.ops.triton import launch_counter, poison_buffers  # noqa: E402
from fusedrnn.ops.triton import layer as triton_layer  # noqa: E402

if not layer_cases.triton_devices():
    layer_cases.skip_module_without_triton()
DEVICE = layer_cases.triton_device()


@pytest.fixture(autouse=True)
def _poison():
    with poison_buffers():
        yield


def make_inputs(cell, T, B, I, H, **options):  # noqa: E741
    """The positional layer-op inputs x to w_hr, batch_sizes and the variant keyword arguments
    of ``Case(cell, T, B, I, H, **options)`` on DEVICE (tests/layer_cases.py)."""
    a = layer_cases.make_inputs(Case(cell, T=T, B=B, I=I, H=H, **options), torch.float64, DEVICE)
    kw = {k: a[k] for k in library.OPTION_DEFAULTS if k in a}
    return [a[k] for k in library.NAMES[1:9]], a["batch_sizes"], kw


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
    for k, (a, b) in enumerate(zip(leaves, eager, strict=True)):
        if a is not None:
            assert (a.grad is None) == (b.grad is None), k
            assert_close(a.grad, b.grad, 1e-12, f"grad[{k}]")


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
    half, half_kw = (
        [cast(t, torch.half) for t in args],
        {k: cast(v, torch.half) for k, v in kw.items()},
    )
    got = triton_layer("lstm", *half, bs, False, **half_kw)
    want = triton_layer("lstm", *[cast(t, torch.float) for t in half], bs, False,
                        **{k: cast(v, torch.float) for k, v in half_kw.items()})  # fmt: skip
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float16 and torch.equal(g, w.half())
    with pytest.raises(ValueError, match="c0 must be given"):
        triton_layer("lstm", args[0], args[1], None, *args[3:], bs, False)
