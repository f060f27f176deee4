#!/usr/bin/env python3
"""PyTorch reference outputs of a random-weight bundle: the oracle the Rust tests compare against.

    python onnx/reference.py --bundle tests/data/tiny [--out tests/data/tiny/reference] [--dtype float16|float32]

Loads BUNDLE/hf with transformers (default attention implementation) and runs transformers' own forward
(MusicgenForConditionalGeneration with its KV cache; T5 and EnCodec as MusicGen calls them), recording
every hook point with PyTorch hooks and applying the interventions of each case in hooks. It never uses
the export wrappers. The layout of what it writes is described in onnx/README.md and in cases.json.

--dtype (default: the bundle manifest's dtype) is what transformers computes in. On an fp16 bundle the
weights are its graphs' weights either way: the decoder, enc_to_dec_proj and EnCodec rounded to float16,
the text encoder float32 as loaded (mg_dtype.py). Every .npy is written as float32 (or int64).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mg_dtype import DTYPES, as_reference, bundle_dtype  # noqa: E402
from mg_fs import swap_in  # noqa: E402
import mg_hooks  # noqa: E402

PROMPTS = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums"]
CALLS = [[0, 6], [6, 1], [7, 1], [8, 1]]
NUM_POSITIONS = 9
ROWS = ["cond0", "cond1", "uncond0", "uncond1"]
COND_ROWS = [0, 1]
SEED = 20240611
AUDIO_SECONDS = 0.5
OWN_ENTRIES = ("cases.json", "text", "decoder", "encodec")  # what this script writes into --out


class RefError(Exception):
    pass


hook_names = mg_hooks.hook_points


def cases_spec(num_layers):
    last = num_layers - 1
    return {
        "plain": {"description": "no intervention", "interventions": []},
        "add": {
            "description": "add a vector to layer 0's self-attention output and to the last layer's "
            "cross-attention output, conditional rows, every position, every call",
            "interventions": [
                {"layer": 0, "component": "attn", "op": "add", "rows": COND_ROWS, "positions": "all",
                 "vector": "decoder/add_attn.npy"},
                {"layer": last, "component": "cross_attn", "op": "add", "rows": COND_ROWS, "positions": "all",
                 "vector": "decoder/add_cross.npy"},
            ],
        },
        "replace": {
            "description": "replace the last layer's MLP output (all dims) by a vector on conditional rows at "
            "absolute positions p with p % 2 == 0",
            "interventions": [
                {"layer": last, "component": "mlp", "op": "replace", "rows": COND_ROWS,
                 "positions": {"modulo": 2, "equals": 0}, "vector": "decoder/replace_mlp.npy"},
            ],
        },
        "resid": {
            "description": "a forward hook on decoder layer 0 sets its output h to 0.5 * h + 0.1 on conditional "
            "rows, every position (arbitrary code at a layer boundary)",
            "interventions": [
                {"layer": 0, "component": "resid_post", "op": "affine", "scale": 0.5, "bias": 0.1,
                 "rows": COND_ROWS, "positions": "all"},
            ],
        },
    }


def position_selected(rule, p):
    if rule == "all":
        return True
    return p % rule["modulo"] == rule["equals"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a random-weight bundle folder (with hf/)")
    ap.add_argument("--out", help="output folder (default BUNDLE/reference)")
    ap.add_argument("--dtype", choices=DTYPES, help="compute type (default: the bundle manifest's dtype)")
    args = ap.parse_args(argv)
    bundle = Path(args.bundle)
    hf_dir = bundle / "hf"
    if not (hf_dir / "config.json").is_file():
        raise RefError(f"{bundle} has no hf/config.json; export it with --random-weights (hf/ is written for those)")
    if not (bundle / "tokenizer.json").is_file():
        raise RefError(f"{bundle} has no tokenizer.json; re-export the bundle")
    out = Path(args.out) if args.out else bundle / "reference"
    weights = bundle_dtype(bundle)
    if weights not in DTYPES:
        raise RefError(f"{bundle}: manifest dtype {weights!r} is not one of {', '.join(DTYPES)}")
    dtype = args.dtype or weights

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from mg_tokenizer import encode_batch

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_grad_enabled(False)

    model = MusicgenForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    # the text encoder's states are cast below, where they enter the decoder (as the bundle's cross_kv does)
    as_reference(model, weights, dtype, cast_text_output=False)
    compute = getattr(torch, dtype)
    tcfg, dcfg = model.config.text_encoder, model.config.decoder
    L, D, K, V = dcfg.num_hidden_layers, dcfg.hidden_size, dcfg.num_codebooks, dcfg.vocab_size
    pad = dcfg.pad_token_id

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    written = []

    def save(rel, arr):
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise RefError(f"{rel}: not finite in {dtype}")
        np.save(p, np.ascontiguousarray(arr))
        written.append(rel)

    try:
        # ------------------------------------------------------------------------------ text
        tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        tok.no_padding()  # pad here, right, to the longest, as transformers does
        ids, mask = encode_batch(tok, PROMPTS, tcfg.pad_token_id)
        ids, mask = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int64)
        S = ids.shape[1]
        hf_tok = AutoTokenizer.from_pretrained(str(hf_dir))
        hf_enc = hf_tok(PROMPTS, padding=True, return_tensors="np")
        tokenizer_agrees = bool(
            np.array_equal(hf_enc["input_ids"], ids) and np.array_equal(hf_enc["attention_mask"], mask)
        )
        if not tokenizer_agrees:
            raise RefError("tokenizer.json and the hf/ tokenizer disagree on the prompts; re-export the bundle")

        te = model.text_encoder
        raw = []
        handles = [te.encoder.embed_tokens.register_forward_hook(lambda m, a, o: raw.append(o.detach().clone()))]
        for blk in te.encoder.block:
            handles.append(blk.register_forward_hook(lambda m, a, o: raw.append(o[0].detach().clone())))
        text_out = te(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        for h in handles:
            h.remove()
        if len(raw) != tcfg.num_layers + 1:
            raise RefError(f"captured {len(raw)} text states, expected {tcfg.num_layers + 1}")
        text_hidden = torch.stack(raw, 0)
        last_hidden = text_out.last_hidden_state
        save("text/input_ids.npy", ids)
        save("text/attention_mask.npy", mask)
        save("text/hidden_states.npy", text_hidden.numpy())
        save("text/normed_hidden_states.npy", te.encoder.final_layer_norm(text_hidden).numpy())
        save("text/last_hidden_state.npy", last_hidden.numpy())

        # --------------------------------------------------------------------------- decoder
        rng = np.random.default_rng(SEED)
        codes = rng.integers(0, V + 1, size=(4, K, NUM_POSITIONS), dtype=np.int64)  # [0, V] inclusive
        codes[rng.random(codes.shape) < 0.1] = pad  # some pad entries ...
        codes[:, :, 0] = pad  # ... and the start position all pad
        save("decoder/input_ids.npy", codes)
        vectors = {
            "decoder/add_attn.npy": rng.standard_normal(D).astype(np.float32),
            "decoder/add_cross.npy": rng.standard_normal(D).astype(np.float32),
            "decoder/replace_mlp.npy": rng.standard_normal(D).astype(np.float32),
        }
        for rel, vec in vectors.items():
            save(rel, vec)
        enc_states = torch.cat([last_hidden, torch.zeros_like(last_hidden)], 0)  # what generate() builds for CFG
        enc_states = enc_states.to(compute)
        enc_mask = torch.cat([torch.from_numpy(mask), torch.zeros(2, S, dtype=torch.int64)], 0)
        save("decoder/encoder_hidden_states.npy", enc_states.numpy())
        save("decoder/encoder_attention_mask.npy", enc_mask.numpy())

        layers = model.decoder.model.decoder.layers
        final_ln = model.decoder.model.decoder.layer_norm
        cases = cases_spec(L)
        hooks = hook_names(L)
        state = {}

        def component_hook(l, comp, take):
            def fn(module, args, output):
                value = take(output)
                state["rec"][mg_hooks.component(l, comp)] = value.detach().clone()
                new = value
                start = state["start"]
                for iv in state["ivs"]:
                    if iv["layer"] != l or iv["component"] != comp:
                        continue
                    vec = torch.from_numpy(vectors[iv["vector"]]).to(new.dtype)
                    new = new.clone()
                    for t in range(new.shape[1]):
                        if not position_selected(iv["positions"], start + t):
                            continue
                        for r in iv["rows"]:
                            if iv["op"] == "add":
                                new[r, t] = new[r, t] + vec
                            elif iv["op"] == "replace":
                                new[r, t] = vec
                if new is value:
                    return None
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

            return fn

        def layer_pre_hook(l):
            def fn(module, args):
                state["rec"][mg_hooks.resid_pre(l)] = args[0].detach().clone()
                if l == 0:
                    state["rec"][mg_hooks.EMBED] = args[0].detach().clone()

            return fn

        def layer_hook(l):
            def fn(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                state["rec"][mg_hooks.resid_post(l)] = h.detach().clone()
                new = h
                for iv in state["ivs"]:
                    if iv["layer"] != l or iv["component"] != "resid_post":
                        continue
                    new = new.clone()
                    for t in range(new.shape[1]):
                        if position_selected(iv["positions"], state["start"] + t):
                            for r in iv["rows"]:
                                new[r, t] = iv["scale"] * new[r, t] + iv["bias"]
                if new is h:
                    return None
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

            return fn

        handles = []
        for l, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(layer_pre_hook(l)))
            handles.append(layer.register_forward_hook(layer_hook(l)))
            handles.append(layer.self_attn.register_forward_hook(component_hook(l, "attn", lambda o: o[0])))
            handles.append(layer.encoder_attn.register_forward_hook(component_hook(l, "cross_attn", lambda o: o[0])))
            handles.append(layer.fc2.register_forward_hook(component_hook(l, "mlp", lambda o: o)))
        handles.append(
            final_ln.register_forward_hook(
                lambda m, a, o: state["rec"].__setitem__("ln_final.hook_normalized", o.detach().clone())
            )
        )
        try:
            for case, spec in cases.items():
                state["ivs"] = spec["interventions"]
                cache = None
                for c, (start, length) in enumerate(CALLS):
                    state["rec"], state["start"] = {}, start
                    chunk = torch.from_numpy(codes[:, :, start : start + length]).reshape(4 * K, length)
                    res = model(
                        encoder_outputs=(enc_states,),
                        attention_mask=enc_mask,
                        decoder_input_ids=chunk,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    cache = res.past_key_values
                    got = cache.get_seq_length()
                    if got != start + length:
                        raise RefError(f"cache holds {got} positions after call {c}, expected {start + length}")
                    missing = [h for h in hooks if h not in state["rec"]]
                    if missing:
                        raise RefError(f"hooks not recorded: {missing[:3]}")
                    for h in hooks:
                        save(f"decoder/{case}/call{c}/{h}.npy", state["rec"][h].numpy())
                    save(f"decoder/{case}/call{c}/logits.npy", res.logits.reshape(4, K, length, V).numpy())
        finally:
            for h in handles:
                h.remove()

        # --------------------------------------------------------------------------- EnCodec
        ae = model.audio_encoder
        sr = ae.config.sampling_rate
        n = int(round(AUDIO_SECONDS * sr))
        t = np.arange(n) / sr
        audio = (
            0.3 * np.sin(2 * np.pi * 220.0 * t)
            + 0.2 * np.sin(2 * np.pi * 554.37 * t + 0.5)
            + 0.1 * np.sin(2 * np.pi * 1318.5 * t + 1.0)
            + 0.05 * rng.standard_normal(n)
        ).astype(np.float32)[None, None, :]
        enc = ae.encode(torch.from_numpy(audio).to(compute), return_dict=True)  # default bandwidth, as MusicGen calls it
        if enc.audio_codes.shape[0] != 1:
            raise RefError("EnCodec returned more than one chunk; MusicGen needs chunk_length_s null")
        audio_codes = enc.audio_codes[0]  # [1, K, F]
        decoded = ae.decode(enc.audio_codes, [None]).audio_values  # as MusicGen's generate decodes
        save("encodec/audio.npy", audio)
        save("encodec/codes.npy", audio_codes.numpy().astype(np.int64))
        save("encodec/decoded.npy", decoded.float().numpy())

        meta = {
            "format": "musicgen-interp-reference",
            "format_version": 1,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "dtype": dtype,
            "weights": weights,
            "dtype_note": (
                "float32 everywhere" if weights == dtype == "float32" else
                f"decoder, enc_to_dec_proj and EnCodec weights {'rounded to float16' if weights == 'float16' else 'float32'}, "
                f"computing in {dtype}; text encoder float32 (its states cast to {dtype} where they enter the decoder); "
                "arrays saved as float32"
            ),
            "attn_implementation": {
                "decoder": model.decoder.config._attn_implementation,
                "text_encoder": te.config._attn_implementation,
            },
            "text": {
                "prompts": PROMPTS,
                "input_ids": "text/input_ids.npy",
                "attention_mask": "text/attention_mask.npy",
                "hidden_states": "text/hidden_states.npy",
                "normed_hidden_states": "text/normed_hidden_states.npy",
                "last_hidden_state": "text/last_hidden_state.npy",
                "tokenizer_matches_hf": tokenizer_agrees,
            },
            "decoder": {
                "rows": ROWS,
                "cond_rows": COND_ROWS,
                "input_ids": "decoder/input_ids.npy",
                "encoder_hidden_states": "decoder/encoder_hidden_states.npy",
                "encoder_attention_mask": "decoder/encoder_attention_mask.npy",
                "calls": CALLS,
                "hooks": hooks,
                "files": "decoder/{case}/call{c}/{hook}.npy and decoder/{case}/call{c}/logits.npy",
                "shapes": {"hooks": "[4, T, D]", "logits": "[4, K, T, V]"},
                "hook_semantics": (
                    "component hooks and blocks.{l}.hook_resid_post hold the value the module computed, before "
                    "that case's intervention at that point; blocks.{l}.hook_resid_pre holds what layer l "
                    "received (so after a resid intervention at layer l-1 it differs from hook_resid_post of l-1)"
                ),
                "cases": cases,
            },
            "encodec": {
                "audio": "encodec/audio.npy",
                "codes": "encodec/codes.npy",
                "decoded": "encodec/decoded.npy",
                "sample_rate": sr,
                "bandwidth": ae.config.target_bandwidths[0],
            },
            "files": sorted(written),
        }
        (tmp / "cases.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            if not (out / "cases.json").is_file():
                raise RefError(f"{out} exists and is not a reference folder (no cases.json); choose another --out")
            # keep what other tools wrote there (e.g. reference_generate.py's generate/)
            for entry in out.iterdir():
                if entry.name not in OWN_ENTRIES:
                    entry.rename(tmp / entry.name)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {args.out or out}: {len(written)} arrays, cases {', '.join(cases)}")


if __name__ == "__main__":
    try:
        main()
    except RefError as e:
        print(f"reference.py: error: {e}", file=sys.stderr)
        sys.exit(2)
