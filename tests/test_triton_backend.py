"""The triton backend: what is particular to it (the comparisons of every case with the
reference op are tests/test_conformance.py).

On a machine without CUDA the kernels run on CPU tensors under the Triton
interpreter, which must be chosen before triton is first imported (and
``import fusedrnn`` already imports it, through torch._dynamo), so run this module
as ``TRITON_INTERPRET=1 python -m pytest tests/test_triton_backend.py``; without
that (and without CUDA) it skips. With CUDA the same checks run on CUDA tensors
(marked ``gpu``). Every buffer the kernels write is NaN-poisoned first, so an
element a kernel forgets to write shows up in the comparison.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import layer_cases  # noqa: E402
from layer_cases import Case  # noqa: E402

import fusedrnn  # noqa: E402
from fusedrnn.ops import library  # noqa: E402
from fusedrnn.ops import triton as tb  # noqa: E402

INTERPRET = layer_cases.triton_interpreting()
HAS_CUDA = torch.cuda.is_available()
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# TF32 on GPUs; half inputs against the float32 reference
GPU_TOL = {torch.float32: 5e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}

DEVICES = layer_cases.triton_devices() or layer_cases.skip_module_without_triton()
DEVICE = layer_cases.triton_device()  # of the tests that do not run on every device


@pytest.fixture(autouse=True)
def _poison():
    with tb.poison_buffers():
        yield


def make_inputs(cell, T, B, I, H, *, proj=0, bias=True, packed=False, dtype, device, seed=0):
    """Random layer-op inputs on ``device`` (tests/layer_cases.py): the 8 tensors, batch_sizes."""
    case = Case(cell, T=T, B=B, I=I, H=H, proj=proj, bias=bias, packed=packed)
    a = layer_cases.make_inputs(case, dtype, device, seed)
    return [a[k] for k in library.NAMES[1:9]], a["batch_sizes"]


# Every cell, shape and option against the reference op (both kernel paths, outputs, every
# gradient, gradcheck) is tests/test_conformance.py; here are launch counts, the path choice,
# half precision, errors and the modules against torch.nn.


def _count_launches(cell, H, proj, path, T=4, packed=False):
    args, bs = make_inputs(
        cell, T, 3, 3, H, proj=proj, packed=packed, dtype=torch.float32, device=DEVICE
    )
    leaves = [a.requires_grad_() if a is not None else None for a in args]
    with tb.kernel_path(path):
        with tb.launch_counter() as fwd:
            y, h, c = tb.layer(cell, *leaves, bs, True)
        with tb.launch_counter() as bwd:
            (y.sum() + h.sum()).backward()
    return fwd.total, bwd.total


@pytest.mark.parametrize(
    "cell,proj,per_step",
    [("lstm", 0, 1), ("gru", 0, 1), ("rnn_tanh", 0, 1), ("rnn_relu", 0, 1), ("lstm", 3, 2)],
)
def test_launch_counts_per_step(cell, proj, per_step):
    """Per-step kernels: one launch per step forward and backward (two with proj:
    the projection launch forward, the state-gradient launch backward)."""
    assert _count_launches(cell, 17, proj, "step") == (per_step * 4, per_step * 4)
    assert _count_launches(cell, 17, proj, "step", packed=True) == (per_step * 4, per_step * 4)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", ["cooperative", "persistent"])
def test_launch_counts_whole_sequence(cell, path):
    """Persistent and cooperative kernels: one launch per sequence forward and one backward
    (the cooperative one with the LSTM's projection too)."""
    assert _count_launches(cell, 20, 0, path, T=5) == (1, 1)
    assert _count_launches(cell, 20, 0, path, T=5, packed=True) == (1, 1)
    if cell == "lstm" and path == "cooperative":
        assert _count_launches(cell, 20, 7, path, T=5, packed=True) == (1, 1)


def test_automatic_path_choice():
    """Small H takes the persistent kernels automatically, larger H and proj_size the
    cooperative launch of the step kernels; a forced path with what it cannot run raises."""
    from fusedrnn.ops.triton.configs import PERSISTENT_CONFIGS
    from fusedrnn.ops.triton.persistent import choose_path
    from fusedrnn.ops.triton.runtime import Plan

    for cell in CELLS:
        limit = max(c.max_hidden for c in PERSISTENT_CONFIGS if c.cell == cell)
        with tb.launch_counter() as count:
            assert _count_launches(cell, limit, 0, None, T=2) == (1, 1)
        assert "_persistent_fwd_kernel" in count.by_kernel
        with tb.launch_counter() as count:
            assert _count_launches(cell, limit + 1, 0, None, T=2) == (1, 1)
        assert "_step_fwd_kernel" in count.by_kernel
    assert _count_launches("lstm", 8, 4, None, T=2) == (1, 1)
    w = torch.zeros(32, 8)
    assert choose_path("lstm", w, None, Plan(None, 0, 2, False)) == "step"  # nothing to run
    with tb.kernel_path("persistent"), pytest.raises(ValueError, match="proj_size == 0"):
        choose_path("lstm", w, torch.zeros(4, 8), Plan(None, 3, 2, False))
    # 256 x 128 tiles of [B, 4H]: 32,768 steps would pass the int32 barrier counter
    big = torch.zeros(2048, 512)
    assert choose_path("lstm", big, None, Plan(None, 32_767, 4096, False)) == "cooperative"
    assert choose_path("lstm", big, None, Plan(None, 32_768, 4096, False)) == "step"


def test_resident_programs():
    """The occupancy arithmetic the cooperative grid is sized by (CUDA's rules: registers
    per warp in units of 256, 1 KB of shared memory reserved per program)."""
    from fusedrnn.ops.triton.sync import counter_fits, resident_programs

    # 4 warps of 255 registers: 8,192 per warp, 32,768 per program -> 2 per SM
    assert resident_programs(255, 0, 4, sms=132) == 264
    # 41 registers: 1,312 per warp, allocated as 1,536 -> 10 programs of 4 warps by
    # registers, while 2,048 threads would allow 16 (40 registers: exactly 1,280 -> 12)
    assert resident_programs(41, 0, 4, sms=1) == 10
    assert resident_programs(40, 0, 4, sms=1) == 12
    # shared memory decides: 100 KB + 1 KB per program in 228 KB
    assert resident_programs(32, 100 * 1024, 4, sms=2) == 2 * (233472 // (101 * 1024))
    # threads decide: 8 warps -> 8 programs of 256 threads
    assert resident_programs(16, 0, 8, sms=1) == 8
    assert resident_programs(16, 0, 1, sms=1) == 32  # the per-SM program limit
    # the barrier counter is int32: a launch whose arrivals would pass 2**31 - 1 runs per step
    assert counter_fits(2 * 4_000_000, 268) and not counter_fits(2 * 4_100_000, 268)


def test_bad_input_errors():
    args, bs = make_inputs("gru", 2, 2, 3, 4, dtype=torch.float64, device=DEVICE)
    bad = list(args)
    bad[4] = bad[4].float()
    with pytest.raises(TypeError, match="share one dtype"):
        tb.layer("gru", *bad, bs, False)
    with pytest.raises(ValueError, match="unknown cell"):
        tb.layer("lstmx", *args, bs, False)
    with pytest.raises(ValueError, match="c0 must be given"):
        tb.layer("lstm", *args, bs, False)
    bad = list(args)
    bad[1] = bad[1][:, :3]
    with pytest.raises(ValueError, match="h0 has shape"):
        tb.layer("gru", *bad, bs, False)
    bad = list(args)
    bad[5] = bad[5][:-1]
    with pytest.raises(ValueError, match="b_ih has shape"):
        tb.layer("gru", *bad, bs, False)


def _check_half(cell, dtype, device, path):
    """Half-precision inputs with fp32 accumulation and fp32 cell state vs the float32
    reference on the same (rounded) inputs."""
    case = Case(cell, T=5, B=7, I=5, H=20, packed=True, reverse=True)
    a = layer_cases.make_inputs(case, dtype, device)
    with tb.kernel_path(path):
        layer_cases.compare(tb.layer, a, GPU_TOL[dtype], upcast=torch.float32)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run")
@pytest.mark.parametrize("path", ["step", "cooperative", "persistent"])
@pytest.mark.parametrize("cell", CELLS)
def test_fp16_interpreter(cell, path):
    """fp16 under the interpreter (its tl.dot is right for fp16, wrong for bf16)."""
    _check_half(cell, torch.float16, "cpu", path)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("path", ["step", "cooperative", "persistent"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", CELLS)
def test_half_precision_gpu(cell, dtype, path):
    _check_half(cell, dtype, "cuda", path)


# ---- the modules with backend="triton" against torch.nn ---------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "cls,kwargs",
    [
        ("LSTM", dict(num_layers=2, bidirectional=True)),
        ("LSTM", dict(num_layers=2, proj_size=3)),
        ("GRU", dict(num_layers=2, bidirectional=True, bias=False)),
        ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_module_matches_torch_nn(rnn_pair, cls, kwargs, packed, device):
    dtype = torch.float64
    ref, mod = rnn_pair(cls, 3, 7, backend="triton", dtype=dtype, device=device, **kwargs)
    lengths = [4, 4, 2, 1]
    x = torch.randn(4, len(lengths), 3, dtype=dtype, device=device)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_r, hid_r = ref(x)
    out_m, hid_m = mod(x)
    if packed:
        out_r, out_m = out_r.data, out_m.data
    hid_r = hid_r if isinstance(hid_r, tuple) else (hid_r,)
    hid_m = hid_m if isinstance(hid_m, tuple) else (hid_m,)
    for a, b in zip((out_m, *hid_m), (out_r, *hid_r), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    loss_r = out_r.square().sum() + sum(h.sum() for h in hid_r)
    loss_m = out_m.square().sum() + sum(h.sum() for h in hid_m)
    loss_r.backward()
    loss_m.backward()
    for (name, p_r), p_m in zip(ref.named_parameters(), mod.parameters(), strict=True):
        torch.testing.assert_close(p_m.grad, p_r.grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_matches_torch_nn(rnn_pair, cls, device):
    dtype = torch.float64
    ref, mod = rnn_pair(cls, 4, 9, backend="triton", dtype=dtype, device=device)
    x = torch.randn(3, 4, dtype=dtype, device=device)
    h = torch.randn(3, 9, dtype=dtype, device=device)
    state = (h, torch.randn(3, 9, dtype=dtype, device=device)) if cls == "LSTMCell" else h
    out_r, out_m = ref(x, state), mod(x, state)
    out_r = out_r if isinstance(out_r, tuple) else (out_r,)
    out_m = out_m if isinstance(out_m, tuple) else (out_m,)
    for a, b in zip(out_m, out_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    sum(o.sum() for o in out_r).backward()
    sum(o.sum() for o in out_m).backward()
    for (name, p_r), p_m in zip(ref.named_parameters(), mod.parameters(), strict=True):
        torch.testing.assert_close(p_m.grad, p_r.grad, rtol=1e-9, atol=1e-9, msg=name)


def test_dot_precision_follows_allow_tf32():
    from fusedrnn.ops.triton.runtime import dot_precision

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert dot_precision(torch.float32) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert dot_precision(torch.float32) == "tf32"
        assert dot_precision(torch.float64) == "ieee"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls,kwargs", [("LSTM", {}), ("GRU", {"layer_norm": True})])
def test_double_backward_names_the_backends_that_support_it(cls, kwargs, device):
    """The backward kernels build no graph: create_graph=True must not return gradients
    that silently lack second derivatives."""
    mod = getattr(fusedrnn, cls)(3, 2, backend="triton", **kwargs).to(device)
    x = torch.randn(3, 2, 3, device=device, requires_grad=True)
    out, _ = mod(x)
    with pytest.raises(RuntimeError, match="double backward.*cpu and reference"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("path", ["step", "cooperative", "persistent"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_saved_gates_without_backward(cell, path):
    """save=False (no grad): the kernels skip the gates only a backward reads; the outputs are
    bitwise those of a call that saves them."""
    from fusedrnn.ops.triton.layer_op import layer

    args, bs = make_inputs(cell, 4, 3, 3, 8, packed=True, dtype=torch.float32, device=DEVICE)
    a = library.LayerArgs(cell, *args, bs, False, **library.OPTION_DEFAULTS, save=False)
    with tb.kernel_path(path):
        lean = layer.fwd_op(*a)
        full = layer.fwd_op(*a._replace(save=True))
    assert lean[2].numel() == 0 and full[2].numel() == 4 * 3 * 4 * 8
    for k in (0, 1, 4):  # the state histories and the packed output
        assert torch.equal(lean[k], full[k]), k
