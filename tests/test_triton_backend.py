"""The triton backend: what is particular to it (the comparisons of every case with the
reference op are tests/test_conformance.py, the argument checks tests/test_triton_variants.py).

Without CUDA the kernels run on CPU tensors under the Triton interpreter, chosen before triton
is first imported (``import fusedrnn`` imports it, through torch._dynamo): run this module as
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_backend.py``; without that (and without
CUDA) it skips. With CUDA the same checks run on CUDA tensors (marked ``gpu``). Every buffer the
kernels write is NaN-poisoned first (``layer_cases.poisoned_triton_buffers``).
"""

from __future__ import annotations

import functools
import types

import pytest
import torch

pytest.importorskip("triton")

import layer_cases  # noqa: E402
from layer_cases import Case, call, poisoned_triton_buffers, with_leaves  # noqa: E402, F401
from misc_testlib import needs_interpreter  # noqa: E402
from module_testlib import assert_same, random_state  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fusedrnn  # noqa: E402
from fusedrnn.ops import library  # noqa: E402
from fusedrnn.ops import triton as tb  # noqa: E402
from fusedrnn.ops.checks import CELLS, GATES  # noqa: E402
from fusedrnn.ops.triton.configs import PERSISTENT_CONFIGS  # noqa: E402
from fusedrnn.ops.triton.persistent import PATHS  # noqa: E402

DEVICES = layer_cases.triton_devices() or layer_cases.skip_module_without_triton()
DEVICE = layer_cases.triton_device()  # of the tests that do not run on every device
pytestmark = pytest.mark.usefixtures("poisoned_triton_buffers")

# the largest H of each cell's persistent kernels, which the automatic choice takes up to it
LIMIT = {cell: max(c.max_hidden for c in PERSISTENT_CONFIGS if c.cell == cell) for cell in CELLS}


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize(
    "path,cell,proj,H,T,variants,launches",
    [
        *[("step", cell, 0, 17, 4, False, 4) for cell in CELLS],
        ("step", "lstm", 3, 17, 4, False, 8),
        *[
            (path, cell, 0, 20, 5, False, 1)
            for path in ("cooperative", "persistent")
            for cell in CELLS
        ],
        ("cooperative", "lstm", 7, 20, 5, False, 1),
        # the interpreter runs one program at a time: a resident launch of several column
        # blocks (16 units each) runs a launch per step there
        *[
            ("resident", cell, 0, H, 5, False, 1 if DEVICE == "cuda" or H <= 16 else 5)
            for cell in CELLS
            for H in (16, 20)
        ],
        # with projection: one column block of H forward, of Hout backward
        ("resident", "lstm", 7, 16, 5, False, 1),
        # the variants (layer norm, zoneout) per step: a launch per phase (LSTM with
        # projection: four each way, GRU: two), or one cooperative launch
        ("step", "lstm", 3, 5, 4, True, 16),
        ("step", "gru", 0, 5, 4, True, 8),
        *[(None, cell, 3 * (cell == "lstm"), 5, 4, True, 1) for cell in ("lstm", "gru")],
        *[(None, cell, 0, LIMIT[cell] + d, 2, False, 1) for cell in CELLS for d in (0, 1)],
        (None, "lstm", 4, 8, 2, False, 1),
    ],
)
def test_launch_counts(path, cell, proj, H, T, variants, launches, packed):
    """Per-step kernels: one launch per step forward and backward (two with proj: the
    projection launch forward, the state-gradient launch backward), the variant kernels one
    per phase of a step. Persistent, cooperative and resident kernels: one launch per sequence
    forward and one backward. The automatic choice (path None) takes the persistent kernels
    for small H, for larger H and proj_size the cooperative launch of the step kernels (the
    resident one on a GPU), and for the variants their cooperative launch."""
    options = dict(ln=True, zone="eval") if variants else {}
    case = Case(cell, T=T, B=3, I=3, H=H, proj=proj, packed=packed, reverse=True, **options)
    a = with_leaves(layer_cases.make_inputs(case, torch.float32, DEVICE))
    with tb.kernel_path(path):
        with tb.launch_counter() as fwd:
            y, h, c = call(tb.layer, a)
        with tb.launch_counter() as bwd:
            (y.sum() + h.sum()).backward()
    assert (fwd.total, bwd.total) == (launches, launches)
    persistent = path == "persistent" or path is None and not proj and H <= LIMIT[cell]
    kernel = "_variant_fwd" if variants else "_persistent_fwd" if persistent else "_step_fwd"
    assert f"{kernel}_kernel" in fwd.by_kernel, fwd


