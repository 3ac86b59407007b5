"""The resident launch of the Triton step kernels: each program holds its units' slice of
``W_hh`` on chip for the whole sequence (fusedrnn/ops/triton/step.py).

Its arithmetic is checked with every other path in tests/test_conformance.py (backend
``triton-resident``) and tests/test_triton_backend.py. Here: that the compiler keeps the
weights where the design says (a compile for sm_90, no GPU), and, on a GPU, real layer sizes
against torch.nn and the fallback when a slice does not fit.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

import layer_cases  # noqa: E402
from layer_cases import Case  # noqa: E402
from misc_testlib import compiled_only  # noqa: E402

from fusedrnn import compile_report  # noqa: E402
from fusedrnn.ops.checks import GATES  # noqa: E402


def _resident_jobs(precision: str, H: int) -> dict:
    """``{name: job}`` of the resident launches the compile report names at H, for sm_90."""
    named = compile_report.named_launches([precision], hidden=(H,))
    return {name: replace(job, arch=90) for name, job in named if name.startswith("resident")}


def _model_chains(dtype: str, H: int, proj: int = 0) -> list[float]:
    """The round trips per step, forward and backward, that bench/costmodel.py counts for the
    LSTM's shipped resident launch at B = 16 on an sm_90 GPU (an H100's shared memory per
    program, the compile report's), every phase's barrier included."""
    import costmodel

    (cfg,) = [c for c in costmodel.triton_configs()[0]
              if c.kind == "resident" and c.picked and dtype in c.dtypes]  # fmt: skip
    p = costmodel.plan(cfg, "lstm", B=16, T=4, I=8, H=H, dtype=dtype, training=True,
                       gpu=costmodel.GPUS["H100"], proj=proj)  # fmt: skip
    return [sum(k.chain for k in p.step_fwd), sum(k.chain for k in p.step_bwd)]


def _weight_allocs_before_the_step_loop(ttgir: str) -> int:
    """Shared-memory allocations a kernel makes before its first loop."""
    head = ttgir[: ttgir.index("scf.for")]
    return len(re.findall(r"ttg\.local_alloc", head))


@compiled_only
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("gru", 0), ("rnn_tanh", 0), ("lstm", 128)])
def test_resident_weights_sit_in_shared_memory_before_the_step_loop(cell, proj):
    """Triton writes the weight tiles to shared memory once, before the loop over steps, and
    each step reads them from there (``local_load``), at H = 256 in bf16: forward G gates x
    (256 / 64) chunks of K, backward (G x 256 / 64) chunks. A compiler that reloaded them
    from global memory at every step would leave none before the loop. With proj_size = 128
    the forward's K is 128, G x 2 chunks, and it holds W_hr's rows of 16 outputs too, 256 / 64
    chunks; the backward holds the same G x 256 rows of ``W_hh`` (for 16 of the 128 projected
    units) and W_hr's columns of 16 units, 128 / 64 chunks."""
    G, block_k = GATES[cell], 64  # the half-precision resident config's
    K, size = proj or 256, f"H=256 proj={proj}" if proj else "H=256"
    w_hr = (256 // block_k, proj // block_k)  # W_hr's tiles forward, backward
    jobs = _resident_jobs("bf16", 256)
    fwd = compile_report.compile_job(jobs[f"resident {cell} fwd {size} bf16"])
    bwd = compile_report.compile_job(jobs[f"resident {cell} bwd {size} bf16"])
    assert dict(jobs[f"resident {cell} fwd {size} bf16"].constexprs).get("RESIDENT_PROJ", 0) == (
        w_hr[0] if proj else 0
    )
    tiles = (G * K // block_k + bool(proj) * w_hr[0], G * 256 // block_k + bool(proj) * w_hr[1])
    assert _weight_allocs_before_the_step_loop(fwd.asm["ttgir"]) == tiles[0]
    assert _weight_allocs_before_the_step_loop(bwd.asm["ttgir"]) == tiles[1]
    # the slices are the bulk of the kernel's shared memory, [64, 16] bf16 tiles, then a
    # [16, 64] bf16 staging buffer for each chunk of h_prev (backward: dG; with W_hr the
    # longer of the two phases' left operands) loaded together (all of them here)
    staged = (max(K, bool(proj) * 256), G * 256)
    assert fwd.metadata.shared == (tiles[0] + staged[0] // block_k) * 64 * 16 * 2
    assert bwd.metadata.shared == (tiles[1] + staged[1] // block_k) * 64 * 16 * 2


@compiled_only
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_resident_steps_wait_one_round_trip_per_group(monkeypatch, precision):
    """The LSTM's resident kernels at H = 768 in the sm_90 machine code (fusedrnn.sass): a
    step waits one global round trip per group of chunks of h_{t-1} (backward: dG), its other
    loads travelling with the first group, plus the barrier's two (its arrival's poll and the
    poll loop, walked once), plus, forward, one for its row counts, as bench/costmodel.py
    counts. The groups are the launcher's for sm_90's shared
    memory: bf16 one of 12 chunks forward, three of 16 backward; TF32 12 chunks in groups of 8
    forward, 48 backward, 2 and 6 groups. One chunk at a time a step waits on at least one
    round trip per chunk (forward 12, backward 48), as the kernels did before the groups."""
    from fusedrnn.ops.triton import configs
    from fusedrnn.sass import disassemble, round_trips

    def trips(cap: int) -> tuple[int, int]:
        monkeypatch.setattr(configs, "MAX_LOAD_GROUP", cap)
        jobs = _resident_jobs(precision, 768)
        return tuple(
            round_trips(disassemble(compile_report.compile_job(jobs[name]).asm["cubin"]))
            for name in (f"resident lstm fwd H=768 {precision}",
                         f"resident lstm bwd H=768 {precision}")
        )  # fmt: skip

    groups = {"bf16": (1, 3), "tf32": (2, 6)}[precision]
    grouped = trips(configs.MAX_LOAD_GROUP)
    assert grouped == (groups[0] + 1 + 2, groups[1] + 2)
    assert list(grouped) == _model_chains("bfloat16" if precision == "bf16" else "float32", 768)
    single_fwd, single_bwd = trips(1)
    assert single_fwd >= 12 and single_bwd >= 48, (single_fwd, single_bwd)


@compiled_only
def test_projected_resident_steps_wait_one_round_trip_per_group():
    """With a projection (bf16, H = 768, proj_size = 384, W_hr on chip) each phase of a step
    waits one global round trip per group of its left operand, the tiles it reads travelling
    with the first group, plus the barrier's two; the forward one more for its row counts.
    Forward: the cell's phase one group (6 chunks of h_{t-1}), the projection's one (12
    chunks of m_t) with h_{t-1}'s tile. Backward: the projected state's gradient three groups
    of 16 of dG's 48 chunks, the cell's phase one group (6 chunks of dh_t) with the cell's
    tiles. (Its tiles loaded after the product, the backward waited 14.) The cost model counts
    the same."""
    from fusedrnn.sass import disassemble, round_trips

    jobs = _resident_jobs("bf16", 768)
    trips = [
        round_trips(disassemble(compile_report.compile_job(
            jobs[f"resident lstm {direction} H=768 proj=384 bf16"]).asm["cubin"]))
        for direction in ("fwd", "bwd")
    ]  # fmt: skip
    assert trips == [(1 + 1 + 2) + (1 + 2), (3 + 2) + (1 + 2)]
    assert trips == _model_chains("bfloat16", 768, proj=384)


@compiled_only
def test_w_hr_held_on_chip_where_a_step_waits_no_longer():
    """With a projection the launcher holds ``W_hr`` on chip too where a step then waits no more
    round trips (configs.resident_tries), for sm_90's shared memory (the compile report's launches):
    in bf16 W_hr's slice leaves the load groups as they were, and its product waits one round
    trip for a group instead of one per chunk of K. In float32 at H = 768 the backward's
    slice of W_hh takes 192 KiB: beside W_hr's 24 KiB the 48 chunks of dG would load two at
    a time (24 + 3 round trips against 6 + 6), so it reads W_hr in the K loop."""
    named = dict(compile_report.named_launches(["bf16", "fp32"], hidden=(768,)))

    def held(name: str) -> tuple[int, int]:
        c = dict(named[f"resident lstm {name}"].constexprs)
        return c.get("RESIDENT_PROJ", 0), c["LOAD_GROUP"]

    assert held("fwd H=768 proj=384 bf16") == (768 // 64, 12)
    # the TF32 forward with projection spills resident (step._launch_steps): cooperative
    tf32 = [name for name, _ in compile_report.named_launches(["tf32"], hidden=(768,))]
    assert "cooperative lstm fwd H=768 proj=384 tf32" in tf32
    assert "resident lstm bwd H=768 proj=384 tf32" in tf32
    assert held("bwd H=768 proj=384 bf16") == (384 // 64, 16)
    assert held("fwd H=768 proj=384 fp32") == (768 // 64, 12)
    assert held("bwd H=768 proj=384 fp32") == (0, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "cell,H,B,dtype,proj",
    [
        ("lstm", 768, 16, torch.bfloat16, 0),  # the anchor's layer: 48 programs, 12 chunks of K
        ("gru", 1024, 16, torch.float16, 0),
        ("rnn_tanh", 512, 64, torch.float32, 0),  # four row blocks per column block
        ("lstm", 512, 40, torch.float32, 0),  # a partial row block
        # projected: 64 column blocks forward, 16 backward (programs walk the other phase)
        ("lstm", 1024, 16, torch.bfloat16, 256),
        ("lstm", 512, 20, torch.float32, 200),  # a partial column block of Hout
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_resident_launch_at_real_sizes(cell, H, B, dtype, proj, packed):
    """One resident launch each way at real layer sizes: outputs and every gradient as the
    reference op's in float64 on the same inputs."""
    from fusedrnn.ops import triton as tb

    case = Case(cell, T=6, B=B, I=32, H=H, proj=proj, packed=packed, reverse=packed)
    a = layer_cases.make_inputs(case, dtype, "cuda")
    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 5e-3}[dtype]
    with tb.kernel_path("resident"), tb.launch_counter() as launches:
        layer_cases.compare(tb.layer, a, tol, upcast=torch.float64)
    assert launches.by_kernel == {"_step_fwd_kernel": 1, "_step_bwd_kernel": 1}
    assert launches.not_resident == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("barrier", ["relaxed", "flags"])
@pytest.mark.parametrize(
    "cell,H,B,dtype,proj",
    [
        ("lstm", 768, 16, torch.bfloat16, 0),  # the anchor's layer, as gpu_check times it
        ("gru", 512, 64, torch.float32, 0),  # 128 programs at each barrier
        ("lstm", 1024, 16, torch.bfloat16, 256),  # two barriers a step
    ],
)
def test_resident_launch_with_each_grid_barrier(cell, H, B, dtype, proj, barrier):
    """The resident launch with the grid barriers the launches do not use (bench/paths.py's
    ``--resident-barriers``): outputs and every gradient as the reference op's in float64, and
    bitwise those of the counter's launch (every program writes the same values either way;
    a barrier that let a program read a tile before its step's store would change them)."""
    from fusedrnn.ops import triton as tb
    from fusedrnn.ops.triton import configs

    case = Case(cell, T=6, B=B, I=32, H=H, proj=proj, packed=True)
    a = layer_cases.make_inputs(case, dtype, "cuda")
    tol = {torch.bfloat16: 5e-2, torch.float32: 5e-3}[dtype]
    results = []
    for kind in ("counter", barrier):
        with configs.replaced("resident", barrier=kind), tb.kernel_path("resident"):
            with tb.launch_counter() as launches:
                if kind != "counter":
                    layer_cases.compare(tb.layer, a, tol, upcast=torch.float64)
                outs, grads = layer_cases.outputs_and_grads(tb.layer, a)
        assert launches.not_resident == 0
        results.append([t for t in (*outs, *grads.values()) if t is not None])
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_slice_too_large_for_shared_memory_runs_cooperative():
    """float32 H = 1024: a program's slice (4 x 1024 x 16 x 4 bytes = 256 KiB) exceeds a
    program's shared memory, so each way runs the cooperative launch instead, counted."""
    from fusedrnn.ops import triton as tb

    a = layer_cases.make_inputs(Case("lstm", T=3, B=16, I=8, H=1024), torch.float32, "cuda")
    with tb.kernel_path("resident"), tb.launch_counter() as launches:
        layer_cases.compare(tb.layer, a, 5e-3, upcast=torch.float64)
    assert launches.not_resident == 2
    assert launches.by_kernel == {"_step_fwd_kernel": 1, "_step_bwd_kernel": 1}
