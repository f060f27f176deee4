"""The PyTorch side of `musicgen-interp bench`: transformers' MusicGen on the bundle's own weights
(`BUNDLE/hf`), timed in the same run as the Rust path. Prints one JSON object on stdout.

Usage: python onnx/bench_torch.py --bundle DIR --steps 53,503 [--threads 2] [--decode-seconds 5]
                                  [--device cuda --dtype float16]
On CUDA the clock stops after `torch.cuda.synchronize()`, so queued kernels are counted.
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerFast

PROMPT = "80s pop track with bassy drums and synth"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", required=True, help="comma-separated max_new_tokens values")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--decode-seconds", type=float, default=5.0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but PyTorch sees no CUDA device")
    dtype = getattr(torch, args.dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    hf = os.path.join(args.bundle, "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        sys.exit(f"error: {hf} holds no transformers checkpoint: the PyTorch comparison needs a random-weight bundle's hf/ folder")
    model = MusicgenForConditionalGeneration.from_pretrained(hf, torch_dtype=dtype).to(device).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.bundle, "tokenizer.json"))
    tok.pad_token_id = model.config.text_encoder.pad_token_id
    inputs = tok([PROMPT], return_tensors="pt").to(device)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device), "dtype": args.dtype, "generate": []}
    with torch.no_grad():
        model.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=4)  # warm-up
        for steps in [int(s) for s in args.steps.split(",")]:
            torch.manual_seed(0)
            # time the token loop alone: stop before EnCodec by capturing the codes
            original = model.audio_encoder.decode
            timing = {}

            def stop(codes, *a, **k):
                sync()
                timing["end"] = time.perf_counter()
                return original(codes[..., :2], *a, **k)

            model.audio_encoder.decode = stop
            sync()
            start = time.perf_counter()
            model.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=steps)
            model.audio_encoder.decode = original
            secs = timing["end"] - start
            result["generate"].append({"steps": steps, "seconds": secs, "steps_per_s": steps / secs})
            print(f"torch: {steps} steps in {secs:.2f} s", file=sys.stderr)
        frames = int(args.decode_seconds * model.config.audio_encoder.frame_rate)
        codes = torch.randint(0, model.config.audio_encoder.codebook_size, (1, 1, model.decoder.num_codebooks, frames), device=device)
        sync()
        start = time.perf_counter()
        model.audio_encoder.decode(codes, [None])
        sync()
        result["encodec_decode_s_per_audio_s"] = (time.perf_counter() - start) / args.decode_seconds
    print(json.dumps(result))


if __name__ == "__main__":
    main()
