"""The benchmark harness (bench/, on sys.path by conftest): run.py --quick, the cost model."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import calibrate
import ceilings
import charlm_speed
import costmodel
import measure
import profile_charlm
import providers as P
import pytest
import run as bench_run
import torch
import variants as bench_variants
from misc_testlib import BENCH, ROOT, csv_rows, needs_cpu, run_python


def _small_run(script: str, out: Path, args: str, holds: str, says: str = ""):
    """``(rows, markdown)`` of a small run of bench/<script>, which must exit 0 and print
    ``says``: one CSV, beside one markdown report whose tables are consistent (every row as
    wide, a header rule) and which holds ``holds``."""
    proc = run_python(BENCH / script, *args.split(), "--out", out, timeout=600, check=True)
    assert says in proc.stdout
    (csv_path,), (md_path,) = out.glob("*.csv"), out.glob("*.md")
    text = md_path.read_text()
    assert holds in text
    for table in (t.splitlines() for t in re.findall(r"(?:^\|.*\n?)+", text, re.MULTILINE)):
        assert len({ln.count("|") for ln in table}) == 1, table
        assert set(table[1].replace("|", "")) <= set("-"), table
    return csv_rows(csv_path), text


def test_quick_run_csv_and_markdown(tmp_path):
    """bench/run.py --quick: a well-formed CSV; consistent markdown tables that show the plots."""
    import matplotlib.image as mpimg

    rows, text = _small_run("run.py", tmp_path, "--quick", "## Headline", "wrote")
    assert list(rows[0]) == bench_run.COLUMNS
    assert {r["provider"] for r in rows} == set(P.all_provider_names("cpu"))
    assert {r["cell"] for r in rows} == set(P.CELLS)
    assert {r["mode"] for r in rows} == set(P.MODES)
    assert not any("triton" in r["provider"] for r in rows), "the interpreter is never timed"
    for r in rows:
        assert r["status"] in ("ok", "skipped", "error"), r
        if r["status"] != "ok":
            assert r["reason"], r
            continue
        med, p20, p80 = (float(r[k]) for k in ("median_ms", "p20_ms", "p80_ms"))
        assert 0 < p20 <= med <= p80, r
        assert int(r["samples"]) >= 1
        assert float(r["speedup_vs_torch_nn"]) > 0
        assert int(r["flops"]) == measure.mode_flops(
            r["mode"], r["cell"], *(int(r[k]) for k in ("B", "T", "I", "H", "layers"))
        )
        assert float(r["max_abs_err_out"]) <= 1e-4
        if r["mode"] == "fwdbwd":
            assert int(r["saved_activation_bytes"]) > 0, r
    # the baseline and the always-present oracle backend are timed everywhere
    for name in (P.TORCH_NN, "fusedrnn[reference]"):
        assert all(r["status"] == "ok" for r in rows if r["provider"] == name)
    assert all(float(r["speedup_vs_torch_nn"]) == 1.0 for r in rows if r["provider"] == P.TORCH_NN)
    # torch.compile is exercised in every mode (or its failure is recorded with a reason)
    comp = [r for r in rows if r["provider"] == P.COMPILE and r["status"] != "skipped"]
    assert {r["mode"] for r in comp} == set(P.MODES)
    assert all(r["first_call_s"] for r in comp if r["status"] == "ok")
    assert text.startswith("# fusedrnn benchmark results")
    for heading in ("## Sweeps", "## torch.compile", "## Memory", "## Plots"):
        assert heading in text
    names = {p.name for p in tmp_path.glob("*.png")}
    assert {"speedup_headline.png", "time_vs_hidden_fwd.png", "time_vs_batch_fwdbwd.png"} <= names
    for name in names:
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(tmp_path / name)
        assert img.shape[0] > 100 and img.shape[1] > 100


def test_graph_replay_dry_run(tmp_path):
    """bench/graph_replay.py's code path on CPU tensors (a stand-in graph that reruns the call):
    every row captured, compared and timed."""
    rows, _ = _small_run("graph_replay.py", tmp_path, "--dry-run --rounds 1", "| fwdbwd |")
    want = [(m, p) for m in ("fwd", "fwdbwd") for p in ("torch.nn", "fusedrnn")]
    assert [(r["mode"], r["provider"][:8]) for r in rows] == want
    for r in rows:
        assert r["capture"] == "ok" and r["replay_vs_eager"] == "bitwise equal", r
        assert float(r["eager_ms"]) > 0 and float(r["replay_ms"]) > 0


def test_graph_replay_turns_the_backends_own_replay_off(monkeypatch):
    """``fusedrnn[cuda] (own replay off)``: the same call with fusedrnn.ops.graphs off while it
    runs (backward included), and the setting restored after."""
    import graph_replay

    from fusedrnn.ops import graphs

    seen = []
    build = P.build

    def watched(name, ref, cfg):
        run, params = build(name, ref, cfg)

        def run_watched(x, state):
            seen.append(graphs.enabled())
            return run(x, state)

        return run_watched, params

    monkeypatch.setattr(P, "build", watched)
    cfg = P.Config("lstm", "fwdbwd", 2, 3, 4, 5, 1, torch.float32, "cpu")
    previous = graphs.set_enabled(True)
    try:
        provider = "fusedrnn[reference]"
        plain = graph_replay.make_call(provider, cfg, "fwdbwd")()
        off = graph_replay.make_call(provider + graph_replay.OWN_REPLAY_OFF, cfg, "fwdbwd")()
        assert graphs.enabled()
    finally:
        graphs.set_enabled(previous)
    # each provider: make_call's own call (it fixes the upstream gradients), then the call
    assert seen == [True, True, True, False]
    assert all(torch.equal(a, b) for a, b in zip(plain, off, strict=True))


def test_correctness_check_catches_a_wrong_provider():
    cfg = P.Config("gru", "fwdbwd", 3, 5, 4, 7, 2, torch.float32, "cpu")
    ref = P.make_reference_module(cfg)
    x, state = P.make_inputs(cfg)
    want = P.evaluate(*P.build(P.TORCH_NN, ref, cfg), x, state, with_grad=True)
    run, params = P.build(P.NAIVE, ref, cfg)
    ok = P.compare(P.evaluate(run, params, x, state, with_grad=True), want, cfg.dtype)
    assert ok[2] == "" and ok[0] < 1e-5 and ok[1] < 1e-5
    with torch.no_grad():
        params[1][0, 0] += 0.1  # layer 0 weight_hh: outputs and gradients move
    bad = P.compare(P.evaluate(run, params, x, state, with_grad=True), want, cfg.dtype)
    assert bad[2].startswith("outputs differ")


def test_a_projected_lstm_is_built_alike_by_every_layer_provider():
    """``proj`` reaches torch.nn and fusedrnn's modules alike (h is [L, B, proj]); the check
    catches a wrong W_hr; the cell loops, which have no projection, refuse it by name."""
    cfg = P.Config("lstm", "fwdbwd", 3, 5, 4, 9, 2, torch.float32, "cpu", proj=5)
    assert "H=9 proj=5 L=2" in cfg.label() and cfg.out_size == 5
    ref = P.make_reference_module(cfg)
    x, state = P.make_inputs(cfg)
    assert state[0].shape == (2, 3, 5) and state[1].shape == (2, 3, 9)
    want = P.evaluate(*P.build(P.TORCH_NN, ref, cfg), x, state, with_grad=True)
    assert want.out[0].shape == (5, 3, 5)
    for name in P.fused_provider_names("cpu") + ["fusedrnn[reference]"]:
        run, params = P.build(name, ref, cfg)
        ok = P.compare(P.evaluate(run, params, x, state, with_grad=True), want, cfg.dtype)
        assert ok[2] == "" and ok[0] < 1e-5 and ok[1] < 1e-5, (name, ok)
        w_hr = dict(zip(dict(ref.named_parameters()), params, strict=True))["weight_hr_l1"]
        with torch.no_grad():
            w_hr[0, 0] += 0.1
        bad = P.compare(P.evaluate(run, params, x, state, with_grad=True), want, cfg.dtype)
        assert bad[2].startswith("outputs differ"), (name, bad)
    for name in (P.NAIVE, P.COMPILE):
        with pytest.raises(ValueError, match="no projection"):
            P.build(name, ref, cfg)


def test_flops_and_the_costmodel_step_cooperative_and_variant_kernels_by_hand():
    # LSTM, I=128, H=256, 2 layers, B=64, T=64: 2·B·T·4H·(I+H) + 2·B·T·4H·(H+H)
    fwd = 2 * 64 * 64 * 1024 * (128 + 256) + 2 * 64 * 64 * 1024 * 512
    assert measure.forward_flops("lstm", 64, 64, 128, 256, 2) == fwd
    assert measure.mode_flops("fwdbwd", "lstm", 64, 64, 128, 256, 2) == 3 * fwd
    assert measure.mode_flops("step", "rnn", 1, 1, 128, 512, 2) == 2 * 512 * 640 + 2 * 512 * 1024
    # the cost model's step kernel of that LSTM's first layer
    cfg = costmodel.KernelConfig(
        "triton", "step", "hand", block_b=64, block_h=32, block_k=16, num_warps=4, num_stages=2
    )
    plan = costmodel.plan(cfg, "lstm", B=64, T=64, I=128, H=256, dtype="float32", training=True)
    (k,) = plan.step_fwd
    assert k.flops == 2 * 64 * 1024 * 256
    w_hh, b_hh = 1024 * 256 * 4, 1024 * 4
    xg, h_prev, h_new = 64 * 1024 * 4, 64 * 256 * 4, 64 * 256 * 4
    c_prev_and_new, saved_gates = 2 * 64 * 256 * 4, 64 * 1024 * 4
    assert k.bytes == w_hh + b_hh + xg + h_prev + h_new + c_prev_and_new + saved_gates == 1839104
    assert k.programs == 8 and k.launches == 1
    # the serial loop: 256 / 16 chunks of K = H forward, 1024 / 16 of K = 4H backward, with
    # one tile in flight (2 stages), plus the step's own load and store round trips
    assert k.chain == 16 + 2
    assert plan.step_bwd[0].chain == 64 + 2
    gpu, share = costmodel.GPUS["H100"], 8 / 132  # 8 programs get 8 of its 132 SMs
    compute, memory = k.flops / (66.9e12 * share), 1839104 / (3.35e12 * 0.9 * share)
    want = max(compute, memory, 18 * 270 / 1.98e9) + 2e-6  # or the chain's latency
    assert math.isclose(costmodel.kernel_time(k, gpu, "float32"), want, rel_tol=1e-12)
    # inference skips the saved gates
    inf = costmodel.plan(cfg, "lstm", B=64, T=64, I=128, H=256, dtype="float32", training=False)
    assert inf.step_fwd[0].bytes == 1839104 - saved_gates
    (gemm,) = plan.once_fwd
    assert gemm.flops == 2 * 64 * 64 * 1024 * 128
    # layer norm: two more phases each way for the LSTM, each a barrier and its own loads and
    # stores (4 round trips); per step, each phase a launch of its own
    coop = costmodel.KernelConfig("triton", "cooperative", "hand", block_b=16, block_h=32,
                                  block_k=32, num_stages=2, bwd=(16, 16, 64, 4, 3))  # fmt: skip
    p = costmodel.plan(coop, "lstm", B=20, T=4, I=8, H=64, dtype="float32", training=True,
                       variant=True)  # fmt: skip
    # forward: 64 / 32 K chunks + 2, the step's barrier (2), two phases (2 x 4)
    assert p.step_fwd[0].chain == 2 + 2 + 2 + 8 and p.step_fwd[0].programs == 2 * 2
    # backward: 256 / 64 chunks over 2 stages in flight + 2, barrier, phases
    assert p.step_bwd[0].chain == 2 + 2 + 2 + 8 and p.step_bwd[0].programs == 2 * 4
    plain = costmodel.plan(coop, "lstm", B=20, T=4, I=8, H=64, dtype="float32", training=True)
    assert p.step_fwd[0].bytes - plain.step_fwd[0].bytes == 20 * (4 * 64 + 64) * 4
    p = costmodel.plan(cfg, "gru", B=20, T=4, I=8, H=64, dtype="float32", training=True,
                       variant=True)  # fmt: skip
    assert (p.step_fwd[0].launches, p.step_fwd[0].chain) == (2, 64 / 16 + 2 + 4)


def test_costmodel_rates_waves_and_chain():
    gpu = costmodel.GPUS["A100"]
    big = costmodel.Kernel("k", flops=1e12, bytes=0.0, programs=10**6)
    for dtype, prec, rate in [("float32", "ieee", 19.5e12), ("float32", "tf32", 156e12),
                              ("bfloat16", "ieee", 312e12), ("float16", "tf32", 312e12)]:  # fmt: skip
        want = 1e12 / rate + 2e-6
        assert math.isclose(costmodel.kernel_time(big, gpu, dtype, prec), want, rel_tol=1e-12)
    # 4-warp programs: 16 fit on an SM (64 warps), so 108 * 16 + 1 programs take two waves
    k = costmodel.Kernel("k", 0.0, 0.0, programs=108 * 16 + 1, chain=10, warps=4)
    assert costmodel.waves(k, gpu) == 2
    want = 2 * 10 * 270 / 1.41e9 + 2e-6
    assert math.isclose(costmodel.kernel_time(k, gpu, "float32"), want, rel_tol=1e-12)
    assert costmodel.chain_length(3072, 16, 2) == 192 + 2
    assert costmodel.chain_length(100, 32, 4) == 4 / 3 + 2
    # a persistent step's product runs on its own SM
    p = costmodel.Kernel("p", flops=2e9, bytes=0.0, programs=2, launches=0, rate_per_sm=True)
    assert math.isclose(costmodel.kernel_time(p, gpu, "bfloat16"), 1e9 / (312e12 / 108))


def test_costmodel_cooperative_by_hand():
    cfg = costmodel.KernelConfig(
        "triton", "cooperative", "hand", block_b=16, block_h=16, block_k=64, num_warps=4,
        num_stages=3, dtypes=("bfloat16",), bwd=(16, 16, 128, 4, 3),
        persistent_up_to=(("gru", 32), ("lstm", 32), ("rnn", 64)),
    )  # fmt: skip
    p = costmodel.plan(cfg, "lstm", B=32, T=10, I=8, H=768, dtype="bfloat16", training=True)
    (f,), (b,) = p.step_fwd, p.step_bwd
    # 2 row blocks x 48 unit blocks; W_hh from L2 by each row block, not from HBM
    assert f.programs == b.programs == 96 and f.launches == b.launches == 0
    assert f.l2_bytes == 2 * 4 * 768 * 768 * 2
    # forward: 768 / 64 chunks, 2 in flight, + the step's round trips + the barrier's 2
    assert f.chain == 12 / 2 + 2 + 2
    assert b.chain == 3072 / 128 / 2 + 2 + 2
    # 255 registers x 32 threads round up to 8,192 per warp: 2 programs of 4 warps per SM
    assert f.per_sm == 2
    gpu = costmodel.GPUS["H100"]
    assert costmodel.waves(f, gpu) == 1
    assert costmodel.waves(costmodel.Kernel("k", 0, 0, 265, per_sm=2), gpu) == 2
    # one launch each way besides the GEMMs
    assert sum(k.launches for k in p.once_fwd) == 2
    pred = costmodel.predict(cfg, gpu, "lstm", 32, 10, 8, 768, 1, "bfloat16")
    assert pred.launches_seq_fwd == 2 and pred.launches_seq_fwdbwd == 2 + 1 + 3
    assert costmodel.applicable(cfg, "lstm", 32, 768, dtype="bfloat16")
    assert not costmodel.applicable(cfg, "lstm", 32, 768, dtype="float32")
    assert not costmodel.applicable(cfg, "lstm", 32, 32, dtype="bfloat16")  # persistent range


def _resident(dtypes=("bfloat16", "float16"), warps=4, grouped=True):
    """A resident config written out (the shipped ones are 16x16x64, one stage), loading its
    A operand in the launcher's groups of chunks, or (``grouped=False``) a chunk at a time."""
    from fusedrnn.ops.triton.configs import resident_load_group

    return costmodel.KernelConfig(
        "triton", "resident", "hand", block_b=16, block_h=16, block_k=64, num_warps=warps,
        num_stages=1, dtypes=dtypes, bwd=(16, 16, 64, warps, 1),
        persistent_up_to=(("gru", 32), ("lstm", 32), ("rnn", 64)),
        load_group=resident_load_group if grouped else None,
    )  # fmt: skip


