"""Training configuration: defaults, validation and what may change when resuming."""

from __future__ import annotations

import argparse
import os

from .errors import CharLMError

DEFAULTS: dict = {
    # data
    "data": None,  # None: the embedded Shakespeare corpus
    "bytes": False,
    "val_frac": 0.05,
    "test_frac": 0.05,
    # model
    "model": "lstm",
    "hidden": 128,
    "layers": 2,
    "embed": 64,
    "dropout": 0.0,
    "impl": "fusedrnn",  # "torch": the same model on torch.nn layers (for comparisons)
    "backend": None,  # fusedrnn backend; None = automatic
    "layer_norm": False,  # cell variants (fusedrnn only; see docs/variants.md)
    "zoneout": 0.0,
    "peephole": False,
    "cifg": False,
    # optimisation
    "seq_len": 64,
    "batch_size": 32,
    "optimizer": "adam",
    "lr": 2e-3,
    "lr_schedule": "constant",  # constant | step | cosine
    "lr_decay": 0.97,  # step: lr *= lr_decay every lr_decay_every iterations
    "lr_decay_every": 1000,
    "min_lr": 0.0,  # cosine floor
    "warmup": 0,
    "weight_decay": 0.0,
    "grad_clip": 5.0,
    # stopping (none given: max_epochs 10)
    "max_iters": None,
    "max_epochs": None,
    "time_budget": None,
    # bookkeeping
    "eval_every": 200,
    "eval_max_chars": 50_000,  # periodic evaluations read at most this much of val (0: all)
    "checkpoint_every": None,  # None: at every evaluation
    "log_every": 20,
    "sample_every": None,  # None: at every evaluation; 0: never
    "sample_at": [],  # iterations whose sample is saved to samples.txt / samples.jsonl
    "sample_length": 200,
    "sample_temperature": 0.8,
    "sample_prime": "",
    "seed": 1234,
    "device": "cpu",
    "threads": None,
    "out": "runs/charlm",
    "resume": None,  # None | "auto" (out/last.pt) | a path
    "plot": True,
    "progress": None,  # None: a live bar on a TTY, periodic lines otherwise
    "quiet": False,
    "preset": None,  # a name in PRESETS: its settings replace the defaults
    "eval_time_frac": 0.2,  # with a time budget, also evaluate every this fraction of it (0: off)
    "init_from": None,  # a checkpoint whose weights (only) start a new run
    "keep_checkpoints": False,  # also keep every evaluated checkpoint, val loss in its name
    "dtype": "float32",  # float32 | bfloat16 (autocast of the forward pass)
    "compile": False,  # torch.compile the model for training
}

# Named groups of settings. "tiny" is the README demo: on a busy 2-core machine it must reach
# a readable sample in 90 s, so the model is small enough that even a fraction of one core runs
# several hundred steps, a high learning rate makes the most of those few steps (measured: val
# 1.84 after 820k characters, against 1.86 with B=16 and lr 6e-3 or 1e-2), and one thread avoids
# losing time slices to other processes.
PRESETS: dict[str, dict] = {
    "tiny": {
        "model": "lstm",
        "layers": 1,
        "hidden": 128,
        "embed": 32,
        "batch_size": 32,
        "seq_len": 64,
        "lr": 1e-2,
        "threads": 1,
        "eval_max_chars": 20_000,
        # evaluations and samples come from the time budget's cadence; on an idle machine an
        # evaluation every 200 of these short steps would come every few seconds
        "eval_every": 2000,
    },
}

# Keys that define the model, the data or the optimisation: fixed once training started.
FROZEN_ON_RESUME = (
    "preset",
    "layer_norm",
    "zoneout",
    "peephole",
    "cifg",
    "data",
    "bytes",
    "val_frac",
    "test_frac",
    "model",
    "hidden",
    "layers",
    "embed",
    "dropout",
    "seq_len",
    "batch_size",
    "optimizer",
    "lr",
    "lr_schedule",
    "lr_decay",
    "lr_decay_every",
    "min_lr",
    "warmup",
    "weight_decay",
    "grad_clip",
    "seed",
)

STOP_KEYS = ("max_iters", "max_epochs", "time_budget")

