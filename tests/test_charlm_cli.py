"""fusedrnn.charlm as a user runs it: real processes, SIGKILL mid-checkpoint, torchrun (2 ranks)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from charlm_testlib import cli_flags, cli_out, env, read_losses, run_cli, tiny_args, write_corpus
from misc_testlib import run_python

from fusedrnn.charlm.checkpoint import load_checkpoint, read_checkpoint
from fusedrnn.charlm.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Tiny-model settings on a small text file; not quiet (the tests read what runs print)."""
    p = write_corpus(tmp_path_factory.mktemp("data") / "input.txt", 15_000, seed=2)
    return tiny_args(data=str(p), quiet=None)


def test_round_trip_train_sample_eval_resume(base, tmp_path, capsys):
    """Each command in its own process. train prints one line per reported iteration; with
    --resume DIR (no --out) it continues DIR/last.pt, and one line says from where."""
    out = tmp_path / "run"
    cfg = dict(base, max_iters=8, sample_at="4,8", dropout=0.1, log_every=5)
    first = run_cli("train", *cli_flags(cfg), "--out", out, "--no-progress", check=True)
    assert "val loss" in first.stdout and "done: 8 iterations" in first.stdout
    assert first.stderr.count("Traceback") == 0
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in recs] == [4, 8]

    argv = ["sample", "--checkpoint", out / "best.pt", "--prime", "KING:", "--length", 50]
    argv += ["--seed", 11, "--top-k", 5]
    s1 = run_cli(*argv, check=True)
    assert s1.stdout == cli_out(capsys, *argv) and s1.stdout.startswith("KING:")
    assert len(s1.stdout) == len("KING:") + 50 + 1

    e = run_cli("eval", "--checkpoint", out / "last.pt", "--split", "val", "--json", check=True)
    res = json.loads(e.stdout)
    model_val = json.loads((out / "summary.json").read_text())["val_loss"]
    assert res["chars"] > 0 and abs(res["loss_nats"] - model_val) < 0.05  # full vs capped val

    r = run_cli("train", "--resume", out, "--max-iters", 12, "--no-progress", check=True)
    resumed = [ln.rsplit(" ", 1)[0] for ln in r.stdout.splitlines() if ln.startswith("resume")]
    assert resumed == [f"resumed from {out / 'last.pt'}: iteration 8, epoch 0, best val loss"]
    assert "done: 12 iterations" in r.stdout
    assert [i for i, _ in read_losses(out)] == list(range(1, 13))
    # bare --resume in a directory without a checkpoint: a new run, and one line says so
    fresh = tmp_path / "fresh"
    new_run = ["train", *cli_flags(cfg), "--out", fresh, "--resume", "--max-iters", 2]
    bare = cli_out(capsys, *new_run, "--no-progress")
    assert bare.splitlines()[0] == f"--resume: no checkpoint in {fresh} yet, starting a new run"
    for text in (first.stdout, r.stdout, bare):  # the samples apart, no line twice
        lines = re.sub(r"--- sample at iteration .*?\n---\n", "", text, flags=re.S).splitlines()
        iters = [ln.split()[1].split("/")[0].rstrip(":") for ln in lines if ln.startswith("iter ")]
        assert len(iters) == len(set(iters)) and len(lines) == len(set(lines)), lines

    # a bad input in a real process: exit code 1, one line on stderr, no traceback
    r = run_cli("train", "--data", tmp_path / "nope.txt", "--out", tmp_path / "x")
    want = f"fusedrnn-charlm: error: data file not found: {tmp_path / 'nope.txt'}"
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [want]


def _size(path) -> int:
    """The file's size, 0 once it is gone."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_sigkill_during_checkpoint_then_resume(base, tmp_path):
    """SIGKILL while a checkpoint is half written: the old one stays valid, resume is exact."""
    cfg = dict(base, max_iters=30, checkpoint_every=1, eval_every=10, dropout=0.2, quiet=True)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    train({**cfg, "out": str(ref)})

    e = {**env(), "FUSEDRNN_CHARLM_TEST_SAVE_PAUSE": "0.5"}  # each write pauses half written
    argv = [sys.executable, "-m", "fusedrnn.charlm", "train", *cli_flags(cfg), "--out", out]
    proc = subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, killed = time.time() + 120, False
        while not killed and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
            tmp = [*out.glob(".last.pt.tmp-*"), *out.glob(".best.pt.tmp-*")]
            # wait for a complete checkpoint, then for the next write to be in progress (a temp
            # file may be renamed into place between the glob and its stat)
            killed = (out / "last.pt").exists() and any(_size(t) > 0 for t in tmp)
    finally:
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    assert killed, proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".*.tmp-*")), "the kill did not land inside a write"

    # the previous checkpoint is intact
    assert 1 <= read_checkpoint(out / "last.pt")["progress"]["iter"] < 30
    load_checkpoint(out / "last.pt")
    # resume in a fresh process (no pause): continues exactly as the uninterrupted run
    r = run_cli("train", "--out", out, "--resume", "--quiet", check=True)
    assert not list(out.glob(".*.tmp-*")), "stale temp files were not cleaned up"
    assert read_losses(out) == read_losses(ref)
    assert read_checkpoint(out / "last.pt")["progress"]["iter"] == 30
    assert r.stderr.count("Traceback") == 0


def test_torchrun_two_processes_match_single(base, tmp_path):
    """DDP over 2 gloo ranks (2 of the 4 streams each) == one process with batch 4."""
    cfg = dict(base, max_iters=10, eval_every=5)
    single, dist_out = tmp_path / "single", tmp_path / "ddp"
    train({**cfg, "out": str(single), "quiet": True})
    argv = ["train", *cli_flags(cfg), "--out", dist_out, "--no-progress"]
    r = run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "fusedrnn.charlm", *argv, env=env(), timeout=240, check=True)  # fmt: skip
    assert "2 processes" in r.stdout
    a, b = read_losses(single), read_losses(dist_out)
    assert [i for i, _ in b] == list(range(1, 11))  # rank 0 alone wrote the metrics
    assert [float(y) for _, y in b] == pytest.approx([float(x) for _, x in a], rel=2e-6, abs=1e-6)
    w1, w2 = read_checkpoint(single / "last.pt"), read_checkpoint(dist_out / "last.pt")
    torch.testing.assert_close(w2["model"], w1["model"], rtol=1e-4, atol=1e-5)
    # the gathered hidden state covers all 4 streams, and a single process can resume the run
    assert w2["hidden"][0].shape == (2, 4, 24) and len(w2["rng"]) == 2
    s = train({"out": str(dist_out), "resume": True, "max_iters": 12, "quiet": True})
    assert s["iters"] == 12