def test_costmodel_resident_by_hand():
    cfg, h100 = _resident(), costmodel.GPUS["H100"]
    # the anchor: LSTM B=16 T=1024 I=768 H=768 bf16
    p = costmodel.plan(cfg, "lstm", B=16, T=1024, I=768, H=768, dtype="bfloat16",
                       training=True, gpu=h100)  # fmt: skip
    (f,), (b,), load = p.step_fwd, p.step_bwd, p.once_fwd[-1]
    # 768 / 16 = 48 column blocks, one row block: a program each, no tile walked twice
    assert f.programs == b.programs == load.programs == 48
    # shared memory: the slice 4 gates x 768 x 16 units x 2 bytes = 98,304, and a buffer of
    # 16 x 64 x 2 = 2,048 for each chunk loaded together: forward all 12 (122,880 in all),
    # backward 16 of its 48 (the most a group takes; 131,072): one program per SM (233,472 //
    # 123,904 and // 132,096); registers 255 x 32 -> 8,192 per warp x 4 warps: 65,536 //
    # 32,768 = 2 per SM
    assert f.per_sm == b.per_sm == 1
    # no launch per step; the launch (W_hh from HBM once, 4 x 768 x 768 x 2 bytes) is one
    assert f.launches == b.launches == 0 and load.launches == 1
    assert load.bytes == 4_718_592 and load.l2_bytes == 0
    assert p.once_bwd[0].bytes == 4_718_592 and p.once_bwd[0].launches == 1
    # L2: no W_hh; the A operand, every column block all 16 rows: K = 768 fwd, 3,072 bwd
    assert f.l2_bytes == 48 * 16 * 768 * 2 == 1_179_648
    assert b.l2_bytes == 48 * 16 * 3072 * 2 == 4_718_592
    # one round trip for each group of A chunks (the step's other loads travel with the
    # first), the forward's row counts, the barrier's two: forward one group of 12 chunks,
    # backward three of 16
    assert (f.chain, b.chain) == (1 + 1 + 2, 3 + 2)
    # a chunk at a time: a round trip each, one buffer, two programs per SM (100,352 bytes)
    single = costmodel.plan(_resident(grouped=False), "lstm", B=16, T=1024, I=768, H=768,
                            dtype="bfloat16", training=True, gpu=h100)  # fmt: skip
    (sf,), (sb,) = single.step_fwd, single.step_bwd
    assert (sf.chain, sb.chain, sf.per_sm) == (12 + 1 + 2, 48 + 2, 2)
    # inference: b_hh 3,072 x 2, and per row xg 3,072 x 2, h_{t-1} and h_t 768 x 2 each, c_{t-1}
    # and c_t 768 x 4 each: 6,144 + 16 x 15,360 = 251,904 bytes
    inf = costmodel.plan(cfg, "lstm", B=16, T=1024, I=768, H=768, dtype="bfloat16",
                         training=False, gpu=h100)  # fmt: skip
    (step,), load = inf.step_fwd, inf.once_fwd[-1]
    assert step.bytes == 251_904
    share = 48 / 132
    compute = 2 * 16 * 3072 * 768 / (989.4e12 * share)  # 0.21 µs
    memory = 251_904 / (3.35e12 * 0.9 * share)  # 0.23 µs
    latency = 4 * 270 / 1.98e9  # 0.55 µs: the chain decides
    step_s = max(compute, memory, latency)
    assert math.isclose(costmodel.kernel_time(step, h100, "bfloat16"), step_s, rel_tol=1e-12)
    # the sequence: input GEMM [16,384 x 768] x [768 x 3,072] (compute-bound, 78 µs), the
    # launch loading W_hh (4.3 µs), 1,024 steps: 0.645 ms
    gemm_flops, gemm_bytes = 2 * 16384 * 3072 * 768, (16384 * 768 + 768 * 3072 + 16384 * 3072) * 2
    gemm_s = max(gemm_flops / 989.4e12, gemm_bytes / (3.35e12 * 0.9)) + 2e-6
    load_s = 4_718_592 / (3.35e12 * 0.9 * share) + 2e-6
    pred = costmodel.predict(cfg, h100, "lstm", 16, 1024, 768, 768, 1, "bfloat16")
    assert math.isclose(pred.gpu_fwd_s, gemm_s + load_s + 1024 * step_s, rel_tol=1e-12)
    assert 0.644e-3 < pred.gpu_fwd_s < 0.646e-3
    assert (pred.launches_step_fwd, pred.launches_step_bwd) == (0, 0)
    # a launch each way besides the GEMMs: input GEMM + launch; + launch + 3 weight GEMMs
    assert pred.launches_seq_fwd == 2 and pred.launches_seq_fwdbwd == 2 + 1 + 3
    assert pred.fwd_s == max(pred.gpu_fwd_s, 2 * 20e-6) + 20e-6

    # B=192: 12 row blocks. One program per SM (122,880 bytes): 132 // 48 = 2 per column block,
    # 96 programs walking 6 tiles a step, each tile one group: 6 round trips, the row counts' 1,
    # the barrier's 2
    big = costmodel.plan(cfg, "lstm", B=192, T=4, I=8, H=768, dtype="bfloat16", training=False,
                         gpu=h100)  # fmt: skip
    assert big.step_fwd[0].programs == 96 and big.step_fwd[0].chain == 6 * 1 + 1 + 2
    # the grid arithmetic, a chunk at a time (one 2,048-byte buffer). H100: 132 x 2 = 264
    # programs fit, 264 // 48 = 5 per column block: 240 programs walk ceil(12 / 5) = 3 tiles
    # a step of 12 round trips each, the row counts and the barrier once
    cfg = _resident(grouped=False)
    big = costmodel.plan(cfg, "lstm", B=192, T=4, I=8, H=768, dtype="bfloat16", training=False,
                         gpu=h100)  # fmt: skip
    (f,), load = big.step_fwd, big.once_fwd[-1]
    assert f.programs == 240 and f.chain == 3 * 12 + 1 + 2
    assert load.bytes == 4_718_592 and load.l2_bytes == 4 * 4_718_592  # 4 more copies
    # A100: 167,936 // 101,376 = 1 per SM, 108 fit, 108 // 48 = 2 per column block: 96
    # programs, 6 tiles each
    big = costmodel.plan(cfg, "lstm", B=192, T=4, I=8, H=768, dtype="bfloat16", training=False,
                         gpu=costmodel.GPUS["A100"])  # fmt: skip
    assert big.step_fwd[0].programs == 96 and big.step_fwd[0].chain == 6 * 12 + 1 + 2
    # H=896: 4 x 896 x 16 x 2 + 2,048 = 116,736 bytes, two with their 1,024 reserved are
    # 235,520 > 233,472: one per SM, 132 // 56 column blocks = 2 of B=64's 4 row blocks
    p = costmodel.plan(cfg, "lstm", B=64, T=4, I=8, H=896, dtype="bfloat16", training=False,
                       gpu=h100)  # fmt: skip
    assert p.step_fwd[0].per_sm == 1 and p.step_fwd[0].programs == 112
    assert p.step_fwd[0].chain == 2 * 14 + 1 + 2  # 14 chunks, a round trip each, 2 walks
    # H=256: 4 x 256 x 16 x 2 + 2,048 = 34,816 bytes, 233,472 // 35,840 = 6 per SM, but the
    # registers hold 2
    p = costmodel.plan(cfg, "lstm", B=64, T=4, I=8, H=256, dtype="bfloat16", training=False,
                       gpu=h100)  # fmt: skip
    assert p.step_fwd[0].per_sm == 2


