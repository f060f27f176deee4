#!/usr/bin/env python3
"""Judge saved clips again with PaSST in PyTorch (hear21passt) and with onnxruntime, for comparison with
the probabilities a run saved (tests/passt.rs).

    python onnx/check_passt_judge.py --judge DIR [--checkpoint FILE] --out clips.csv CLIP.wav PROBS.json ...

DIR is a judge folder written by export_passt.py; the PyTorch model is rebuilt the way its
classifier.json says (random weights with its seed, or --checkpoint FILE for a checkpoint export).
Each CLIP.wav (32-bit float, at the judge's 32 kHz: no resampling here) goes through both models in
float32, one clip per call; probabilities = softmax over all 527 logits in float64, as the seed. PROBS.json
holds the run's saved probabilities (`probabilities`, a list of 527). One CSV row per clip: the clip, the
largest relative difference of the saved probabilities from PyTorch's, the largest absolute difference
from onnxruntime's, and PyTorch's top probability. The thresholds are the caller's.
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_passt  # noqa: E402
from make_sensitive_judge import read_float_wav  # noqa: E402


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", required=True)
    ap.add_argument("--checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("pairs", nargs="+", help="CLIP.wav PROBS.json, repeated")
    args = ap.parse_args(argv)
    if len(args.pairs) % 2:
        ap.error("give CLIP.wav PROBS.json pairs")
    meta = json.loads((Path(args.judge) / "classifier.json").read_text())
    if args.checkpoint:
        model = export_passt.build("checkpoint", checkpoint=os.path.abspath(args.checkpoint))
    elif "random_seed" in meta["weights"]:
        model = export_passt.build("random", meta["weights"]["random_seed"])
    else:
        ap.error(f"{args.judge} was exported from {meta['weights']}: give --checkpoint FILE")

    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(args.judge) / "classifier.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for wav, probs in zip(args.pairs[::2], args.pairs[1::2]):
        rate, x = read_float_wav(wav)
        if rate != meta["sample_rate"]:
            raise SystemExit(f"{wav}: {rate} Hz, the judge takes {meta['sample_rate']}")
        saved = np.asarray(json.loads(Path(probs).read_text())["probabilities"], dtype=np.float64)
        torch_p = softmax(export_passt.logits(model, x[None]))[0]
        ort_p = softmax(session.run(None, {"waveform": x[None]})[0])[0]
        if saved.shape != torch_p.shape:
            raise SystemExit(f"{probs}: {saved.shape[0]} probabilities, the judge has {torch_p.shape[0]} classes")
        rows.append([wav, float(np.max(np.abs(saved - torch_p) / torch_p)), float(np.max(np.abs(saved - ort_p))), float(torch_p.max())])
    with open(args.out, "w", newline="") as f:
        csv.writer(f).writerows([["clip", "max_rel_diff_torch", "max_abs_diff_onnxruntime", "top_probability"]] + rows)


if __name__ == "__main__":
    main()
