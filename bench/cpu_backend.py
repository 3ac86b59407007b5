"""Quick benchmark of the compiled CPU backend against torch.nn (oneDNN) in one process.

    python bench/cpu_backend.py                # sequence (H=256, 512) and single-step cases
    python bench/cpu_backend.py --hidden 256 --repeats 7

Sequence case: 2-layer LSTM, float32, input 128, B=64, T=64; forward under no_grad and
forward+backward (sum of the output as loss). Single-step case: T=1, B=1, H=512, 2 layers,
no grad (a sampling loop). Medians of interleaved runs; the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fusedrnn.ops import cpu


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def stacked_layers(model: torch.nn.LSTM):
    """A forward through the cpu backend, layer by layer (does not need fusedrnn.modules)."""
    L = model.num_layers
    w = model._flat_weights

    def run(x, h0, c0):
        inp = x
        hs, cs = [], []
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = w[4 * layer : 4 * layer + 4]
            inp, h, c = cpu.layer("lstm", inp, h0[layer], c0[layer], w_ih, w_hh, b_ih, b_hh,
                                  None, None, False)  # fmt: skip
            hs.append(h)
            cs.append(c)
        return inp, (torch.stack(hs), torch.stack(cs))

    return run


def bench_sequence(H: int, repeats: int, I: int = 128, B: int = 64, T: int = 64, L: int = 2):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, L)
    ours = stacked_layers(ref)
    mod = None
    try:
        import fusedrnn

        mod = fusedrnn.LSTM(I, H, L, backend="cpu")
        mod.load_state_dict(ref.state_dict())
    except Exception as e:  # modules not ready yet: report the per-layer driver only
        print(f"  (fusedrnn.LSTM(backend='cpu') unavailable: {type(e).__name__}: {e})")
    x = torch.randn(T, B, I)
    h0 = torch.zeros(L, B, H)
    c0 = torch.zeros(L, B, H)
    xg = x.clone().requires_grad_()

    def fwd(f):
        def go():
            with torch.no_grad():
                f()

        return go

    def fwdbwd(f):
        def go():
            y = f()
            y.sum().backward()

        return go

    cases = {
        "nn.LSTM": (lambda: ref(x, (h0, c0))[0], lambda: ref(xg, (h0, c0))[0]),
        "cpu layer x2": (lambda: ours(x, h0, c0)[0], lambda: ours(xg, h0, c0)[0]),
    }
    if mod is not None:
        cases["fusedrnn.LSTM cpu"] = (lambda: mod(x, (h0, c0))[0], lambda: mod(xg, (h0, c0))[0])
    res = {k: {"fwd": [], "fwdbwd": []} for k in cases}
    for _ in range(repeats):  # interleave so that machine noise hits every case alike
        for k, (f, fg) in cases.items():
            res[k]["fwd"].append(median_ms(fwd(f), 1, warmup=1))
            res[k]["fwdbwd"].append(median_ms(fwdbwd(fg), 1, warmup=1))
    base = {m: statistics.median(res["nn.LSTM"][m]) for m in ("fwd", "fwdbwd")}
    print(f"H={H}  (2-layer LSTM, I={I}, B={B}, T={T}, fp32, {torch.get_num_threads()} threads)")
    best = {m: min(res["nn.LSTM"][m]) for m in ("fwd", "fwdbwd")}
    print("  median ms (speed-up vs nn.LSTM) | min ms (speed-up of the minima)")
    for k in cases:
        f, fb = (statistics.median(res[k][m]) for m in ("fwd", "fwdbwd"))
        f0, fb0 = (min(res[k][m]) for m in ("fwd", "fwdbwd"))
        print(f"  {k:18s} fwd {f:7.1f} ({base['fwd'] / f:4.2f}x) | {f0:7.1f} "
              f"({best['fwd'] / f0:4.2f}x)   fwd+bwd {fb:7.1f} ({base['fwdbwd'] / fb:4.2f}x) | "
              f"{fb0:7.1f} ({best['fwdbwd'] / fb0:4.2f}x)")  # fmt: skip


def bench_step(repeats: int, I: int = 512, H: int = 512, L: int = 2, steps: int = 50):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, L)
    x = torch.randn(1, 1, I)
    h = torch.zeros(L, 1, H)
    c = torch.zeros(L, 1, H)
    w = ref._flat_weights

    def loop_ref():
        s = (h, c)
        for _ in range(steps):
            _, s = ref(x, s)

    def loop_ours():
        hh, cc = h, c
        for _ in range(steps):
            _, hh, cc = cpu.stack_step("lstm", x[0], hh, cc, w, L, True, 0)

    cases = {"nn.LSTM": loop_ref, "cpu.stack_step": loop_ours}
    try:
        import fusedrnn

        mod = fusedrnn.LSTM(I, H, L, backend="cpu")
        mod.load_state_dict(ref.state_dict())

        def loop_mod():
            s = (h, c)
            for _ in range(steps):
                _, s = mod(x, s)

        cases["fusedrnn.LSTM cpu"] = loop_mod
    except Exception:
        pass
    res = {k: [] for k in cases}
    with torch.no_grad():
        for _ in range(repeats):
            for k, f in cases.items():
                res[k].append(median_ms(f, 1, warmup=1) / steps)
    base, best = statistics.median(res["nn.LSTM"]), min(res["nn.LSTM"])
    print(f"single step: T=1, B=1, I={I}, H={H}, {L} layers, no grad (per step; median | min)")
    for k in cases:
        m, m0 = statistics.median(res[k]), min(res[k])
        print(f"  {k:20s} {m * 1e3:8.1f} us ({base / m:5.2f}x) | {m0 * 1e3:8.1f} us "
              f"({best / m0:5.2f}x)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, nargs="*", default=[256, 512])
    p.add_argument("--no-step", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not cpu.is_available():
        raise SystemExit("fusedrnn._C is not built: pip install --no-build-isolation -e .")
    from fusedrnn import _C

    print(f"torch {torch.__version__}, pointwise kernels: {_C.kernel_isa()}")
    for H in a.hidden:
        bench_sequence(H, a.repeats)
    if not a.no_step:
        bench_step(a.repeats)


if __name__ == "__main__":
    main()
