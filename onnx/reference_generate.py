"""Reference outputs of transformers' MusicGen `generate()` for the Rust generation tests.

Runs `MusicgenForConditionalGeneration.generate` (greedy, guidance 3) on the bundle's `hf/` checkpoint
for a text-only batch and for an audio-prompt batch, and writes the generated codes (captured where
generate hands them to EnCodec) and the decoded waveform:

    DIR/reference/generate/cases.json
    DIR/reference/generate/{text,audio}/codes.npy     int64 [B, K, frames] (delay pattern undone)
    DIR/reference/generate/{text,audio}/waveform.npy  float32 [B, 1, samples]
    DIR/reference/generate/audio/prompt.npy           float32 [B, 1, samples] at the model's rate

Usage: python onnx/reference_generate.py --bundle DIR [--steps 60]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerFast

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


def run(model, tokenizer, steps, audio=None):
    captured = {}
    original = model.audio_encoder.decode

    def capture(audio_codes, *args, **kwargs):
        captured["codes"] = audio_codes[0].clone()
        return original(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = capture
    try:
        inputs = tokenizer(PROMPTS, padding=True, return_tensors="pt")
        kwargs = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        if audio is not None:
            kwargs["input_values"] = torch.from_numpy(audio)
        with torch.no_grad():
            wave = model.generate(**kwargs, do_sample=False, guidance_scale=3.0, max_new_tokens=steps)
    finally:
        model.audio_encoder.decode = original
    return captured["codes"].numpy().astype(np.int64), wave.numpy().astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    hf = os.path.join(args.bundle, "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        sys.exit(f"error: {hf} holds no transformers checkpoint (only random-weight bundles carry hf/)")
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration.from_pretrained(hf).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.bundle, "tokenizer.json"), pad_token="<pad>")
    tokenizer.pad_token_id = model.config.text_encoder.pad_token_id
    out = os.path.join(args.bundle, "reference", "generate")
    rate = model.config.audio_encoder.sampling_rate

    cases = {"prompts": PROMPTS, "guidance_scale": 3.0, "greedy": True, "max_new_tokens": args.steps, "cases": {}}
    audio = prompt_audio(rate, 0.3, len(PROMPTS))
    for name, audio_in in (("text", None), ("audio", audio)):
        codes, wave = run(model, tokenizer, args.steps, audio_in)
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
