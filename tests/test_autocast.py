"""The modules under ``torch.autocast``: output dtype and values against torch.nn.

fusedrnn's rule (fusedrnn.functional.autocast_dtype): under autocast for the input's device
type, inputs, states and weights are cast once to the autocast dtype (float64 left alone, as
autocast does), the layers run with autocast off, and the outputs come back in the autocast
dtype. That is torch.nn's behaviour on CUDA for every recurrent module and on CPU for its
oneDNN LSTM, its RNN, and every module given a low-precision input. torch.nn's CPU GRU,
packed LSTM, LSTMCell and GRUCell fed float32 return float32 instead (their elementwise state
update promotes against the float32 state); there fusedrnn keeps the one rule, which these
tests pin down, and compares values with torch.nn's within the autocast dtype's tolerance.

The triton cases run under ``TRITON_INTERPRET=1`` (``-k triton``), where CPU autocast stands
in for CUDA autocast. The interpreter's ``tl.dot`` is exact for float16 and wrong for
bfloat16 inputs, so values are compared under float16 autocast; under bfloat16 autocast only
that the op runs and returns bfloat16 is checked.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS
from misc_testlib import needs_interpreter
from module_testlib import flatten
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

T, B, I, H = 5, 3, 4, 6
# one rounding of every input and weight plus a few per step: the dtype's eps times ~12
TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _pair(cls, backend, **kw):
    ref = getattr(torch.nn, cls)(I, H, **kw)
    mod = getattr(fusedrnn, cls)(I, H, backend=backend, **kw)
    mod.load_state_dict(ref.state_dict())
    return ref, mod


def _nn_under_autocast(ref, x, dtype):
    """torch.nn's outputs under CPU autocast. oneDNN's LSTM raises on CPUs without bfloat16
    or float16 support (as here); what it computes there is the LSTM on the input autocast
    hands it, so that is run instead."""
    with torch.autocast("cpu", dtype=dtype):
        try:
            return ref(x)
        except RuntimeError as e:
            if "primitive" not in str(e) or not isinstance(ref, torch.nn.LSTM):
                raise
    with torch.autocast("cpu", dtype=dtype):
        return ref(x.to(dtype))


def _compare(got, want, dtype, *, want_dtype=None):
    """fusedrnn's outputs in ``dtype`` and close to ``want``'s, whose dtype is ``dtype``, or
    ``want_dtype`` where given ("any": torch.nn mixes dtypes)."""
    for a, b in zip(flatten(got), flatten(want), strict=True):
        assert a.dtype == dtype
        assert want_dtype == "any" or b.dtype == (want_dtype or dtype)
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "cls,kw,x_dtype",
    [
        ("LSTM", dict(num_layers=2), torch.float32),
        ("LSTM", dict(num_layers=2), torch.bfloat16),
        ("LSTM", dict(num_layers=2, bidirectional=True), torch.bfloat16),
        ("LSTM", dict(proj_size=3, batch_first=True), torch.bfloat16),
        ("GRU", dict(num_layers=2), torch.bfloat16),
        ("RNN", dict(num_layers=2, nonlinearity="relu"), torch.float32),
    ],
    ids="lstm-fp32in lstm-bf16in lstm-bidir-bf16in lstm-proj-bf gru-bf16in rnn-fp32in".split(),
)
def test_same_dtype_and_values_as_torch_nn(cls, kw, x_dtype, backend, dtype):
    """Where torch.nn's CPU result is in the autocast dtype: the same dtype and values."""
    ref, mod = _pair(cls, backend, **kw)
    shape = (B, T, I) if kw.get("batch_first") else (T, B, I)
    x = torch.randn(shape).to(x_dtype)
    want = _nn_under_autocast(ref, x, dtype)
    if x_dtype == torch.bfloat16 and dtype == torch.float16:
        # torch.nn's decomposed cells promote the bf16 state against fp16 gate products
        pytest.skip("torch.nn returns float32 for bfloat16 inputs under float16 autocast")
    with torch.autocast("cpu", dtype=dtype):
        got = mod(x)
    _compare(got, want, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_step_under_autocast(backend):
    """Gradients flow to the float32 weights through the cast (as with torch.nn's autocast
    ops) and agree with torch.nn's within bfloat16's tolerance."""
    ref, mod = _pair("RNN", backend, num_layers=2)
    x = torch.randn(T, B, I)
    for m in (ref, mod):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h = m(x)
        (out.float().square().sum() + h.float().sum()).backward()
    for (name, p), q in zip(ref.named_parameters(), mod.parameters(), strict=True):
        assert q.grad.dtype == torch.float32, name
        torch.testing.assert_close(q.grad, p.grad, rtol=5e-2, atol=5e-2, msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["gru", "lstm-packed", "lstm-proj"])
def test_one_rule_where_cpu_torch_nn_returns_float32(case, backend):
    """torch.nn's CPU GRU, packed LSTM and LSTM with projections (not oneDNN's) return
    float32 for float32 inputs under autocast (their state update promotes); fusedrnn returns
    the autocast dtype, as torch.nn does on CUDA, with the same values to bfloat16's
    tolerance."""
    cls = "GRU" if case == "gru" else "LSTM"
    ref, mod = _pair(cls, backend, **(dict(proj_size=3) if case == "lstm-proj" else {}))
    x = torch.randn(T, B, I)
    if case == "lstm-packed":
        x = pack_padded_sequence(x, [5, 3, 2])
    want = _nn_under_autocast(ref, x, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mod(x)
    # torch.nn's projected LSTM returns y and h_n in bfloat16 (the projection is a matmul)
    # and c_n in float32
    _compare(got, want, torch.bfloat16, want_dtype="any" if case == "lstm-proj" else torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cells_under_autocast(backend):
    """RNNCell: torch.nn's dtype and values. LSTMCell / GRUCell: the one rule (torch.nn's CPU
    cells return float32 here, its CUDA cells the autocast dtype), values close. A bfloat16
    input with float32 weights is accepted under autocast, as by torch.nn."""
    for cls, want_dtype in (("RNNCell", torch.bfloat16), ("LSTMCell", None), ("GRUCell", None)):
        ref, mod = _pair(cls, backend)
        for x in (torch.randn(B, I), torch.randn(B, I).bfloat16()):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                want, got = ref(x), mod(x)
            wd = want_dtype or flatten(want)[0].dtype
            _compare(got, want, torch.bfloat16, want_dtype=wd)


VARIANTS = [  # (class, keyword arguments, autocast dtype) per backend
    *((b, "LSTM", dict(num_layers=2, layer_norm=True, peephole=True), torch.bfloat16)
      for b in CPU_BACKENDS),
    # the interpreter's tl.dot is right for float16 only
    pytest.param("triton", "GRU", dict(layer_norm=True), torch.float16, marks=needs_interpreter),
]  # fmt: skip


@pytest.mark.parametrize("backend,cls,kw,dtype", VARIANTS)
def test_variants_under_autocast(backend, cls, kw, dtype):
    """The cell variants follow the same rule (no torch.nn counterpart: against the same
    module run in float32)."""
    mod = getattr(fusedrnn, cls)(I, H, backend=backend, **kw)
    x = torch.randn(T, B, I)
    want = mod(x)
    with torch.autocast("cpu", dtype=dtype):
        got = mod(x)
    _compare(got, want, dtype, want_dtype=torch.float32)


def test_float64_is_left_alone():
    """autocast does not cast float64; neither does the boundary."""
    ref, mod = _pair("LSTM", "reference")
    ref, mod = ref.double(), mod.double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = mod(x), ref(x)
    for a, b in zip(flatten(got), flatten(want), strict=True):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- triton, under the interpreter ------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize("path", ["step", "cooperative", "persistent"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_triton_under_autocast_fp16(cls, path):
    """CPU float16 autocast, where the interpreter's tl.dot is right: float16 out, values
    as torch.nn's on the same float16-rounded input and weights."""
    from fusedrnn.ops import triton as tb

    ref, mod = _pair(cls, "triton", batch_first=True)
    x = torch.randn(B, T, I)
    with torch.autocast("cpu", dtype=torch.float16), tb.kernel_path(path):
        got = mod(x)
    # torch.nn's CPU modules cannot run float16 here (oneDNN); its math on the values
    # autocast hands the layer, in float32
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    _compare(got, ref(x.half().float()), torch.float16, want_dtype=torch.float32)


@needs_interpreter
@pytest.mark.parametrize("path", ["step", "cooperative", "persistent"])
def test_triton_under_autocast_bf16_runs(path):
    """bfloat16 autocast: the op takes the cast inputs (before, a bf16 input projection met
    float32 weights in tl.dot) and returns bfloat16. The interpreter's bf16 tl.dot is wrong,
    so the values are not compared here; the GPU test does."""
    from fusedrnn.ops import triton as tb

    mod = fusedrnn.LSTM(I, H, backend="triton")
    with torch.autocast("cpu", dtype=torch.bfloat16), tb.kernel_path(path):
        out, (h, c) = mod(torch.randn(T, B, I))
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    assert out.shape == (T, B, H)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_cuda_autocast_matches_torch_nn(cls, dtype):
    """On CUDA fusedrnn returns the autocast dtype (whichever GPU backend is picked), with
    torch.nn's values. torch.nn's cuDNN modules return float16 under bfloat16 autocast too
    (seen on an H200 with torch 2.11): their dtype is not asserted there."""
    ref, mod = (m.cuda() for m in _pair(cls, None, num_layers=2))
    x = torch.randn(T, B, I, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        want, got = ref(x), mod(x)
    _compare(got, want, dtype, want_dtype="any" if dtype == torch.bfloat16 else None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compiled_under_autocast(backend):
    """The boundary (autocast state query, casts, autocast switched off) traces with
    fullgraph=True and gives eager's results."""
    import torch._dynamo

    mod = fusedrnn.LSTM(I, H, num_layers=2, backend=backend)
    x = torch.randn(T, B, I)
    torch._dynamo.reset()
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = compiled(x), mod(x)
    for a, b in zip(flatten(got), flatten(want), strict=True):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, rtol=0, atol=0)