@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("gru", 0), ("rnn_tanh", 0), ("lstm", 18)])
def test_resident_load_groups_change_no_bit(cell, proj, monkeypatch):
    """The resident kernels load h_{t-1} (backward: dG) a group of chunks at a time
    (tiles.rec_gates_resident). Every group size gives the same bits, a last group shorter
    than the others included: H = 20 in groups of 1, 2, 3 and all of its chunks (16 wide under
    the interpreter: forward 2, backward 5 for the LSTM, 4 for the GRU, 2 for the RNN); with
    projection, forward the 2 chunks of Hout = 18, and the product with ``W_hr`` held on chip
    in groups of the same size."""
    from fusedrnn.ops.triton import configs, step
    from fusedrnn.ops.triton.configs import pick_resident_config

    case = Case(cell, T=3, B=3, I=3, H=20, proj=proj, packed=True)
    a = layer_cases.make_inputs(case, torch.float32, DEVICE)
    chunks = [-(-K // pick_resident_config(3, 20, "float32", bwd).block_k)
              for bwd, K in ((False, proj or 20), (True, GATES[cell] * 20))]  # fmt: skip
    used, real = [], step.launch_phases

    def spy(kernel, tensors, sizes, flags, *rest):
        used.append(flags["LOAD_GROUP"])
        return real(kernel, tensors, sizes, flags, *rest)

    monkeypatch.setattr(step, "launch_phases", spy)
    results = []
    for group in (1, 2, 3, 64):
        monkeypatch.setattr(configs, "INTERPRETER_LOAD_GROUP", group)  # the interpreter's
        monkeypatch.setattr(configs, "MAX_LOAD_GROUP", group)  # a GPU's
        used.clear()
        with tb.kernel_path("resident"):
            outs, grads = layer_cases.outputs_and_grads(tb.layer, a)
        assert used == [min(group, n) for n in chunks]
        results.append([t for t in (*outs, *grads.values()) if t is not None])
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other, strict=True))


@pytest.mark.parametrize("H,proj,on_chip", [(64, 20, True), (40, 18, False)])
def test_resident_projection_weights_on_chip(H, proj, on_chip, monkeypatch):
    """With a projection the resident launch holds ``W_hr`` on chip too (``RESIDENT_PROJ``)
    where a grid of H's column blocks keeps every program in one column block of each phase:
    H's column blocks a multiple of Hout's (16 wide: 4 and 2 at H = 64, Hout = 20; not at
    H = 40, Hout = 18, 3 and 2, which reads ``W_hr`` from the caches). Outputs and gradients
    as the reference op's, and on chip the same bits as read from the caches (the same
    products in the same order)."""
    from fusedrnn.ops.triton import step
    from fusedrnn.ops.triton.configs import pick_resident_config

    case = Case("lstm", T=3, B=3, I=3, H=H, proj=proj, packed=True, reverse=True)
    a = layer_cases.make_inputs(case, torch.float32, DEVICE)
    seen, real = [], step.launch_phases

    def spy(kernel, tensors, sizes, flags, *rest, drop=False):
        seen.append(flags.get("RESIDENT_PROJ", 0))
        if drop:
            flags = {k: v for k, v in flags.items() if k != "RESIDENT_PROJ"}
        return real(kernel, tensors, sizes, flags, *rest)

    results = []
    for drop in (False, True):
        monkeypatch.setattr(step, "launch_phases", functools.partial(spy, drop=drop))
        with tb.kernel_path("resident"):
            if not drop:
                layer_cases.compare(tb.layer, a, layer_cases.TOL[torch.float32])
            seen.clear()
            outs, grads = layer_cases.outputs_and_grads(tb.layer, a)
        results.append([t for t in (*outs, *grads.values()) if t is not None])
        # forward: W_hr's chunks of H, backward: of Hout
        chunks = [-(-K // pick_resident_config(3, H, "float32", bwd).block_k)
                  for bwd, K in ((False, H), (True, proj))]  # fmt: skip
        assert seen == (chunks if on_chip else [0, 0])
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))


