"""Python-hooked generation against the same generation with the equivalent Rust plugin, in one
run: seed A's steering at one layer's output (one hook point per step) as a Python hook (written
plainly, and in place with fewer temporaries) and as the built-in `steering` plugin, interleaved,
several repeats. Prints min, median and max seconds of
each arm and their ratios (target: Python <= 1.10x the plugin), in wall-clock time and in the CPU
time of the calling thread.

    .venv/bin/python python/bench_hooks.py [BUNDLE] [--steps N] [--repeats R] [--threads T]

With `--threads 1` every graph runs on the calling thread, so its CPU time is the whole
generation's work and does not count time lost to other processes on a shared host; with more
threads the pool's workers do part of the work and only the wall-clock ratio means anything.
A third arm, `no hooks`, shows what both cost over a plain generation (`--no-plain` leaves it out).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import musicgen_interp as mi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", nargs="?", default="tests/data/tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core)")
    ap.add_argument("--no-plain", action="store_true", help="leave out the arm without hooks")
    a = ap.parse_args()
    m = mi.MusicGen.load(a.bundle, a.device, threads=a.threads)
    c = m.config
    layer, strength = c.layers // 2, 0.5
    weights = np.random.default_rng(0).standard_normal((c.layers, 2, c.d_model)).astype(np.float32)
    v = weights[layer, 1] / np.linalg.norm(weights[layer, 1])
    s = np.float32(strength)

    def steer(act, ctx):
        h = act[ctx.cond]
        norm = np.sqrt((h * h).sum(axis=-1, keepdims=True, dtype=np.float32))
        act[ctx.cond] = (h + s * norm * v) / (np.float32(1) + s)

    one_plus_s = np.float32(1) + s

    def steer_in_place(act, ctx):
        # The same arithmetic, operation for operation (so the same codes), with fewer temporaries:
        # written into the view of the conditional rows instead of assigned back.
        h = act[ctx.cond]
        norm = np.sqrt(np.square(h).sum(axis=-1, keepdims=True, dtype=np.float32))
        norm *= s
        h += norm * v
        h /= one_plus_s

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "w.npy", weights)
        settings = {"weights": str(Path(tmp) / "w.npy"), "target_class": 1, "layers": [layer], "strengths": [strength]}
        args = dict(steps=a.steps, top_k=1, guidance_scale=3.0, decode=False)
        runs = {
            "python hook": dict(hooks={f"blocks.{layer}.hook_resid_post": steer}),
            "rust plugin": dict(plugins=[("steering", settings)]),
            "python in-place": dict(hooks={f"blocks.{layer}.hook_resid_post": steer_in_place}),
        }
        if not a.no_plain:
            runs["no hooks"] = {}
        codes = {name: m.generate(["lo-fi piano with soft drums"], **args, **kw).codes for name, kw in runs.items()}  # warm-up
        wall = {name: [] for name in runs}
        cpu = {name: [] for name in runs}
        for _ in range(a.repeats):
            for name, kw in runs.items():
                t, u = time.perf_counter(), time.thread_time()
                m.generate(["lo-fi piano with soft drums"], **args, **kw)
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.thread_time() - u)
    print(f"{a.bundle}: {a.steps} steps, {c.layers} layers, d_model {c.d_model}, {m.provider}, threads {a.threads or 'one per core'}, {a.repeats} repeats")
    for label, times in (("wall", wall), ("thread cpu", cpu)):
        for name, t in times.items():
            print(f"  {label:<10} {name:<12} min {min(t):.4f} s  median {statistics.median(t):.4f} s  max {max(t):.4f} s")
        rs = times["rust plugin"]
        for arm in ("python hook", "python in-place"):
            py = times[arm]
            # Per repeat: the arms ran back to back, so their ratio sees the same load.
            paired = [p / r for p, r in zip(py, rs)]
            print(
                f"  {label:<10} {arm} / plugin: of mins {min(py) / min(rs):.3f}x, of medians {statistics.median(py) / statistics.median(rs):.3f}x; "
                f"per repeat min {min(paired):.3f}x median {statistics.median(paired):.3f}x max {max(paired):.3f}x (target <= 1.10x)"
            )
    same = all(np.array_equal(codes[arm], codes["rust plugin"]) for arm in ("python hook", "python in-place"))
    print(f"  codes of the hooks equal the plugin's: {same}")


if __name__ == "__main__":
    main()