def test_costmodel_resident_where_its_slices_fit():
    half, f32 = _resident(), _resident(("float32",), warps=8)
    h100, a100 = costmodel.GPUS["H100"], costmodel.GPUS["A100"]
    for gpu in (None, h100, a100):  # 100,352 bytes of shared memory: fits 163 and 227 KiB
        assert costmodel.applicable(half, "lstm", 16, 768, dtype="bfloat16", gpu=gpu)
    assert not costmodel.applicable(half, "lstm", 16, 768, variant=True, dtype="bfloat16")
    assert not costmodel.applicable(half, "lstm", 16, 768, dtype="float32")
    assert not costmodel.applicable(half, "lstm", 16, 32, dtype="bfloat16")  # persistent range
    # float32 H=768: 4 x 768 x 16 x 4 + 16 x 64 x 4 = 200,704 bytes: under 227 KiB (232,448),
    # over 163 KiB (166,912)
    assert costmodel.applicable(f32, "lstm", 16, 768, dtype="float32", gpu=h100)
    assert not costmodel.applicable(f32, "lstm", 16, 768, dtype="float32", gpu=a100)
    # float32 H=896: the slice 4 x 896 x 16 x 4 = 229,376 bytes would fit, but not with its
    # buffer 16 x 64 x 4 = 4,096 (233,472)
    assert not costmodel.applicable(f32, "lstm", 16, 896, dtype="float32", gpu=h100)
    # H=880: the forward's K in whole chunks of 64 is 896 again
    assert not costmodel.applicable(f32, "lstm", 16, 880, dtype="float32", gpu=h100)
    # H=832: 4 x 832 x 16 x 4 + 4,096 = 217,088
    assert costmodel.applicable(f32, "lstm", 16, 832, dtype="float32", gpu=h100)
    # float32 H=1024: 4 x 1024 x 16 x 4 = 262,144 bytes of slice alone
    assert not costmodel.applicable(f32, "lstm", 16, 1024, dtype="float32", gpu=h100)
    # where it does not fit, the cooperative launch is the one the launcher runs
    coop = costmodel.KernelConfig(
        "triton", "cooperative", "hand", block_b=16, block_h=32, block_k=16, num_stages=2,
        dtypes=("float32",), bwd=(16, 16, 64, 4, 3), persistent_up_to=f32.persistent_up_to,
    )  # fmt: skip
    cuda, _ = costmodel.cuda_config()
    for gpu, want in ((h100, f32), (a100, coop)):
        chosen = [c for c in (coop, f32, cuda)
                  if costmodel.applicable(c, "lstm", 16, 768, dtype="float32", gpu=gpu)]  # fmt: skip
        assert costmodel.automatic_path(chosen) is want


