"""The Triton backend's kernel paths against each other and against torch.nn on a GPU.

    python bench/paths.py --out DIR [--shapes anchor,mid] [--configs 16x16x64w4s2,...]
                          [--resident-configs [SHAPE:]16x32x64w4s1,...]

For each shape: torch.nn (cuDNN), the per-step path (a launch per step), the cooperative
path (the same kernel's time loop in one launch, programs meeting at a grid barrier between
steps) for every block configuration given (``BxHxK`` rows x units x reduction block, ``w``
warps, ``s`` pipeline stages) and the resident path (the cooperative launch with each
program's slice of W_hh held in shared memory, its shipped config and every one given, at
every shape or, as ``SHAPE:config``, at that one: a config whose slices do not fit the GPU's
shared memory is reported, not timed, as the launcher runs the cooperative launch instead).
Every provider is first checked against torch.nn (outputs and every gradient,
bench/providers.py's tolerances); then forward (no grad) and forward+backward are timed
eagerly, CUDA-event medians over interleaved rounds. Writes ``paths.csv`` and ``paths.md``
into ``--out``.

The ``*-proj`` shapes run the LSTM with ``proj_size`` (cuDNN has it too): the resident launch
holds ``W_hr``'s slice on chip beside ``W_hh``'s where it can, and the cooperative launch runs the
projection as a second phase of each step.

The ``ln-*`` shapes run fusedrnn's layer-norm LSTM / GRU (float32 kernels), which torch.nn
lacks: their baseline, and the oracle of the checks, is fusedrnn's reference op on the same
device (PyTorch ops per step, autograd's backward); a launch per phase of each step ("step")
against the cooperative launch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibrate  # noqa: E402
import graph_replay  # noqa: E402
import measure  # noqa: E402
import providers as P  # noqa: E402

LN = (("layer_norm", True),)  # the variant kernels compute in float32
SHAPES = {
    "anchor": dict(cell="lstm", B=16, T=1024, I=768, H=768, layers=1, dtype=torch.bfloat16),
    "mid": dict(cell="lstm", B=64, T=100, I=512, H=512, layers=1, dtype=torch.float32),
    "mid-tf32": dict(cell="lstm", B=64, T=100, I=512, H=512, layers=1, dtype=torch.float32),
    "charlm": dict(cell="lstm", B=64, T=128, I=64, H=512, layers=2, dtype=torch.float32),
    # the anchor and the mid shape with projections (LSTMP), h [B, H/2]
    "anchor-proj": dict(
        cell="lstm", B=16, T=1024, I=768, H=768, proj=384, layers=1, dtype=torch.bfloat16
    ),
    "mid-proj": dict(
        cell="lstm", B=64, T=100, I=512, H=512, proj=256, layers=1, dtype=torch.float32
    ),
    "gru-mid": dict(cell="gru", B=64, T=100, I=512, H=512, layers=1, dtype=torch.float32),
    "rnn-mid": dict(cell="rnn", B=64, T=100, I=512, H=512, layers=1, dtype=torch.float32),
    # a dry run on CPU tensors under TRITON_INTERPRET=1
    "tiny": dict(cell="lstm", B=3, T=4, I=5, H=40, layers=1, dtype=torch.float32),
    "tiny-proj": dict(cell="lstm", B=3, T=4, I=5, H=40, proj=18, layers=1, dtype=torch.float32),
    # layer norm (the module docstring)
    **{
        name: dict(spec, dtype=torch.float32, options=LN)
        for name, spec in (
            ("ln-anchor", dict(cell="lstm", B=16, T=1024, I=768, H=768, layers=1)),
            ("ln-gru-mid", dict(cell="gru", B=64, T=100, I=512, H=512, layers=1)),
            ("ln-tiny", dict(cell="lstm", B=3, T=4, I=5, H=40, layers=1)),
        )
    },
}
REFERENCE = "fusedrnn[reference]"


def baseline(cfg: P.Config) -> str:
    """The provider the others are checked against and compared with."""
    return REFERENCE if cfg.options else P.TORCH_NN


def parse_config(text: str):
    """``16x16x64w4s2`` -> StepConfig(block_b=16, block_h=16, block_k=64, 4 warps, 2 stages)."""
    from fusedrnn.ops.triton.configs import StepConfig

    b, h, k, warps, stages = calibrate.blocks(text)
    return StepConfig(block_b=b, block_h=h, block_k=k, num_warps=warps, num_stages=stages)


def launch_configs(cfg: P.Config, path: str, config) -> str:
    """The block configs of ``path``'s forward and backward launches at ``cfg``'s shape, as
    ``BxHxKwWsS/BxHxKwWsS`` (the ``configs`` column, which bench/calibrate.py reads); "" for
    the baselines. The variant kernels (``cfg.options``) take their own config on every path."""
    from fusedrnn.ops.triton import configs as C

    if path in (P.TORCH_NN, REFERENCE):
        return ""
    B, H, dtype = cfg.B, cfg.H, cfg.dtype_name

    def pick(backward: bool):
        if config is not None:
            return config
        if cfg.options:
            return C.pick_variant_config(B, H, dtype, backward)
        if path == "step":
            return C.pick_step_config(B, H)
        if path == "resident":
            return C.pick_resident_config(B, H, dtype, backward)
        return C.pick_cooperative_config(B, H, dtype, backward, bool(cfg.proj))

    return "/".join(pick(backward).text() for backward in (False, True))


@contextlib.contextmanager
def triton_path(path: str, config=None):
    """The Triton backend forced onto ``path``, the cooperative or resident launch with
    ``config`` (forward and backward, every dtype)."""
    from fusedrnn.ops import triton as tb
    from fusedrnn.ops.triton import configs

    given = contextlib.nullcontext() if config is None else configs.replaced(path, config)
    with given, tb.kernel_path(path):
        yield


def provider_calls(cfg: P.Config, path: str, config, mode: str):
    """A call of the provider (``torch.nn``, the reference op or a Triton path) returning its
    outputs."""
    if path in (P.TORCH_NN, REFERENCE):
        return graph_replay.make_call(path, cfg, mode)
    inner = graph_replay.make_call("fusedrnn[triton]", cfg, mode)

    def call():
        with triton_path(path, config):
            return inner()

    return call


def check(cfg: P.Config, path: str, config) -> str:
    """ "" when the provider matches the baseline, else the problem (a resident config given
    whose launches ran cooperative: its slices do not fit at once)."""
    from fusedrnn.ops.triton.runtime import launch_counter

    ref = P.make_reference_module(cfg)
    want_run, want_params = P.build(baseline(cfg), ref, cfg)
    got_run, got_params = P.build("fusedrnn[triton]", ref, cfg)
    x, state = P.make_inputs(cfg)
    want = P.evaluate(want_run, want_params, x, state, True)
    with triton_path(path, config), launch_counter() as counter:
        got = P.evaluate(got_run, got_params, x, state, True)
    if config is not None and counter.not_resident:
        return f"ran cooperative: {counter.not_resident} launches did not fit resident"
    return P.compare(got, want, cfg.dtype)[2]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="anchor,mid")
    ap.add_argument("--configs", default="", help="cooperative configs; the shipped ones always")
    ap.add_argument("--resident-configs", default="",
                    help="resident configs besides the shipped ones (BxHxKwWsS, as --configs), "
                         "each at every shape or, as SHAPE:config, at that one")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.05)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    known = ", ".join(SHAPES)
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"--shapes: no shape {shape!r} ({known})")
    options = (("--configs", args.configs, False),
               ("--resident-configs", args.resident_configs, True))  # fmt: skip
    for option, entries, scoped in options:
        for entry in filter(None, entries.split(",")):
            at, _, text = entry.rpartition(":") if scoped else ("", "", entry)
            if at and at not in SHAPES:
                ap.error(f"{option} {entry}: no shape {at!r} ({known})")
            try:
                calibrate.blocks(text)
            except ValueError as exc:
                ap.error(f"{option} {entry}: {exc}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes.split(","):
        spec = SHAPES[shape]
        with P.tf32(shape.endswith("tf32")):
            for mode in ("fwd", "fwdbwd"):
                cfg = P.Config(mode=mode, device=args.device, group=shape, **spec)
                base = baseline(cfg)
                candidates = {
                    base: (base, None),
                    "step": ("step", None),
                    "cooperative (shipped)": ("cooperative", None),
                }
                for text in filter(None, args.configs.split(",")):
                    candidates[f"cooperative {text}"] = ("cooperative", parse_config(text))
                if not cfg.options:  # the variant kernels have no resident launch
                    candidates["resident"] = ("resident", None)
                    for entry in filter(None, args.resident_configs.split(",")):
                        at, _, text = entry.rpartition(":")
                        if at in ("", shape):
                            candidates[f"resident {text}"] = ("resident", parse_config(text))
                fns, problems = {}, {}
                for name, (path, config) in candidates.items():
                    problems[name] = "" if path == base else check(cfg, path, config)
                    if not problems[name]:
                        fn = provider_calls(cfg, path, config, mode)
                        measure.warm_up(fn, args.device)
                        fns[name] = fn
                times = graph_replay.time_interleaved(
                    fns, args.device, args.rounds, args.min_run_time
                )
                for name in candidates:
                    ms = times.get(name)
                    label = cfg.label() + (", TF32 on" if shape.endswith("tf32") else "")
                    path, config = candidates[name]
                    rows.append(dict(shape=shape, label=label, mode=mode, provider=name,
                                     ms=ms, vs_base=times[base] / ms if ms else None,
                                     problem=problems[name],
                                     configs=launch_configs(cfg, path, config)))  # fmt: skip
                    print(
                        f"{shape:8} {mode:6} {name:28} "
                        f"{ms if ms else float('nan'):9.3f} ms  {problems[name]}",
                        flush=True,
                    )
        write(args.out, rows, args.device)  # after each shape: a run stopped early keeps them
    return 1 if any(r["problem"] for r in rows) else 0


def write(out: Path, rows: list[dict], device: str) -> None:
    """``paths.csv`` and ``paths.md`` of ``rows``, each file replaced whole and at once (a run
    stopped while writing leaves the last shape's files)."""
    from fusedrnn.charlm.checkpoint import atomic_write_bytes

    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "paths.csv", text.getvalue().encode())
    cuda = device == "cuda"
    machine = torch.cuda.get_device_name() if cuda else measure.cpu_model()
    clock = "CUDA-event" if cuda else "wall-clock (the interpreter: no speed)"
    lines = [
        "# Triton kernel paths vs torch.nn (layer norm: vs the reference op)",
        "",
        f"{machine}, torch {torch.__version__}; eager calls, {clock} "
        "medians of interleaved rounds; each provider checked against the baseline first: "
        "torch.nn, or for layer norm fusedrnn's reference op.",
        "",
        "| shape | mode | provider | ms | × baseline | check |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = f"{r['ms']:.3f}" if r["ms"] else "–"
        ratio = f"{r['vs_base']:.2f}×" if r["vs_base"] else "–"
        lines.append(f"| {r['label']} | {r['mode']} | {r['provider']} | {ms} | {ratio} | "
                     f"{r['problem'] or 'ok'} |")  # fmt: skip
    atomic_write_bytes(out / "paths.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