@pytest.mark.parametrize("path,case", [
    ("cooperative", Case("gru", T=3, B=3, I=3, H=20, packed=True)),
    # one column block of 16 units: one cooperative launch under the interpreter too
    ("resident", Case("lstm", T=3, B=3, I=3, H=16, proj=7, reverse=True)),
    ("resident", Case("rnn_tanh", T=3, B=3, I=3, H=16, packed=True)),
    (None, Case("lstm", T=3, B=3, I=3, H=5, proj=3, ln=True, zone="eval")),  # variant kernels
])  # fmt: skip
@pytest.mark.parametrize("barrier", ["relaxed", "flags"])
def test_every_grid_barrier_gives_the_same_bits(path, case, barrier, monkeypatch):
    """The grid barrier's kind (``configs.GRID_BARRIER``, which bench/paths.py replaces to time
    the others) is a compile-time constant of every kernel with a barrier: each launch with
    barriers passes it, with the barrier's state zeroed and sized for it (a flag for each of
    the most programs a FLAGS barrier holds, else one counter), and every output and gradient
    is bitwise the counter's. Under the interpreter a cooperative launch has one program, whose
    barrier returns at once; on a GPU, grids as large as fit (and
    test_triton_resident.py at real sizes)."""
    from fusedrnn.ops.triton import configs, runtime
    from fusedrnn.ops.triton.sync import BARRIER_KINDS, MAX_FLAG_PROGRAMS

    a = layer_cases.make_inputs(case, torch.float32, DEVICE)
    seen, real = [], runtime.launch

    def spy(kernel, grid, *args, **kw):
        if kw.get("SYNC"):  # the variant kernels' SYNC is a run-time argument
            state = args[kernel.arg_names.index("sync_ptr")]
            seen.append((kw.get("BARRIER", 0), state.numel(), int(state.count_nonzero())))
        return real(kernel, grid, *args, **kw)

    monkeypatch.setattr(runtime, "launch", spy)
    results = []
    for kind in ("counter", barrier):
        seen.clear()
        with configs.replaced("cooperative", barrier=kind), tb.kernel_path(path):
            outs, grads = layer_cases.outputs_and_grads(tb.layer, a)
        results.append([t for t in (*outs, *grads.values()) if t is not None])
        code = BARRIER_KINDS[kind]
        words = MAX_FLAG_PROGRAMS.value if kind == "flags" else 1
        assert seen == [(code, words, 0)] * 2, kind  # one launch each way
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))
    with pytest.raises(ValueError, match="unknown barrier kind 'flag'"):
        with configs.replaced("resident", barrier="flag"):
            pass


def test_automatic_path_choice():
    """Nothing to run takes the step kernels; a forced path with what it cannot run raises (the
    choice by H and proj_size: test_launch_counts). Sequences too long for one cooperative
    launch's barrier counter run in several (test_long_sequences_run_in_several_launches)."""
    from fusedrnn.ops.triton.persistent import choose_path
    from fusedrnn.ops.triton.runtime import Plan
    from fusedrnn.ops.triton.variant_step import variant_path

    w = torch.zeros(32, 8)
    assert choose_path("lstm", w, None, Plan(None, 0, 2, False)) == "step"  # nothing to run
    with tb.kernel_path("persistent"), pytest.raises(ValueError, match="proj_size == 0"):
        choose_path("lstm", w, torch.zeros(4, 8), Plan(None, 3, 2, False))
    long = Plan(None, 1_000_000, 4096, False)
    big = torch.zeros(2048, 512)
    assert choose_path("lstm", big, None, long) == "cooperative"  # on CPU tensors
    # on a GPU, W_hh held on chip unless float64 (only the fields read)
    gpu = types.SimpleNamespace(shape=(2048, 512), dtype=torch.bfloat16,
                                device=torch.device("cuda", 1))  # fmt: skip
    assert choose_path("lstm", gpu, None, long) == "resident"
    # with projection where the programs can hold W_hr too: H's 32 column blocks of 16 units
    # a multiple of Hout's 16, not of its 24
    gpu.shape = (2048, 256)
    assert choose_path("lstm", gpu, torch.zeros(256, 512), long) == "resident"
    gpu.shape = (2048, 384)
    assert choose_path("lstm", gpu, torch.zeros(384, 512), long) == "cooperative"
    gpu.dtype = torch.float64
    assert choose_path("lstm", gpu, None, long) == "cooperative"
    # the variant kernels: no persistent or resident kernels
    assert variant_path(Plan(None, 0, 2, False)) == "step"
    assert variant_path(Plan(None, 1_000_000, 4096, False)) == "cooperative"
    for path in ("persistent", "resident"):
        with tb.kernel_path(path), pytest.raises(ValueError, match=f"no {path} path"):
            variant_path(Plan(None, 3, 2, False))