def test_costmodel_projected_resident_by_hand():
    """The anchor with proj_size = 384 in bf16 on an H100: each step two phases, each ending at
    its barrier; W_hr's slices held on chip too (configs.resident_tries), so each phase waits
    a round trip per group."""
    cfg, h100 = _resident(), costmodel.GPUS["H100"]
    fwd, bwd = (costmodel.resident_layout(cfg, "lstm", 16, 768, 2, h100, backward, proj=384)
                for backward in (False, True))  # fmt: skip
    # forward: W_hh's 4 gates x 384 / 64 = 24 tiles [64, 16] and W_hr's 768 / 64 = 12, then 12
    # [16, 64] buffers (the longer operand, m_t: 12 chunks; h_{t-1} has 6): 98,304 bytes, two
    # per SM; a program per column block of H (48), each walking one tile per phase
    assert (fwd.proj_chunks, fwd.groups, fwd.proj_groups) == (12, 1, 1)
    assert (fwd.slice_bytes, fwd.smem, fwd.per_sm) == (36 * 2048, 48 * 2048, 2)
    assert (fwd.programs, fwd.walks, fwd.proj_walks) == (48, 1, 1)
    # backward: W_hh's 3,072 / 64 = 48 tiles and W_hr's 384 / 64 = 6, 16 buffers: dG's 48
    # chunks in three groups, dh_t's 6 in one; 48 programs (H's column blocks) for the 24 of
    # Hout: each walks one tile of either phase
    assert (bwd.proj_chunks, bwd.groups, bwd.proj_groups) == (6, 3, 1)
    assert (bwd.smem, bwd.per_sm, bwd.col_blocks, bwd.programs) == (70 * 2048, 1, 48, 48)
    assert (bwd.walks, bwd.proj_walks) == (1, 1)
    p = costmodel.plan(cfg, "lstm", B=16, T=1024, I=768, H=768, dtype="bfloat16", training=True,
                       gpu=h100, proj=384)  # fmt: skip
    # forward: the cell's group + its row counts + the barrier, the projection's group + its
    # barrier; backward: dG's three groups + the barrier, dh_t's group + the barrier
    assert [k.chain for k in p.step_fwd] == [1 + 1 + 2, 1 + 2]
    assert [k.chain for k in p.step_bwd] == [3 + 2, 1 + 2]
    assert all((k.barriers, k.launches) == (1, 0) for k in p.step_fwd + p.step_bwd)
    assert [k.backward for k in p.step_bwd] == [True, True]
    # W_hh is [3,072, 384]: the cell's product 2 x 16 x 3,072 x 384, the projection's
    # 2 x 16 x 768 x 384, the same two each way
    rec, proj = 2 * 16 * 3072 * 384, 2 * 16 * 768 * 384
    assert [k.flops for k in p.step_fwd] == [rec, proj]
    assert [k.flops for k in p.step_bwd] == [rec, proj]
    # the launch loads W_hh (3,072 x 384 x 2 bytes) and W_hr (384 x 768 x 2) from HBM; the
    # 48 programs hold W_hr's 24 slices forward twice over, W_hh's 24 backward
    w_hh, w_hr = 3072 * 384 * 2, 384 * 768 * 2
    load_f, load_b = p.once_fwd[-1], p.once_bwd[0]
    assert load_f.bytes == load_b.bytes == w_hh + w_hr
    assert (load_f.l2_bytes, load_b.l2_bytes) == (w_hr, w_hh)
    # the A operands from L2, every column block all 16 rows: h_{t-1} (384) for 48 blocks, m_t
    # (768) for 24; backward dG (3,072) for 24, dh_t (384) for 48
    assert [k.l2_bytes for k in p.step_fwd] == [48 * 16 * 384 * 2, 24 * 16 * 768 * 2]
    assert [k.l2_bytes for k in p.step_bwd] == [24 * 16 * 3072 * 2, 48 * 16 * 384 * 2]
    # dW_hr after the loop: [384, 768] over T x B rows
    assert p.once_bwd[-1].name == "dW_hr GEMM"
    assert p.once_bwd[-1].flops == 2 * 384 * 768 * 16 * 1024
    assert p.once_bwd[1].flops == 2 * 3072 * 384 * 16 * 1024  # dW_hh: [3,072, 384]

    # float32: the backward's W_hh slice (192 KiB) leaves W_hr's 24 KiB no room beside
    # groups worth it: W_hr read in the K loop, and the grid a program per column block of
    # Hout (24), so each walks two of the cell phase's 48 tiles, each 6 chunks of dh_t a
    # round trip and the tile's loads and stores (chain_length), then the barrier
    f32 = _resident(("float32",), warps=8)
    lay = costmodel.resident_layout(f32, "lstm", 16, 768, 4, h100, True, proj=384)
    assert (lay.proj_chunks, lay.programs, lay.walks, lay.proj_walks) == (0, 24, 1, 2)
    p = costmodel.plan(f32, "lstm", B=16, T=4, I=8, H=768, dtype="float32", training=True,
                       gpu=h100, proj=384)  # fmt: skip
    assert [k.chain for k in p.step_bwd] == [48 / 8 + 2, 2 * (6 + 2) + 2]
    assert p.once_bwd[0].bytes == 3072 * 384 * 4  # W_hh alone
    # float32 H=1024 proj=512: the backward's W_hh slice alone is 256 KiB
    assert costmodel.applicable(f32, "lstm", 16, 1024, dtype="float32", proj=0) is False
    assert not costmodel.applicable(f32, "lstm", 16, 1024, dtype="float32", gpu=h100, proj=512)
    assert costmodel.applicable(f32, "lstm", 16, 768, dtype="float32", gpu=h100, proj=384)


def test_costmodel_projected_step_cooperative_and_cuda_by_hand():
    step = costmodel.KernelConfig("triton", "step", "hand", block_b=16, block_h=32, block_k=16,
                                  num_warps=4, num_stages=2)  # fmt: skip
    p = costmodel.plan(step, "lstm", B=20, T=4, I=8, H=64, dtype="float32", training=True,
                       proj=48)  # fmt: skip
    # per step a launch per phase: forward the cell (K = 48: 3 chunks over one tile in flight,
    # + 2) on 2 x 2 tiles, the projection (K = 64) on 2 x 2; backward the projected state's
    # gradient (K = 256) on 2 x 2, the cell's (K = 48) on 2 x 2
    assert [(k.launches, k.chain, k.programs) for k in p.step_fwd] == [(1, 3 + 2, 4), (1, 4 + 2, 4)]
    assert [(k.launches, k.chain) for k in p.step_bwd] == [(1, 16 + 2), (1, 3 + 2)]
    # the weights each phase reads: W_hh [256, 48] with b_hh; W_hr [48, 64]
    assert p.step_fwd[1].bytes == 48 * 64 * 4 + 20 * (64 + 2 * 48) * 4
    assert p.step_fwd[0].l2_bytes == 256 * 48 * 4 and p.step_fwd[1].l2_bytes == 48 * 64 * 4
    # the cooperative forward runs the projection's own config (16 x 32 x 16, 8 warps, 2
    # stages); its grid covers the widest phase, and all of it meets at each barrier
    coop = costmodel.KernelConfig(
        "triton", "cooperative", "hand", block_b=16, block_h=16, block_k=64, num_stages=3,
        bwd=(16, 16, 128, 4, 3), proj_fwd=(16, 32, 16, 8, 2),
    )  # fmt: skip
    p = costmodel.plan(coop, "lstm", B=20, T=4, I=8, H=128, dtype="float32", training=True,
                       proj=64)  # fmt: skip
    assert [(k.programs, k.meeting, k.warps, k.chain) for k in p.step_fwd] == [
        (2 * 4, 8, 8, 64 / 16 + 2 + 2), (2 * 2, 8, 8, 128 / 16 + 2 + 2)
    ]  # fmt: skip
    assert [(k.programs, k.meeting, k.chain) for k in p.step_bwd] == [
        (2 * 4, 16, 512 / 128 / 2 + 2 + 2), (2 * 8, 16, 1 / 2 + 2 + 2)  # K = 64: one chunk
    ]  # fmt: skip
    # calibrated: the 4 programs of the projection's phase wait for the grid's 8
    cal, h200 = _cal(), costmodel.GPUS["H200"]
    k = p.step_fwd[1]
    want = max(k.flops / (66.9e12 * 0.05 * 4 / 132), k.bytes / (4.8e12 * 0.9 * 4 / 132),
               (k.chain - 2) * 300e-9) + 5e-6 + 8 * 40e-9  # fmt: skip
    assert math.isclose(costmodel.kernel_time(k, h200, "float32", cal=cal), want, rel_tol=1e-12)
    # the resident launch's TF32 forward with projection runs cooperative (it spills resident)
    res = dataclasses.replace(_resident(("float32",), warps=8), proj_fwd=(16, 32, 16, 8, 2))
    tf32 = costmodel.plan(res, "lstm", B=16, T=4, I=8, H=768, dtype="float32", training=True,
                          proj=384, precision="tf32")  # fmt: skip
    ieee = costmodel.plan(res, "lstm", B=16, T=4, I=8, H=768, dtype="float32", training=True,
                          proj=384)  # fmt: skip
    assert [k.name for k in tf32.step_fwd] == ["cooperative step", "cooperative step (projection)"]
    assert tf32.once_fwd[-1].name == "cooperative launch"
    assert [k.name for k in ieee.step_fwd] == ["resident step", "resident step (projection)"]
    assert tf32.step_bwd == ieee.step_bwd
    with pytest.raises(ValueError, match="only the LSTM projects"):
        costmodel.plan(coop, "gru", B=20, T=4, I=8, H=128, dtype="float32", training=True,
                       proj=64)  # fmt: skip

    # the cuda backend: a projection GEMM and an element-wise kernel more each way, and in
    # bf16 the cast of the GEMM's operand; the replayed call copies W_hr in and, training,
    # the unprojected outputs out (and their gradients)
    cuda, _ = costmodel.cuda_config()
    for dtype, fwd_launches in (("bfloat16", 5), ("float32", 4)):
        p = costmodel.predict(cuda, costmodel.GPUS["H100"], "lstm", 16, 10, 8, 64, 2, dtype,
                              proj=32)  # fmt: skip
        assert (p.launches_step_fwd, p.launches_step_bwd) == (fwd_launches, 4)
    fwd, bwd = costmodel.graph_copies("lstm", 16, 10, 8, 64, "float32", training=True, proj=32)
    # in: x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr; out: y, h_n, c_n, the gates, h_{t-1}, m_t
    assert (fwd.launches, bwd.launches) == (8 + 6, 8 + 6 + 3 + 8)
    ins = (160 * 8 + 16 * 32 + 16 * 64 + 256 * (8 + 32) + 2 * 256 + 32 * 64) * 4
    outs = (160 * 32 + 16 * 32 + 16 * 64) * 4 + 160 * (7 * 64 * 4 + 32 * 4 + 64 * 4)
    assert fwd.bytes == 2 * (ins + outs)
    # two layers: the second reads the first's 32-wide output
    p = costmodel.plan(step, "lstm", B=16, T=10, I=32, H=64, dtype="float32", training=False,
                       proj=32)  # fmt: skip
    pred = costmodel.predict(step, costmodel.GPUS["H100"], "lstm", 16, 10, 8, 64, 2, "float32",
                             proj=32)  # fmt: skip
    first = costmodel.predict(step, costmodel.GPUS["H100"], "lstm", 16, 10, 8, 64, 1, "float32",
                              proj=32)  # fmt: skip
    h100 = costmodel.GPUS["H100"]
    layer2 = sum(costmodel.kernel_time(k, h100, "float32") for k in p.once_fwd)
    layer2 += 10 * sum(costmodel.kernel_time(k, h100, "float32") for k in p.step_fwd)
    assert math.isclose(pred.gpu_fwd_s, first.gpu_fwd_s + layer2, rel_tol=1e-12)
    assert p.once_fwd[0].flops == 2 * 160 * 256 * 32
    # no persistent kernel projects
    small = costmodel.KernelConfig("triton", "persistent", "hand", block_b=16, block_h=32,
                                   max_hidden=32, cell="lstm")  # fmt: skip
    assert costmodel.applicable(small, "lstm", 16, 32)
    assert not costmodel.applicable(small, "lstm", 16, 32, proj=16)


