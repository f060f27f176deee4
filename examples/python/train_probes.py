"""Train and evaluate linear probes on every layer's residual stream (seed notebook workflow 3):
extract residuals for a labelled prompt set, train one probe per layer, evaluate each on its held-out
split, and plot accuracy by layer.

    .venv/bin/python examples/python/train_probes.py [BUNDLE] [OUT_DIR]

BUNDLE defaults to models/tiny; OUT_DIR to a temporary folder (extraction resumes there). With the
random-weight test bundle the accuracies test the plumbing, not MusicGen.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import musicgen_interp as mi

bundle = sys.argv[1] if len(sys.argv) > 1 else "models/tiny"
out = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="probes-"))
out.mkdir(parents=True, exist_ok=True)

# A small prompt set, two genres (a real one: `musicgen-interp concept-prompts`, or audio folders).
prompts = out / "prompts.csv"
jazz = ["smooth jazz with saxophone", "jazz trio with upright bass", "swing jazz big band", "cool jazz trumpet solo", "bebop piano", "late night jazz club"]
metal = ["heavy metal with distorted guitars", "thrash metal drums", "doom metal riff", "power metal anthem", "black metal tremolo guitar", "metal breakdown"]
prompts.write_text("text,label\n" + "".join(f"{t},jazz\n" for t in jazz) + "".join(f"{t},metal\n" for t in metal))

model = mi.MusicGen.load(bundle)
features = out / "features"
report = model.extract(features, prompts=prompts, steps=12, reduction="mean", seed=0)
print(f"extracted {report['extracted']} (resumed {report['already_done']}): residuals_cond {report['residuals_cond'].shape}, labels {np.bincount(report['labels'])}")

trained = mi.train_probes(features, out / "probes", num_classes=2, loss="mse", test_fraction=0.34)
for m in trained["metrics"]:
    print(f"  layer {m['layer']}: test accuracy {m['accuracy']:.3f}, loss {m['loss']:.4f}")
evaluation = mi.evaluate_probes(features, trained["weights"], out / "probes" / "accuracy.png")
print(f"best layer {evaluation['best_layer']}; confusion {evaluation['confusion'].shape}; plot {evaluation['plot']}")
weights = np.load(trained["weights"])
assert weights.shape == (model.config.layers, 2, model.config.d_model), weights.shape
assert len(evaluation["metrics"]) == model.config.layers and Path(evaluation["plot"]).is_file()
