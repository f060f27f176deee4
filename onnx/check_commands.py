#!/usr/bin/env python3
"""Independent numbers for the CLI tests (tests/commands.rs), from transformers and numpy.

    python onnx/check_commands.py inspect --bundle B --text T --out DIR
    python onnx/check_commands.py compare --candidate B1 --reference B2 --text T --steps N --out FILE.json
    python onnx/check_commands.py self-similarity --means residual_means.npy --out FILE.npy
    python onnx/check_commands.py judge --judge J.onnx --labels L.csv --label NAME --sample-rate R WAV...

inspect: transformers' decoder (the bundle's hf/ checkpoint) on the start token with classifier-free
guidance rows (conditional: the prompt's T5 states; unconditional: zero states, zero mask), as
`musicgen-interp inspect` runs it: each layer's output `blocks.{l}.hook_resid_post.npy` [2, 1, D] (forward
hooks on the decoder layers), `logits.npy` [2, K, V], and `summary.json` with the residual norms
[[cond, uncond] per layer] and the conditional row's greedy next code per codebook.

compare: the fidelity measure of `musicgen-interp compare`, recomputed with transformers on the two
bundles' hf/ checkpoints: the reference generates greedily with guidance 3 (its own loop here over the
delay pattern, checked against transformers' generate()), both models run the generated sequence
(all positions but the last, conditional and unconditional rows), and per layer the cosine between
their outputs, averaged over every row and position; next-token agreement is the share of (codebook,
position) where their guided argmax agree; per layer what it adds (its output minus its input, by a
forward pre-hook) compared by cosine and by relative error ||c - r|| / ||r||, and the logits' relative
error. Writes {"positions", "cosine", "delta_cosine", "delta_error", "logits_error", "agreement"}.

judge: the mean probability of one label over WAV clips under an ONNX judge (softmax of its scores,
one clip per call), as the `onnx-judge` plugin computes it.

self-similarity: cosine between the layers' time-averaged outputs of each prompt, averaged over prompts,
from the saved means `[layers, prompts, d_model]` (numpy only).
"""

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mg_hooks  # noqa: E402


def self_similarity(args):
    import numpy as np

    means = np.load(args.means).astype(np.float64)  # [layers, prompts, d]
    unit = means / np.linalg.norm(means, axis=2, keepdims=True)
    sim = np.einsum("apd,bpd->abp", unit, unit).mean(axis=2)
    np.save(args.out, sim.astype(np.float32))
    print(f"self-similarity of {sim.shape[0]} layers over {means.shape[1]} prompts -> {args.out}")


