"""python -m fusedrnn.gpu_check: its CPU dry run end to end, the time budget, the no-GPU exit."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from operator import itemgetter
from pathlib import Path

import graph_replay
import providers as P
import pytest
import run as bench_run
import torch
from misc_testlib import ROOT, csv_rows, run_python

from fusedrnn import gpu_check as gc


def _json(out: Path, name="gpu_check.json") -> dict:
    return json.loads((out / name).read_text())


def test_dry_run_end_to_end_and_the_gpu_summary(tmp_path):
    """The dry run in time, every file written, every cell checked, every benchmark row and
    ratio; its rows under a GPU machine's report state that machine."""
    out, start = tmp_path, time.monotonic()
    # about 20 s here; the budget leaves room for a busy CI machine
    run_python("-m", "fusedrnn.gpu_check", "--dry-run", "--out", out, "--budget-s", 180,
               timeout=300, check=True)  # fmt: skip
    wall = time.monotonic() - start
    assert {p.name for p in out.iterdir()} == {"env.json", "results.csv", "results.md", "meta.json",
        "gpu_check.json", "summary.md", "gpu_check.log", "speedup_headline.png", "paths.csv",
        "paths.md", "barrier.csv", "barrier.md"}  # fmt: skip
    report = _json(out)
    assert report["mode"] == "dry-run" and report["exit_status"] == 0
    assert report["elapsed_s"] <= report["budget_s"]
    assert wall < 180, f"the dry run took {wall:.0f} s"
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["environment", "build", "tests", "check", "bench", "paths"]
    for p in phases.values():
        # a checkout without the cpu extension is not built by a dry run
        assert p["status"] == "ok" or (p["name"], p["status"]) == ("build", "not attempted"), p
        assert p["wall_s"] >= 0
    # the Triton launches of bench/paths.py: the projected LSTM's (4 providers, torch.nn the
    # baseline) and the layer-norm LSTM's (3, the reference op the baseline), both modes,
    # checked against their baseline; bench/barrier.py's one-program grid, each kind in both
    # forms, counts checked
    paths, barrier = phases["paths"]["details"]["paths"], phases["paths"]["details"]["barrier"]
    assert paths["rows"] == 14 and paths["problems"] == [] and paths["exit_status"] == 0
    path_rows = csv_rows(out / "paths.csv")
    assert {(r["shape"], r["provider"]) for r in path_rows if "proj=18" in r["label"]} == {
        ("tiny-proj", p) for p in (P.TORCH_NN, "step", "cooperative (shipped)", "resident")
    }
    # each Triton row names the block configs of its forward and backward launches
    config = r"\d+x\d+x\d+w\d+s\d+"
    for r in path_rows:
        baseline = r["provider"] in (P.TORCH_NN, "fusedrnn[reference]")
        assert re.fullmatch("" if baseline else f"{config}/{config}", r["configs"]), r
    assert barrier["rows"] == 6 and barrier["problems"] == [] and barrier["exit_status"] == 0
    assert phases["tests"]["details"]["counts"].get("passed", 0) > 0
    assert phases["tests"]["details"]["failing"] == []
    env = _json(out, "env.json")
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    # the check phase compares every cell in every dtype
    cases, plan = phases["check"]["details"]["cases"], gc.dry_run_plan()
    dtypes = [str(d).replace("torch.", "") for d in plan.check_dtypes]
    assert {(c["cell"], c["dtype"]) for c in cases} == {(c, d) for c in P.CELLS for d in dtypes}
    for c in cases:
        tol_out = P.TOLERANCES[getattr(torch, c["dtype"])][0]
        assert c["status"] == "ok" and c["max_abs_err_out"] <= tol_out, c
    # the benchmark: a row per shape, mode and provider, its ratio from the CSV's own medians
    rows = csv_rows(out / "results.csv", bench_run.COLUMNS)
    key = itemgetter("dtype", "mode", "B", "T", "I", "H", "layers")
    nn = {key(r): r for r in rows if r["provider"] == P.TORCH_NN}
    want = {(s.dtype_label, mode, *map(str, (s.B, s.T, s.I, s.H, s.layers)))
            for s in plan.shapes for mode in ("fwd", "fwdbwd")}  # fmt: skip
    assert {key(r) for r in rows} == want
    assert {r["provider"] for r in rows} == {P.TORCH_NN, f"fusedrnn[{plan.wanted_backends[0]}]"}
    summary, results_md = (out / "summary.md").read_text(), (out / "results.md").read_text()
    for r in rows:
        assert r["status"] == "ok" and r["machine"] == "dry-run-cpu", r
        ratio = float(nn[key(r)]["median_ms"]) / float(r["median_ms"])
        assert float(r["speedup_vs_torch_nn"]) == pytest.approx(ratio, rel=2e-3, abs=1e-3)
        if r["provider"] != P.TORCH_NN:
            speedup = f"{float(r['speedup_vs_torch_nn']):.2f}×"
            assert f"{speedup} ({r['median_ms']} ms)" in summary and speedup in results_md
    meta = _json(out, "meta.json")
    assert meta["tag"] == "dry-run-cpu" and meta["quick"] is True
    assert "float32+tf32" in summary
    # the same rows and run under a GPU machine's report
    env |= {"gpu": "NVIDIA H200", "sm_count": 132, "capability": "9.0", "torch_cuda": "13.0",
            "cudnn": 91000, "nvidia_smi": {"name": "NVIDIA H200", "driver_version": "580.1",
            "clocks.sm": "1980", "clocks.max.sm": "1980", "clocks.mem": "3201"}}  # fmt: skip
    assert gc.gpu_tag(env) == "gpu-nvidia-h200"
    text = gc.summary_markdown(report | {"tag": gc.gpu_tag(env), "mode": "gpu", "env": env}, rows)
    assert "NVIDIA H200, 132 SMs, capability 9.0" in text
    assert "SM 1980 / 1980 MHz" in text and "CUDA 13.0" in text


