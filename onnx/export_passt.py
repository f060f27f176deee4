"""PaSST (the ISMIR 2024 seed's judge) as an ONNX judge folder for the `onnx-judge` plugin.

Builds the classifier with the `hear21passt` package the way `hear21passt.base.load_model(mode="logits")`
does (architecture passt_s_swa_p16_128_ap476, 527 AudioSet classes, the package's own mel front-end at
32 kHz: pre-emphasis, STFT n_fft 1024 / window 800 / hop 320, 128 kaldi mel bins, log) and exports the
whole of it, front-end included, so the graph takes mono audio "waveform" float32 [clips, samples] at
32 kHz and returns "logits" float32 [clips, 527]. The STFT becomes ONNX's own STFT operator (opset 17).
Clip length is free within the model's time positional embedding: PaSST cuts its time embedding to the
clip's patches, so the graph does too; clips from `min_samples` (one time patch) to `max_samples`
(99 time patches, about 10.05 s) are accepted, and both bounds go into the metadata (the plugin
refuses other lengths by name; the PyTorch model fails on them too).

Weights: --checkpoint FILE (a local copy of the package's release checkpoint, e.g.
passt-s-f128-p16-s10-ap.476-swa.pt, loaded by the package's own loader), --random-weights [--seed N]
(the package's own initialisation under torch.manual_seed(N): what the tests use, no weights can be
fetched here), or by default the package's own download (fails offline with a message saying so).

Writes DIR/{classifier.onnx, classifier.json, labels.csv, reference_input.npy, reference_logits.npy}:
classifier.json is the judge's metadata the plugin reads (sample_rate 32000, activation softmax over all
527 logits, input / output names, labels, min/max samples, where the weights came from); labels.csv is
--labels FILE's names (AudioSet's class_labels_indices.csv, 527 rows) or, without it, the class indices
only (the package ships no label names; the judge then maps concepts by AudioSet index); the reference
input is three 1 s clips (440 Hz sine, seeded noise, a 200 Hz - 8 kHz chirp, amplitude 0.5) and the
logits are the PyTorch model's. The export is checked against PyTorch on them (max abs <= 1e-4).

Usage: python onnx/export_passt.py --out DIR [--random-weights [--seed 0] | --checkpoint FILE] [--labels CSV]
"""

import argparse
import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import sys
import warnings

import numpy as np
import onnx
import torch

ARCH = "passt_s_swa_p16_128_ap476"
CLASSES = 527
SAMPLE_RATE = 32000
TOLERANCE = 1e-4  # max abs difference of the exported graph's logits from PyTorch's


def quiet():
    """The package prints its whole network and the first forward's shapes to stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def build(weights="random", seed=0, checkpoint=None):
    """The package's `get_basic_model(mode="logits")` in eval mode, with `weights`: "random" (seeded
    initialisation), "checkpoint" (the package's own loader reading `checkpoint`) or "download"."""
    import hear21passt.base as base
    import hear21passt.models.helpers.vit_helpers as helpers
    from hear21passt.models.passt import get_model

    warnings.filterwarnings("ignore", message="Input image size")  # every clip shorter than 10 s
    torch.manual_seed(seed)
    with quiet(), contextlib.ExitStack() as stack:
        if weights == "random":
            stack.callback(setattr, base, "get_model_passt", base.get_model_passt)
            base.get_model_passt = functools.partial(get_model, pretrained=False)
        elif weights == "checkpoint":
            # The package's own loader (its filter and input-conv adaptation, strict), reading the local file.
            stack.callback(setattr, helpers, "download_cached_file", helpers.download_cached_file)
            helpers.download_cached_file = lambda *a, **k: checkpoint
        model = base.get_basic_model(mode="logits")
    return model.eval()


def length_bounds(model):
    """(min_samples, max_samples) of a clip the model takes: at least one time patch, and no more time
    patches than its time positional embedding has (PaSST cuts the embedding, it cannot extend it)."""
    mel, patch = model.mel, model.net.patch_embed
    hop, size, stride = mel.hopsize, patch.patch_size[1], patch.stride[1]
    most = model.net.time_new_pos_embed.shape[-1]
    # frames = (samples - 1) // hop + 1 (the pre-emphasis filter takes a sample, the STFT is centred);
    # patches = (frames - size) // stride + 1.
    min_frames, max_frames = size, (most - 1) * stride + size + stride - 1
    return (min_frames - 1) * hop + 1, max_frames * hop


def reference_input(seed):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, SAMPLE_RATE)
    chirp = 0.5 * np.sin(2 * np.pi * (200.0 * t + (8000.0 - 200.0) / 2 * t**2))
    return np.stack([sine, noise, chirp]).astype(np.float32)


