"""Shared-memory bank conflicts of the FMA products' operand reads and of the stores from
registers (fusedrnn/smem.py), read from sm_90 compiles (no GPU): the float32 IEEE forward
kernels read their weights transposed so that the reads are conflict-free
(fusedrnn.ops.triton.runtime.weights_transposed). The compile report checks every kernel the
same way; here, that the check finds the conflicts it is there for."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from misc_testlib import compiled_only  # noqa: E402

from fusedrnn import compile_report, smem  # noqa: E402
from fusedrnn.ops.triton import runtime  # noqa: E402

NAME = "resident lstm fwd H=256 fp32"


def _job(name: str):
    """The sm_90 compile the report names ``name`` (float32, H = 256), as the launchers make it
    now (with runtime.weights_transposed as it is at the call)."""
    (job,) = [j for n, j in compile_report.named_launches(["fp32"], hidden=(256,)) if n == name]
    return replace(job, arch=90)


def _ttgir(name: str) -> str:
    return compile_report.compile_job(_job(name)).asm["ttgir"]


@compiled_only
def test_the_compile_report_fails_a_conflict(monkeypatch):
    """The report's row of the resident LSTM forward (float32 H = 256) read in the weights'
    own order names the conflict and fails; transposed, it passes."""
    row = compile_report._compile(_job(NAME))
    assert row["conflicts"] == 0 and not compile_report.failed(row)
    monkeypatch.setattr(runtime, "weights_transposed", lambda dtype: False)
    row = compile_report._compile(_job(NAME))
    assert row["conflicts"] == 7 and compile_report.failed(row)
    assert "BANK CONFLICTS 7" in compile_report._fmt(row)


@compiled_only
def test_fma_weight_reads_conflict_only_in_the_weights_own_order(monkeypatch):
    """The resident LSTM forward at float32 H = 256 (8 warps; a [16, 16] tile of 4 gates):
    read in W_hh's own order (k fastest) the right operand's loads are 8-way bank conflicts
    (7 extra accesses each); transposed, none. Its left operand, and the backward's reads of
    W_hh (units fastest already), have none."""
    monkeypatch.setattr(runtime, "weights_transposed", lambda dtype: False)
    reads = {r.operand: smem.bank_conflicts(r)
             for r in smem.operand_reads(_ttgir(NAME))}  # fmt: skip
    assert reads == {0: 0, 1: 7}
    monkeypatch.undo()
    assert runtime.weights_transposed(torch.float32)  # TF32 off by default
    for name in (NAME, NAME.replace("fwd", "bwd")):
        ttgir = _ttgir(name)
        assert sorted(r.operand for r in smem.operand_reads(ttgir)) == [0, 1]  # both counted
        assert smem.worst_conflicts(ttgir) == 0


def test_the_parser_finds_operand_reads_and_register_stores():
    """The parser picks the reads into FMA ``dot_op`` layouts with their blocked parent and
    swizzled shared layout, once each, and skips tensor-core operands; and the stores of
    blocked register tensors into swizzled buffers (``local_alloc``, ``local_store``)."""
    ttgir = """
#blocked2 = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [2, 16], warpsPerCTA = [8, 1], order = [1, 0]}>
#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 8]}>
#shared = #ttg.swizzled_shared<{vec = 1, perPhase = 1, maxPhase = 1, order = [0, 1]}>
#shared1 = #ttg.swizzled_shared<{vec = 4, perPhase = 2, maxPhase = 4, order = [1, 0]}>
%1 = ttg.local_load %w : !ttg.memdesc<64x16xf32, #shared, #smem> -> tensor<64x16xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked2}>> loc(#l)
%2 = ttg.local_load %w2 : !ttg.memdesc<64x16xf32, #shared, #smem> -> tensor<64x16xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked2}>> loc(#l)
%3 = ttg.local_load %a : !ttg.memdesc<16x64xf64, #shared1, #smem, mutable> -> tensor<16x64xf64, #ttg.dot_op<{opIdx = 0, parent = #blocked2}>> loc(#l)
%4 = ttg.local_load %b : !ttg.memdesc<16x64xf16, #shared1, #smem> -> tensor<16x64xf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>> loc(#l)
%5 = ttg.local_alloc %x : (tensor<64x16xf32, #blocked2>) -> !ttg.memdesc<64x16xf32, #shared, #smem> loc(#l)
ttg.local_store %y, %6 : tensor<16x64xf16, #blocked2> -> !ttg.memdesc<16x64xf16, #shared1, #smem, mutable> loc(#l)
%7 = ttg.local_alloc %z : (tensor<16x8xf16, #mma>) -> !ttg.memdesc<16x8xf16, #shared1, #smem> loc(#l)
"""  # noqa: E501
    blocked = ((1, 1), (2, 16), (8, 1), (1, 0))
    assert smem.operand_reads(ttgir) == [
        smem.SharedAccess(1, (64, 16), "f32", blocked, (1, 1, 1, (0, 1))),
        smem.SharedAccess(0, (16, 64), "f64", blocked, (4, 2, 4, (1, 0))),
    ]
    assert smem.register_stores(ttgir) == [
        smem.SharedAccess(-1, (64, 16), "f32", blocked, (1, 1, 1, (0, 1))),
        smem.SharedAccess(-1, (16, 64), "f16", blocked, (4, 2, 4, (1, 0))),
    ]


@compiled_only
def test_stores_are_counted_too():
    """A [64, 16] float32 tile held row by row (16 lanes along a row) stored into a buffer kept
    column by column: the lanes' addresses lie a column (256 bytes) apart, all in one bank, 15
    extra accesses. The staging store of a bf16 chunk of h_{t-1} as the resident kernels make
    it ([16, 64], 8 per thread, into a swizzled buffer): none."""
    rows = ((1, 1), (2, 16), (8, 1), (1, 0))
    assert (
        smem.bank_conflicts(smem.SharedAccess(-1, (64, 16), "f32", rows, (1, 1, 1, (0, 1)))) == 15
    )
    chunk = ((1, 8), (4, 8), (4, 1), (1, 0))
    assert (
        smem.bank_conflicts(smem.SharedAccess(-1, (16, 64), "bf16", chunk, (8, 1, 8, (1, 0)))) == 0
    )