def test_budget_allots_skips_and_still_reports(tmp_path, capsys):
    now = [100.0]
    budget = gc.Budget(60, clock=lambda: now[0])
    assert budget.allot(max_s=30, reserve_s=10) == 30
    now[0] += 25
    assert budget.remaining() == 35
    assert budget.allot(max_s=30, reserve_s=10) == 25

    def work(allotted):
        now[0] += 7
        return "ok", f"had {allotted:.0f} s"

    ok = gc.run_phase(budget, gc.Phase("a"), gc.Limits(5, 30), 10, work)
    assert (ok.status, ok.reason, ok.wall_s) == ("ok", "had 25 s", 7)
    # 28 s left, 25 of them kept for later: 3 s is under this phase's minimum
    skipped = gc.run_phase(budget, gc.Phase("b"), gc.Limits(5, 30), 25, work)
    assert skipped.status == "skipped" and "time budget" in skipped.reason
    assert now[0] == 132, "a skipped phase must not run"

    def broken(allotted):
        raise RuntimeError("kernel exploded")

    failed = gc.run_phase(budget, gc.Phase("c"), gc.Limits(0, 30), 0, broken)
    assert failed.status == "failed" and "kernel exploded" in failed.reason
    # a zero budget skips every phase but still reports
    assert gc.main(["--dry-run", "--budget-s", "0", "--out", str(tmp_path)]) == 3
    for p in _json(tmp_path)["phases"][1:]:
        assert p["status"] == "skipped" and "time budget" in p["reason"], p
    assert csv_rows(tmp_path / "results.csv", bench_run.COLUMNS) == []
    assert "Not measured" in (tmp_path / "summary.md").read_text()
    # and the check phase starts no case past its allotment
    plan, phase = gc.dry_run_plan(), gc.Phase("check")
    status, _ = gc.check_phase(plan, phase, gc.Budget(60), allotted=0)
    assert status == "skipped" and phase.details["cut_short"]
    assert all(c["status"] == "skipped" for c in phase.details["cases"])
    assert len(phase.details["cases"]) == len(P.CELLS) * len(plan.check_dtypes)
    # exit status 1 if something failed, else 3 if the budget cut something short, else 0
    for phases, cut, want in [([phase], [], 3), ([ok], [], 0), ([ok], ["lstm fwd"], 3),
                              ([ok, gc.Phase("t", "timeout")], [], 3), ([ok, skipped], [], 3),
                              ([ok, skipped, failed], [], 1)]:  # fmt: skip
        assert gc.exit_status(phases, gc.BenchState(skipped=cut)) == want, (phases, cut)