def logits(model, x):
    with torch.no_grad(), quiet():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def export(model, path):
    """`model` -> ONNX at `path` (written to a temporary name first), [clips, samples] dynamic."""
    example = torch.from_numpy(reference_input(0)[:1].repeat(4, axis=1))  # 4 s: the trace cuts the time embedding
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is deprecated
    warnings.filterwarnings("ignore", category=UserWarning)  # stft's real output
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # the shape checks traced as constants
    warnings.filterwarnings("ignore", category=FutureWarning)  # the front-end's torch.cuda.amp.autocast
    with torch.no_grad(), quiet():
        torch.onnx.export(model, (example,), path + ".tmp", dynamo=False, opset_version=17, input_names=["waveform"],
                          output_names=["logits"], dynamic_axes={"waveform": {0: "clips", 1: "samples"}, "logits": {0: "clips"}})
    graph = onnx.load(path + ".tmp")
    graph.ir_version = min(graph.ir_version, 10)  # onnxruntime 1.31 rejects newer IR versions
    onnx.checker.check_model(graph)
    onnx.save(graph, path + ".tmp")
    os.replace(path + ".tmp", path)


def read_labels(path):
    """AudioSet's label names from a class_labels_indices.csv (`display_name` or `name` column)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = next((k for k in ("display_name", "name") if rows and k in rows[0]), None)
    if key is None:
        raise SystemExit(f"--labels {path}: no display_name or name column")
    if len(rows) != CLASSES:
        raise SystemExit(f"--labels {path}: {len(rows)} classes, PaSST has {CLASSES}")
    return [r[key] for r in rows]


def write_atomic(path, write):
    with open(path + ".tmp", "w", newline="") as f:
        write(f)
    os.replace(path + ".tmp", path)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="judge folder to write")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="local PaSST checkpoint (the package's release format)")
    source.add_argument("--random-weights", action="store_true", help="untrained, seeded (tests)")
    ap.add_argument("--seed", type=int, default=0, help="with --random-weights; also seeds the reference noise")
    ap.add_argument("--labels", help="AudioSet class_labels_indices.csv: label names for the 527 classes")
    args = ap.parse_args(argv)
    if args.seed != 0 and not args.random_weights:
        ap.error("--seed goes with --random-weights")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        ap.error(f"--checkpoint {args.checkpoint} does not exist")
    names = read_labels(args.labels) if args.labels else None

    if args.random_weights:
        model, weights = build("random", args.seed), {"random_seed": args.seed}
    elif args.checkpoint:
        try:
            model = build("checkpoint", checkpoint=os.path.abspath(args.checkpoint))
        except Exception as e:  # noqa: BLE001 - the package's loader raises whatever torch.load or load_state_dict raise
            raise SystemExit(f"--checkpoint {args.checkpoint}: not a {ARCH} checkpoint the package can load: {e}")
        weights = {"checkpoint": os.path.basename(args.checkpoint), "sha256": sha256(args.checkpoint)}
    else:
        import socket

        socket.setdefaulttimeout(60)
        try:
            model = build("download")
        except OSError as e:
            raise SystemExit(f"could not download the PaSST weights through the hear21passt package ({e}); offline? "
                             "give --checkpoint FILE (a copy of passt-s-f128-p16-s10-ap.476-swa.pt) or --random-weights")
        weights = {"download": model.net.default_cfg["url"].rsplit("/", 1)[-1]}

    out_classes = model.net.head[-1].out_features
    if out_classes != CLASSES or model.mel.sr != SAMPLE_RATE:
        raise SystemExit(f"the package built {out_classes} classes at {model.mel.sr} Hz, expected {CLASSES} at {SAMPLE_RATE}")
    os.makedirs(args.out, exist_ok=True)
    path = lambda name: os.path.join(args.out, name)  # noqa: E731
    export(model, path("classifier.onnx"))

    # The export against PyTorch on the reference clips.
    import onnxruntime as ort

    x = reference_input(args.seed)
    want = logits(model, x)
    got = ort.InferenceSession(path("classifier.onnx"), providers=["CPUExecutionProvider"]).run(None, {"waveform": x})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE:
        raise SystemExit(f"the exported graph's logits differ from PyTorch's by {diff:.3e} (> {TOLERANCE})")

    if names:
        write_atomic(path("labels.csv"), lambda f: csv.writer(f, lineterminator="\n").writerows(
            [["index", "display_name"]] + [[i, n] for i, n in enumerate(names)]))
    else:
        write_atomic(path("labels.csv"), lambda f: f.write("index\n" + "".join(f"{i}\n" for i in range(CLASSES))))
    np.save(path("reference_input.npy"), x)
    np.save(path("reference_logits.npy"), want)
    low, high = length_bounds(model)
    from importlib.metadata import version

    meta = {"sample_rate": SAMPLE_RATE, "input": "waveform", "output": "logits", "labels": "labels.csv",
            "activation": "softmax", "classes": CLASSES, "min_samples": low, "max_samples": high,
            "architecture": ARCH, "hear21passt": version("hear21passt"), "weights": weights}
    write_atomic(path("classifier.json"), lambda f: f.write(json.dumps(meta, indent=2) + "\n"))
    spread = float(want.std(axis=1).mean())
    print(f"wrote {args.out}: PaSST {ARCH} ({', '.join(f'{k} {v}' for k, v in weights.items())}), "
          f"{'named' if names else 'index-only'} labels, clips {low}..{high} samples at {SAMPLE_RATE} Hz; "
          f"ONNX vs PyTorch max abs {diff:.2e} on the reference clips (logits' spread {spread:.3f})")


if __name__ == "__main__":
    sys.exit(main())