def test_costmodel_host_time_is_part_of_the_prediction():
    cuda, _ = costmodel.cuda_config()
    eager = dataclasses.replace(cuda, replayed=False)  # every launch issued by the host
    host = costmodel.HOST_LAUNCH_S["cuda"]
    p = costmodel.predict(eager, costmodel.GPUS["A100"], "gru", 16, 100, 32, 64, 2, "bfloat16")
    # per layer: input GEMM + T x (GEMM + pointwise); backward adds T x 2 and three GEMMs
    assert p.launches_seq_fwd == 2 * (1 + 100 * 2)
    assert p.launches_seq_fwdbwd == 2 * (1 + 100 * 2 + 100 * 2 + 3)
    assert p.host_fwd_s == p.launches_seq_fwd * host
    assert p.fwd_s == max(p.gpu_fwd_s, p.host_fwd_s) + host
    assert p.fwdbwd_s == max(p.gpu_fwdbwd_s, p.host_fwdbwd_s) + host
    assert p.gpu_fwd_s > 0 and p.gpu_fwdbwd_s > p.gpu_fwd_s
    assert costmodel.wall_time(1.0, 3.0, 0.5) == costmodel.wall_time(3.0, 1.0, 0.5) == 3.5


def test_costmodel_replayed_layer_call_by_hand():
    """The cuda backend's replayed call (fusedrnn/ops/graphs.py): the host issues only the
    copies in and out and the replay; the GPU runs the copies besides the loop."""
    cuda, _ = costmodel.cuda_config()
    assert cuda.replayed
    host = costmodel.HOST_LAUNCH_S["cuda"]
    fwd, bwd = costmodel.graph_copies("gru", 16, 100, 32, 64, "bfloat16", training=False)
    # in: x [1600, 32], h0 [16, 64], W_ih [192, 32], W_hh [192, 64], b_ih, b_hh [192] (bf16);
    # out: y [1600, 64], h_n [16, 64]
    ins = (1600 * 32 + 16 * 64 + 192 * 96 + 2 * 192) * 2
    outs = (1600 * 64 + 16 * 64) * 2
    assert (fwd.bytes, fwd.launches, bwd.launches) == (2 * (ins + outs), 6 + 2, 0)
    fwd, bwd = costmodel.graph_copies("gru", 16, 100, 32, 64, "bfloat16", training=True)
    saved = 1600 * (4 * 64 * 4 + 64 * 2)  # the GRU's four gate blocks (float32), h_{t-1}
    grads = (1600 * 64 + 16 * 64) * 2  # dy, dh_n
    assert (fwd.bytes, fwd.launches) == (2 * (ins + outs + saved), 6 + 4)
    assert (bwd.bytes, bwd.launches) == (2 * (2 * ins + outs + saved + grads), 6 + 4 + 2 + 6)

    p = costmodel.predict(cuda, costmodel.GPUS["A100"], "gru", 16, 100, 32, 64, 2, "bfloat16")
    # GPU launches: the copies join the input GEMM and the T x 2 launches of each layer
    assert p.launches_seq_fwd == 2 * (8 + 1 + 100 * 2)
    assert p.launches_seq_fwdbwd == 2 * (10 + 1 + 100 * 2 + 100 * 2 + 18 + 3)
    # host: the copies and one replay per layer call; layer 2's input is 64 wide, same counts
    assert p.host_fwd_s == pytest.approx(2 * (8 + 1) * host)
    assert p.host_fwdbwd_s == pytest.approx(2 * (10 + 1 + 18 + 1) * host)
    assert p.fwd_s == max(p.gpu_fwd_s, p.host_fwd_s) + host
    eager = costmodel.predict(dataclasses.replace(cuda, replayed=False), costmodel.GPUS["A100"],
                              "gru", 16, 100, 32, 64, 2, "bfloat16")  # fmt: skip
    assert p.gpu_fwd_s > eager.gpu_fwd_s  # the copies' bytes and launches


def _cal(**kw):
    fields = dict(gpu="H200", round_trip_s=300e-9, barrier_s=5e-6, per_program_s=40e-9,
                  ieee_fwd=0.05, ieee_bwd=0.2, source="hand")  # fmt: skip
    return costmodel.Calibration(**dict(fields, **kw))


def test_calibrated_step_time_by_hand():
    """A step ending at a barrier: max(compute at the fitted share of the peak, memory, the
    chain without the barrier's round trips x the fitted round trip) + the barrier's fitted
    cost; kernels without a barrier are costed as without the calibration."""
    h200, cal = costmodel.GPUS["H200"], _cal()
    k = costmodel.Kernel("step", 2.0e6, 1.0e5, programs=48, chain=10, warps=4, per_sm=2,
                         barriers=1, launches=0)  # fmt: skip
    share = 48 / 132
    memory = 1.0e5 / (4.8e12 * 0.9 * share)
    latency = (10 - 2) * 300e-9  # 2.4 µs: the chain decides in bf16
    sync = 5e-6 + 48 * 40e-9
    assert math.isclose(costmodel.kernel_time(k, h200, "bfloat16", cal=cal),
                        max(2.0e6 / (989.4e12 * share), memory, latency) + sync, rel_tol=1e-12)  # fmt: skip
    # IEEE float32: the FMA peak times the fitted share, forward or backward
    for backward, share_of_peak in ((False, 0.05), (True, 0.2)):
        big = costmodel.Kernel("step", 4.0e9, 0.0, programs=264, chain=10, per_sm=2,
                               barriers=2, backward=backward, launches=0)  # fmt: skip
        compute = 4.0e9 / (66.9e12 * share_of_peak)  # 264 programs: the whole GPU
        # two barriers each way; one wave of 264 programs meets at each
        want = max(compute, (10 - 4) * 300e-9) + 2 * (5e-6 + 264 * 40e-9)
        assert math.isclose(costmodel.kernel_time(big, h200, "float32", "ieee", cal), want,
                            rel_tol=1e-12)  # fmt: skip
        # TF32 keeps the datasheet's tensor-core rate
        tf32 = max(4.0e9 / 494.7e12, 6 * 300e-9) + 2 * (5e-6 + 264 * 40e-9)
        assert math.isclose(costmodel.kernel_time(big, h200, "float32", "tf32", cal), tf32,
                            rel_tol=1e-12)  # fmt: skip
    # two waves: the chain twice, half the programs at each barrier
    two = costmodel.Kernel("step", 0.0, 0.0, programs=2 * 264, chain=6, per_sm=2, barriers=1)
    want = 2 * 4 * 300e-9 + 5e-6 + 264 * 40e-9 + costmodel.GPU_LAUNCH_S
    assert math.isclose(costmodel.kernel_time(two, h200, "bfloat16", cal=cal), want,
                        rel_tol=1e-12)  # fmt: skip
    plain = costmodel.Kernel("gemm", 1e9, 1e6, programs=10**6)
    assert costmodel.kernel_time(plain, h200, "float32", cal=cal) == costmodel.kernel_time(
        plain, h200, "float32"
    )