@pytest.mark.parametrize("case", [
    Case("lstm", T=5, B=3, I=3, H=20, proj=3, packed=True, reverse=True),
    Case("gru", T=5, B=3, I=3, H=20, ln=True, zone="h", lengths=(5, 4, 2)),
], ids=str)  # fmt: skip
def test_long_sequences_run_in_several_launches(case, monkeypatch):
    """The int32 barrier counter of a cooperative launch wraps after 2**31 arrivals: a longer
    sequence runs as several launches over consecutive steps, each with a fresh counter (the
    split: step_chunks). Here five steps run two at a time, three launches each way, and the
    results equal a single launch's bit for bit."""
    from fusedrnn.ops.triton import step, sync
    from fusedrnn.ops.triton.sync import step_chunks

    # 2**31 - 1 arrivals: 4,067,203 steps of two barriers for 264 programs
    assert step_chunks(5, 2, 264) == [(0, 5)]
    assert step_chunks(10**7, 2, 264) == [(0, 4067203), (4067203, 8134406), (8134406, 10**7)]
    # a flags barrier raises each program's own flag by one: 2**31 - 1 barriers whatever the grid
    flags = sync.FLAGS.value
    assert step_chunks(10**7, 2, 1024, flags) == [(0, 10**7)]
    assert step_chunks(2**30 + 1, 2, 1024, flags) == [(0, 2**30 - 1), (2**30 - 1, 2**30 + 1)]
    a = layer_cases.make_inputs(case, torch.float64, DEVICE)
    with tb.kernel_path("cooperative"):
        want = layer_cases.outputs_and_grads(tb.layer, a)
        monkeypatch.setattr(step, "step_chunks",
                            lambda T, *_: [(s, min(T, s + 2)) for s in range(0, T, 2)])  # fmt: skip
        with tb.launch_counter() as launches:
            got = layer_cases.outputs_and_grads(tb.layer, a)
    assert launches.total == 6
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_nested_captures_record_into_the_innermost_open_one():
    from fusedrnn.ops.triton import runtime

    kernel = object()  # recorded, never run
    with runtime.capture_launches() as outer:
        with runtime.capture_launches() as inner:
            pass
        runtime.launch(kernel, (1,))
    assert inner == [] and outer == [(kernel, (1,), (), {})]


