"""The Triton backend's kernel paths against each other and against torch.nn on a GPU.

    python bench/paths.py --out DIR [--shapes anchor,mid] [--configs 16x16x64w4s2,...]
                          [--resident-configs [SHAPE:]16x32x64w4s1,...]
                          [--resident-barriers [SHAPE:]flags,...]

For each shape: torch.nn (cuDNN), the per-step path (a launch per step), the cooperative
path (the same kernel's time loop in one launch, programs meeting at a grid barrier between
steps) for every block configuration given (``BxHxK`` rows x units x reduction block, ``w``
warps, ``s`` pipeline stages) and the resident path (the cooperative launch with each
program's slice of W_hh held in shared memory, its shipped config and every one given, at
every shape or, as ``SHAPE:config``, at that one: a config whose slices do not fit the GPU's
shared memory is reported, not timed, as the launcher runs the cooperative launch instead;
and in its shipped config with each grid barrier given, a kind of ``sync.BARRIER_KINDS`` other
than the launches' counter, the ``barrier`` column). Every provider is first checked against
torch.nn (outputs and every gradient, bench/providers.py's tolerances); then forward (no grad)
and forward+backward are timed eagerly, CUDA-event medians over interleaved rounds. Writes
``paths.csv`` and ``paths.md`` into ``--out``.

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

import graph_replay  # noqa: E402
import measure  # noqa: E402
import providers as P  # noqa: E402

from fusedrnn.ops.triton import configs  # noqa: E402  (imports no triton)

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


def launch_configs(cfg: P.Config, path: str, config) -> str:
    """The block configs of ``path``'s forward and backward launches at ``cfg``'s shape, as
    ``BxHxKwWsS/BxHxKwWsS`` (the ``configs`` column, which bench/calibrate.py reads); "" for
    the baselines. The variant kernels (``cfg.options``) take their own config on every path."""
    if path in (P.TORCH_NN, REFERENCE):
        return ""
    B, H, dtype = cfg.B, cfg.H, cfg.dtype_name

    def pick(backward: bool):
        if config is not None:
            return config
        if cfg.options:
            return configs.pick_variant_config(B, H, dtype, backward)
        if path == "step":
            return configs.pick_step_config(B, H)
        if path == "resident":
            return configs.pick_resident_config(B, H, dtype, backward)
        return configs.pick_cooperative_config(B, H, dtype, backward, bool(cfg.proj))

    return "/".join(pick(backward).text() for backward in (False, True))


@contextlib.contextmanager
def triton_path(path: str, config=None, barrier=None):
    """The Triton backend forced onto ``path``, the cooperative or resident launch with
    ``config`` (forward and backward, every dtype) and grid barriers of kind ``barrier``
    (None: as shipped)."""
    from fusedrnn.ops import triton as tb

    given = contextlib.nullcontext()
    if path in ("cooperative", "resident"):
        given = configs.replaced(path, config, barrier)
    with given, tb.kernel_path(path):
        yield


def provider_calls(cfg: P.Config, path: str, config, barrier, mode: str):
    """A call of the provider (``torch.nn``, the reference op or a Triton path) returning its
    outputs."""
    if path in (P.TORCH_NN, REFERENCE):
        return graph_replay.make_call(path, cfg, mode)
    inner = graph_replay.make_call("fusedrnn[triton]", cfg, mode)

    def call():
        with triton_path(path, config, barrier):
            return inner()

    return call


def check(cfg: P.Config, path: str, config, barrier) -> str:
    """ "" when the provider matches the baseline, else the problem (a resident config or
    barrier given whose launches ran cooperative: its slices do not fit at once)."""
    from fusedrnn.ops.triton.runtime import launch_counter

    ref = P.make_reference_module(cfg)
    want_run, want_params = P.build(baseline(cfg), ref, cfg)
    got_run, got_params = P.build("fusedrnn[triton]", ref, cfg)
    x, state = P.make_inputs(cfg)
    want = P.evaluate(want_run, want_params, x, state, True)
    with triton_path(path, config, barrier), launch_counter() as counter:
        got = P.evaluate(got_run, got_params, x, state, True)
    if (config or barrier) is not None and counter.not_resident:
        return f"ran cooperative: {counter.not_resident} launches did not fit resident"
    return P.compare(got, want, cfg.dtype)[2]


def barrier_kind(text: str) -> str:
    """``text``, a grid barrier's kind (``sync.BARRIER_KINDS``) other than the launches' own;
    ValueError for another text."""
    if text not in configs.BARRIER_KINDS:
        raise ValueError(f"no barrier kind {text!r} ({', '.join(configs.BARRIER_KINDS)})")
    if text == configs.GRID_BARRIER:
        raise ValueError(f"{text!r} is the launches' own barrier (the provider 'resident')")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="anchor,mid")
    ap.add_argument("--configs", default="", help="cooperative configs; the shipped ones always")
    ap.add_argument("--resident-configs", default="",
                    help="resident configs besides the shipped ones (BxHxKwWsS, as --configs), "
                         "each at every shape or, as SHAPE:config, at that one")  # fmt: skip
    ap.add_argument("--resident-barriers", default="",
                    help="grid barriers the resident launch runs with besides its own "
                         "(relaxed, flags), as --resident-configs")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.05)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    known = ", ".join(SHAPES)
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"--shapes: no shape {shape!r} ({known})")
    options = (("--configs", args.configs, False, configs.StepConfig.parse),
               ("--resident-configs", args.resident_configs, True, configs.StepConfig.parse),
               ("--resident-barriers", args.resident_barriers, True, barrier_kind))  # fmt: skip
    for option, entries, scoped, parse in options:
        for entry in filter(None, entries.split(",")):
            at, _, text = entry.rpartition(":") if scoped else ("", "", entry)
            if at and at not in SHAPES:
                ap.error(f"{option} {entry}: no shape {at!r} ({known})")
            try:
                parse(text)
            except ValueError as exc:
                ap.error(f"{option} {entry}: {exc}")
    return args


def _at(entries: str, shape: str) -> list[str]:
    """The texts of ``SHAPE:text`` or ``text`` entries that apply at ``shape``."""
    at_shape = (entry.rpartition(":") for entry in filter(None, entries.split(",")))
    return [text for at, _, text in at_shape if at in ("", shape)]


def main(argv=None) -> int:
    args = parse_args(argv)
    parse = configs.StepConfig.parse
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes.split(","):
        spec = SHAPES[shape]
        with P.tf32(shape.endswith("tf32")):
            for mode in ("fwd", "fwdbwd"):
                cfg = P.Config(mode=mode, device=args.device, group=shape, **spec)
                base = baseline(cfg)
                # name -> (path, config, barrier), None standing for the shipped one
                candidates = {
                    base: (base, None, None),
                    "step": ("step", None, None),
                    "cooperative (shipped)": ("cooperative", None, None),
                }
                for text in filter(None, args.configs.split(",")):
                    candidates[f"cooperative {text}"] = ("cooperative", parse(text), None)
                if not cfg.options:  # the variant kernels have no resident launch
                    candidates["resident"] = ("resident", None, None)
                    for text in _at(args.resident_configs, shape):
                        candidates[f"resident {text}"] = ("resident", parse(text), None)
                    for kind in _at(args.resident_barriers, shape):
                        candidates[f"resident barrier={kind}"] = ("resident", None, kind)
                fns, problems = {}, {}
                for name, (path, config, barrier) in candidates.items():
                    problems[name] = "" if path == base else check(cfg, path, config, barrier)
                    if not problems[name]:
                        fn = provider_calls(cfg, path, config, barrier, mode)
                        measure.warm_up(fn, args.device)
                        fns[name] = fn
                times = graph_replay.time_interleaved(
                    fns, args.device, args.rounds, args.min_run_time
                )
                for name in candidates:
                    ms = times.get(name)
                    label = cfg.label() + (", TF32 on" if shape.endswith("tf32") else "")
                    path, config, barrier = candidates[name]
                    # the launches with grid barriers: which kind
                    synced = path in ("cooperative", "resident")
                    barrier = (barrier or configs.GRID_BARRIER) if synced else ""
                    rows.append(dict(shape=shape, label=label, mode=mode, provider=name,
                                     ms=ms, vs_base=times[base] / ms if ms else None,
                                     problem=problems[name],
                                     configs=launch_configs(cfg, path, config),
                                     barrier=barrier))  # fmt: skip
                    print(
                        f"{shape:8} {mode:6} {name:28} "
                        f"{ms if ms else float('nan'):9.3f} ms  {problems[name]}",
                        flush=True,
                    )
                # after each shape and mode: a run stopped early keeps what it timed
                write(args.out, rows, args.device)
    return 1 if any(r["problem"] for r in rows) else 0


def write(out: Path, rows: list[dict], device: str) -> None:
    """``paths.csv`` and ``paths.md`` of ``rows``, each file replaced whole and at once (a run
    stopped while writing leaves the files of the mode timed before)."""
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
