"""python -m fusedrnn.compile_report: how it shares the CPUs with CI's tests."""

from __future__ import annotations

import multiprocessing
import threading

from fusedrnn import compile_report


def _start(started, when, done) -> threading.Thread:
    t = threading.Thread(target=compile_report._worker_start, args=(started, 1, when, done))
    t.start()
    return t


def test_an_extra_worker_waits_for_its_file_or_for_the_last_job(tmp_path):
    """With ``--jobs 1 --extra-jobs 1 --extra-when F`` the first worker starts at once, the
    second once F exists; without F it ends when every job is done (no hang at shutdown)."""
    ctx = multiprocessing.get_context()
    go = tmp_path / "go"
    started, done = ctx.Value("i", 0), ctx.Event()
    first = _start(started, str(go), done)
    first.join(5)
    assert not first.is_alive()
    extra = _start(started, str(go), done)
    extra.join(1.5)
    assert extra.is_alive()  # waiting for the file
    go.touch()
    extra.join(5)
    assert not extra.is_alive()

    started, done = ctx.Value("i", 1), ctx.Event()  # one worker already started
    extra = _start(started, str(tmp_path / "never"), done)
    extra.join(1.5)
    assert extra.is_alive()
    done.set()
    extra.join(5)
    assert not extra.is_alive()
    # no file named: no worker waits
    started, done = ctx.Value("i", 5), ctx.Event()
    at_once = _start(started, "", done)
    at_once.join(5)
    assert not at_once.is_alive()
