#!/usr/bin/env python3
"""A test judge whose class probabilities move with the clip, calibrated on a few clips.

    python onnx/make_sensitive_judge.py --out DIR --clips a.wav b.wav c.wav [--seed 0] [--sample-rate 16000]

The test bundles' random-weight EnCodec decodes nearly the same waveform whatever the codes (clips of
different prompts and seeds differ in the fifth decimal), so the test classifier (make_classifier.py)
gives each clip almost the same probabilities: an intervention's precision is then ~1e-8 and a
scoring test could not tell KL(p1 || p0) from KL(p0 || p1). This judge keeps that classifier's front
end (Conv1d -> abs -> log1p -> mean over time -> centred over channels) and standardises its 32
features with the mean and (RMS) spread measured on the given clips (resampled to --sample-rate by taking
every n-th sample of a float WAV at a multiple of it) before a random Linear(32, 12), so clips of the
test bundles get clearly different softmax probabilities. Writes DIR/{judge.onnx, labels.csv}
(the same 12 AudioSet-like labels).
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_classifier import LABELS, Classifier, write_labels  # noqa: E402


def read_float_wav(path):
    """(rate, mono float32 samples) of a 32-bit float WAV as `musicgen-interp` writes them."""
    b = Path(path).read_bytes()
    if b[:4] != b"RIFF" or b[8:12] != b"WAVE":
        raise SystemExit(f"{path}: not a WAV file")
    pos, rate, channels, data = 12, None, None, None
    while pos + 8 <= len(b):
        tag, size = b[pos : pos + 4], int.from_bytes(b[pos + 4 : pos + 8], "little")
        body = b[pos + 8 : pos + 8 + size]
        if tag == b"fmt ":
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            if int.from_bytes(body[14:16], "little") != 32:
                raise SystemExit(f"{path}: expected 32-bit float samples")
        elif tag == b"data":
            data = np.frombuffer(body, dtype="<f4")
        pos += 8 + size + (size & 1)
    if rate is None or data is None:
        raise SystemExit(f"{path}: no fmt or data chunk")
    return rate, data.reshape(-1, channels).mean(axis=1).astype(np.float32)


class SensitiveJudge(torch.nn.Module):
    def __init__(self, front, mean, scale, seed):
        super().__init__()
        self.conv = front.conv
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("scale", torch.from_numpy(scale))
        self.fc = torch.nn.Linear(self.mean.numel(), len(LABELS))
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 0.3)
            self.fc.bias.copy_(torch.randn(self.fc.bias.shape, generator=g) * 0.5)

    def features(self, waveform):
        h = torch.log1p(self.conv(waveform.unsqueeze(1)).abs()).mean(dim=2)
        return h - h.mean(dim=1, keepdim=True)

    def forward(self, waveform):
        return self.fc((self.features(waveform) - self.mean) * self.scale)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--clips", nargs="+", required=True, help="float WAVs of the bundle the judge will score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-rate", type=int, default=16000)
    args = ap.parse_args(argv)
    if len(args.clips) < 2:
        raise SystemExit("give at least two clips to measure the features' spread")
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # one summation order for the calibration
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    front = Classifier(args.seed).eval()
    feats = []
    for clip in args.clips:
        rate, x = read_float_wav(clip)
        if rate % args.sample_rate:
            raise SystemExit(f"{clip}: {rate} Hz is not a multiple of {args.sample_rate} Hz")
        x = np.ascontiguousarray(x[:: rate // args.sample_rate])
        feats.append(SensitiveJudge(front, np.zeros(32, np.float32), np.ones(32, np.float32), args.seed).features(torch.from_numpy(x)[None])[0].numpy())
    feats = np.stack(feats).astype(np.float64)
    mean = feats.mean(axis=0).astype(np.float32)
    spread = feats.std(axis=0)
    # One scale for every feature (their RMS spread): a per-feature one from a few clips is noisy.
    scale = np.full(32, 1.0 / max(float(np.sqrt(np.mean(spread**2))), 1e-12), np.float32)
    model = SensitiveJudge(front, mean, scale, args.seed).eval()

    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "judge.onnx")
    example = torch.zeros(1, args.sample_rate // 4)
    torch.onnx.export(model, (example,), out + ".tmp", dynamo=False, opset_version=17, input_names=["waveform"],
                      output_names=["logits"], dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "logits": {0: "batch"}})
    graph = onnx.load(out + ".tmp")
    graph.ir_version = min(graph.ir_version, 10)
    onnx.checker.check_model(graph)
    onnx.save(graph, out + ".tmp")
    os.replace(out + ".tmp", out)
    write_labels(os.path.join(args.out, "labels.csv"))
    probs = []
    for clip in args.clips:
        rate, x = read_float_wav(clip)
        logits = model(torch.from_numpy(np.ascontiguousarray(x[:: rate // args.sample_rate]))[None])
        probs.append(torch.softmax(logits, 1)[0].numpy())
    probs = np.stack(probs)
    print(f"wrote {out}: feature spread {spread.min():.2e}..{spread.max():.2e}; top probability per clip "
          f"{', '.join(f'{p:.3f}' for p in probs.max(1))}; largest change between clips {np.abs(probs - probs[0]).max():.3f}")


if __name__ == "__main__":
    main()
