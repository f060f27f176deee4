"""Reference outputs of transformers' MusicGen `generate()` for the Rust generation tests.

Runs `MusicgenForConditionalGeneration.generate` (greedy, guidance 3) on the bundle's `hf/` checkpoint
for a text-only batch and for an audio-prompt batch, and writes the generated codes (captured where
generate hands them to EnCodec) and the decoded waveform:

    DIR/reference/generate/cases.json
    DIR/reference/generate/{text,audio}/codes.npy     int64 [B, K, frames] (delay pattern undone)
    DIR/reference/generate/{text,audio}/waveform.npy  float32 [B, 1, samples]
    DIR/reference/generate/audio/prompt.npy           float32 [B, 1, samples] at the model's rate

Usage: python onnx/reference_generate.py --bundle DIR [--steps 60] [--dtype float16|float32] [--out DIR]

--dtype (default: the bundle manifest's dtype) is what transformers computes in; on an fp16 bundle the
weights are those of its graphs either way (rounded to float16, the text encoder float32: mg_dtype.py).
"""

import argparse
import json
import os
import sys

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mg_generate  # noqa: E402
from mg_dtype import DTYPES, bundle_dtype  # noqa: E402

PROMPTS = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums"]


def prompt_audio(rate, seconds, batch, seed=7):
    """A deterministic test signal: two tones and a little noise, different per row."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    rows = []
    for b in range(batch):
        x = 0.3 * np.sin(2 * np.pi * (220 + 110 * b) * t) + 0.2 * np.sin(2 * np.pi * 660 * t)
        rows.append(x + 0.02 * rng.standard_normal(t.shape))
    return np.asarray(rows, dtype=np.float32)[:, None, :]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dtype", choices=DTYPES, help="compute type (default: the bundle manifest's dtype)")
    ap.add_argument("--out", help="reference folder (default BUNDLE/reference); writes OUT/generate")
    args = ap.parse_args()
    dtype = args.dtype or bundle_dtype(args.bundle)
    model, tokenizer = mg_generate.load(args.bundle, dtype)
    out = os.path.join(args.out or os.path.join(args.bundle, "reference"), "generate")
    rate = model.config.audio_encoder.sampling_rate

    cases = {"prompts": PROMPTS, "guidance_scale": 3.0, "greedy": True, "max_new_tokens": args.steps,
             "dtype": dtype, "weights": bundle_dtype(args.bundle), "cases": {}}
    audio = prompt_audio(rate, 0.3, len(PROMPTS))
    for name, audio_in in (("text", None), ("audio", audio)):
        codes, wave = mg_generate.greedy_codes(model, tokenizer, PROMPTS, args.steps, audio_in)
        if not np.isfinite(wave).all():
            sys.exit(f"reference_generate.py: error: {name}: the {dtype} waveform is not finite")
        os.makedirs(os.path.join(out, name), exist_ok=True)
        np.save(os.path.join(out, name, "codes.npy"), codes)
        np.save(os.path.join(out, name, "waveform.npy"), wave)
        entry = {"codes": f"{name}/codes.npy", "waveform": f"{name}/waveform.npy", "codes_shape": list(codes.shape)}
        if audio_in is not None:
            np.save(os.path.join(out, name, "prompt.npy"), audio_in)
            entry["prompt"] = f"{name}/prompt.npy"
        cases["cases"][name] = entry
        print(f"{name}: codes {codes.shape}, waveform {wave.shape}")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)


if __name__ == "__main__":
    main()
