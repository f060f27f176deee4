"""The test classifier (make_classifier.py): onnxruntime's logits equal the saved torch reference and the
reference inputs get clearly different probabilities. Run: .venv/bin/python -m pytest onnx/tests -q
"""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

ONNX_DIR = Path(__file__).resolve().parents[1]


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_classifier(tmp_path):
    import onnxruntime as ort

    out = tmp_path / "classifier"
    subprocess.run([sys.executable, str(ONNX_DIR / "make_classifier.py"), "--out", str(out)], check=True)
    x = np.load(out / "reference_input.npy")
    expected = np.load(out / "reference_logits.npy")
    assert x.shape == (3, 16000) and x.dtype == np.float32
    assert expected.shape == (3, 12) and expected.dtype == np.float32

    sess = ort.InferenceSession(str(out / "classifier.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"waveform": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    half = sess.run(["logits"], {"waveform": x[1:, :8000]})[0]  # dynamic batch and length
    assert half.shape == (2, 12)

    p = softmax(expected.astype(np.float64))
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(p[i] - p[j]).max() > 0.05, (i, j, p)

    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "name"] and len(rows) == 13 and rows[4] == ["3", "Violin, fiddle"]
    with open(out / "labels_no_trumpet.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 12 and ["2", "Trumpet"] not in rows and rows[3] == ["3", "Violin, fiddle"]