def test_bench_paths_times_a_resident_config_given(tmp_path, monkeypatch):
    """bench/paths.py's ``--resident-configs`` and ``--resident-barriers`` (run on a GPU; here a
    dry run on the interpreter): the resident launch in the config given, 32-unit column blocks
    here beside the shipped 16, checked against torch.nn first and recorded with its config,
    which bench/calibrate.py reads as a resident point; a config given for another shape is not
    run. The resident launch with a barrier given is recorded with it, and calibrate.py, whose
    model has the counter's cost, leaves it out."""
    import csv

    import calibrate
    import paths

    from fusedrnn.ops.triton import step

    if DEVICE != "cpu":
        pytest.skip("the dry run is for the interpreter (a GPU run times real shapes)")
    widths, real = set(), step.launch_phases

    def spy(kernel, tensors, sizes, flags, plan, cfg, *rest):
        if flags.get("RESIDENT"):
            widths.add(cfg.block_h)
        return real(kernel, tensors, sizes, flags, plan, cfg, *rest)

    monkeypatch.setattr(step, "launch_phases", spy)
    # the second config is for another shape only (SHAPE:config)
    argv = ["--out", str(tmp_path), "--shapes", "tiny", "--device", "cpu", "--rounds", "1",
            "--min-run-time", "0.001", "--resident-configs",
            "16x32x16w4s1,anchor:16x64x16w4s1", "--resident-barriers", "tiny:flags"]  # fmt: skip
    assert paths.main(argv) == 0
    assert widths == {16, 32}
    with open(tmp_path / "paths.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["provider"].startswith("resident")]
    shipped = "16x16x16w8s1/16x16x16w8s1"
    assert [(r["provider"], r["problem"], r["configs"], r["barrier"]) for r in rows] == [
        ("resident", "", shipped, "counter"),
        ("resident 16x32x16w4s1", "", "16x32x16w4s1/16x32x16w4s1", "counter"),
        ("resident barrier=flags", "", shipped, "flags"),
    ] * 2
    points = calibrate.read_paths(tmp_path / "paths.csv", "p")
    blocks = (16, 32, 16, 4, 1)
    assert [(p.kind, p.fwd, p.bwd) for p in points if p.config == "16x32x16w4s1"] == [
        ("resident", blocks, blocks)
    ] * 2
    assert {p.config for p in points if p.kind == "resident"} == {"shipped", "16x32x16w4s1"}


def test_resident_programs():
    """The occupancy arithmetic the cooperative grid is sized by (CUDA's rules: registers
    per warp in units of 256, 1 KB of shared memory reserved per program)."""
    from fusedrnn.ops.triton.sync import grid_for, resident_programs

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
    # more tiles than fit: every program that fits, each walking several tiles (counted)
    with tb.launch_counter() as launches:
        assert (grid_for(300, 264), grid_for(264, 264), grid_for(0, 264)) == (264, 264, 1)
    assert launches.oversubscribed == 1


def test_resident_grid(monkeypatch):
    """A resident launch's grid: a multiple of the column blocks (every tile a program walks,
    pid + k * grid, is in its own column block), at most one program per tile, and none when
    not even one program per column block fits at once (the launcher then runs the cooperative
    launch). Only the GPU's fit is faked here; a torch.device needs no GPU."""
    from fusedrnn.ops.triton import sync

    fit = [0]
    monkeypatch.setattr(sync, "_programs_that_fit", lambda *_: fit[0])
    cuda = torch.device("cuda", 0)
    for programs, col_blocks, row_blocks, grid in (
        (132, 48, 1, 48),  # B=16 H=768, 16-unit blocks: a program per column block
        (132, 32, 4, 128),  # B=64 H=512: four row blocks, each program one tile
        (100, 32, 4, 96),  # three per column block fit: a third of the programs walk two tiles
        (40, 48, 1, 0),  # too few: not resident
    ):
        fit[0] = programs
        assert sync.resident_grid(None, col_blocks, row_blocks, (), {}, cuda) == grid
    # the interpreter runs one program: resident only with one column block
    cpu = torch.device("cpu")
    assert sync.resident_grid(None, 1, 3, (), {}, cpu) == 1
    assert sync.resident_grid(None, 2, 3, (), {}, cpu) == 0


def test_a_flags_barrier_holds_the_grid_to_its_flags(monkeypatch):
    """The programs that fit at once, as the compiled kernel's registers, warps and shared
    memory allow on the GPU, at most MAX_FLAG_PROGRAMS for a kernel whose barrier has a flag per
    program (``BARRIER`` = FLAGS), which polls no more; the other kinds hold any number. The
    compiled kernel and the GPU are faked (a torch.device needs no GPU)."""
    from fusedrnn.ops.triton import sync

    compiled = types.SimpleNamespace(
        hash="fake", n_regs=32, _init_handles=lambda: None,
        metadata=types.SimpleNamespace(shared=0, num_warps=1),
    )  # fmt: skip
    kernel = types.SimpleNamespace(warmup=lambda *args, **kwargs: compiled)
    props = types.SimpleNamespace(multi_processor_count=100, regs_per_multiprocessor=65536,
                                  max_threads_per_multi_processor=2048,
                                  shared_memory_per_multiprocessor=233472)  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(sync, "_fit_cache", {})
    cuda = torch.device("cuda", 0)
    # one warp of 32 registers: 32 programs per SM (the per-SM limit), 3,200 on 100 SMs
    assert sync.resident_programs(32, 0, 1, sms=100) == 3200
    for kind, fit in ((None, 3200), (sync.COUNTER.value, 3200), (sync.RELAXED_POLLS.value, 3200),
                      (sync.FLAGS.value, sync.MAX_FLAG_PROGRAMS.value)):  # fmt: skip
        kwargs = {} if kind is None else {"BARRIER": kind}
        assert sync._programs_that_fit(kernel, (), kwargs, cuda) == fit, kind
        assert sync.cooperative_grid(kernel, 5000, (), kwargs, cuda) == fit, kind
    assert sync.barrier_state(sync.FLAGS.value, "cpu").tolist() == [0] * 1024
    assert sync.barrier_state(sync.COUNTER.value, "cpu").tolist() == [0]


# fp16 under the interpreter, whose tl.dot is right for fp16 and wrong for bf16
HALF = [pytest.param("cpu", torch.float16, id="interpreter-fp16", marks=needs_interpreter)] + [
    pytest.param("cuda", dtype, id=f"cuda-{dtype}".replace("torch.", ""), marks=[
        pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])
    for dtype in (torch.bfloat16, torch.float16)
]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device,dtype", HALF)
@pytest.mark.parametrize("cell", CELLS)
def test_half_precision(cell, device, dtype, path):
    """Half-precision inputs with fp32 accumulation and fp32 cell state vs the float32
    reference on the same (rounded) inputs."""
    a = layer_cases.make_inputs(Case(cell, T=5, B=7, I=5, H=20, packed=True, reverse=True),
                                dtype, device)  # fmt: skip
    with tb.kernel_path(path):
        tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
        layer_cases.compare(tb.layer, a, tol, upcast=torch.float32)


# ---- the modules with backend="triton" against torch.nn ---------------------------------


MODULES = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=3)),
    ("GRU", dict(num_layers=2, bidirectional=True, bias=False)),
    ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "cls,kwargs,lengths",
    [(cls, kw, lengths) for cls, kw in MODULES for lengths in (None, [4, 4, 2, 1])]
    + [(cls, {}, None) for cls in ("LSTMCell", "GRUCell", "RNNCell")],
)
def test_module_matches_torch_nn(rnn_pair, cls, kwargs, lengths, device):
    """Result structure, every output and every gradient (input, state, parameters) as
    torch.nn's; the modules start from a zero state, the cells from a random one."""
    ref, mod = rnn_pair(cls, 3, 7, backend="triton", dtype=torch.float64, device=device, **kwargs)
    cell = cls.endswith("Cell")
    with torch.device(device):
        x = torch.randn(*(() if cell else (4,)), 4, 3, dtype=torch.float64)
        hx = random_state(cls, (4,), 7) if cell else None
    pack = lengths and (lambda x: pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert_same(ref, mod, x, hx, rtol=1e-10, atol=1e-10, pack=pack)


@pytest.mark.parametrize("path,case", [
    ("step", Case("lstm", T=3, B=3, I=3, H=20, proj=6, packed=True)),
    ("cooperative", Case("gru", T=3, B=3, I=3, H=20, reverse=True)),
    ("resident", Case("lstm", T=3, B=3, I=3, H=20)),
    ("resident", Case("lstm", T=3, B=3, I=3, H=20, proj=18, reverse=True)),
    ("persistent", Case("lstm", T=3, B=3, I=3, H=20, packed=True)),
    ("cooperative", Case("lstm", T=3, B=3, I=3, H=20, proj=6, ln=True, peep=True, zone="hc")),
], ids=str)  # fmt: skip
def test_transposed_weights_change_no_bit(path, case, monkeypatch):
    """Where their product is a loop of FMAs (float32 IEEE) the forward kernels read ``W_hh``
    and ``W_hr`` transposed (runtime.weights_transposed), on every path and in the variant
    kernel: the same products in the same order, so every output and gradient keeps its bits
    when the weights are read as they are."""
    from fusedrnn.ops.triton import runtime

    a = layer_cases.make_inputs(case, torch.float32, DEVICE)
    results, used = [], []
    for transposed in (True, False):
        monkeypatch.setattr(runtime, "weights_transposed",
                            lambda dtype, t=transposed: used.append(t) or t)  # fmt: skip
        with tb.kernel_path(path):
            outs, grads = layer_cases.outputs_and_grads(tb.layer, a)
        results.append([t for t in (*outs, *grads.values()) if t is not None])
    assert sorted(set(used)) == [False, True]  # each forward asked
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))


