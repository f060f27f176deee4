"""PyTorch reference for DecoderLens, both variants, with greedy `generate()` (guidance 3):
early exit: for each k = 1..L, the decoder truncated to the first k layers (the final LayerNorm and the
codebook heads then read layer k's output); text layers (the original DecoderLens): for each j = 1..J,
the decoder cross-attends to the T5 encoder's block j output passed through its final_layer_norm (j = J
is the normal encoder output). Writes DIR/reference/decoder_lens/{cases.json, layer_K.npy,
text_layer_J.npy} (codes [B, K, frames]).

Usage: python onnx/reference_decoder_lens.py --bundle DIR [--steps 30] [--dtype float16|float32]
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
from mg_dtype import DTYPES, bundle_dtype  # noqa: E402

PROMPTS = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums"]


def text_layer_states(model, tokenizer):
    """final_layer_norm(output of T5 block j) for j = 1..J, as a list of [B, S, d] tensors."""
    encoder = model.text_encoder.encoder
    inputs = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    raw_last = []
    handle = encoder.block[-1].register_forward_hook(lambda _m, _a, out: raw_last.append(out[0]))
    with torch.no_grad():
        out = model.text_encoder(**inputs, output_hidden_states=True)
    handle.remove()
    # transformers replaces hidden_states[-1] with last_hidden_state (already normed): use the raw block output
    raw = list(out.hidden_states[1:-1]) + raw_last
    with torch.no_grad():
        states = [encoder.final_layer_norm(h) for h in raw]
    assert torch.equal(states[-1], out.last_hidden_state)
    return states


def text_layer_codes(model, tokenizer, state, steps):
    """Greedy codes with the text encoder's output replaced by `state` inside generate(), which then adds the
    all-zero unconditional half itself (generate() with encoder_outputs and guidance > 1 fails in
    transformers 5.23: it takes the batch from encoder_outputs and does not add the unconditional half)."""

    def replace(_module, _args, output):
        assert output.last_hidden_state.shape == state.shape
        output.last_hidden_state = state
        return output

    handle = model.text_encoder.register_forward_hook(replace)
    try:
        codes, _ = mg_generate.greedy_codes(model, tokenizer, PROMPTS, steps, decode=False)
    finally:
        handle.remove()
    return codes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", choices=DTYPES, help="compute type (default: the bundle manifest's dtype; on an fp16 "
                    "bundle transformers computes in float16 on the graphs' own rounded weights)")
    args = ap.parse_args()
    dtype = args.dtype or bundle_dtype(args.bundle)
    model, tokenizer = mg_generate.load(args.bundle, None if dtype == "float32" and bundle_dtype(args.bundle) == "float32" else dtype)
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
    plain, _ = mg_generate.greedy_codes(model, tokenizer, PROMPTS, args.steps, decode=False)
    # The text-layer variant on float32 only: the half-precision profile's tests check the early exit.
    states = text_layer_states(model, tokenizer) if dtype == "float32" else []
    for j, state in enumerate(states, start=1):
        codes = text_layer_codes(model, tokenizer, state, args.steps)
        np.save(os.path.join(out, f"text_layer_{j}.npy"), codes)
        print(f"text layer {j} of {len(states)}: codes {codes.shape}, {(codes != plain).mean():.0%} differ from plain")
        if j == len(states):
            assert np.array_equal(codes, plain), "the last text layer must reproduce the plain codes"
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "steps": args.steps, "guidance_scale": 3.0, "greedy": True, "layers": n_layers, "dtype": dtype,
                   "text_layers": len(states)}, f, indent=2)


if __name__ == "__main__":
    main()
