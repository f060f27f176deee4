"""Record every layer's residual stream during a generation and plot its norm per layer (seed
notebook workflow 2), conditional and unconditional rows apart.

    .venv/bin/python examples/python/residual_norms.py [BUNDLE] [OUT_DIR]

BUNDLE defaults to models/tiny (scripts/setup.sh exports it); OUT_DIR to a temporary folder.
Writes norms.csv and norms.png; exits non-zero if a norm is not finite or the cache is incomplete.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import musicgen_interp as mi

bundle = sys.argv[1] if len(sys.argv) > 1 else "models/tiny"
out = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="residual-norms-"))
out.mkdir(parents=True, exist_ok=True)

model = mi.MusicGen.load(bundle)
print(f"{bundle}: {model.config.layers} layers, d_model {model.config.d_model}, on {model.provider}")

# Every position of embed.hook_out and each blocks.L.hook_resid_post: [batch, positions, d_model].
points = model.residual_points()
cache = model.run_with_cache(["lo-fi piano with soft drums"], points=points, reduction="all", steps=40, seed=1)

rows = []
for point in points:
    cond = np.linalg.norm(cache[point], axis=-1).mean()          # mean norm per (row, position)
    uncond = np.linalg.norm(cache.uncond[point], axis=-1).mean()
    rows.append((point, cond, uncond))
    print(f"  {point:<28} {cache[point].shape}  mean norm: conditional {cond:8.3f}  unconditional {uncond:8.3f}")

(out / "norms.csv").write_text("point,conditional,unconditional\n" + "".join(f"{p},{c:.6f},{u:.6f}\n" for p, c, u in rows))
layers = rows[1:]  # the layer outputs, 0-based
mi.plot_by_layer(out / "norms.png", {"conditional": [c for _, c, _ in layers], "unconditional": [u for _, _, u in layers]},
                 title="mean residual norm after each layer", y_label="mean |blocks.L.hook_resid_post|")
print(f"wrote {out / 'norms.csv'} and {out / 'norms.png'}")
if len(rows) != model.config.layers + 1 or not all(np.isfinite([c for _, c, _ in rows] + [u for _, _, u in rows])):
    sys.exit("incomplete cache or non-finite norms")