MODELS = ("lstm", "gru", "rnn", "rnn_relu")
OPTIMIZERS = ("adam", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")
DTYPES = ("float32", "bfloat16")


def parse_int_list(s) -> list[int]:
    if s is None or s == "":
        return []
    if isinstance(s, (list, tuple)):
        items = list(s)
    else:
        items = [x for x in str(s).replace(" ", "").split(",") if x]
    try:
        out = sorted({int(x) for x in items})
    except ValueError:
        raise CharLMError(f"expected a comma-separated list of iterations, got {s!r}") from None
    if any(v < 0 for v in out):
        raise CharLMError("iterations in --sample-at must be >= 0")
    return out


def given_keys(config) -> dict:
    """The explicitly given settings of a dict or an argparse Namespace (None = not given)."""
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    if not isinstance(config, dict):
        raise TypeError("config must be a dict or an argparse.Namespace")
    unknown = set(config) - set(DEFAULTS) - {"command", "func"}
    if unknown:
        raise CharLMError(f"unknown training settings: {', '.join(sorted(unknown))}")
    return {k: v for k, v in config.items() if k in DEFAULTS and v is not None}


def validate(cfg: dict) -> dict:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise CharLMError(msg)

    cfg["sample_at"] = parse_int_list(cfg.get("sample_at"))
    need(cfg["model"] in MODELS, f"--model must be one of {', '.join(MODELS)}")
    need(cfg["optimizer"] in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
    need(cfg["lr_schedule"] in SCHEDULES, f"--lr-schedule must be one of {', '.join(SCHEDULES)}")
    need(cfg["impl"] in ("fusedrnn", "torch"), "--impl must be fusedrnn or torch")
    need(cfg["dtype"] in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}")
    need(0.0 <= float(cfg["eval_time_frac"]) <= 1.0, "--eval-time-frac must be in [0, 1]")
    for k in ("hidden", "layers", "seq_len", "batch_size"):
        need(int(cfg[k]) >= 1, f"--{k.replace('_', '-')} must be >= 1")
    need(int(cfg["embed"]) >= 0, "--embed must be >= 0 (0: one-hot inputs)")
    need(0.0 <= float(cfg["dropout"]) < 1.0, "--dropout must be in [0, 1)")
    need(float(cfg["lr"]) > 0, "--lr must be > 0")
    need(0.0 <= float(cfg["zoneout"]) < 1.0, "--zoneout must be in [0, 1)")
    need(
        cfg["model"] == "lstm" or not (cfg["peephole"] or cfg["cifg"]),
        "--peephole and --cifg need --model lstm",
    )
    need(
        cfg["model"] in ("lstm", "gru") or not (cfg["layer_norm"] or cfg["zoneout"]),
        "--layer-norm and --zoneout need --model lstm or gru",
    )
    need(
        cfg["impl"] == "fusedrnn"
        or not (cfg["layer_norm"] or cfg["zoneout"] or cfg["peephole"] or cfg["cifg"]),
        "cell variants need --impl fusedrnn",
    )
    need(int(cfg["eval_every"]) >= 1, "--eval-every must be >= 1")
    need(int(cfg["log_every"]) >= 1, "--log-every must be >= 1")
    need(float(cfg["grad_clip"]) >= 0, "--grad-clip must be >= 0 (0: no clipping)")
    need(int(cfg["lr_decay_every"]) >= 1, "--lr-decay-every must be >= 1")
    for k in ("max_iters", "max_epochs"):
        need(cfg[k] is None or int(cfg[k]) >= 0, f"--{k.replace('_', '-')} must be >= 0")
    need(cfg["time_budget"] is None or float(cfg["time_budget"]) > 0, "--time-budget must be > 0")
    if cfg["lr_schedule"] == "cosine":
        need(cfg["max_iters"] is not None, "--lr-schedule cosine needs --max-iters")
    if cfg["checkpoint_every"] is not None:
        need(int(cfg["checkpoint_every"]) >= 1, "--checkpoint-every must be >= 1")
    need(int(cfg["sample_length"]) >= 0, "--sample-length must be >= 0")
    need(float(cfg["sample_temperature"]) >= 0, "--sample-temperature must be >= 0")
    if cfg["data"] is not None:
        cfg["data"] = os.path.abspath(os.fspath(cfg["data"]))
    for k in (
        "hidden",
        "layers",
        "embed",
        "seq_len",
        "batch_size",
        "eval_every",
        "log_every",
        "lr_decay_every",
        "warmup",
        "sample_length",
        "seed",
    ):
        cfg[k] = int(cfg[k])
    for k in (
        "dropout",
        "lr",
        "lr_decay",
        "min_lr",
        "weight_decay",
        "grad_clip",
        "val_frac",
        "test_frac",
        "sample_temperature",
        "eval_time_frac",
    ):
        cfg[k] = float(cfg[k])
    return cfg


def resolve(config, resumed: dict | None = None) -> dict:
    """Defaults <- (checkpoint's config when resuming) <- explicitly given settings."""
    given = given_keys(config)
    if given.get("preset") is not None and given["preset"] not in PRESETS:
        raise CharLMError(f"--preset must be one of {', '.join(PRESETS)}")
    if resumed is None:
        cfg = {**DEFAULTS, **PRESETS.get(given.get("preset"), {}), **given}
    else:
        cfg = {**DEFAULTS, **{k: v for k, v in resumed.items() if k in DEFAULTS}}
        for k, v in given.items():
            if k in FROZEN_ON_RESUME and k != "data" and v != cfg.get(k):
                raise CharLMError(
                    f"cannot change --{k.replace('_', '-')} when resuming (the checkpoint has "
                    f"{cfg.get(k)!r}); start a new run in another --out directory instead"
                )
            if k not in FROZEN_ON_RESUME:
                cfg[k] = v
        if any(k in given for k in STOP_KEYS):
            # new stopping criteria replace the old ones instead of adding to them
            for k in STOP_KEYS:
                cfg[k] = given.get(k)
        if "data" in given:
            cfg["data"] = given["data"]  # moved file: checked against the stored fingerprint
    return validate(cfg)
