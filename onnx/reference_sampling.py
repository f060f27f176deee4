"""Reference sampling distributions for the Rust sampler's test (tests/sampling.rs).

For fixed logits vectors and several temperatures and top-k values, computes the probabilities that
transformers' MusicGen sampling draws from. The logits processors are not rebuilt by hand: they come
from the same `_get_logits_processor` call MusicGen's `generate()` makes (on a tiny random
`MusicgenForCausalLM`, with `GenerationConfig(do_sample=True, temperature=T, top_k=k)`), which gives
`TemperatureLogitsWarper` (left out at T = 1) and then `TopKLogitsWarper` (it removes only the scores
strictly below the k-th largest, so ties at the k-th value are kept); the probabilities are then
`torch.softmax` over the warped float32 scores, as `_sample` computes them before `torch.multinomial`.

Writes into DIR:

    DIR/cases.json                  one entry per (logits, temperature, k): file names and settings
    DIR/logits_{name}.npy           float32 [V]  the raw logits
    DIR/warped_{case}.npy           float32 [V]  the scores after the processors (-inf = removed)
    DIR/probs_{case}.npy            float32 [V]  softmax of the warped scores

Usage: python onnx/reference_sampling.py --out DIR
"""

import argparse
import json
import os

import numpy as np
import torch
from transformers import GenerationConfig, MusicgenDecoderConfig, MusicgenForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

TEMPERATURES = [0.5, 1.0, 3.0]
CODEBOOK = 2048  # a real MusicGen codebook size


def logits_vectors():
    """Named float32 logits vectors: seeded random, ties at the k-th value, large and negative values."""
    rng = np.random.default_rng(0)
    out = {}
    out["normal64"] = (3.0 * rng.standard_normal(64)).astype(np.float32)
    # Integers in a small range: many ties, among them at the k-th value for k = 5 and 50 (one 14, one 13,
    # then six 12s: k = 5 keeps all eight).
    ties = rng.integers(-12, 13, size=96).astype(np.float32)
    ties[[3, 40]] = [14.0, 13.0]
    ties[[5, 41, 77]] = 12.0
    order = np.argsort(-ties, kind="stable")
    ties[order[50:53]] = ties[order[49]]  # the 50th largest value shared by four codes
    out["ties96"] = ties
    # A maximum shared by two codes (top-k 1 keeps both when sampling; greedy decoding takes the first).
    tied = (2.0 * rng.standard_normal(64)).astype(np.float32)
    tied[[10, 33]] = tied.max() + 1.0
    out["tiedmax64"] = tied
    # Large magnitudes: positive values whose exp overflows without the max subtracted, very negative ones.
    big = (1000.0 * rng.standard_normal(80)).astype(np.float32)
    big[:4] = [90.0, 89.5, -1.0e4, -3.0e4]
    out["large80"] = big
    # All very negative (a shift of the normal logits): softmax is shift-invariant, exp is not.
    out["negative128"] = (-1.0e4 + 5.0 * rng.standard_normal(128)).astype(np.float32)
    out["codebook2048"] = (4.0 * rng.standard_normal(CODEBOOK)).astype(np.float32)
    return out


def musicgen_processors():
    """A function (T, k) -> the logits processor list MusicGen's generate() builds for sampling."""
    cfg = MusicgenDecoderConfig(
        vocab_size=64, num_hidden_layers=1, hidden_size=8, ffn_dim=16, num_attention_heads=2,
        num_codebooks=1, pad_token_id=0, bos_token_id=0,
    )
    model = MusicgenForCausalLM(cfg).eval()
    ids = torch.zeros((1, 1), dtype=torch.long)

    def build(temperature, top_k):
        gc = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k)
        procs = model._get_logits_processor(
            generation_config=gc, input_ids_seq_length=1, encoder_input_ids=ids, device="cpu"
        )
        kinds = [type(p) for p in procs]
        expected = ([TemperatureLogitsWarper] if temperature != 1.0 else []) + [TopKLogitsWarper]
        assert kinds == expected, f"unexpected processors for T={temperature}, k={top_k}: {kinds}"
        return procs, ids

    return build


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    build = musicgen_processors()

    cases = []
    for name, logits in logits_vectors().items():
        v = logits.shape[0]
        np.save(os.path.join(args.out, f"logits_{name}.npy"), logits)
        desc = np.sort(logits)[::-1]
        for k in (1, 5, 50, 250, v) if v > 250 else (1, 5, 50, v):  # 250: MusicGen's default top-k
            for t in TEMPERATURES:
                procs, ids = build(t, k)
                scores = torch.from_numpy(logits.copy())[None, :]  # [batch * codebooks, V] float32
                warped = procs(ids, scores)
                probs = torch.softmax(warped, dim=-1)
                warped = warped[0].numpy().astype(np.float32)
                probs = probs[0].numpy().astype(np.float32)
                assert probs.dtype == np.float32 and np.all(np.isfinite(probs))
                case = f"{name}_t{t:g}_k{k}"
                np.save(os.path.join(args.out, f"warped_{case}.npy"), warped)
                np.save(os.path.join(args.out, f"probs_{case}.npy"), probs)
                kept = int(np.isfinite(warped).sum())
                cases.append({
                    "name": case, "logits": f"logits_{name}.npy", "warped": f"warped_{case}.npy",
                    "probs": f"probs_{case}.npy", "vocab": v, "temperature": t, "top_k": k, "kept": kept,
                    # ties at the k-th value of the raw logits (the warpers keep every one of them)
                    "tie_at_kth": bool(k < v and desc[k - 1] == desc[k]),
                })
    # The fixture must exercise ties at the boundary for k > 1 and at the maximum for k = 1.
    assert any(c["tie_at_kth"] and c["top_k"] == 5 and c["kept"] > 5 for c in cases)
    assert any(c["tie_at_kth"] and c["top_k"] == 50 and c["kept"] > 50 for c in cases)
    assert any(c["top_k"] == 1 and c["kept"] > 1 for c in cases)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"temperatures": TEMPERATURES, "cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} sampling cases into {args.out}")


if __name__ == "__main__":
    main()