@pytest.mark.parametrize(
    "env,code,backends_after,status,reason",
    [({"capability": "9.0"}, "print('built ok')", ["reference", "cuda"], "ok", "built in"),
     ({}, "raise SystemExit(1)", ["reference"], "failed", "cuda still not importable")],
)  # fmt: skip
def test_build_phase(tmp_path, monkeypatch, env, code, backends_after, status, reason):
    probes = iter([["reference"], backends_after])  # before and after the build
    monkeypatch.setattr(gc, "probe_backends", lambda device, timeout_s: next(probes))
    monkeypatch.setattr(gc, "build_command", lambda: [sys.executable, "-c", code])
    phase = gc.Phase("build")
    with open(tmp_path / "log", "w") as log:
        got = gc.build_phase(gc.gpu_plan(), env, phase, log, 100, rebuild=False, dry_run=False)
    assert got[0] == status and reason in got[1], got
    assert phase.details["backends_after"] == backends_after
    if status == "ok":
        # a build that worked keeps its output in the log alone (pip's temporary paths stay out
        # of the committed report)
        assert phase.details["exit_status"] == 0 and phase.details["log_tail"] == []
        assert "built ok" in (tmp_path / "log").read_text()
    assert gc.build_env({"capability": "9.0"})["TORCH_CUDA_ARCH_LIST"] == "9.0"


def _gone(pid: int) -> bool:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_timeout_or_an_interrupt_ends_the_command_and_its_children(tmp_path):
    """The command starts a 60 s sleeper, which inherits and holds open the output pipe (a plain
    kill of the command alone would leave a reader hanging), writes its pid and sleeps."""
    pid = tmp_path / "pid"
    cmd = [sys.executable, "-c", (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
        "time.sleep(60)"
    )]  # fmt: skip
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        rc, text = gc.run_logged(cmd, 3, log)
    assert rc is None and "started" in text
    assert time.monotonic() - start < 30
    assert _gone(int(pid.read_text()))
    pid.unlink()  # the interrupted run must write its own
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)  # a Ctrl-C in 3 s
    signal.alarm(3)
    try:
        with open(tmp_path / "log", "w") as log, pytest.raises(KeyboardInterrupt):
            gc.run_logged(cmd, 60, log)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert _gone(int(pid.read_text()))


def test_watchdog_writes_the_report_and_ends_a_hung_run(tmp_path):
    script = f"""
import sys, time
from pathlib import Path
import torch
from fusedrnn import gpu_check as gc
if torch.cuda.is_initialized() or {{"run", "measure", "providers", "report"}} & set(sys.modules):
    sys.exit(4)  # importing gpu_check must touch neither the GPU nor bench/
gc.import_bench()
args = gc.parse_args(["--dry-run", "--no-plots"])
plan = gc.dry_run_plan()
s = gc.Session(args=args, plan=plan, budget=gc.Budget(1), command="test")
s.out, s.tag, s.current = Path({str(tmp_path)!r}), "dry-run-cpu", "check"
s.env = gc.environment(plan, s.budget)
s.phases = {{"environment": gc.Phase("environment", "ok"), "check": gc.Phase("check")}}
gc.start_watchdog(s, 0.5)
time.sleep(60)  # a kernel that never returns
"""
    start = time.monotonic()
    proc = run_python("-c", script)
    assert time.monotonic() - start < 50
    assert proc.returncode == 1, proc.stdout + proc.stderr
    check = _json(tmp_path)["phases"][1]
    assert check["status"] == "failed" and "still running" in check["reason"]
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "results.csv").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
@pytest.mark.parametrize(
    "main,argv,status,says",
    [(gc.main, [], 2, "gpu_check: no CUDA device: "),
     (bench_run.main, ["--device", "cuda"], 0, "bench: "),
     (graph_replay.main, [], 2, "graph_replay: no CUDA device")],
    ids=["gpu_check", "bench_run", "graph_replay"],
)  # fmt: skip
def test_without_gpu_says_so_in_a_line_and_writes_nothing(capsys, main, argv, status, says):
    before = sorted(p.name for p in gc.RESULTS.iterdir())
    assert main(argv) == status
    msg = capsys.readouterr().out
    assert msg.startswith(says) and "no CUDA device" in msg and msg.count("\n") == 1
    assert sorted(p.name for p in gc.RESULTS.iterdir()) == before
    if main is gc.main:
        proc = run_python("-m", "fusedrnn.gpu_check")
        assert proc.returncode == 2 and "no CUDA device" in proc.stdout


