"""Command line: ``fusedrnn-charlm train | sample | eval`` (also ``python -m fusedrnn.charlm``).

Every user-facing problem ends with one line on stderr and a non-zero exit code, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .analysis_cli import register_analysis_commands
from .config import PRESETS
from .errors import CharLMError

PROG = "fusedrnn-charlm"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.HelpFormatter):
    """Shows every option's default (argparse's own formatter would also print 'None')."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "(default" in h or d is None or d is False or d == "" or d is argparse.SUPPRESS:
            return h
        if not action.option_strings:
            return h
        return f"{h} (default: %(default)s)" if h else "default: %(default)s"


def _show_train_defaults(p: argparse.ArgumentParser) -> None:
    """train's options default to None (so that a resumed run can tell what was given); their
    help shows the value that None stands for."""
    from .config import DEFAULTS

    for action in p._actions:
        value = DEFAULTS.get(action.dest)
        if not action.option_strings or action.help is None or "(default" in action.help:
            continue
        if value is None or value is False or value == [] or value == "":
            continue
        if action.dest in ("plot", "progress"):
            continue
        shown = str(value).replace("%", "%%")
        action.help = f"{action.help} (default: {shown})"


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (or resume one)",
        description="Train a character-level language model. Settings not given take their "
        "defaults (or the --preset's); when resuming, the checkpoint's settings are used.",
        formatter_class=_Help,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named settings; flags given beside it win. tiny: "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in PRESETS["tiny"].items())
        + " (the 90-second demo)",
    )
    a = p.add_argument
    g = p.add_argument_group("data")
    a = g.add_argument
    a("--data", metavar="FILE", help="UTF-8 text file (default: the embedded Shakespeare corpus)")
    a("--bytes", action="store_true", default=None, help="treat the file as raw bytes")
    a("--val-frac", type=float, help="fraction of the text for validation")
    a("--test-frac", type=float, help="fraction of the text for test")
    g = p.add_argument_group("model")
    a = g.add_argument
    a("--model", choices=["lstm", "gru", "rnn", "rnn_relu"], help="cell type")
    a("--hidden", type=int, help="hidden size")
    a("--layers", type=int, help="number of layers")
    a("--embed", type=int, help="embedding size; 0 = one-hot inputs")
    a("--dropout", type=float, help="dropout between layers and before the decoder")
    a(
        "--impl",
        choices=["fusedrnn", "torch"],
        help="recurrent layers: fusedrnn (default) or torch.nn for comparison",
    )
    a("--backend", help="fusedrnn backend (reference, cpu, triton, cuda; default automatic)")
    a("--layer-norm", action="store_true", default=None, help="layer-normalised LSTM/GRU")
    a("--zoneout", type=float, help="zoneout probability of h (and c for LSTM), in [0, 1)")
    a("--peephole", action="store_true", default=None, help="LSTM peephole connections")
    a("--cifg", action="store_true", default=None, help="LSTM coupled input-forget gate")
    g = p.add_argument_group("optimisation")
    a = g.add_argument
    a("--seq-len", type=int, help="truncated BPTT length")
    a("--batch-size", type=int, help="parallel streams, global over processes")
    a("--optimizer", choices=["adam", "rmsprop"], help="optimizer")
    a("--lr", type=float, help="learning rate")
    a("--lr-schedule", choices=["constant", "step", "cosine"], help="learning-rate schedule")
    a(
        "--lr-decay",
        type=float,
        help="step schedule: lr factor per --lr-decay-every iterations",
    )
    a("--lr-decay-every", type=int, help="step schedule period in iterations")
    a("--min-lr", type=float, help="cosine schedule floor")
    a("--warmup", type=int, help="linear warmup iterations")
    a("--weight-decay", type=float, help="L2 penalty (Adam or RMSprop weight_decay)")
    a("--grad-clip", type=float, help="clip the gradient norm; 0 = off")
    g = p.add_argument_group("stopping (whichever comes first; none given: 10 epochs)")
    a = g.add_argument
    a("--max-iters", type=int, help="total optimizer steps")
    a("--max-epochs", type=int, help="passes over the training text")
    a(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="wall-clock budget of this run, final evaluation included",
    )
    g = p.add_argument_group("output")
    a = g.add_argument
    a("--out", metavar="DIR", help="checkpoints, metrics, plots, samples")
    a(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT or DIR/last.pt (bare --resume: --out's last.pt, or a new run if there is none yet)",
    )
    a("--eval-every", type=int, help="evaluate (and checkpoint) every N iterations")
    a(
        "--eval-time-frac",
        type=float,
        metavar="FRAC",
        help="with --time-budget, also evaluate, checkpoint and sample every FRAC of the budget; "
        "0 = off",
    )
    a(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new run from CHECKPOINT's weights and vocabulary (fine-tuning on --data): "
        "new optimizer, iteration 0; the data must use only the checkpoint's characters",
    )
    a(
        "--keep-checkpoints",
        action="store_true",
        default=None,
        help="beside last.pt and best.pt keep every evaluated checkpoint as "
        "ckpt_iter<N>_epoch<E>_val<LOSS>.pt",
    )
    a(
        "--eval-max-chars",
        type=int,
        help="periodic evaluations read at most N val chars; 0 = all",
    )
    a("--checkpoint-every", type=int, help="default: at every evaluation")
    a("--log-every", type=int, help="progress line every N iterations when not a TTY")
    a("--sample-every", type=int, help="print a sample every N iterations; 0 = never")
    a(
        "--sample-at",
        metavar="ITERS",
        help="comma-separated iterations whose samples are saved to DIR/samples.jsonl",
    )
    a("--sample-length", type=int, help="characters per training sample")
    a("--sample-temperature", type=float, help="temperature of the training samples")
    a("--sample-prime", metavar="TEXT", help="prime text for the training samples")
    a("--no-plot", dest="plot", action="store_false", default=None, help="skip loss.png")
    a(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="force the live progress bar",
    )
    a(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="periodic lines instead of a live bar",
    )
    a("--quiet", action="store_true", default=None, help="no console output")
    g = p.add_argument_group("runtime")
    a = g.add_argument
    a("--seed", type=int, help="random seed (weights, dropout, samples)")
    a("--device", help="cpu (default), cuda, cuda:N or auto")
    a("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    a(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="bfloat16: the forward pass under torch.autocast (loss and weights stay float32)",
    )
    a("--compile", action="store_true", default=None, help="torch.compile the model for training")
    _show_train_defaults(p)
    p.set_defaults(func=cmd_train)


def _add_model_args(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt from training")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--impl",
        choices=["fusedrnn", "torch"],
        help="recurrent layers to run (default: the checkpoint's)",
    )
    p.add_argument("--backend", help="fusedrnn backend (default: automatic)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--half-weights",
        action="store_true",
        help="use the layers' weight matrices rounded to float16 (sampling a large model on a "
        "CPU reads half the bytes per character: 2-3x faster; eval shows the loss it costs)",
    )


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a checkpoint",
        description="Generate text, streaming it to stdout (or --output FILE) as it is produced.",
        formatter_class=_Help,
    )
    _add_model_args(p)
    p.add_argument(
        "--prime",
        default="",
        metavar="TEXT",
        help="text to start from (echoed); without one, a line start of the training text",
    )
    p.add_argument("--prime-file", metavar="FILE", help="read the prime text from FILE")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest only")
    p.add_argument("--argmax", action="store_true", help="greedy: always the likeliest")
    p.add_argument("--seed", type=int, default=None, help="makes the output reproducible")
    p.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="independent samples, drawn as one batch, each under a '--- sample i of N ---' line",
    )
    p.add_argument("--output", metavar="FILE", help="write the samples to FILE, not stdout")
    p.set_defaults(func=cmd_sample)


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="loss on the validation or test split",
        description="Loss in nats/char and bits/char on a split of the data the "
        "checkpoint was trained on (or of --data, split the same way).",
        formatter_class=_Help,
    )
    _add_model_args(p)
    p.add_argument("--split", choices=["val", "test", "train"], default="val", help="data split")
    p.add_argument("--data", metavar="FILE", help="evaluate on this file's split instead")
    p.add_argument("--batch-size", type=int, default=None, help="default: the training value")
    p.add_argument("--seq-len", type=int, default=None, help="default: the training value")
    p.add_argument("--max-chars", type=int, default=0, help="read at most N chars (0 = all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Character-level language models on fusedrnn layers.",
        formatter_class=_Help,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    register_analysis_commands(sub)  # visualize, find-cells, ngram, evolution
    return p


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    train(cfg)
    return 0


def _reason(e: OSError) -> str:
    """An OSError's cause in plain words, without the ``[Errno N]`` prefix."""
    return (e.strerror or type(e).__name__).lower()


def _load(args):
    import torch

    from .checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CharLMError(f"--device {device} requested but CUDA is not available")
    return load_checkpoint(
        args.checkpoint, map_location=device, impl=args.impl, backend=args.backend
    )


def _read_prime_file(path: str, bytes_mode: bool) -> str:
    if not os.path.exists(path):
        raise CharLMError(f"--prime-file {path} does not exist")
    if os.path.isdir(path):
        raise CharLMError(f"--prime-file {path} is a directory, not a file")
    with open(path, "rb") as f:
        raw = f.read()
    if bytes_mode:
        return raw.decode("latin-1")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise CharLMError(f"--prime-file {path} is not UTF-8 text") from None


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .sample import generate_batch

    if args.length < 0:
        raise CharLMError("--length must be >= 0")
    if args.num_samples < 1:
        raise CharLMError("--num-samples must be >= 1")
    if args.temperature <= 0 and not args.argmax:
        raise CharLMError("--temperature must be > 0 (use --argmax for greedy decoding)")
    if args.top_k is not None and args.top_k < 1:
        raise CharLMError("--top-k must be >= 1")
    if args.prime and args.prime_file:
        raise CharLMError("give the prime as --prime TEXT or --prime-file FILE, not both")
    if args.output is not None and os.path.isdir(args.output):
        raise CharLMError(f"--output {args.output} is a directory, not a file")
    model, vocab, cfg = _load(args)
    if args.prime_file:
        prime = _read_prime_file(args.prime_file, vocab.bytes_mode)
    else:
        prime = vocab.text_from_user(args.prime)
    vocab.encode(prime)  # unknown characters: a clear error before any output
    gen = torch.Generator()
    gen.manual_seed(args.seed if args.seed is not None else torch.seed())
    if args.output is not None:
        try:
            out = open(args.output, "wb")
        except OSError as e:
            raise CharLMError(f"cannot write --output {args.output}: {_reason(e)}") from None
    else:
        out = sys.stdout.buffer if vocab.bytes_mode else None

    def emit(s: str) -> None:
        if out is not None:
            out.write(vocab.to_output_bytes(s) if vocab.bytes_mode else s.encode("utf-8"))
            out.flush()
        else:
            sys.stdout.write(s)
            sys.stdout.flush()

    n = args.num_samples
    try:
        if n == 1:
            emit(prime)  # then the sample streams as it is chosen
        texts = generate_batch(
            model,
            vocab,
            prime,
            args.length,
            n,
            args.temperature,
            args.top_k,
            args.argmax,
            generator=gen,
            on_text=emit if n == 1 else None,
            context=None if prime else cfg.get("sample_context"),
            half_weights=args.half_weights,
        )
        if n == 1:
            emit("\n")
        else:  # drawn side by side as one batch, written one after another
            for i, text in enumerate(texts):
                emit(("\n" if i else "") + f"--- sample {i + 1} of {n} ---\n")
                emit(prime + text + "\n")
    finally:
        if args.output is not None:
            out.close()
    if args.output is not None:
        print(f"wrote {n} sample{'s' if n > 1 else ''} to {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import encode_tensor, load_corpus, split_corpus, text_sha256
    from .evaluate import bits, evaluate

    model, vocab, cfg = _load(args)
    if args.half_weights:
        from .sample import half_weight_model

        model = half_weight_model(model)
    path = args.data if args.data is not None else cfg.get("data")
    if path is not None and not os.path.exists(path):
        raise CharLMError(
            f"the checkpoint's training data {path} is not there any more; pass --data FILE"
        )
    text = load_corpus(path, bool(cfg.get("bytes", False)))
    unknown = vocab.unknown(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5])
        raise CharLMError(
            f"the data has characters outside the checkpoint's vocabulary ({shown}): "
            "the checkpoint was trained with a different vocabulary"
        )
    same = text_sha256(text) == cfg.get("data_sha256")
    parts = split_corpus(text, float(cfg.get("val_frac", 0.05)), float(cfg.get("test_frac", 0.05)))
    part = parts[{"train": 0, "val": 1, "test": 2}[args.split]]
    if len(part) < 2:
        raise CharLMError(
            f"the {args.split} split is empty (the run used val_frac={cfg.get('val_frac')}, "
            f"test_frac={cfg.get('test_frac')})"
        )
    ids = encode_tensor(vocab, part)
    nats, n = evaluate(
        model,
        ids,
        args.batch_size or int(cfg.get("batch_size", 32)),
        args.seq_len or int(cfg.get("seq_len", 64)),
        args.max_chars or None,
    )
    res = {
        "split": args.split,
        "loss_nats": nats,
        "bits_per_char": bits(nats),
        "chars": n,
        "same_data_as_training": same,
    }
    if args.json:
        print(json.dumps(res))
    else:
        note = "" if same else " (data differs from the training data)"
        print(
            f"{args.split} loss: {nats:.4f} nats/char, {bits(nats):.4f} bits/char "
            f"over {n:,} chars{note}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CharLMError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # e.g. `fusedrnn-charlm sample | head`: the reader left; not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:
        # an unwritable --out, a full disk, ...: the file and the cause, in one line
        if os.environ.get("FUSEDRNN_CHARLM_DEBUG"):
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"{PROG}: error: cannot use{where}: {_reason(e)}", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as e:
        # backend unavailable, ...: still one line, no traceback
        if os.environ.get("FUSEDRNN_CHARLM_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
