"""The modules under ``torch.autocast``: output dtype and values against torch.nn.

fusedrnn's rule (fusedrnn.functional.autocast_dtype): under autocast for the input's device
type, inputs, states and weights are cast once to the autocast dtype (float64 left alone, as
autocast does), the layers run with autocast off, and the outputs come back in the autocast
dtype. That is torch.nn's behaviour on CUDA, and on CPU for its oneDNN LSTM, its RNN and every
module given a low-precision input; its CPU GRU, packed LSTM, LSTM with projections, LSTMCell
and GRUCell fed float32 return float32 (their state update promotes against the float32
state). fusedrnn keeps the one rule there too, and its values match torch.nn's to the autocast
dtype's tolerance.

The triton cases run under ``TRITON_INTERPRET=1``, where CPU autocast stands in for CUDA's.
The interpreter's ``tl.dot`` is exact for float16 and wrong for bfloat16 inputs, so values are
compared under float16 autocast; under bfloat16 autocast only the output dtype is checked.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS
from misc_testlib import needs_interpreter
from module_testlib import assert_same, flatten
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

T, B, I, H = 5, 3, 4, 6
# one rounding of every input and weight plus a few per step: the dtype's eps times ~12
TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _autocast(module, x, dtype):
    """``module(x)`` under CPU autocast to ``dtype``. torch.nn's oneDNN LSTM raises on CPUs
    without bfloat16 or float16 support (as here); what it computes there is the LSTM on the
    input autocast hands it, so that is run instead."""
    with torch.autocast("cpu", dtype=dtype):
        try:
            return module(x)
        except RuntimeError as e:
            if "primitive" not in str(e) or not isinstance(module, torch.nn.LSTM):
                raise
            return module(x.to(dtype))


def _compare(got, want, dtype, *, want_dtype=None, atol=None):
    """fusedrnn's outputs in ``dtype`` and within ``atol`` (by default TOL[dtype]) of
    ``want``'s, whose dtype is ``dtype``, or ``want_dtype`` where given ("any": torch.nn
    mixes dtypes)."""
    atol = TOL[dtype] if atol is None else atol
    for a, b in zip(flatten(got), flatten(want), strict=True):
        assert a.dtype == dtype
        assert want_dtype == "any" or b.dtype == (want_dtype or dtype)
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=atol)


# id: (class, keyword arguments, input, the dtype of torch.nn's CPU outputs under autocast
# where it is not the autocast dtype: see the module docstring)
CASES = {
    "lstm-fp32in": ("LSTM", dict(num_layers=2), "fp32", None),
    "lstm-bf16in": ("LSTM", dict(num_layers=2), "bf16", None),
    "lstm-bidir-bf16in": ("LSTM", dict(num_layers=2, bidirectional=True), "bf16", None),
    "lstm-proj-bf": ("LSTM", dict(proj_size=3, batch_first=True), "bf16", None),
    "gru-bf16in": ("GRU", dict(num_layers=2), "bf16", None),
    "rnn-fp32in": ("RNN", dict(num_layers=2, nonlinearity="relu"), "fp32", None),
    "gru-fp32in": ("GRU", {}, "fp32", torch.float32),
    "lstm-packed": ("LSTM", {}, "fp32 packed", torch.float32),
    # y and h_n in the autocast dtype (the projection is a matmul), c_n in float32
    "lstm-proj": ("LSTM", dict(proj_size=3), "fp32", "any"),
    **{f"{c.lower()}-{k}in": (c, {}, k, torch.float32 if k == "fp32" and c != "RNNCell" else None)
       for c in ("RNNCell", "LSTMCell", "GRUCell") for k in ("fp32", "bf16")},
}  # fmt: skip


def _input(cls, kw, kind="fp32"):
    """A random input for ``cls(I, H, **kw)``: "fp32" or "bf16", "packed" with lengths."""
    shape = (B, I) if cls.endswith("Cell") else (B, T, I) if kw.get("batch_first") else (T, B, I)
    x = torch.randn(shape).to(torch.bfloat16 if kind.startswith("bf16") else torch.float32)
    return pack_padded_sequence(x, [5, 3, 2]) if kind.endswith("packed") else x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES)
def test_dtype_and_values_against_torch_nn(case, cpu_backend, dtype, rnn_pair):
    """fusedrnn returns the autocast dtype, with torch.nn's values to that dtype's tolerance.
    A bfloat16 input with float32 weights is accepted under autocast, as by torch.nn."""
    cls, kw, kind, nn_dtype = CASES[case]
    if kind == "bf16" and dtype == torch.float16:
        # torch.nn's decomposed cells promote the bf16 state against fp16 gate products
        pytest.skip("torch.nn returns float32 for bfloat16 inputs under float16 autocast")
    ref, mod = rnn_pair(cls, I, H, backend=cpu_backend, dtype=torch.float32, **kw)
    x = _input(cls, kw, kind)
    _compare(_autocast(mod, x, dtype), _autocast(ref, x, dtype), dtype, want_dtype=nn_dtype)


@pytest.mark.parametrize(
    "cls,dtype,tol", [("RNN", torch.float32, 5e-2), ("LSTM", torch.float64, 1e-12)]
)
def test_training_step_under_autocast(cls, dtype, tol, cpu_backend, rnn_pair):
    """Gradients flow to the float32 weights through the cast (as with torch.nn's autocast
    ops) and agree with torch.nn's within bfloat16's tolerance. autocast does not cast
    float64; neither does the boundary."""
    ref, mod = rnn_pair(cls, I, H, num_layers=2, backend=cpu_backend, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # dtypes too: float32 weight gradients
        assert_same(ref, mod, torch.randn(T, B, I, dtype=dtype), rtol=tol, atol=tol)


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
    _compare(_autocast(mod, x, dtype), mod(x), dtype, want_dtype=torch.float32)


# ---- triton, under the interpreter ------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize("path", ["step", "cooperative", "resident", "persistent"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "cls, kw", [("LSTM", {}), ("GRU", {}), ("LSTM", {"proj_size": 4})], ids=["LSTM", "GRU", "LSTMP"]
)
def test_triton_under_autocast(cls, kw, batch_first, path, rnn_pair):
    """float16 autocast, where the interpreter's tl.dot is right: float16 out, values as
    torch.nn's on the same float16-rounded input and weights. bfloat16 autocast: the op
    takes the cast inputs (before, a bf16 input projection met float32 weights in tl.dot) and
    returns bfloat16; the interpreter's bf16 tl.dot is wrong, so the GPU test compares
    those values. The LSTM with projection (LSTMP) takes every path but the persistent
    kernels', which have none."""
    from fusedrnn.ops import triton as tb

    if path == "persistent" and kw:
        pytest.skip("the persistent kernels have no projection")
    ref, mod = rnn_pair(cls, I, H, batch_first=batch_first, backend="triton", dtype=torch.float32,
                        **kw)  # fmt: skip
    x = _input(cls, {"batch_first": batch_first})
    with tb.kernel_path(path):
        bf16, got = flatten(_autocast(mod, x, torch.bfloat16)), _autocast(mod, x, torch.float16)
    width = kw.get("proj_size", H)
    assert all(t.dtype == torch.bfloat16 for t in bf16) and bf16[0].shape == (*x.shape[:2], width)
    # torch.nn's CPU modules cannot run float16 here (oneDNN); its math on the values
    # autocast hands the layer, in float32
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    _compare(got, ref(x.half().float()), torch.float16, want_dtype=torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_cuda_autocast_matches_torch_nn(cls, dtype, rnn_pair):
    """On CUDA fusedrnn returns the autocast dtype (whichever GPU backend is picked), with
    torch.nn's values. torch.nn's cuDNN modules return float16 under bfloat16 autocast too
    (seen on an H200 with torch 2.11): their dtype is not asserted there."""
    ref, mod = rnn_pair(cls, I, H, num_layers=2, backend=None, dtype=torch.float32, device="cuda")
    x = torch.randn(T, B, I, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        want, got = ref(x), mod(x)
    _compare(got, want, dtype, want_dtype="any" if dtype == torch.bfloat16 else None)


def test_compiled_under_autocast(cpu_backend):
    """The boundary (autocast state query, casts, autocast switched off) traces with
    fullgraph=True and gives eager's results."""
    import torch._dynamo

    mod = fusedrnn.LSTM(I, H, num_layers=2, backend=cpu_backend)
    x = torch.randn(T, B, I)
    torch._dynamo.reset()
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    got, want = (_autocast(m, x, torch.bfloat16) for m in (compiled, mod))
    _compare(got, want, torch.bfloat16, atol=0)
