"""Python-hooked generation against the same generation with the equivalent Rust plugin, in one
run: seed A's steering at one layer's output (one hook point per step) as a Python hook and as
the built-in `steering` plugin, interleaved, several repeats; prints min and median seconds and
their ratio (target: Python <= 1.10x the plugin).

    .venv/bin/python python/bench_hooks.py [BUNDLE] [--steps N] [--repeats R]
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
    a = ap.parse_args()
    m = mi.MusicGen.load(a.bundle, a.device)
    c = m.config
    layer, strength = c.layers // 2, 0.5
    weights = np.random.default_rng(0).standard_normal((c.layers, 2, c.d_model)).astype(np.float32)
    v = weights[layer, 1] / np.linalg.norm(weights[layer, 1])
    s = np.float32(strength)

    def steer(act, ctx):
        h = act[ctx.cond]
        norm = np.sqrt((h * h).sum(axis=-1, keepdims=True, dtype=np.float32))
        act[ctx.cond] = (h + s * norm * v) / (np.float32(1) + s)

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "w.npy", weights)
        settings = {"weights": str(Path(tmp) / "w.npy"), "target_class": 1, "layers": [layer], "strengths": [strength]}
        args = dict(steps=a.steps, top_k=1, guidance_scale=3.0, decode=False)
        runs = {
            "python hook": dict(hooks={f"blocks.{layer}.hook_resid_post": steer}),
            "rust plugin": dict(plugins=[("steering", settings)]),
        }
        codes = {name: m.generate(["lo-fi piano with soft drums"], **args, **kw).codes for name, kw in runs.items()}  # warm-up
        times = {name: [] for name in runs}
        for _ in range(a.repeats):
            for name, kw in runs.items():
                t = time.perf_counter()
                m.generate(["lo-fi piano with soft drums"], **args, **kw)
                times[name].append(time.perf_counter() - t)
    print(f"{a.bundle}: {a.steps} steps, {c.layers} layers, d_model {c.d_model}, {m.provider}, {a.repeats} repeats")
    for name, t in times.items():
        print(f"  {name:<12} min {min(t):.4f} s  median {statistics.median(t):.4f} s")
    ratio_min = min(times["python hook"]) / min(times["rust plugin"])
    ratio_med = statistics.median(times["python hook"]) / statistics.median(times["rust plugin"])
    print(f"  python / plugin: min {ratio_min:.3f}x, median {ratio_med:.3f}x (target <= 1.10x); codes equal: {np.array_equal(*codes.values())}")


if __name__ == "__main__":
    main()
