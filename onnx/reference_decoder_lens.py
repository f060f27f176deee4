"""PyTorch reference for DecoderLens's early exit: for each k = 1..L, transformers' MusicGen with its
decoder truncated to the first k layers (the final LayerNorm and the codebook heads then read layer
k's output) runs greedy `generate()` (guidance 3). Writes DIR/reference/decoder_lens/{cases.json,
layer_K.npy} (codes [B, K, frames]).

Usage: python onnx/reference_decoder_lens.py --bundle DIR [--steps 30]
"""

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mg_generate  # noqa: E402

PROMPTS = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    model, tokenizer = mg_generate.load(args.bundle)
    n_layers = model.decoder.config.num_hidden_layers
    out = os.path.join(args.bundle, "reference", "decoder_lens")
    os.makedirs(out, exist_ok=True)
    for k in range(1, n_layers + 1):
        truncated = copy.deepcopy(model)
        stack = truncated.decoder.model.decoder
        stack.layers = torch.nn.ModuleList(list(stack.layers)[:k])
        truncated.decoder.config.num_hidden_layers = k
        truncated.config.decoder.num_hidden_layers = k
        codes, _ = mg_generate.greedy_codes(truncated, tokenizer, PROMPTS, args.steps, decode=False)
        np.save(os.path.join(out, f"layer_{k}.npy"), codes)
        print(f"exit after {k} of {n_layers} layers: codes {codes.shape}")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "steps": args.steps, "guidance_scale": 3.0, "greedy": True, "layers": n_layers}, f, indent=2)


if __name__ == "__main__":
    main()