def test_costmodel_reads_the_paths_rows_at_each_case(tmp_path):
    """The report's measured rows include bench/paths.py's (every path, config and barrier that
    passed its check, in one run) at the case's shape only: the same cell, sizes, projection,
    layer norm or not, dtype, and TF32 only where the case allows it."""
    d = tmp_path / "gpu-fake"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"device": "Fake GPU", "date": "2026-12-07"}))
    (d / "results.csv").write_text("cell,B,T,I,H,layers,dtype,mode,provider,status,median_ms\n")
    anchor = "B=16 T=1024 I=768 H=768"
    rows = [
        ("anchor", f"lstm fwd {anchor} L=1 bfloat16", "fwd", "resident", "8.5", ""),
        ("anchor", f"lstm fwdbwd {anchor} L=1 bfloat16", "fwdbwd", "resident", "17.25", ""),
        ("anchor", f"lstm fwd {anchor} L=1 bfloat16", "fwd", "resident barrier=flags", "6", ""),
        ("anchor", f"lstm fwd {anchor} L=1 bfloat16", "fwd", "resident 16x32x64w4s1", "", "ran"),
        ("anchor", f"lstm fwd {anchor} L=1 bfloat16", "fwd", "torch.nn", "18.3", ""),
        ("anchor-proj", f"lstm fwd {anchor} proj=384 L=1 bfloat16", "fwd", "resident", "16", ""),
        ("ln-anchor", f"lstm layer_norm fwd {anchor} L=1 float32", "fwd", "cooperative (shipped)",
         "90", ""),
        ("mid-tf32", "lstm fwd B=64 T=100 I=512 H=512 L=1 float32, TF32 on", "fwd", "resident",
         "2", ""),
    ]  # fmt: skip
    lines = ["shape,label,mode,provider,ms,problem"]
    lines += [",".join(f'"{v}"' if "," in v else v for v in r) for r in rows]
    (d / "paths.csv").write_text("\n".join(lines) + "\n")
    shape = dict(cell="lstm", B=16, T=1024, I=768, H=768, layers=1, dtype="bfloat16")

    def got(**case):
        """GPU, implementation, fwd and fwd+bwd ms of each measured row"""
        cells = [[c.strip() for c in line.strip("|").split("|")]
                 for line in costmodel.measured(dict(shape, **case), tmp_path)]  # fmt: skip
        return [[c[0], c[1], c[6], c[7]] for c in cells]

    where = "(measured: gpu-fake/paths.csv)"
    assert got() == [
        ["Fake GPU", f"fusedrnn[triton] resident {where}", "8.5", "17.25"],
        ["Fake GPU", f"fusedrnn[triton] resident barrier=flags {where}", "6", ""],
        ["Fake GPU", f"torch.nn {where}", "18.3", ""],
    ]
    assert got(proj=384) == [["Fake GPU", f"fusedrnn[triton] resident {where}", "16", ""]]
    assert got(dtype="float32", variant=True) == [
        ["Fake GPU", f"fusedrnn[triton] cooperative (shipped) {where}", "90", ""]
    ]
    assert got(dtype="float32") == [] and got(proj=256) == []
    mid = dict(B=64, T=100, I=512, H=512, dtype="float32")
    assert got(**mid, precision="tf32") == [["Fake GPU", f"fusedrnn[triton] resident {where}",
                                              "2", ""]]  # fmt: skip
    assert got(**mid) == []
    # a paths.py run of its own (no results.csv, no meta.json) is read too, its GPU named by
    # its paths.md, else by its directory
    alone = tmp_path / "gpu-alone"
    alone.mkdir()
    (alone / "paths.csv").write_text(lines[0] + "\n" + lines[1] + "\n")
    assert got()[0] == ["gpu-alone", "fusedrnn[triton] resident (measured: gpu-alone/paths.csv)",
                         "8.5", ""]  # fmt: skip
    (alone / "paths.md").write_text("# Triton kernel paths\n\nOther GPU, torch 2.13; eager\n")
    assert got()[0][0] == "Other GPU" and len(got()) == 4


def test_barrier_budget_by_hand():
    """What the goals need from a grid barrier: the calibrated resident launch at the anchor
    (48 programs of 16 units each way, one barrier a step: 1,024 barriers forward, 2,048 with
    the backward) charges each barrier its fixed cost plus 48 programs' cost, and meets each
    goal exactly when every barrier costs the amount given, all else as fitted."""
    h200, cal = costmodel.GPUS["H200"], _cal()
    (cfg,) = [c for c in costmodel.triton_configs()[0]
              if c.kind == "resident" and c.picked and "bfloat16" in c.dtypes]  # fmt: skip
    shape = [costmodel.ANCHOR[k] for k in ("cell", "B", "T", "I", "H", "layers")]
    budget = costmodel.barrier_budget(cfg, h200, cal)
    assert list(budget) == ["forward", "forward+backward"]

    def predict(barrier_s: float, per_program_s: float):
        fit = dataclasses.replace(cal, barrier_s=barrier_s, per_program_s=per_program_s)
        return costmodel.predict(cfg, h200, *shape, "bfloat16", cal=fit)

    free = predict(0.0, 0.0)
    for (goal, (now, need)), goal_s, free_s, barriers in zip(
        budget.items(), (4.0e-3, 11e-3), (free.fwd_s, free.fwdbwd_s), (1024, 2048), strict=True
    ):
        assert math.isclose(now, 5e-6 + 48 * 40e-9, rel_tol=1e-9), goal
        assert math.isclose(need, (goal_s - free_s) / barriers, rel_tol=1e-9), goal
        met = predict(need, 0.0)
        assert math.isclose(met.fwd_s if barriers == 1024 else met.fwdbwd_s, goal_s,
                            rel_tol=1e-9), goal  # fmt: skip
    fitted = predict(cal.barrier_s, cal.per_program_s)
    assert math.isclose(fitted.fwd_s, free.fwd_s + 1024 * (5e-6 + 48 * 40e-9), rel_tol=1e-9)
    assert costmodel._goals([cfg], {}) == []


def test_every_config_table_adds_the_calibrated_step_where_a_step_ends_at_barriers():
    step = costmodel.KernelConfig("triton", "step", "hand", block_b=16, block_h=32, block_k=16,
                                  num_warps=4, num_stages=2)  # fmt: skip
    coop = costmodel.KernelConfig("triton", "cooperative", "hand", block_b=16, block_h=32,
                                  block_k=16, num_stages=2, bwd=(16, 16, 64, 4, 3))  # fmt: skip
    cal = _cal()
    lines = costmodel._every_config([step, coop], ["H100", "H200"], {"H200": cal})
    header, rule, *rows = [ln for ln in lines if ln.startswith("|")]
    assert header.endswith("| calibrated µs/step fwd, bwd H200 |")
    assert len({ln.count("|") for ln in (header, rule, *rows)}) == 1
    assert rows[0].endswith("|  |")  # a per-step launch has no barrier to calibrate
    q = costmodel.plan(coop, "lstm", 64, 64, 128, 256, "float32", training=True,
                       gpu=costmodel.GPUS["H200"])  # fmt: skip
    f, b = (sum(costmodel.kernel_time(k, costmodel.GPUS["H200"], "float32", cal=cal)
                for k in ks) * 1e6 for ks in (q.step_fwd, q.step_bwd))  # fmt: skip
    assert rows[1].endswith(f"| {f:.2f}, {b:.2f} (calibrated prediction) |")


def test_cooperative_and_resident_steps_count_their_barriers():
    coop = costmodel.KernelConfig("triton", "cooperative", "hand", block_b=16, block_h=32,
                                  block_k=16, num_stages=2, bwd=(16, 16, 64, 4, 3))  # fmt: skip
    p = costmodel.plan(coop, "lstm", B=20, T=4, I=8, H=64, dtype="float32", training=True)
    assert [(k.barriers, k.backward) for k in p.step_fwd + p.step_bwd] == [(1, False), (1, True)]
    # layer norm: the LSTM's two extra phases each way end at barriers of their own
    p = costmodel.plan(coop, "lstm", B=20, T=4, I=8, H=64, dtype="float32", training=True,
                       variant=True)  # fmt: skip
    assert [k.barriers for k in p.step_fwd + p.step_bwd] == [3, 3]
    p = costmodel.plan(_resident(), "gru", B=16, T=4, I=8, H=256, dtype="bfloat16",
                       training=True)  # fmt: skip
    assert [(k.barriers, k.backward) for k in p.step_fwd + p.step_bwd] == [(1, False), (1, True)]
    assert all(k.barriers == 0 for k in p.once_fwd + p.once_bwd)