def test_weights_transposed_where_the_product_is_fma():
    from fusedrnn.ops.triton.runtime import weights_transposed

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            assert weights_transposed(torch.float32) is not tf32
            assert not weights_transposed(torch.float64)  # tensor cores
            assert not weights_transposed(torch.bfloat16)
            assert not weights_transposed(torch.float16)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_dot_precision_follows_allow_tf32():
    from fusedrnn.ops.triton.runtime import dot_precision

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            assert dot_precision(torch.float32) == ("tf32" if tf32 else "ieee")
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


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_saved_gates_without_backward(cell, path):
    """save=False (no grad): the kernels skip the gates only a backward reads; the outputs are
    bitwise those of a call that saves them."""
    from fusedrnn.ops.triton.layer_op import layer

    a = layer_cases.make_inputs(Case(cell, T=4, B=3, I=3, H=8, packed=True), torch.float32, DEVICE)
    args = library.LayerArgs(**library.OPTION_DEFAULTS, **a, save=False)
    with tb.kernel_path(path):
        lean = layer.fwd_op(*args)
        full = layer.fwd_op(*args._replace(save=True))
    assert lean[2].numel() == 0 and full[2].numel() == 4 * 3 * 4 * 8
    for k in (0, 1, 4):  # the state histories and the packed output
        assert torch.equal(lean[k], full[k]), k
