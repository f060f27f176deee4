#!/usr/bin/env python3
"""Run a bundle's graphs with onnxruntime on the PyTorch reference cases and report the differences.

    python onnx/check_bundle.py --bundle tests/data/tiny [--reference DIR] [--capacity 16]

This is a small numpy host doing what the Rust host does (text encoder, cross K/V once, embed -> layers ->
head per call with a host-owned KV cache, interventions as graph inputs or between layers, EnCodec), so it
doubles as an executable description of how the graphs are meant to be driven. Exit status 1 when a
difference exceeds the tolerance (1e-4 for states and logits, exact for codes).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mg_hooks  # noqa: E402

TOL = 1e-4


class Bundle:
    def __init__(self, folder, threads=1):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        graphs = self.manifest["graphs"]

        def load(name):
            return ort.InferenceSession(str(self.folder / name), opts, providers=["CPUExecutionProvider"])

        self.text = load(graphs["text_encoder"])
        self.cross_kv = load(graphs["cross_kv"])
        self.embed = load(graphs["decoder_embed"])
        self.layers = [load(g) for g in graphs["decoder_layers"]]
        self.head = load(graphs["decoder_head"])
        self.enc = load(graphs["encodec_encode"])
        self.dec_latent = load(graphs["encodec_decode_latent"])
        self.dec_upsample = load(graphs["encodec_decode_upsample"])
        d = self.manifest["decoder"]
        self.L, self.D, self.H, self.hd = d["num_layers"], d["d_model"], d["num_heads"], d["head_dim"]
        # an fp16 bundle's KV cache (and cross K/V) are float16 (docs/BUNDLE.md, manifest dtype)
        self.cache_dtype = np.float16 if self.manifest.get("dtype") == "float16" else np.float32

    def decode(self, codes):
        """EnCodec decode through its two graphs: codes -> latent -> audio."""
        (latent,) = self.dec_latent.run(None, {"codes": codes})
        return self.dec_upsample.run(None, {"latent": latent})

    def encode_text(self, ids, mask):
        last, hidden, normed = self.text.run(None, {"input_ids": ids, "attention_mask": mask})
        return last, hidden, normed

    def run_decoder(self, codes, enc_states, enc_mask, calls, interventions=(), vectors=None, capacity=None,
                    garbage=False):
        """Returns one dict per call: hook name -> [B,T,D], plus "logits" [B,K,T,V]."""
        B = codes.shape[0]
        total = calls[-1][0] + calls[-1][1]
        cap = capacity or total
        rng = np.random.default_rng(0)

        def new_cache():
            if garbage:  # finite junk beyond past_len must not matter
                return rng.standard_normal((B, self.H, cap, self.hd)).astype(self.cache_dtype)
            return np.zeros((B, self.H, cap, self.hd), self.cache_dtype)

        keys = [new_cache() for _ in range(self.L)]
        values = [new_cache() for _ in range(self.L)]
        ck, cv = self.cross_kv.run(None, {"encoder_hidden_states": enc_states, "encoder_attention_mask": enc_mask})
        results = []
        for start, length in calls:
            past_len = np.array(start, dtype=np.int64)
            rec = {}
            (h,) = self.embed.run(None, {"input_ids": codes[:, :, start : start + length], "past_len": past_len})
            rec[mg_hooks.EMBED] = h
            for l in range(self.L):
                rec[mg_hooks.resid_pre(l)] = h
                feeds = {
                    "hidden": h,
                    "past_key": keys[l],
                    "past_value": values[l],
                    "past_len": past_len,
                    "cross_key": ck[l],
                    "cross_value": cv[l],
                    "encoder_attention_mask": enc_mask,
                }
                for comp in ("attn", "cross_attn", "mlp"):
                    add = np.zeros((B, length, self.D), np.float32)
                    rep = np.zeros_like(add)
                    msk = np.zeros_like(add)
                    for iv in interventions:
                        if iv["layer"] != l or iv["component"] != comp:
                            continue
                        vec = vectors[iv["vector"]]
                        for t in range(length):
                            if not selected(iv["positions"], start + t):
                                continue
                            for r in iv["rows"]:
                                if iv["op"] == "add":
                                    add[r, t] += vec
                                else:
                                    rep[r, t] = vec
                                    msk[r, t] = 1.0
                    feeds[f"{comp}_add"], feeds[f"{comp}_replace"], feeds[f"{comp}_mask"] = add, rep, msk
                # present = the cache with this call's keys/values written at past_len (the Rust host
                # binds it to the past buffer so the write happens in place; here it is a new array)
                resid, attn, cross, mlp, keys[l], values[l] = self.layers[l].run(None, feeds)
                rec[mg_hooks.component(l, "attn")] = attn
                rec[mg_hooks.component(l, "cross_attn")] = cross
                rec[mg_hooks.component(l, "mlp")] = mlp
                rec[mg_hooks.resid_post(l)] = resid
                h = resid
                for iv in interventions:
                    if iv["layer"] == l and iv["component"] == "resid_post":
                        h = h.copy()
                        for t in range(length):
                            if selected(iv["positions"], start + t):
                                for r in iv["rows"]:
                                    h[r, t] = iv["scale"] * h[r, t] + iv["bias"]
            normed, logits = self.head.run(None, {"hidden": h})
            rec["ln_final.hook_normalized"] = normed
            rec["logits"] = logits
            results.append(rec)
        return results


def selected(rule, p):
    return rule == "all" or p % rule["modulo"] == rule["equals"]


def maxdiff(a, b):
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} != {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def check(bundle_dir, reference_dir=None, capacity=None, garbage=False, verbose=True, tol=TOL, codes_exact=True):
    """Returns a report dict: {"text": {...}, "decoder": {case: [{...per call}]}, "encodec": {...}, "ok": bool}.
    `tol` bounds the differences of states, logits and audio; `codes_exact=False` reports EnCodec's codes without
    requiring them equal (float16 changes nearest-code decisions)."""
    TOL = tol  # noqa: N806
    ref = Path(reference_dir) if reference_dir else Path(bundle_dir) / "reference"
    meta = json.loads((ref / "cases.json").read_text())
    b = Bundle(bundle_dir)
    say = print if verbose else (lambda *a, **k: None)
    ok = True
    report = {}

    ids = np.load(ref / meta["text"]["input_ids"])
    mask = np.load(ref / meta["text"]["attention_mask"])
    last, hidden, normed = b.encode_text(ids, mask)
    report["text"] = {
        "last_hidden_state": maxdiff(last, np.load(ref / meta["text"]["last_hidden_state"])),
        "hidden_states": maxdiff(hidden, np.load(ref / meta["text"]["hidden_states"])),
        "normed_hidden_states": maxdiff(normed, np.load(ref / meta["text"]["normed_hidden_states"])),
    }
    say("text_encoder   " + "  ".join(f"{k} {v:.1e}" for k, v in report["text"].items()))
    ok &= all(v <= TOL for v in report["text"].values())

    dm = meta["decoder"]
    codes = np.load(ref / dm["input_ids"])
    enc_states = np.concatenate([last, np.zeros_like(last)], 0)  # CFG: zeros for the unconditional rows
    enc_mask = np.concatenate([mask, np.zeros_like(mask)], 0)
    report["cross_kv_inputs"] = maxdiff(enc_states, np.load(ref / dm["encoder_hidden_states"]))
    vectors = {}
    for spec in dm["cases"].values():
        for iv in spec["interventions"]:
            if "vector" in iv:
                vectors[iv["vector"]] = np.load(ref / iv["vector"])
    report["decoder"] = {}
    for case, spec in dm["cases"].items():
        outs = b.run_decoder(codes, enc_states, enc_mask, dm["calls"], spec["interventions"], vectors, capacity,
                             garbage)
        per_call = []
        for c, rec in enumerate(outs):
            states = max(maxdiff(rec[h], np.load(ref / f"decoder/{case}/call{c}/{h}.npy")) for h in dm["hooks"])
            logits = maxdiff(rec["logits"], np.load(ref / f"decoder/{case}/call{c}/logits.npy"))
            per_call.append({"call": dm["calls"][c], "states": states, "logits": logits})
            ok &= states <= TOL and logits <= TOL
        report["decoder"][case] = per_call
        say(
            f"decoder {case:<8}"
            + "  ".join(f"call{i} {r['call']} states {r['states']:.1e} logits {r['logits']:.1e}"
                        for i, r in enumerate(per_call))
        )

    em = meta["encodec"]
    audio = np.load(ref / em["audio"])
    (codes_out,) = b.enc.run(None, {"audio": audio})
    want_codes = np.load(ref / em["codes"])
    (decoded,) = b.decode(want_codes)
    report["encodec"] = {
        "codes_equal": bool(codes_out.shape == want_codes.shape and np.array_equal(codes_out, want_codes)),
        "codes_mismatches": int((codes_out != want_codes).sum()) if codes_out.shape == want_codes.shape else -1,
        "decoded": maxdiff(decoded, np.load(ref / em["decoded"])),
    }
    say(
        f"encodec        codes equal {report['encodec']['codes_equal']}  decoded {report['encodec']['decoded']:.1e}"
    )
    ok &= (report["encodec"]["codes_equal"] or not codes_exact) and report["encodec"]["decoded"] <= TOL
    report["ok"] = bool(ok)
    say("OK" if ok else f"FAILED (tolerance {TOL})")
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--reference", help="reference folder (default BUNDLE/reference)")
    ap.add_argument("--capacity", type=int, help="KV cache capacity C (default: exactly the positions used)")
    ap.add_argument("--garbage", action="store_true", help="fill unused cache slots with random values")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    report = check(args.bundle, args.reference, args.capacity, args.garbage)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
