"""transformers' MusicGen `generate()` as the reference scripts use it: load a bundle's checkpoint,
run greedy guided generation, and capture the codes where generate hands them to EnCodec."""

import os
import sys

import numpy as np
import torch
from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerFast


def load(bundle, dtype=None):
    """The bundle's transformers checkpoint (`hf/`) and its tokenizer, padding like MusicGen's. With `dtype`
    ("float16" or "float32"), the weights rounded as the bundle's manifest dtype says and computing in `dtype`
    (mg_dtype.as_reference); without, the checkpoint as saved, in float32."""
    hf = os.path.join(bundle, "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        sys.exit(f"error: {hf} holds no transformers checkpoint (only random-weight bundles carry hf/)")
    model = MusicgenForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    if dtype is not None:
        from mg_dtype import as_reference, bundle_dtype

        as_reference(model, bundle_dtype(bundle), dtype)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(bundle, "tokenizer.json"))
    tokenizer.pad_token_id = model.config.text_encoder.pad_token_id
    return model, tokenizer


def greedy_codes(model, tokenizer, prompts, steps, audio=None, decode=True):
    """Greedy `generate()` with guidance 3: (codes int64 [B, K, frames], waveform or None).
    `audio` (float32 [B, 1, N]) is an audio prompt; `decode=False` skips most of EnCodec's work."""
    captured = {}
    original = model.audio_encoder.decode

    def capture(codes, *args, **kwargs):
        captured["codes"] = codes[0].clone()
        return original(codes if decode else codes[..., :2], *args, **kwargs)

    model.audio_encoder.decode = capture
    try:
        inputs = tokenizer(prompts, padding=True, return_tensors="pt")
        kwargs = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        if audio is not None:
            kwargs["input_values"] = torch.from_numpy(audio).to(next(model.audio_encoder.parameters()).dtype)
        with torch.no_grad():
            wave = model.generate(**kwargs, do_sample=False, guidance_scale=3.0, max_new_tokens=steps)
    finally:
        model.audio_encoder.decode = original
    codes = captured["codes"].numpy().astype(np.int64)
    return codes, (wave.float().numpy() if decode else None)
