"""Helpers shared by the charlm tests."""

from __future__ import annotations

import os
import random
from functools import partial
from pathlib import Path

from misc_testlib import ROOT, csv_rows, run_python

from fusedrnn.charlm import cli

WORDS = (
    "the king queen of and to my lord good sir what shall we do now thou art a fool "
    "love night day sword crown speak hear me"
).split()


def write_corpus(path: Path, n_chars: int, seed: int = 0) -> Path:
    """Writes a small pseudo-English corpus (26-ish characters, line structure) to path."""
    rng, lines, size = random.Random(seed), [], 0
    while size < n_chars:
        speaker = rng.choice(["KING", "QUEEN", "FOOL"])
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        lines.append(f"{speaker}:\n{body.capitalize()}.\n")
        size += len(lines[-1])
    path.write_text("".join(lines)[:n_chars], encoding="utf-8")
    return path


def tiny_args(**over) -> dict:
    """Settings of a tiny, fast model (seconds on one core)."""
    cfg = dict(hidden=24, layers=2, embed=8, batch_size=4, seq_len=16, eval_every=5, seed=3)
    cfg.update(eval_max_chars=2000, sample_every=0, sample_length=20, plot=False, quiet=True)
    return {**cfg, **over}


def cli_flags(cfg: dict) -> list[str]:
    """The command line of a settings dict: True is a bare flag; False and None leave the flag
    out, except plot=False (--no-plot)."""
    out = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        if v is True or (v is False and k == "plot"):
            out.append(flag if v else "--no-plot")
        elif v is not None and v is not False:
            out += [flag, str(v)]
    return out


def run_main(main, capsys, *argv, rc: int = 0) -> str:
    """A command's main(argv) must exit with rc: what it printed (on stderr if rc)."""
    got = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert got == rc, cap
    return cap.err if rc else cap.out


cli_out = partial(run_main, cli.main)  # (capsys, *argv): runs the command line, which must succeed


def cli_error(capsys, *argv) -> str:
    """Runs the command line in this process; it must fail (exit code 1) with one line on stderr.
    (capsys may be capsysbinary.)"""
    err = run_main(cli.main, capsys, *argv, rc=1)
    err = err.decode() if isinstance(err, bytes) else err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusedrnn-charlm: error:"), err
    assert "Traceback" not in err
    return lines[0]


def read_losses(out_dir) -> list[tuple[int, str]]:
    """(iter, train_loss as written) rows of metrics.csv: compared as exact strings."""
    return [(int(r["iter"]), r["train_loss"]) for r in csv_rows(Path(out_dir) / "metrics.csv")]


def env() -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    e.setdefault("OMP_NUM_THREADS", "1")  # one thread in and out of process: the same arithmetic
    return {**e, "PYTHONWARNINGS": "ignore"}


def run_cli(*args, check: bool = False):
    return run_python("-m", "fusedrnn.charlm", *args, env=env(), timeout=180, check=check)
