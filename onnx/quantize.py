#!/usr/bin/env python3
"""Make a reduced-precision copy of a bundle: the decoder's matrix weights (every decoder layer and
the head) become block-wise int8 or int4 weight-only matmuls (onnxruntime's MatMulNBits), the rest
stays fp32. Graph inputs and outputs do not change, so the runtime and every hook work as before;
fewer weight bytes per step is where the speed comes from (fp32 decoding is memory-bound).

    python onnx/quantize.py --bundle models/small --out models/small-int8 [--bits 8] [--block-size 128]

Fidelity against the fp32 bundle: `musicgen-interp compare --model models/small-int8 --reference models/small`.
"""

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mg_fs import swap_in  # noqa: E402


class QuantizeError(Exception):
    pass


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quantize_graph(src, dst, bits, block_size, accuracy_level):
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

    model = onnx.load(str(src))  # with its external weights, if any
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level)
    q.process()
    out = q.model.model
    if out.ir_version > 10:
        out.ir_version = 10  # onnxruntime 1.31 rejects newer IR versions
    onnx.save_model(out, str(dst))
    return sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="an fp32 bundle folder")
    ap.add_argument("--out", required=True, help="the folder to write (must not exist)")
    ap.add_argument("--bits", type=int, choices=(4, 8), default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4),
                    help="MatMulNBits compute type: 0 keeps the activations fp32, 4 computes with int8 activations (faster)")
    args = ap.parse_args(argv)
    src, out = Path(args.bundle), Path(args.out)
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise QuantizeError(f"{src} is not a bundle (no manifest.json)")
    if out.exists():
        raise QuantizeError(f"{out} exists; choose a new --out")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("precision", {}).get("weights", "fp32") != "fp32":
        raise QuantizeError(f"{src} is already reduced-precision ({manifest['precision']['weights']}); start from an fp32 bundle")
    graphs = manifest["graphs"]
    targets = set(graphs["decoder_layers"]) | {graphs["decoder_head"]}
    # The fp32 CPU copies of those graphs and the fp32 weights files they share do not come along:
    # the quantized graphs keep their (smaller) weights inline and run on every provider.
    dropped = set(graphs.pop("decoder_layers_cpu", [])) | {graphs.pop("decoder_head_cpu", None)}
    dropped |= {f"{t}.data" for t in targets}
    for name in dropped:
        manifest["files"].pop(name, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in manifest["files"]:
            if name in targets:
                n = quantize_graph(src / name, tmp / name, args.bits, args.block_size, args.accuracy_level)
                print(f"{name}: {n} matmuls -> int{args.bits}", flush=True)
            else:
                shutil.copy2(src / name, tmp / name)
            manifest["files"][name] = {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest["precision"] = {
            "weights": f"int{args.bits}",
            "block_size": args.block_size,
            "accuracy_level": args.accuracy_level,
            "graphs": sorted(targets),
            "from": str(manifest["source"]["model_id"]),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    before = sum((src / n).stat().st_size for n in targets)
    after = sum((out / n).stat().st_size for n in targets)
    print(f"wrote {out}: decoder weights {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")


if __name__ == "__main__":
    try:
        main()
    except QuantizeError as e:
        print(f"quantize.py: error: {e}", file=sys.stderr)
        sys.exit(2)