def test_dry_run_writes_outside_results_and_needs_bench(tmp_path, monkeypatch, capsys):
    out = gc.choose_out(argparse.Namespace(out=None), dry_run=True, tag="dry-run-cpu")
    out.rmdir()  # a new empty folder
    assert not gc._inside(out, ROOT)
    inside = gc.RESULTS / "dry-run-cpu"
    assert gc.main(["--dry-run", "--out", str(inside)]) == 2
    assert not inside.exists()
    assert gc.choose_out(argparse.Namespace(out=None), False, "gpu-x") == gc.RESULTS / "gpu-x"
    capsys.readouterr()
    # a checkout without bench/ is a clear error
    monkeypatch.setattr(gc, "BENCH", tmp_path / "bench")
    assert gc.main(["--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert "source checkout" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


PLAIN = """\
tests/test_a.py::test_x[cuda-lstm] PASSED                                 [ 25%]
tests/test_a.py::test_x[cuda-gru] FAILED                                  [ 50%]
tests/test_b.py::test_y SKIPPED (needs a GPU)                             [ 75%]
tests/test_b.py::test_z ERROR                                             [100%]
=========================== short test summary info ============================
FAILED tests/test_a.py::test_x[cuda-gru] - AssertionError: 1 != 2
ERROR tests/test_b.py::test_z - RuntimeError
======= 1 failed, 1 passed, 1 skipped, 3 deselected, 1 error in 2.50s ========
"""

XDIST_CUT = """\
[gw0] [ 50%] PASSED tests/test_a.py::test_x[cuda-lstm]
[gw1] [100%] FAILED tests/test_a.py::test_x[cuda-gru]
[gw0] [100%] PASSED tests/test_a.py::test_w
"""


def test_parse_pytest_output():
    counts = {"failed": 1, "passed": 1, "skipped": 1, "deselected": 3, "error": 1}
    failing = ["tests/test_a.py::test_x[cuda-gru]", "tests/test_b.py::test_z"]
    assert gc.parse_pytest(PLAIN) == {"counts": counts, "failing": failing, "complete": True}
    cut = {"counts": {"passed": 2, "failed": 1}, "failing": failing[:1], "complete": False}
    assert gc.parse_pytest(XDIST_CUT) == cut  # a run stopped at its timeout: no summary line


def test_tf32_context_sets_both_libraries_and_restores():
    def state():
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        return (*tf32, P.TOLERANCES[torch.float32])

    before = state()
    for on in (True, False):
        with P.tf32(on):
            matmul, cudnn, tol = state()
            assert matmul == cudnn == on
            assert (tol == P.TF32_TOLERANCE) == on  # float32 is compared at it while TF32 is on
        assert state() == before


def test_gpu_plan_holds_the_headline_shapes():
    plan = gc.gpu_plan()
    got = {(s.B, s.T, s.I, s.H, s.layers, s.dtype_label) for s in plan.shapes}
    assert {
        (16, 1024, 768, 768, 1, "bfloat16"), (64, 100, 512, 512, 1, "float32"),
        (64, 100, 512, 512, 1, "float32+tf32"), (64, 128, 64, 512, 2, "float32"),
    } <= got, got  # fmt: skip
    assert plan.budget_s <= 480 and set(plan.wanted_backends) == {"triton", "cuda"}
    assert plan.test_args == ("-m", "gpu", "tests")
    # bench/paths.py takes the plan's arguments, and each config or barrier given for one
    # shape is for a shape the plan runs: the barriers the launches do not use, at the anchor
    import paths

    args = paths.parse_args([*plan.paths_args, "--out", "unused"])
    for entries in (args.resident_configs, args.resident_barriers):
        scoped = [e.rpartition(":")[0] for e in entries.split(",")]
        assert scoped and set(scoped) <= set(args.shapes.split(",")), args
    assert args.resident_barriers == "anchor:relaxed,anchor:flags"


@pytest.mark.parametrize("argv,says", [
    ("--shapes ancor", "no shape 'ancor'"),
    ("--resident-configs ancor:16x32x64w4s1", "no shape 'ancor'"),
    ("--resident-configs anchor:16x32x64", "not a config like"),
    ("--configs anchor:16x16x64w4s2", "not a config like"),
    ("--resident-barriers anchor:flag", "no barrier kind 'flag' (counter, relaxed, flags)"),
    ("--resident-barriers ancor:flags", "no shape 'ancor'"),
    ("--resident-barriers counter", "'counter' is the launches' own barrier"),
])  # fmt: skip
def test_bench_paths_names_a_bad_shape_config_or_barrier(argv, says, capsys):
    import paths

    with pytest.raises(SystemExit) as exit_:
        paths.parse_args([*argv.split(), "--out", "unused"])
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_outputs_name_no_path_of_this_machine():
    """The committed outputs say "python" and checkout-relative paths, not this machine's."""
    text = f"$ {sys.executable} -m pip install -e {gc.ROOT}; built {gc.ROOT / 'fusedrnn'}"
    assert gc.portable(text) == "$ python -m pip install -e .; built fusedrnn"
    assert gc.tail(f"a\n{gc.ROOT}/b\n", n=1) == ["b"]
