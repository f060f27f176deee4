"""A small ONNX audio classifier for tests (random seeded weights, 12 AudioSet-like labels).

Conv1d(1, 32, 400, stride 160) -> abs -> log1p -> mean over time -> minus the mean over channels ->
Linear(32, 12), built in torch and exported (opset 17, IR <= 10). Input "waveform" float32 [batch, samples] at --sample-rate, output "logits"
float32 [batch, 12]. Writes DIR/{classifier.onnx, classifier.json, labels.csv, labels_no_trumpet.csv,
reference_input.npy, reference_logits.npy}; the reference input is a 440 Hz sine, seeded white noise and
a 110 Hz square wave (1 s each, amplitude 0.5), the logits are the torch model's.

Usage: python onnx/make_classifier.py --out DIR [--seed 0] [--sample-rate 16000]
"""

import argparse
import csv
import json
import os
import warnings

import numpy as np
import onnx
import torch

LABELS = ["Guitar", "Piano", "Trumpet", "Violin, fiddle", "Classical music", "Pop music", "Jazz", "Rock music",
          "Electronic music", "Hip hop music", "Speech", "Drum"]
CHANNELS, KERNEL, STRIDE = 32, 400, 160


class Classifier(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, CHANNELS, KERNEL, stride=STRIDE)
        self.fc = torch.nn.Linear(CHANNELS, len(LABELS))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # scaled up so that the softmax is far from uniform
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g) * 0.1)
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 2.0)
            self.fc.bias.copy_(torch.randn(self.fc.bias.shape, generator=g) * 0.5)

    def forward(self, waveform):
        h = torch.log1p(self.conv(waveform.unsqueeze(1)).abs()).mean(dim=2)
        return self.fc(h - h.mean(dim=1, keepdim=True))  # centred: the classes differ between inputs


def reference_input(sample_rate, seed):
    t = np.arange(sample_rate) / sample_rate
    sine = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, sample_rate)
    square = np.where(np.sin(2 * np.pi * 110.0 * t) >= 0, 0.5, -0.5)
    return np.stack([sine, noise, square]).astype(np.float32)


def write_labels(path, skip=None):
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "name"])
        w.writerows([i, name] for i, name in enumerate(LABELS) if name != skip)
    os.replace(path + ".tmp", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-rate", type=int, default=16000)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = lambda name: os.path.join(args.out, name)  # noqa: E731

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is deprecated
    model = Classifier(args.seed).eval()
    x = reference_input(args.sample_rate, args.seed)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy().astype(np.float32)
        torch.onnx.export(model, (torch.from_numpy(x),), path("classifier.onnx.tmp"), dynamo=False, opset_version=17,
                          input_names=["waveform"], output_names=["logits"],
                          dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "logits": {0: "batch"}})
    graph = onnx.load(path("classifier.onnx.tmp"))
    graph.ir_version = min(graph.ir_version, 10)  # onnxruntime 1.31 rejects newer IR versions
    onnx.checker.check_model(graph)
    onnx.save(graph, path("classifier.onnx.tmp"))
    os.replace(path("classifier.onnx.tmp"), path("classifier.onnx"))

    write_labels(path("labels.csv"))
    write_labels(path("labels_no_trumpet.csv"), skip="Trumpet")
    np.save(path("reference_input.npy"), x)
    np.save(path("reference_logits.npy"), logits)
    with open(path("classifier.json"), "w") as f:
        json.dump({"sample_rate": args.sample_rate, "input": "waveform", "output": "logits", "labels": "labels.csv"}, f, indent=2)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    print(f"wrote {args.out}: classifier.onnx, {len(LABELS)} labels; top class per reference input "
          f"{[LABELS[i] for i in probs.argmax(1)]}, max prob {', '.join(f'{p:.3f}' for p in probs.max(1))}")


if __name__ == "__main__":
    main()
