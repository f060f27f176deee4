"""PyTorch forward-hook reference for activation steering (seed A), for the Rust steering tests.

On the bundle's transformers checkpoint, greedy `generate()` (guidance 3) runs with forward hooks on
the target decoder layers that change the layer's output on the conditional rows, per token:
h' = (h + s |h| v) / (1 + s), v = W[L][C] / |W[L][C]|, on forward calls offset, offset + period, ...
(call 0 is the prefill). Writes DIR/reference/steering/{weights.npy, cases.json, CASE/codes.npy}.

Usage: python onnx/reference_steering.py --bundle DIR [--steps 30] [--dtype float16|float32]
"""

import argparse
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


def generate_codes(model, tokenizer, steps, case, weights):
    layers = model.decoder.model.decoder.layers
    state = {"call": 0}
    cond_rows = len(PROMPTS)

    def count(_module, _args, kwargs):
        # transformers' generate may run the prefill twice (both without a cache); the forward call
        # index is the cached length (the prompt is the single start token), as in the Rust loop.
        past = kwargs.get("past_key_values")
        state["call"] = past.get_seq_length() if past is not None else 0
        state["calls"] = state.get("calls", 0) + 1

    def steer_hook(layer, strength):
        v = torch.from_numpy(weights[layer, case["target_class"]])
        v = v / v.norm()

        def hook(_module, _args, output):
            call = state["call"]
            if call < case["offset"] or (call - case["offset"]) % case["period"] != 0:
                return output
            h = output[0] if isinstance(output, tuple) else output
            v_ = v.to(h.dtype)
            c = h[:cond_rows]
            norm = c.norm(dim=-1, keepdim=True)
            h = h.clone()
            h[:cond_rows] = (c + strength * norm * v_) / (1 + strength)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        return hook

    handles = [model.decoder.model.decoder.register_forward_pre_hook(count, with_kwargs=True)]
    for layer, strength in zip(case["layers"], case["strengths"]):
        handles.append(layers[layer].register_forward_hook(steer_hook(layer, strength)))
    try:
        codes, _ = mg_generate.greedy_codes(model, tokenizer, PROMPTS, steps, decode=False)
    finally:
        for h in handles:
            h.remove()
    assert state["call"] == steps - 1, f"expected the last call at cached length {steps - 1}, saw {state['call']}"
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
    d = model.decoder.config.hidden_size
    rng = np.random.default_rng(11)
    # Probe-like weights [layers, classes, d_model], scaled up so steering visibly moves a random model.
    weights = (rng.standard_normal((n_layers, 4, d)) * 3.0).astype(np.float32)
    cases = {
        "one_layer": {"target_class": 2, "layers": [n_layers - 1], "strengths": [0.8], "period": 1, "offset": 0},
        "several_layers": {"target_class": 1, "layers": [0, n_layers - 1], "strengths": [0.5, 0.3], "period": 1, "offset": 0},
        "period_3_offset_1": {"target_class": 3, "layers": [0], "strengths": [1.0], "period": 3, "offset": 1},
    }
    out = os.path.join(args.bundle, "reference", "steering")
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "weights.npy"), weights)
    plain = generate_codes(model, tokenizer, args.steps, {"layers": [], "strengths": [], "period": 1, "offset": 0, "target_class": 0}, weights)
    np.save(os.path.join(out, "plain_codes.npy"), plain)
    for name, case in cases.items():
        codes = generate_codes(model, tokenizer, args.steps, case, weights)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        np.save(os.path.join(out, name, "codes.npy"), codes)
        print(f"{name}: codes {codes.shape}, {(codes != plain).mean():.0%} differ from unsteered")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "steps": args.steps, "guidance_scale": 3.0, "greedy": True, "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
