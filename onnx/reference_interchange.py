"""PyTorch forward-hook reference for interchange interventions (concept means), for the Rust tests.

Sites are each decoder layer's self-attention output (`self_attn`), cross-attention output (`encoder_attn`)
and MLP output (`fc2`): the values added to the residual stream. Means arrays are float32
[layer, component (attn, cross_attn, mlp), absolute position p < 1 + steps, cond/uncond, d_model].
Greedy `generate()` (guidance 3) runs with a hook on one site that changes the conditional rows at every
position p: adjust adds means_b[..., p, 0] - means_a[..., p, 0], replace sets means_b[..., p, 0].
A third run records every site, unchanged, for three prompts in one batch and averages them per position
(cond and uncond rows apart). Writes DIR/reference/interchange/{cases.json, means_a.npy, means_b.npy,
means_ref.npy, codes_plain.npy, codes_MODE_LAYER_COMPONENT.npy} (codes [B, K, frames]).

Usage: python onnx/reference_interchange.py --bundle DIR [--steps 20]
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

PROMPTS = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums"]
MEANS_PROMPTS = ["happy jazz with piano", "slow classical violin piece", "energetic rock with electric guitar"]
COMPONENTS = ["attn", "cross_attn", "mlp"]
MODES = ["adjust", "replace"]


def site_module(layer, component):
    return {"attn": layer.self_attn, "cross_attn": layer.encoder_attn, "mlp": layer.fc2}[component]


def generate_codes(model, tokenizer, prompts, steps, site_hooks):
    """Greedy generate; site_hooks maps (layer, component index) to fn(out [2B, T, d], past_len) -> new
    out or None. past_len is the cache length: the absolute position of the call's first token."""
    stack = model.decoder.model.decoder
    state = {"past": None}

    def track(_module, _args, kwargs):
        # generate may run the prefill twice, both without a cache: each starts at position 0
        past = kwargs.get("past_key_values")
        state["past"] = past.get_seq_length() if past is not None else 0

    def wrap(fn):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            new = fn(h, state["past"])
            if new is None:
                return None
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = [stack.register_forward_pre_hook(track, with_kwargs=True)]
    for (l, c), fn in site_hooks.items():
        handles.append(site_module(stack.layers[l], COMPONENTS[c]).register_forward_hook(wrap(fn)))
    try:
        codes, _ = mg_generate.greedy_codes(model, tokenizer, prompts, steps, decode=False)
    finally:
        for h in handles:
            h.remove()
    assert state["past"] == steps - 1, f"expected the last call at cached length {steps - 1}, saw {state['past']}"
    return codes


def intervene(mode, vec_a, vec_b, rows):
    """Hook fn for one site: vec_a, vec_b [P, d] (the site's cond means), applied to rows 0..rows-1."""

    def fn(h, past):
        t = h.shape[1]
        b = torch.from_numpy(vec_b[past:past + t])
        h = h.clone()
        if mode == "adjust":
            h[:rows] += b - torch.from_numpy(vec_a[past:past + t])
        else:
            h[:rows] = b
        return h

    return fn


def record_means(model, tokenizer, steps, n_layers, d):
    """Every site's output at every position for MEANS_PROMPTS (one batch), averaged over the prompts."""
    rows = len(MEANS_PROMPTS)
    rec = np.zeros((n_layers, 3, steps + 1, 2 * rows, d), np.float32)
    seen = np.zeros((n_layers, 3, steps + 1), bool)

    def recorder(l, c):
        def fn(h, past):
            # the duplicated prefill writes position 0 twice with the same values: stored once
            rec[l, c, past:past + h.shape[1]] = h.detach().numpy().transpose(1, 0, 2)
            seen[l, c, past:past + h.shape[1]] = True

        return fn

    hooks = {(l, c): recorder(l, c) for l in range(n_layers) for c in range(3)}
    generate_codes(model, tokenizer, MEANS_PROMPTS, steps, hooks)
    assert seen[:, :, :steps].all() and not seen[:, :, steps:].any(), "positions 0..steps-1 each recorded"
    cond = rec[:, :, :, :rows].mean(axis=3, dtype=np.float64)
    uncond = rec[:, :, :, rows:].mean(axis=3, dtype=np.float64)
    return np.stack([cond, uncond], axis=3).astype(np.float32)  # position `steps` stays 0: never fed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    model, tokenizer = mg_generate.load(args.bundle)
    n_layers, d = model.decoder.config.num_hidden_layers, model.decoder.config.hidden_size
    positions = args.steps + 1  # max_length
    shape = (n_layers, 3, positions, 2, d)
    out = os.path.join(args.bundle, "reference", "interchange")
    os.makedirs(out, exist_ok=True)

    means = {k: (np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32)
             for k, seed in (("a", 1), ("b", 2))}
    np.save(os.path.join(out, "means_a.npy"), means["a"])
    np.save(os.path.join(out, "means_b.npy"), means["b"])
    plain = generate_codes(model, tokenizer, PROMPTS, args.steps, {})
    np.save(os.path.join(out, "codes_plain.npy"), plain)

    sites = [(0, "attn"), (n_layers - 1, "cross_attn"), (n_layers - 1, "mlp"), (0, "mlp")]
    unchanged = []
    for mode in MODES:
        for l, comp in sites:
            c = COMPONENTS.index(comp)
            fn = intervene(mode, means["a"][l, c, :, 0], means["b"][l, c, :, 0], len(PROMPTS))
            codes = generate_codes(model, tokenizer, PROMPTS, args.steps, {(l, c): fn})
            np.save(os.path.join(out, f"codes_{mode}_{l}_{comp}.npy"), codes)
            differ = (codes != plain).mean()
            print(f"{mode} layer {l} {comp}: codes {codes.shape}, {differ:.0%} differ from plain")
            if differ == 0:
                unchanged.append(f"{mode}_{l}_{comp}")
    assert not [u for u in unchanged if u.startswith("replace")], f"replace left the codes unchanged: {unchanged}"
    if unchanged:
        print(f"warning: adjust left the codes unchanged: {unchanged}")

    means_ref = record_means(model, tokenizer, args.steps, n_layers, d)
    np.save(os.path.join(out, "means_ref.npy"), means_ref)
    print(f"means_ref {means_ref.shape} from {len(MEANS_PROMPTS)} prompts")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({
            "prompts": PROMPTS, "means_prompts": MEANS_PROMPTS, "steps": args.steps, "guidance_scale": 3.0,
            "greedy": True, "layers": n_layers, "positions": positions, "d_model": d,
            "sites": [{"layer": l, "component": comp} for l, comp in sites], "modes": MODES,
            "layout": "[layer, component(attn,cross_attn,mlp), position, cond/uncond, d_model]",
            "means_ref_note": f"positions 0..{args.steps - 1} are recorded; position {args.steps} is never fed "
                              "to the decoder and is 0",
        }, f, indent=2)


if __name__ == "__main__":
    main()
