"""The reference model of a bundle's precision (manifest `dtype`, docs/BUNDLE.md).

An fp16 bundle's graphs hold the fp32 checkpoint's weights rounded to float16 (round to nearest), except
the text encoder, which stays float32 with its own weights. The reference does the same to transformers'
model: the decoder, `enc_to_dec_proj` and EnCodec get `.half()` (the same rounding), T5 is left as loaded.
It then computes in float16 (`.half()`) or in float32 on those rounded weights (`.half().float()`)."""

import json
from pathlib import Path

DTYPES = ("float32", "float16")


def bundle_dtype(bundle):
    """The manifest's `dtype` ("float32" when absent, as in bundles written before the field)."""
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        return "float32"
    return json.loads(path.read_text()).get("dtype", "float32")


def rounded_parts(model):
    """The modules whose graphs an fp16 bundle converts (everything but the text encoder)."""
    parts = [model.decoder, model.audio_encoder]
    if getattr(model, "enc_to_dec_proj", None) is not None:
        parts.append(model.enc_to_dec_proj)
    return parts


def as_reference(model, weights, compute, cast_text_output=True):
    """`model` (loaded in float32) with the weights of a `weights` bundle ("float16": rounded to float16), computing
    in `compute`. The text encoder stays float32; with `cast_text_output` its output is cast to `compute` (what an
    fp16 bundle's cross_kv does with its float32 input), so transformers' `generate()` runs as is."""
    import torch

    if weights not in DTYPES or compute not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    for part in rounded_parts(model):
        if weights == "float16":
            part.half()
        if compute == "float32":
            part.float()
        else:
            part.half()
    if compute == "float16" and cast_text_output:
        def cast(module, args, output):
            output.last_hidden_state = output.last_hidden_state.to(torch.float16)
            return output

        model.text_encoder.register_forward_hook(cast)
    return model
