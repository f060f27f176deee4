"""Writes a small labelled audio set for trying the probe workflow without downloading anything:
one folder per genre of the default label map, each track a synthetic texture (tones, noise bands,
pulses) that differs in spectrum by class. Not music: a stand-in for `lewtun/music_genres`.

Usage: .venv/bin/python scripts/demo_dataset.py OUT_DIR [--tracks 6] [--seconds 11]
"""

import argparse
import os
import wave

import numpy as np

RATE = 32000


def track(genre, k, seconds, rng):
    t = np.arange(int(RATE * seconds)) / RATE
    if genre == "Classical":
        x = sum(np.sin(2 * np.pi * f * (1 + 0.02 * k) * t) / (i + 1) for i, f in enumerate([220, 330, 440]))
    elif genre == "Electronic":
        x = np.sign(np.sin(2 * np.pi * 2 * t)) * np.sin(2 * np.pi * (110 + 5 * k) * t)
    elif genre == "Rock":
        x = np.convolve(rng.standard_normal(t.size), np.ones(3) / 3, mode="same") * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    else:  # Jazz
        x = np.sin(2 * np.pi * (600 + 20 * k) * t) * np.sin(2 * np.pi * 0.5 * t) + 0.3 * np.sin(2 * np.pi * 900 * t)
    return (x / np.abs(x).max() * 0.6 * 32767).astype("<i2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tracks", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=11.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for genre in ["Classical", "Electronic", "Rock", "Jazz"]:
        os.makedirs(os.path.join(args.out, genre), exist_ok=True)
        for k in range(args.tracks):
            with wave.open(os.path.join(args.out, genre, f"{genre.lower()}_{k}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(track(genre, k, args.seconds, rng).tobytes())
    print(f"wrote {4 * args.tracks} tracks into {args.out}")


if __name__ == "__main__":
    main()
