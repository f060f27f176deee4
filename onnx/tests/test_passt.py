"""PaSST as an ONNX judge (export_passt.py): the exported graph (onnxruntime) against the hear21passt
PyTorch model it came from, random weights. Logits within 1e-4 max abs for 1 s, 4 s and 10 s clips,
the mel front-end (ONNX's STFT) on its own, the clip-length bounds the metadata states, checkpoint
loading, label names, and the offline default's message. Run: .venv/bin/python -m pytest onnx/tests -q
"""

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ONNX_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ONNX_DIR))
import export_passt  # noqa: E402

TOL = 1e-4
RATE = export_passt.SAMPLE_RATE


def run_export(*args, env=None):
    return subprocess.run([sys.executable, str(ONNX_DIR / "export_passt.py"), *map(str, args)], capture_output=True, text=True, env=env)


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def music(seconds, seed):
    """Two clips that differ: a chord with vibrato and a noise burst envelope, and seeded noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(0.2 * np.sin(2 * np.pi * f * t + 3 * np.sin(2 * np.pi * 5 * t)) for f in rng.uniform(100, 2000, 3))
    chord += 0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0)
    return np.stack([chord, rng.uniform(-0.4, 0.4, t.size)]).astype(np.float32)


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """(judge folder, the PyTorch model): exported once for the module."""
    out = tmp_path_factory.mktemp("passt")
    r = run_export("--random-weights", "--seed", 0, "--out", out)
    assert r.returncode == 0, r.stderr
    return out, export_passt.build("random", 0)


def test_folder_and_metadata(judge):
    out, model = judge
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["sample_rate"] == 32000 and meta["activation"] == "softmax" and meta["classes"] == 527
    assert (meta["input"], meta["output"], meta["labels"]) == ("waveform", "logits", "labels.csv")
    assert meta["weights"] == {"random_seed": 0} and meta["architecture"] == "passt_s_swa_p16_128_ap476"
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(527)) and list(rows[0]) == ["index"]
    # The saved reference logits are the PyTorch model's, and the graph's too.
    x = np.load(out / "reference_input.npy")
    want = export_passt.logits(model, x)
    assert np.abs(np.load(out / "reference_logits.npy") - want).max() == 0
    assert np.abs(session(out / "classifier.onnx").run(None, {"waveform": x})[0] - want).max() <= TOL
    # Eval mode: no augmentation, the same logits twice.
    assert np.array_equal(export_passt.logits(model, x), want)


@pytest.mark.parametrize("seconds", [1, 4, 10])
def test_logits_equal_pytorch(judge, seconds):
    out, model = judge
    x = music(seconds, seed=seconds)
    want = export_passt.logits(model, x)
    got = session(out / "classifier.onnx").run(None, {"waveform": x})[0]
    assert got.shape == want.shape == (2, 527)
    diff = np.abs(got - want).max()
    print(f"{seconds} s: max abs {diff:.2e}, logits spread {want.std():.3f}")
    assert diff <= TOL, f"{seconds} s clips: ONNX vs PyTorch logits differ by {diff:.3e}"
    # The input matters: the two clips' logits differ by far more than the tolerance.
    assert np.abs(want[0] - want[1]).max() > 100 * TOL


def test_mel_front_end_equals_pytorch(judge, tmp_path):
    """The front-end alone (pre-emphasis, ONNX STFT, power, mel, log): PyTorch's torch.stft vs the graph."""
    import torch

    _, model = judge
    path = str(tmp_path / "mel.onnx")
    warnings.filterwarnings("ignore")
    with torch.no_grad():
        torch.onnx.export(model.mel, (torch.zeros(1, RATE),), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["mel"], dynamic_axes={"x": {0: "n", 1: "t"}})
        x = music(3, seed=7)
        want = model.mel(torch.from_numpy(x)).numpy()
    import onnx

    assert any(n.op_type == "STFT" for n in onnx.load(path).graph.node)
    got = session(path).run(None, {"x": x})[0]
    assert got.shape == want.shape == (2, 128, 300)
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()


def test_length_bounds_are_the_models(judge):
    """min_samples / max_samples: PyTorch and the graph both take them and both fail one sample past."""
    out, model = judge
    meta = json.loads((out / "classifier.json").read_text())
    low, high = meta["min_samples"], meta["max_samples"]
    assert (low, high) == (4801, 321600)  # 16 STFT frames (one patch); 99 time patches (10.05 s)
    s = session(out / "classifier.onnx")
    for n in (low, high):
        x = music(n / RATE, seed=n)[:1]
        assert np.abs(s.run(None, {"waveform": x})[0] - export_passt.logits(model, x)).max() <= TOL, n
    for n in (low - 1, high + 1):
        x = music(n / RATE, seed=n)[:1]
        with pytest.raises(Exception):
            export_passt.logits(model, x)
        with pytest.raises(Exception):
            s.run(None, {"waveform": x})


def test_checkpoint_loading(judge, tmp_path):
    """A checkpoint file in the release's format (the PaSST net's state dict) loads through the package's
    own loader: the graph gives that model's logits, not the random one's; --labels names the classes."""
    import torch

    out0, _ = judge
    other = export_passt.build("random", 1)
    ckpt = tmp_path / "passt.pt"
    torch.save(other.net.state_dict(), ckpt)
    labels = tmp_path / "class_labels_indices.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["index", "mid", "display_name"]] + [[i, f"/m/{i}", f"Class, {i}"] for i in range(527)])
    out = tmp_path / "judge"
    r = run_export("--checkpoint", ckpt, "--labels", labels, "--out", out)
    assert r.returncode == 0, r.stderr
    x = np.load(out / "reference_input.npy")
    got = session(out / "classifier.onnx").run(None, {"waveform": x})[0]
    assert np.abs(got - export_passt.logits(other, x)).max() <= TOL
    random0 = session(out0 / "classifier.onnx").run(None, {"waveform": x})[0]
    assert np.abs(got - random0).max() > 0.1, "the checkpoint's graph equals the seed-0 random graph"
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["weights"]["checkpoint"] == "passt.pt" and len(meta["weights"]["sha256"]) == 64
    with open(out / "labels.csv", newline="") as f:
        assert [r["display_name"] for r in csv.DictReader(f)][140] == "Class, 140"

    # Refusals: a missing file, a file that is no checkpoint, a label map of another size.
    r = run_export("--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "x")
    assert r.returncode != 0 and "does not exist" in r.stderr
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    r = run_export("--checkpoint", tmp_path / "bad.pt", "--out", tmp_path / "x")
    assert r.returncode != 0 and "not a passt_s_swa_p16_128_ap476 checkpoint" in r.stderr, r.stderr
    (tmp_path / "short.csv").write_text("index,display_name\n0,Speech\n")
    r = run_export("--random-weights", "--labels", tmp_path / "short.csv", "--out", tmp_path / "x")
    assert r.returncode != 0 and "1 classes, PaSST has 527" in r.stderr
    assert not (tmp_path / "x").exists()


def test_default_download_fails_offline_with_a_message(tmp_path):
    """The default (the package's own download), with the network cut by an unreachable proxy and an
    empty cache: a message naming --checkpoint and --random-weights, nothing written."""
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "cache"), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    r = run_export("--out", tmp_path / "x", env=env)
    assert r.returncode != 0 and "--checkpoint FILE" in r.stderr and "--random-weights" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