def judge(args):
    """Mean softmax probability of one label over the clips, the judge run one clip at a time."""
    import csv

    import numpy as np
    import onnxruntime as ort

    from make_sensitive_judge import read_float_wav

    with open(args.labels, newline="") as f:
        names = [row["name"] for row in csv.DictReader(f)]
    index = [n.lower() for n in names].index(args.label.lower())
    session = ort.InferenceSession(args.judge, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probs = []
    for wav in args.wavs:
        rate, x = read_float_wav(wav)
        if rate != args.sample_rate:
            raise SystemExit(f"{wav}: {rate} Hz, the judge takes {args.sample_rate}")
        scores = session.run(None, {name: x[None, :]})[0][0].astype(np.float64)
        p = np.exp(scores - scores.max())
        probs.append(p[index] / p.sum())
    print(json.dumps({"mean": float(np.mean(probs)), "clips": len(probs)}))


def setup():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    torch.manual_seed(0)


def encode(model, tokenizer, text):
    """Encoder states and mask for [cond, uncond] rows, as generate() builds them for guidance."""
    import torch

    inputs = tokenizer([text], return_tensors="pt")
    states = model.text_encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state
    states = torch.cat([states, torch.zeros_like(states)], 0)
    mask = torch.cat([inputs.attention_mask, torch.zeros_like(inputs.attention_mask)], 0)
    return states, mask


def run_decoder(model, states, mask, codes, inputs=None):
    """codes [2, K, T] -> (resid_post per layer [2, T, D] each, logits [2, K, T, V]); with a list
    `inputs`, each layer's input (resid_pre) is appended to it."""
    import torch

    rows, K, T = codes.shape
    captured = []
    layers = model.decoder.model.decoder.layers
    handles = [
        layer.register_forward_hook(lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
        for layer in layers
    ]
    if inputs is not None:
        def pre(m, args, kwargs):
            inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

        handles += [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in layers]
    try:
        out = model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=codes.reshape(rows * K, T), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(layers) or (inputs is not None and len(inputs) != len(layers)):
        raise SystemExit(f"captured {len(captured)} layer outputs, expected {len(layers)}")
    return captured, out.logits.reshape(rows, K, T, -1)


def inspect(args):
    setup()
    import numpy as np
    import torch

    from mg_generate import load

    model, tokenizer = load(args.bundle)
    K = model.config.decoder.num_codebooks
    start = model.generation_config.decoder_start_token_id
    states, mask = encode(model, tokenizer, args.text)
    codes = torch.full((2, K, 1), start, dtype=torch.long)
    resid, logits = run_decoder(model, states, mask, codes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for l, h in enumerate(resid):
        np.save(out / f"{mg_hooks.resid_post(l)}.npy", h.numpy())
    np.save(out / "logits.npy", logits[:, :, 0].numpy())
    summary = {
        "norms": [[float(torch.linalg.norm(h[r, -1])) for r in (0, 1)] for h in resid],
        "greedy": [int(torch.argmax(logits[0, k, 0])) for k in range(K)],
    }
    (out / "summary.json").write_text(json.dumps(summary))
    print(json.dumps(summary))


def compare(args):
    setup()
    import numpy as np
    import torch

    from mg_generate import greedy_codes, load

    ref, tok = load(args.reference)
    cand, cand_tok = load(args.candidate)
    K = ref.config.decoder.num_codebooks
    start = ref.generation_config.decoder_start_token_id
    pad = ref.generation_config.pad_token_id
    steps = args.steps
    frames = steps - K + 1
    ref_states, ref_mask = encode(ref, tok, args.text)

    def guided(logits):  # [2, K, T, V] -> [K, T, V]
        return logits[1] + 3.0 * (logits[0] - logits[1])

    # Greedy generation by the reference: position t of codebook k is generated when
    # k + 1 <= t <= frames + k (the delay pattern); before that it is the start token, after it pad.
    seq = torch.full((K, 1), start, dtype=torch.long)
    for t in range(1, steps + 1):
        _, logits = run_decoder(ref, ref_states, ref_mask, seq.unsqueeze(0).repeat(2, 1, 1))
        choice = guided(logits)[:, -1].argmax(-1)
        col = torch.tensor([int(choice[k]) if k + 1 <= t <= frames + k else (start if t <= k else pad) for k in range(K)])
        seq = torch.cat([seq, col[:, None]], 1)
    undelayed = np.stack([seq[k, 1 + k : 1 + k + frames].numpy() for k in range(K)])
    want, _ = greedy_codes(ref, tok, [args.text], steps, decode=False)
    if not np.array_equal(undelayed, want[0]):
        raise SystemExit("this loop's greedy codes differ from transformers' generate()")

    codes = seq[:, :-1].unsqueeze(0).repeat(2, 1, 1)  # every position but the last, cond + uncond rows
    cand_states, cand_mask = encode(cand, cand_tok, args.text)
    r_in, c_in = [], []
    r_res, r_logits = run_decoder(ref, ref_states, ref_mask, codes, r_in)
    c_res, c_logits = run_decoder(cand, cand_states, cand_mask, codes, c_in)

    def cos(x, y):  # mean over rows and positions of the cosine along the width
        x, y = x.double().reshape(-1, x.shape[-1]), y.double().reshape(-1, y.shape[-1])
        return float(((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean())

    def rel(c, r):  # ||c - r|| / ||r|| over every element
        c, r = c.double(), r.double()
        return float((c - r).norm() / r.norm())

    cosine = [cos(x, y) for x, y in zip(c_res, r_res)]
    deltas = [(co - ci, ro - ri) for co, ci, ro, ri in zip(c_res, c_in, r_res, r_in)]
    agree = (guided(c_logits).argmax(-1) == guided(r_logits).argmax(-1)).double().mean()
    result = {
        "positions": int(codes.shape[2]),
        "cosine": cosine,
        "delta_cosine": [cos(c, r) for c, r in deltas],
        "delta_error": [rel(c, r) for c, r in deltas],
        "logits_error": rel(c_logits, r_logits),
        "agreement": float(agree),
    }
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inspect")
    a.add_argument("--bundle", required=True)
    a.add_argument("--text", required=True)
    a.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--candidate", required=True)
    c.add_argument("--reference", required=True)
    c.add_argument("--text", required=True)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--out", required=True)
    s = sub.add_parser("self-similarity")
    s.add_argument("--means", required=True)
    s.add_argument("--out", required=True)
    j = sub.add_parser("judge")
    j.add_argument("--judge", required=True)
    j.add_argument("--labels", required=True)
    j.add_argument("--label", required=True)
    j.add_argument("--sample-rate", type=int, required=True)
    j.add_argument("wavs", nargs="+")
    args = ap.parse_args()
    {"inspect": inspect, "compare": compare, "self-similarity": self_similarity, "judge": judge}[args.cmd](args)


if __name__ == "__main__":
    main()
