"""Reference residual streams of transformers' MusicGen `generate()`, reduced as extraction reduces them.

Runs greedy guided `generate()` (guidance 3) on the bundle's `hf/` checkpoint, for a text-only batch
and for an audio-prompt batch, with PyTorch forward hooks on the decoder layers: a pre-hook on layer 0
records the embedding entry (what layer 0 receives), a forward hook on each layer its output. Every
forward's chunk is placed at the positions it computed, so the arrays hold each position the decoder
processed once (prompt and generated), rows in generate's order (conditional rows, then unconditional ones). The reductions
are then computed here with numpy, independently of the Rust capture:

    DIR/reference/residuals/cases.json
    DIR/reference/residuals/{text,audio}/all.npy    float32 [points, 2B, positions, d_model]
    DIR/reference/residuals/{text,audio}/last.npy   float32 [points, 2B, d_model]  (the last position)
    DIR/reference/residuals/{text,audio}/mean.npy   float32 [points, 2B, d_model]  (mean over positions)
    DIR/reference/residuals/{text,audio}/codes.npy  int64 [B, K, frames]
    DIR/reference/residuals/text/self_similarity.npy  float32 [L, L]: DecoderLens' self-similarity,
        cosine between the time-averaged outputs of layers 1..L of the conditional rows, averaged over
        prompts (points 1..L of mean.npy)
    DIR/reference/residuals/audio/prompt.npy        float32 [B, 1, samples] at the model's rate

Points: the embedding entry, then each layer's output (L + 1 in all).

Usage: python onnx/reference_residuals.py --bundle DIR [--steps 23]
"""

import argparse
import json
import os
import sys

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mg_generate  # noqa: E402
from reference_generate import PROMPTS, prompt_audio  # noqa: E402


def capture_generate(model, tokenizer, prompts, steps, audio):
    """Greedy generate with hooks: (residuals [points, rows, positions, d], codes).

    Each forward's chunk is placed at the positions it computed (its past length, read where the
    decoder adds position embeddings), so a forward that generate() runs twice over the same positions
    (this transformers version's prefill computes the first step again) counts once."""
    import torch

    decoder = model.decoder.model.decoder
    layers = decoder.layers
    starts = []
    per_point = [[] for _ in range(len(layers) + 1)]

    def positions_hook(module, args, kwargs):
        past = args[1] if len(args) > 1 else kwargs.get("past_key_values_length", 0)
        starts.append(int(past))

    handles = [decoder.embed_positions.register_forward_pre_hook(positions_hook, with_kwargs=True)]
    handles.append(layers[0].register_forward_pre_hook(lambda m, args: per_point[0].append(args[0].detach().clone())))
    for i, layer in enumerate(layers):

        def out_hook(module, args, output, i=i):
            h = output[0] if isinstance(output, tuple) else output
            per_point[i + 1].append(h.detach().clone())

        handles.append(layer.register_forward_hook(out_hook))
    try:
        codes, _ = mg_generate.greedy_codes(model, tokenizer, prompts, steps, audio, decode=False)
    finally:
        for h in handles:
            h.remove()
    assert all(len(chunks) == len(starts) for chunks in per_point), "a forward was not seen at every point"
    stacked = []
    for chunks in per_point:
        total = max(s + c.shape[1] for s, c in zip(starts, chunks))
        out = torch.full((chunks[0].shape[0], total, chunks[0].shape[2]), float("nan"))
        for s, c in zip(starts, chunks):
            out[:, s : s + c.shape[1]] = c
        assert not torch.isnan(out).any(), "a position was never computed"
        stacked.append(out.numpy().astype(np.float32))
    return np.stack(stacked), codes


def self_similarity(means_cond):
    """[L, prompts, d] -> [L, L] cosine similarity averaged over prompts (float64 throughout)."""
    m = means_cond.astype(np.float64)
    layers, n, _ = m.shape
    sim = np.zeros((layers, layers))
    for p in range(n):
        x = m[:, p, :]
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim += unit @ unit.T / n
    return sim.astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=23)
    args = ap.parse_args()
    model, tokenizer = mg_generate.load(args.bundle)
    out = os.path.join(args.bundle, "reference", "residuals")
    rate = model.config.audio_encoder.sampling_rate
    cases = {"prompts": PROMPTS, "guidance_scale": 3.0, "greedy": True, "max_new_tokens": args.steps, "cases": {}}
    audio = prompt_audio(rate, 0.3, len(PROMPTS))
    for name, audio_in in (("text", None), ("audio", audio)):
        res, codes = capture_generate(model, tokenizer, PROMPTS, args.steps, audio_in)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        np.save(os.path.join(d, "all.npy"), res)
        np.save(os.path.join(d, "last.npy"), res[:, :, -1, :])
        mean = res.astype(np.float64).mean(axis=2).astype(np.float32)
        np.save(os.path.join(d, "mean.npy"), mean)
        np.save(os.path.join(d, "codes.npy"), codes)
        entry = {"points": res.shape[0], "rows": res.shape[1], "positions": res.shape[2], "d_model": res.shape[3]}
        if audio_in is not None:
            np.save(os.path.join(d, "prompt.npy"), audio_in)
        else:
            np.save(os.path.join(d, "self_similarity.npy"), self_similarity(mean[1:, : len(PROMPTS), :]))
        cases["cases"][name] = entry
        print(f"{name}: residuals {res.shape}, codes {codes.shape}")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)


if __name__ == "__main__":
    main()