def _points(cal):
    """The fit's kind of points (four configs x three shapes x two modes), their medians
    made by the calibrated model itself."""
    shapes = [("lstm", 16, 1024, 768, 768, 1, "bfloat16", "ieee"),
              ("lstm", 64, 100, 512, 512, 1, "float32", "ieee"),
              ("lstm", 64, 128, 64, 512, 2, "float32", "ieee")]  # fmt: skip
    configs = [(16, 16, 64, 4, 2), (16, 32, 64, 4, 2), (16, 16, 128, 4, 3), (16, 16, 32, 4, 2)]
    points = []
    for shape, blocks, mode in itertools.product(shapes, configs, ("fwd", "fwdbwd")):
        p = calibrate.Point("hand", *shape, mode, blocks, blocks, "x".join(map(str, blocks)), 0.0)
        points.append(dataclasses.replace(p, ms=calibrate.predicted_ms(p, "H200", cal)))
    return points


def test_the_fit_recovers_the_constants_its_points_were_made_with():
    """Medians generated by a known calibration: the fit returns it; medians off by 10 % at
    one shape: it does not (the fit follows the data)."""
    want = _cal()
    points = _points(want)
    got = calibrate.fit(points, "H200")
    for name in calibrate.NAMES:
        assert math.isclose(getattr(got, name), getattr(want, name), rel_tol=1e-4), name
    slower = [dataclasses.replace(p, ms=p.ms * (1.1 if p.dtype == "bfloat16" else 1.0))
              for p in points]  # fmt: skip
    moved = calibrate.fit(slower, "H200")
    assert moved.barrier_s > want.barrier_s * 1.03


def test_calibrate_reads_the_cooperative_and_resident_rows_of_paths_csvs(tmp_path):
    """Rows before the configs column: configs from the provider's name; with it: from the
    column, resident and projected rows included; baselines, per-step launches, layer norm
    and rows with a problem left out."""
    head = "shape,label,mode,provider,ms,vs_torch,problem"
    old = [
        "mid-tf32,lstm fwd B=64 T=100 I=512 H=512 L=1 float32,fwd,torch.nn,1.5,1.0,",
        "mid-tf32,lstm fwd B=64 T=100 I=512 H=512 L=1 float32,fwd,step,3.8,0.4,",
        "mid-tf32,lstm fwd B=64 T=100 I=512 H=512 L=1 float32,fwd,cooperative (shipped),2.2,1,",
        "gru,gru fwdbwd B=4 T=5 I=6 H=70 L=2 bfloat16,fwdbwd,cooperative 16x32x64w8s3,4.5,1,",
        "gru,gru fwdbwd B=4 T=5 I=6 H=70 L=2 bfloat16,fwdbwd,cooperative 16x16x32w4s2,9,1,bad",
        "anchor,lstm fwd B=16 T=1024 I=768 H=768 L=1 bfloat16,fwd,resident,7.0,2.0,",
    ]
    (tmp_path / "old.csv").write_text("\n".join([head, *old]) + "\n")
    got = calibrate.read_paths(tmp_path / "old.csv", "p")
    shipped_f32 = calibrate.MEASURED_SHIPPED["float32"]
    assert [(p.cell, p.B, p.T, p.I, p.H, p.layers, p.dtype, p.precision, p.mode, p.fwd, p.bwd,
             p.config, p.ms, p.kind) for p in got] == [
        ("lstm", 64, 100, 512, 512, 1, "float32", "tf32", "fwd", *shipped_f32, "shipped", 2.2,
         "cooperative"),
        ("gru", 4, 5, 6, 70, 2, "bfloat16", "ieee", "fwdbwd", (16, 32, 64, 8, 3),
         (16, 32, 64, 8, 3), "16x32x64w8s3", 4.5, "cooperative"),
    ]  # fmt: skip
    new = [
        "anchor,lstm fwd B=16 T=1024 I=768 H=768 L=1 bfloat16,fwd,torch.nn,9,1,,",
        "anchor,lstm fwd B=16 T=1024 I=768 H=768 L=1 bfloat16,fwd,step,30,1,,16x32x16w4s2/"
        "16x32x16w4s2",
        "anchor,lstm fwd B=16 T=1024 I=768 H=768 L=1 bfloat16,fwd,cooperative (shipped),9,1,,"
        "16x16x64w4s3/16x16x128w4s3",
        "anchor,lstm fwd B=16 T=1024 I=768 H=768 L=1 bfloat16,fwd,resident,7,1,,16x16x64w4s1/"
        "16x16x32w8s1",
        "ln,lstm layer_norm fwd B=3 T=4 I=5 H=40 L=1 float32,fwd,cooperative (shipped),1,1,,"
        "16x32x16w8s2/16x16x64w8s3",
        "anchor-proj,lstm fwd B=16 T=1024 I=768 H=768 proj=384 L=1 bfloat16,fwd,resident,7,1,,"
        "16x16x64w4s1/16x16x32w8s1",
    ]
    (tmp_path / "new.csv").write_text("\n".join([head + ",configs", *new]) + "\n")
    got = calibrate.read_paths(tmp_path / "new.csv", "p")
    assert [(p.fwd, p.bwd, p.config, p.kind, p.proj) for p in got] == [
        ((16, 16, 64, 4, 3), (16, 16, 128, 4, 3), "shipped", "cooperative", 0),
        ((16, 16, 64, 4, 1), (16, 16, 32, 8, 1), "shipped", "resident", 0),
        ((16, 16, 64, 4, 1), (16, 16, 32, 8, 1), "shipped", "resident", 384),
    ]
    # a resident point is costed as the resident launch; the projected one with its two phases
    # a step, each ending at a barrier
    (coop, res, proj) = got
    assert calibrate.kernel_config(res).kind == "resident"
    assert calibrate.predicted_ms(res, "H200", None) < calibrate.predicted_ms(coop, "H200", None)
    assert proj.label == "lstm B=16 T=1024 H=768 proj=384 L=1 bfloat16"
    cal = _cal()
    want = costmodel.predict(calibrate.kernel_config(proj), costmodel.GPUS["H200"], "lstm", 16,
                             1024, 768, 768, 1, "bfloat16", cal=cal, proj=384).fwd_s  # fmt: skip
    assert calibrate.predicted_ms(proj, "H200", cal) == want * 1e3
    assert want > costmodel.predict(calibrate.kernel_config(res), costmodel.GPUS["H200"], "lstm",
                                    16, 1024, 768, 768, 1, "bfloat16", cal=cal).fwd_s  # fmt: skip


def test_the_committed_calibration_is_what_calibrate_makes_of_the_committed_measurements():
    results = ROOT / "bench" / "results" / "gpu-nvidia-h200"
    _cal_, doc, text = calibrate.calibrate(results)
    committed = json.loads((results / "calibration.json").read_text())
    # after a change to the cost model or the measurements: python bench/calibrate.py
    assert committed.keys() == doc.keys()
    for key, value in doc.items():
        if isinstance(value, str):
            assert committed[key] == value, key
        else:
            assert committed[key] == pytest.approx(value, rel=1e-6), key
    assert (results / "calibration.md").read_text() == text + "\n"
    assert doc["fit_points"] == 24 and doc["held_out_points"] == 20
    loaded = costmodel.load_calibrations()["H200"]
    assert loaded.round_trip_s == committed["round_trip_s"]
    assert loaded.path == "gpu-nvidia-h200/calibration.json"


def test_costmodel_reads_the_shipped_triton_configs(monkeypatch):
    configs, note = costmodel.triton_configs()
    try:
        from fusedrnn.ops.triton import configs as tc
    except Exception:
        assert configs == [] and note.startswith("no triton configs found")
    else:
        steps = [(c.block_b, c.block_h) for c in configs if c.kind == "step"]
        assert steps == [(c.block_b, c.block_h) for c in tc.STEP_CONFIGS]
        # the cooperative launch serves H above the persistent kernels' limits, read from them
        for c in (c for c in configs if c.kind == "cooperative"):
            for cell, limit in c.persistent_up_to:
                hidden = [p.max_hidden for p in tc.PERSISTENT_CONFIGS if p.cell.startswith(cell)]
                assert limit == max(hidden)
        # the resident launch: one config per dtype group, but float64 (never automatic)
        resident = {c.dtypes: c for c in configs if c.kind == "resident" and c.picked}
        assert set(resident) == {("bfloat16", "float16"), ("float32",)}
        for dtypes, group in ((("bfloat16", "float16"), "half"), (("float32",), "float32")):
            f, b = tc.RESIDENT_CONFIGS[group]
            c = resident[dtypes]
            assert (c.block_h, c.block_k, c.num_warps) == (f.block_h, f.block_k, f.num_warps)
            assert c.bwd == (b.block_b, b.block_h, b.block_k, b.num_warps, b.num_stages)
        # and the candidate no launcher picks, never the automatic path where it applies
        (candidate,) = [c for c in configs if not c.picked]
        w = tc.RESIDENT_CANDIDATE
        assert candidate.kind == "resident" and candidate.bwd == (
            w.block_b, w.block_h, w.block_k, w.num_warps, w.num_stages)  # fmt: skip
        chosen = [c for c in configs
                  if costmodel.applicable(c, "lstm", 16, 768, dtype="bfloat16")]  # fmt: skip
        assert candidate in chosen
        assert costmodel.automatic_path(chosen) is resident[("bfloat16", "float16")]
    monkeypatch.setitem(sys.modules, "fusedrnn.ops.triton.configs", None)
    configs, note = costmodel.triton_configs()
    assert configs == [] and note.startswith("no triton configs found")
    assert "no triton configs found" in costmodel.report(["H100"])


