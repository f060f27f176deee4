"""Shared fixtures: the test bundles `tiny` and `tiny2` with their transformers references
(exported by scripts/test.sh into tests/data), loaded once per preset."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest

import musicgen_interp as mi

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
PRESETS = ["tiny", "tiny2"]


def fixture(preset: str) -> Path:
    d = DATA / preset
    if not (d / "manifest.json").is_file():
        pytest.fail(f"test fixture {d} is missing: run `bash scripts/test.sh` (it exports the tiny bundles and their references)")
    return d


@functools.lru_cache(maxsize=None)
def load(preset: str) -> mi.MusicGen:
    return mi.MusicGen.load(fixture(preset), "cpu", threads=2)


def read_json(path: Path):
    return json.loads(path.read_text())


GREEDY = dict(top_k=1, temperature=1.0, guidance_scale=3.0, seed=0)


@pytest.fixture(params=PRESETS)
def preset(request):
    return request.param


def differing(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int((a != b).sum())
