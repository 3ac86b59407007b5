"""Checkpoints: atomic writes, and loading without arbitrary unpickling.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (dict, list,
tuple, str, int, float, bool, None): the model ``state_dict``, the vocabulary and configuration
as JSON-able dicts, and for resuming the optimizer state, the learning-rate schedule position,
the RNG states, the carried hidden state and the position in the data. It is always read with
``torch.load(weights_only=True)``, whose restricted unpickler refuses anything else, so a crafted
file cannot run code.

Writes go to a temporary file in the same directory, are fsync'ed, then renamed over the target
with ``os.replace`` (atomic on POSIX), and the directory is fsync'ed: a crash at any moment
leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import io
import os
import pickle
import time
import zipfile
from pathlib import Path

import torch

from .data import Vocab
from .errors import CheckpointError
from .model import CharRNN, build_model

FORMAT = "fusedrnn-charlm"
VERSION = 1
_TMP_MARK = ".tmp-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    # Fault injection for the crash tests: pause with half the bytes written.
    pause = float(os.environ.get("FUSEDRNN_CHARLM_TEST_SAVE_PAUSE", "0") or 0)
    try:
        with open(tmp, "wb") as f:
            if pause > 0:
                half = len(data) // 2
                f.write(data[:half])
                f.flush()
                time.sleep(pause)
                f.write(data[half:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(directory: str | os.PathLike) -> None:
    """Temp files left by a process killed in the middle of a write (never valid data)."""
    d = Path(directory)
    if d.is_dir():
        for p in d.glob(f".*{_TMP_MARK}*"):
            try:
                p.unlink()
            except OSError:
                pass


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw checkpoint dict, loaded safely; every failure is a one-line CheckpointError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path} is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (corrupt): {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors and "
                "plain data, which could run arbitrary code (loaded with weights_only=True)"
            ) from None
        raise CheckpointError(f"corrupt checkpoint {path}: {first}") from None
    except OSError as e:
        why = (e.strerror or type(e).__name__).lower()
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError):
        # torch's own text (zip reader internals) would not tell the user more than this
        raise CheckpointError(
            f"corrupt checkpoint {path}: the file is truncated or damaged (it is not a "
            "complete checkpoint archive)"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fusedrnn-charlm checkpoint")
    if ck.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ck.get('version')}, this fusedrnn reads "
            f"version {VERSION}"
        )
    for key in ("model", "vocab", "config"):
        if key not in ck:
            raise CheckpointError(f"corrupt checkpoint {path}: missing '{key}'")
    return ck


def model_from_checkpoint(
    ck: dict, path: str = "checkpoint", impl: str | None = None, backend: str | None = None
) -> tuple[CharRNN, Vocab, dict]:
    config = ck["config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: config is not a dict")
    try:
        vocab = Vocab.from_dict(ck["vocab"])
    except Exception as e:  # noqa: BLE001 - any malformed record is a corrupt checkpoint
        raise CheckpointError(f"corrupt checkpoint {path}: {e}") from None
    arch = config.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: no model description")
    if int(arch.get("vocab_size", -1)) != vocab.size:
        raise CheckpointError(
            f"checkpoint {path} is inconsistent: the model has {arch.get('vocab_size')} output "
            f"classes but its vocabulary has {vocab.size} characters"
        )
    if impl is None:
        impl = config.get("impl", "fusedrnn")
    if backend is None:
        backend = config.get("backend")
    model = build_model(arch, impl=impl, backend=backend)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} does not match its model description: {first}"
        ) from None
    return model, vocab, config


def load_checkpoint(
    path: str | os.PathLike,
    map_location="cpu",
    impl: str | None = None,
    backend: str | None = None,
) -> tuple[CharRNN, Vocab, dict]:
    """(model in eval mode, vocab, config) from a checkpoint file, without unsafe unpickling."""
    ck = read_checkpoint(path, map_location=map_location)
    model, vocab, config = model_from_checkpoint(ck, os.fspath(path), impl, backend)
    if map_location is not None and not callable(map_location):
        model.to(torch.device(map_location) if isinstance(map_location, str) else map_location)
    model.eval()
    return model, vocab, config