def test_variants_bench_quick(tmp_path):
    """bench/variants.py --quick: every provider agrees with the reference op (checked inside
    the script, which fails otherwise), and the CSV / table are written."""
    rows, _ = _small_run("variants.py", tmp_path, "--quick", "| LN-LSTM | forward+backward |")
    assert {r["variant"] for r in rows} == set(bench_variants.VARIANTS)
    assert {r["phase"] for r in rows} == {"forward", "forward+backward"}
    assert all(float(r["median_ms"]) > 0 for r in rows)
    head = [r for r in rows if r["variant"] == bench_variants.HEADLINE]
    assert {"cell loop", "fusedrnn[reference]"} <= {r["provider"] for r in head}


def test_cpu_flags_and_the_machine_tag_that_tells_cpus_of_one_name_apart_by_avx512(monkeypatch):
    flags = measure.cpu_flags()  # this machine's
    assert isinstance(flags, set)
    if Path("/proc/cpuinfo").is_file() and "x86" in measure.platform.machine():
        assert "sse2" in flags  # every x86-64 CPU has it
    monkeypatch.setattr(measure, "cpu_model", lambda: "AMD EPYC")
    for flags, isa in (({"avx2", "fma"}, ""), ({"avx2", "avx512f"}, "-avx512")):
        monkeypatch.setattr(measure, "cpu_flags", lambda f=flags: f)
        assert measure.machine_tag("cpu", 2) == f"cpu-amd-epyc{isa}-2t"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])/(?:[\w.+-]+/)+[\w.+-]*")


def test_quick_run_never_writes_the_committed_results_and_they_name_no_absolute_paths():
    tag = measure.machine_tag("cpu", 1)

    def out_dir(*argv):
        return bench_run.output_dir(bench_run.parse_args(list(argv)), tag)

    out, committed = out_dir("--quick"), BENCH / "results" / tag
    assert out != committed
    # git must ignore what a quick run writes, so `git status` stays clean after one
    probe = out / "results.csv"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(probe)], cwd=ROOT)
    assert ignored.returncode == 0, f"{probe} is not ignored by git"
    assert out_dir() == committed
    assert out_dir("--quick", "--out", "/somewhere/else") == Path("/somewhere/else")
    # and what is committed names no path of the machine that wrote it
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sorted((BENCH / "results").rglob("*"))
             if p.suffix in (".md", ".json", ".csv") and "tmp" not in p.relative_to(BENCH).parts
             for m in _ABSOLUTE_PATH.finditer(p.read_text(encoding="utf-8"))]  # fmt: skip
    assert not found, found


def test_charlm_speed_writes_portable_paths_and_reads_its_recipe():
    kept = {"note": "relative/path stays", "n": 3}
    got = charlm_speed.portable(
        {"out": str(BENCH / "results" / "charlm"),
         "runs": [{"data": "/srv/corpora/input.txt"}], **kept}
    )  # fmt: skip
    assert got == {"out": "bench/results/charlm", "runs": [{"data": "input.txt"}], **kept}
    assert not _ABSOLUTE_PATH.search(json.dumps(got))
    # --recipe fills in the README's tinyshakespeare settings; flags given beside it win, and a
    # run bounded by iterations has no time budget unless one is given
    a = charlm_speed.parse_args(["--recipe", "--hidden=32", "--max-iters", "5"])
    assert (a.hidden, a.max_iters, a.budget) == (32, 5, None)
    assert (a.layers, a.dropout, a.lr_schedule, a.target) == (2, 0.2, "cosine", 1.45)
    a = charlm_speed.parse_args([])
    assert (a.hidden, a.budget, a.lr_schedule, a.max_iters) == (128, 480.0, "constant", None)


def test_sampling_bench_small(tmp_path):
    args = "--rounds 1 --seconds 0.02 --shapes 1x8 --cells lstm,rnn --batches 1,2"
    rows, _ = _small_run("sampling.py", tmp_path, args, "| lstm | 1 × 8 | 2 |")
    assert [r["cell"] + r["batch"] for r in rows] == ["lstm1", "lstm2", "rnn1", "rnn2"]
    for r in rows:
        assert all(float(r[f"{loop}_chars_per_s"]) > 0 for loop in ("fused", "python", "torch"))
        assert float(r["read_gb_per_s"]) > 0
        # 1 layer x 8 units, embedding 64, 65 symbols: the weights one step reads, by hand
        gates = 4 if r["cell"] == "lstm" else 1
        want = (gates * 8 * (64 + 8) + 2 * gates * 8 + 65 * 8 + 65) * 4 / 1e6
        assert math.isclose(float(r["weight_mb"]), round(want, 3))


def test_cells_bench_small(tmp_path):
    args = "--rounds 1 --seconds 0.01 --shapes 1x8,3x5 --cells LSTMCell,GRUCell"
    rows, _ = _small_run("cells.py", tmp_path, args, "| GRUCell | fwdbwd | 3 | 5 |")
    assert [(r["batch"], r["hidden"], r["cell"], r["mode"]) for r in rows] == [
        (b, h, c, m) for b, h in (("1", "8"), ("3", "5")) for c in ("LSTMCell", "GRUCell")
        for m in ("step", "fwdbwd")
    ]  # fmt: skip
    for r in rows:
        t, f = float(r["torch_us"]), float(r["fusedrnn_us"])
        assert t > 0 and f > 0 and math.isclose(float(r["speedup"]), t / f, rel_tol=2e-2)


@needs_cpu
def test_ceilings_small(tmp_path):
    """bench/ceilings.py: every configuration's ceiling is torch.nn's time over its work at the
    row's best rate (FLOPs at the FMA peak, or the step's weight bytes at the read rate)."""
    args = (
        "--batch 3 --steps 4 --input 8 --layers 1 --hidden 8,16 --step-hidden 16 --cells lstm,gru "
        "--rounds 1 --seconds 0.02 --gemm-n 64"
    )
    rows, _ = _small_run("ceilings.py", tmp_path, args, "| gru | forward+backward | 16 |")
    assert [(r["cell"], r["mode"], r["H"]) for r in rows] == [
        ("lstm", "step", "16"), ("gru", "step", "16"),
        *((c, m, h) for h in ("8", "16") for m in ("fwd", "fwdbwd") for c in ("lstm", "gru")),
    ]  # fmt: skip
    for r in rows:
        t_nn, work = float(r["torch_nn_ms"]) / 1e3, float(r["work"])
        assert math.isclose(float(r["speedup"]), t_nn * 1e3 / float(r["fusedrnn_ms"]), rel_tol=2e-2)
        if r["mode"] == "step":  # 1 layer of 16 units on 8 inputs, float32, by hand
            gates = 4 if r["cell"] == "lstm" else 3
            assert work == 4 * gates * 16 * (8 + 16 + 2)
            rate = float(r["best_rate"]) * 1e9
        else:
            h = int(r["H"])
            assert work == measure.mode_flops(r["mode"], r["cell"], 3, 4, 8, h, 1)
            assert float(r["ceiling_gemm"]) > 0
            if r["best_rate"] == "":  # no FMA peak measured on this machine
                continue
            rate = float(r["best_rate"]) * 1e9
        assert math.isclose(float(r["ceiling"]), t_nn * rate / work, rel_tol=2e-2)
    assert ceilings.ceiling(2.0, 10.0, 20.0) == 4.0 and ceilings.ceiling(2.0, 10.0, None) is None


@pytest.mark.parametrize("warmup,iters,block", [(0, 1, 2), (3, 15, 6), (1, 7, 3), (2, 4, 10)])
def test_profile_schedule_takes_turns_in_blocks(warmup, iters, block):
    """The char-LM profile's order: warm-up untimed, then blocks of one implementation whose
    first iteration is untimed, the two alternating and swapping who goes first each round,
    until each has ``iters`` timed iterations numbered from 0."""
    steps = list(profile_charlm.schedule(warmup, iters, block))
    impls = profile_charlm.IMPLS
    head, rest = steps[: warmup * len(impls)], steps[warmup * len(impls) :]
    assert [s[0] for s in head] == [i for i in impls for _ in range(warmup)]
    assert not any(t for _, _, t in head)
    blocks = []  # a block starts at each untimed step
    for impl, it, timed in rest:
        if not timed:
            blocks.append((impl, []))
        else:
            assert impl == blocks[-1][0]
            blocks[-1][1].append(it)
    for k, (impl, its) in enumerate(blocks):
        rnd, pos = divmod(k, 2)
        assert impl == impls[pos ^ rnd % 2]
        assert 1 <= len(its) <= block - 1
    for impl in impls:
        assert [it for i, its in blocks if i == impl for it in its] == list(range(iters))
    with pytest.raises(ValueError, match="block"):
        list(profile_charlm.schedule(1, 2, 1))
