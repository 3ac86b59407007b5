"""The grid barrier of the cooperative and resident launches (fusedrnn/ops/triton/sync.py),
through its probe kernel (fusedrnn/ops/triton/barrier_probe.py).

The interpreter runs one program per launch, so it checks the probe's arithmetic only; the
barrier's ordering is checked by the instructions a compile for sm_90 emits, and on a GPU
(marked ``gpu``) by grids as large as fit, whose programs pass counts to each other.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

import layer_cases  # noqa: E402
from layer_cases import poisoned_triton_buffers  # noqa: E402, F401
from misc_testlib import compiled_only  # noqa: E402

from fusedrnn import compile_report  # noqa: E402
from fusedrnn.ops.triton import barrier_probe, runtime  # noqa: E402
from fusedrnn.ops.triton.sync import BARRIER_KINDS, COUNTER_LIMIT  # noqa: E402

pytestmark = pytest.mark.usefixtures("poisoned_triton_buffers")


@pytest.mark.skipif(not layer_cases.triton_interpreting(), reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("kind", list(BARRIER_KINDS))
@pytest.mark.parametrize("exchange", [False, True], ids=["barrier", "exchange"])
@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_probe_counts_its_barriers_under_the_interpreter(exchange, n, kind):
    """One program: its count after n barriers is n, through memory or locally (the output
    buffer starts as NaN, so a missing store fails), whatever the kind of barrier."""
    got = barrier_probe.probe(1, n, exchange, torch.device("cpu"), kind)
    assert got.tolist() == [float(n)]


def test_probe_refuses_what_would_hang_or_wrap():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="one program at a time"):
        barrier_probe.probe(2, 3, True, cpu)
    with pytest.raises(ValueError, match="overflow the int32 barrier counter"):
        barrier_probe.probe(4, COUNTER_LIMIT // 4, True, torch.device("cuda"))
    with pytest.raises(ValueError, match="programs must be >= 1"):
        barrier_probe.probe(0, 3, True, cpu)
    with pytest.raises(ValueError, match="unknown barrier kind 'atomic'"):
        barrier_probe.probe(1, 3, True, cpu, "atomic")
    with pytest.raises(ValueError, match="a flags barrier polls at most 1024"):
        barrier_probe.probe(1025, 3, True, torch.device("cuda"), "flags")
    # a flag holds the barrier's number, not a count of arrivals
    with pytest.raises(ValueError, match="overflow the int32 barrier counter"):
        barrier_probe.probe(4, COUNTER_LIMIT, True, torch.device("cuda"), "flags")
    assert barrier_probe.max_programs(cpu) == barrier_probe.max_programs(cpu, "flags") == 1


def _probe_ptx(exchange: bool, kind: str = "counter") -> tuple[str, dict]:
    with runtime.capture_launches() as records:
        barrier_probe.probe(2, 3, exchange, torch.device("cpu"), kind)
    ((kernel, _grid, args, kwargs),) = records
    job = replace(compile_report.job_key(kernel, args, kwargs, "fp32"), arch=90)
    return compile_report.compile_job(job).asm["ptx"], compile_report._compile(job)


@compiled_only
@pytest.mark.parametrize("exchange", [False, True], ids=["barrier", "exchange"])
def test_the_barrier_compiles_to_a_release_arrival_and_acquire_polls(exchange):
    """sm_90: each barrier is one atomic increment with release semantics at GPU scope (after
    a CTA barrier, so every thread's stores come first) and loads with acquire semantics at
    GPU scope while waiting; no other atomic, and no spills. A relaxed increment or poll
    would let a program read a neighbour's values of the round before."""
    ptx, row = _probe_ptx(exchange)
    atomics = re.findall(r"atom\.[\w.]+", ptx)
    assert atomics == ["atom.global.gpu.release.add.u32"], atomics
    polls = re.findall(r"ld\.global\.[\w.]*acquire[\w.]*", ptx)
    assert polls and set(polls) == {"ld.global.gpu.acquire.b32"}, polls
    head = ptx[: ptx.index("atom.global")]
    assert "bar.sync" in head[head.rindex("st.global") if exchange else 0 :]
    assert row["error"] is None and row["spill_st"] == row["spill_ld"] == 0, row


@compiled_only
@pytest.mark.parametrize("exchange", [False, True], ids=["barrier", "exchange"])
def test_the_alternative_barriers_compile_to_relaxed_polls_and_one_acquire(exchange):
    """sm_90, the kinds bench/barrier.py measures beside the launches' one. "relaxed": the same
    release increment, polls by relaxed (volatile) loads and one acquire load. "flags": each
    program's flag written by an exchange with release semantics (no increment), the flags
    polled by relaxed loads, then one acquire fence; no read-modify-write reads a flag. Both
    after a CTA barrier, and without spills."""
    ptx, row = _probe_ptx(exchange, "relaxed")
    assert re.findall(r"atom\.[\w.]+", ptx) == ["atom.global.gpu.release.add.u32"]
    assert re.findall(r"ld\.global\.[\w.]*acquire[\w.]*", ptx) == ["ld.global.gpu.acquire.b32"]
    assert "ld.volatile.global.b32" in ptx
    assert row["error"] is None and row["spill_st"] == row["spill_ld"] == 0, row

    ptx, row = _probe_ptx(exchange, "flags")
    assert re.findall(r"atom\.[\w.]+", ptx) == ["atom.global.gpu.release.exch.b32"]
    assert not re.findall(r"acquire", ptx)
    assert "ld.volatile.global.b32" in ptx and ptx.count("fence.acq_rel.gpu") == 1
    head = ptx[: ptx.index("atom.global")]
    assert "bar.sync" in head[head.rindex("st.global") if exchange else 0 :]
    assert row["error"] is None and row["spill_st"] == row["spill_ld"] == 0, row


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", list(BARRIER_KINDS))
@pytest.mark.parametrize("exchange", [False, True], ids=["barrier", "exchange"])
def test_every_program_passes_every_barrier_on_a_gpu(exchange, kind):
    """As many programs as fit at once, and a few: after n barriers every program holds n."""
    device = torch.device("cuda")
    fit = barrier_probe.max_programs(device, kind)
    assert fit >= torch.cuda.get_device_properties(device).multi_processor_count
    for programs in sorted({2, 3, fit // 2 + 1, fit}):
        for n in (1, 2, 1000):
            got = barrier_probe.probe(programs, n, exchange, device, kind)
            assert got.tolist() == [float(n)] * programs, (programs, n)
