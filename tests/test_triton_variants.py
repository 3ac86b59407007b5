"""The triton variant kernels (layer norm, zoneout, peephole, CIFG): what is particular to
them (their launch counts are in ``test_triton_backend.py``), torch.compile and the triton
layer op's argument checks (half inputs, computed in float32: tests/test_conformance.py).
Every option, shape and dtype against the reference op (outputs, every gradient, one output
alone, gradient selection, repeatability, gradcheck) is tests/test_conformance.py.
The tests run under the Triton interpreter or on CUDA tensors, every buffer NaN-poisoned,
as ``test_triton_backend.py`` explains.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("triton")

import layer_cases  # noqa: E402
from layer_cases import Case, assert_close, call, outputs_and_grads, poisoned_triton_buffers  # noqa: E402, F401

from fusedrnn.ops import library, reference  # noqa: E402
from fusedrnn.ops.triton import layer as triton_layer  # noqa: E402

DEVICE = layer_cases.triton_device() or layer_cases.skip_module_without_triton()
pytestmark = pytest.mark.usefixtures("poisoned_triton_buffers")


def test_torch_compile_traces_the_op():
    """fullgraph: the op is two opaque nodes with fake (meta) implementations; the outputs and
    the gradients of x to w_hr (the variant parameters do not require grad) are eager's."""
    case = Case("lstm", T=3, B=2, I=3, H=5, ln=True, peep=True, zone="c", packed=True, reverse=True)
    a = layer_cases.make_inputs(case, torch.float64, DEVICE)
    compiled = torch.compile(triton_layer, backend="aot_eager", fullgraph=True)
    (outs, grads), (want, want_grads) = (outputs_and_grads(f, a, wanted=library.NAMES[1:9])
                                         for f in (compiled, triton_layer))  # fmt: skip
    for k, o, w in zip(("y", "h_n", "c_n"), outs, want, strict=True):
        assert_close(o, w, 1e-12, k)
    for k, g in want_grads.items():
        assert_close(grads[k], g, 1e-12, f"d{k}")


_small = functools.partial(Case, T=2, B=2, I=3, H=4)
GRU, LSTM = _small("gru"), _small("lstm", ln=True, peep=True)
MASKED = _small("lstm", ln=True, zone="h")

# (inputs, changes: a new value or a function of the old one, the error, its message: the
# reference op's where None)
BAD_ARGUMENTS = [
    (GRU, dict(w_hh=torch.Tensor.float), TypeError, "share one dtype"),
    (GRU, dict(cell="lstmx"), ValueError, "unknown cell"),
    (_small("lstm"), dict(c0=None), ValueError, "c0 must be given"),
    (GRU, dict(h0=lambda t: t[:, :3]), ValueError, "h0 has shape"),
    (GRU, dict(b_ih=lambda t: t[:-1]), ValueError, "b_ih has shape"),
    (MASKED, dict(mask_h=lambda t: t[:, :1]), ValueError, "mask_h has shape"),
    (MASKED, dict(ln_c_w=lambda t: t[:-1]), ValueError, "ln_c_w has shape"),
    (MASKED, dict(ln_hh_w=torch.Tensor.float), TypeError, "share one dtype"),
    (LSTM, dict(cell="rnn_tanh"), ValueError, None),
    (GRU, dict(cifg=True), ValueError, None),
    (GRU, dict(zoneout_c=0.2), ValueError, None),
    (LSTM, dict(ln_c_w=None, ln_c_b=None), ValueError, None),
    (LSTM, dict(cifg=True), ValueError, None),
    (LSTM, dict(w_ch=lambda t: t[:2]), ValueError, None),
]


@pytest.mark.parametrize(
    "case,change,error,message",
    BAD_ARGUMENTS,
    ids=lambda v: str(v) if isinstance(v, Case) else "+".join(v) if isinstance(v, dict) else None,
)
def test_bad_arguments(case, change, error, message):
    a = layer_cases.make_inputs(case, torch.float64, DEVICE)
    a.update({k: v(a[k]) if callable(v) else v for k, v in change.items()})
    if message is None:
        with pytest.raises(error) as want:
            call(reference.layer, a)
    with pytest.raises(error, match=message) as got:
        call(triton_layer, a)
    if message is None:
        assert str(got.value) == str(want.value)


def test_bench_paths_measures_the_variant_launches(tmp_path):
    """bench/paths.py's layer-norm rows (run on a GPU; here a dry run on the interpreter): the
    reference op as baseline, both launches of the variant kernels checked against it first."""
    import csv

    import paths

    if DEVICE != "cpu":
        pytest.skip("the dry run is for the interpreter (a GPU run times real shapes)")
    argv = ["--out", str(tmp_path), "--shapes", "ln-tiny", "--device", "cpu", "--rounds", "1",
            "--min-run-time", "0.001"]  # fmt: skip
    assert paths.main(argv) == 0
    with open(tmp_path / "paths.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["provider"], r["problem"]) for r in rows] == [
        (mode, provider, "")
        for mode in ("fwd", "fwdbwd")
        for provider in ("fusedrnn[reference]", "step", "cooperative (shipped)")
    ]
    assert all(r["label"].startswith("lstm layer_norm") for r in rows)
