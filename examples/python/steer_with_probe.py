"""Steer a generation with a probe's direction (seed notebook workflow 1): train probes on two
genres, take the best layer's direction for the target class, and add it to that layer's output on
the conditional rows with a Python hook, seed A's formula h <- (h + s |h| v) / (1 + s). The same
run through the built-in `steering` plugin gives the same codes, which this script checks.

    .venv/bin/python examples/python/steer_with_probe.py [BUNDLE] [OUT_DIR]
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import musicgen_interp as mi

bundle = sys.argv[1] if len(sys.argv) > 1 else "models/tiny"
out = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="steer-"))
probes = out / "probes"
if not (probes / "mse_weights.npy").is_file():  # train_probes.py writes them
    subprocess.run([sys.executable, str(Path(__file__).with_name("train_probes.py")), bundle, str(out)], check=True)

model = mi.MusicGen.load(bundle)
weights = np.load(probes / "mse_weights.npy")  # [layers, classes, d_model]
layer, target, strength = model.config.layers - 1, 1, 0.8  # class 1: metal (label order of the prompt set)
v = weights[layer, target] / np.linalg.norm(weights[layer, target])
s = np.float32(strength)


def steer(act, ctx):
    h = act[ctx.cond]  # the conditional rows; the unconditional ones are left alone
    norm = np.sqrt((h * h).sum(axis=-1, keepdims=True, dtype=np.float32))
    act[ctx.cond] = (h + s * norm * v) / (np.float32(1) + s)


prompt, args = "calm acoustic guitar", dict(steps=40, top_k=1, seed=0)
plain = model.generate(prompt, **args)
steered = model.generate(prompt, hooks={f"blocks.{layer}.hook_resid_post": steer}, **args)
settings = {"weights": str(probes / "mse_weights.npy"), "target_class": target, "layers": [layer], "strengths": [strength]}
plugin = model.generate(prompt, plugins=[("steering", settings)], **args)

changed = int((plain.codes != steered.codes).sum())
print(f"steering blocks.{layer}.hook_resid_post towards class {target} (strength {strength}): {changed} of {plain.codes.size} codes changed")
print(f"audio {steered.audio.shape} at {steered.sample_rate} Hz; Python hook == steering plugin: {np.array_equal(steered.codes, plugin.codes)}")
if changed == 0 or not np.array_equal(steered.codes, plugin.codes):
    sys.exit("steering changed nothing, or the Python hook and the plugin disagree")
