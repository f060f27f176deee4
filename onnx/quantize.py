#!/usr/bin/env python3
"""Make a reduced-precision copy of a bundle: the decoder's matrix weights (every decoder layer and
the head) become block-wise int8 or int4 weight-only matmuls (onnxruntime's MatMulNBits), the rest
stays fp32. Graph inputs and outputs do not change, so the runtime and every hook work as before;
fewer weight bytes per step is where the speed comes from (fp32 decoding is memory-bound).

    python onnx/quantize.py --bundle models/small --out models/small-int8 [--bits 8] [--block-size 128]
                            [--reference-checkpoint]

Each quantized graph keeps its weights in NAME.onnx.data. With --bits 8 the CPU copies come along:
each StreamMatMul becomes the runtime's StreamMatMulInt8, which reads the very B and scales tensors
of the plain graph's MatMulNBits from that file. With --bits 4 the CPU copies are dropped.

--reference-checkpoint also writes hf/: the source bundle's transformers checkpoint with every
quantized weight replaced by its dequantized value, so that `onnx/reference.py --bundle OUT` gives
transformers' outputs of the very model the quantized graphs compute.

Fidelity against the fp32 bundle: `musicgen-interp compare --model models/small-int8 --reference models/small`.
"""

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections import namedtuple
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from export import CPU_OP, FORMAT_VERSION, MAX_IR_VERSION, make_readable, sha256, unpack_panels  # noqa: E402
from mg_fs import swap_in  # noqa: E402

INT8_OP = "StreamMatMulInt8"  # the runtime's int8 weight matmul (src/runtime/matmul_int8.rs)
EXTERNAL_THRESHOLD = 1024  # tensors of this many bytes or more go to NAME.onnx.data, as in export.py

# One MatMulNBits node of a quantized graph with copies of its weight tensors (B and scales).
Quantized = namedtuple("Quantized", "node b scales")


class QuantizeError(Exception):
    pass


def array_key(a):
    """Identifies a weight by dtype, shape and bytes."""
    import numpy as np

    a = np.ascontiguousarray(a)
    return (a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())


def tensor_key(t):
    from onnx import numpy_helper

    return array_key(numpy_helper.to_array(t))


def quantize_graph(src, dst, bits, block_size, accuracy_level):
    """Writes the quantized `src` to `dst` (weights in `dst.data`). Returns (key of the fp32 weight,
    Quantized) for each MatMulNBits node: it replaced the MatMul of that weight (same output name)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

    model = onnx.load(str(src))  # with its external weights
    inits = {t.name: t for t in model.graph.initializer}
    weight_of = {n.output[0]: tensor_key(inits[n.input[1]]) for n in model.graph.node
                 if n.op_type == "MatMul" and n.input[1] in inits}
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level)
    q.process()
    out = q.model.model
    out.ir_version = min(out.ir_version, MAX_IR_VERSION)  # onnxruntime 1.31 rejects newer IR versions

    inits = {t.name: t for t in out.graph.initializer}
    quantized = []
    for node in out.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        key = weight_of.get(node.output[0])
        if key is None or len(node.input) != 3:
            raise QuantizeError(f"{src.name}: MatMulNBits {node.name} does not stand for one symmetric weight matmul")
        # copies: saving with external data below empties the tensors of `out`
        b, scales = (onnx.TensorProto.FromString(inits[n].SerializeToString()) for n in node.input[1:])
        quantized.append((key, Quantized(node, b, scales)))

    onnx.save_model(out, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data", size_threshold=EXTERNAL_THRESHOLD)
    onnx.checker.check_model(str(dst))
    return quantized


def relink_weights(proto, folder: Path, plain):
    """Points each initializer of `proto` at the identical tensor in the plain graph's weights file
    (matched by content), so an int8 CPU copy holds no weights of its own. Initializers below the
    external-data threshold stay inline, as they are in the plain graph."""
    import hashlib

    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo

    def key(tensor, raw):
        return (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).hexdigest())

    stored = {}
    for t in plain.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            info = ExternalDataInfo(t)
            with open(folder / info.location, "rb") as f:
                f.seek(info.offset or 0)
                raw = f.read(info.length)
            stored[key(t, raw)] = list(t.external_data)
    for t in proto.graph.initializer:
        if len(t.raw_data) < 1024:
            continue
        entries = stored.get(key(t, t.raw_data))
        if entries is None:
            raise QuantizeError(f"CPU copy: initializer {t.name} {list(t.dims)} is not in the plain graph's weights (quantize.py bug)")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.extend(entries)


def write_int8_cpu_copy(src_copy, dst_copy, plain, quantized):
    """`dst_copy`: the fp32 CPU copy `src_copy` with each StreamMatMul(x, W_1..W_n) -> (y_1..y_n) turned
    into StreamMatMulInt8(x, B_1, scales_1, .., B_n, scales_n) -> (y_1..y_n), B_i and scales_i being the
    tensors of the MatMulNBits that replaced W_i in the quantized plain graph `plain` (a path; its
    weights file is beside it; `quantized` as quantize_graph returns it). Every tensor of 1024 bytes
    or more is read from that weights file."""
    import onnx
    from mg_wrappers import CPU_DOMAIN
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(src_copy))  # with the fp32 weights, from the source folder
    inits = {t.name: t for t in proto.graph.initializer}
    quantized = dict(quantized)
    added = {}
    nodes = []
    for node in proto.graph.node:
        if node.op_type == CPU_OP and node.domain == CPU_DOMAIN:
            inputs = [node.input[0]]
            widths = next(list(a.ints) for a in node.attribute if a.name == "widths")
            for w, n in zip(node.input[1:], widths):
                # the fp32 copy holds the weight in panels: its [K, N] form is the plain graph's
                q = quantized.get(array_key(unpack_panels(numpy_helper.to_array(inits[w]), n)))
                if q is None:
                    raise QuantizeError(f"{src_copy.name}: weight {w} of {node.name} matches no quantized matmul of {plain.name}")
                inputs += [q.b.name, q.scales.name]
                added.update({q.b.name: q.b, q.scales.name: q.scales})
            node = helper.make_node(INT8_OP, inputs, list(node.output), name=node.name, domain=CPU_DOMAIN)
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)

    used = {i for n in nodes for i in n.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    clash = {t.name for t in kept} & set(added)
    if clash:
        raise QuantizeError(f"{src_copy.name}: tensor names {sorted(clash)} exist in both graphs")
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept + list(added.values()))
    relink_weights(proto, plain.parent, onnx.load(str(plain), load_external_data=False))
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)

    matrices = [t.name for t in proto.graph.initializer
                if t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and t.name not in added]  # scales are 2-D
    if matrices:
        raise QuantizeError(f"{dst_copy.name}: fp32 matrix weights left: {matrices}")
    for node in proto.graph.node:
        if node.op_type == INT8_OP and len(node.input) != 1 + 2 * len(node.output):
            raise QuantizeError(f"{dst_copy.name}: {node.name} has {len(node.input)} inputs for {len(node.output)} outputs")
    onnx.save_model(proto, str(dst_copy))
    onnx.checker.check_model(str(dst_copy))
    return sum(1 for n in proto.graph.node if n.op_type == INT8_OP)


def dequantize(q, bits):
    """The weight a MatMulNBits node computes with, as torch's Linear holds it: [out, in] = [N, K]."""
    import numpy as np
    from onnx import helper, numpy_helper

    b = numpy_helper.to_array(q.b)  # uint8 [N, blocks, block_size * bits / 8]
    if bits == 4:  # two values a byte, the low nibble first
        packed, b = b, np.empty(b.shape[:2] + (2 * b.shape[2],), np.uint8)
        b[..., 0::2] = packed & 0x0F
        b[..., 1::2] = packed >> 4
    n, blocks, _ = b.shape
    scales = numpy_helper.to_array(q.scales).reshape(n, blocks, 1)
    w = (b.astype(np.float32) - (1 << (bits - 1))) * scales  # symmetric: zero point 128 (int8) or 8 (int4)
    k = next(helper.get_attribute_value(a) for a in q.node.attribute if a.name == "K")
    return w.reshape(n, -1)[:, :k]


def write_reference_checkpoint(src_hf, dst_hf, quantized, bits):
    """`dst_hf`: the checkpoint `src_hf` with the weight of each quantized Linear dequantized. `quantized`
    lists (graph, what quantize_graph returned for it). Returns the number of Linears replaced."""
    import torch
    import transformers
    from transformers import MusicgenForConditionalGeneration

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = MusicgenForConditionalGeneration.from_pretrained(str(src_hf), dtype=torch.float32).eval()
    linears = {}  # key of the weight as the graphs hold it ([in, out]) -> Linear names
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if isinstance(m, torch.nn.Linear):
            linears.setdefault(array_key(m.weight.detach().numpy().T), []).append(name)
    replaced = set()
    nodes = 0
    with torch.no_grad():
        for graph, weights in quantized:
            for key, q in weights:
                names = linears.get(key)
                if not names:
                    raise QuantizeError(f"--reference-checkpoint: the weight of {q.node.name} in {graph} is no Linear weight of {src_hf}")
                w = torch.from_numpy(dequantize(q, bits))
                for name in names:
                    modules[name].weight.copy_(w)
                replaced.update(names)
                nodes += 1
    # The export traces each Linear as one MatMul of its own weight (nothing fused), so each
    # MatMulNBits node stands for one Linear.
    if len(replaced) != nodes:
        raise QuantizeError(f"--reference-checkpoint: {nodes} quantized matmuls matched {len(replaced)} Linears")
    model.save_pretrained(str(dst_hf))
    # the tokenizer and processor files come along as they are
    for f in src_hf.iterdir():
        weights_file = f.name.endswith((".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json"))
        if f.is_file() and not weights_file and not (dst_hf / f.name).exists():
            shutil.copy2(f, dst_hf / f.name)
    return len(replaced)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="an fp32 bundle folder")
    ap.add_argument("--out", required=True, help="the folder to write (must not exist)")
    ap.add_argument("--bits", type=int, choices=(4, 8), default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4),
                    help="MatMulNBits compute type: 0 keeps the activations fp32, 4 computes with int8 activations (faster)")
    ap.add_argument("--reference-checkpoint", action="store_true",
                    help="also write hf/: the source's hf/ checkpoint with the dequantized weights (for onnx/reference.py)")
    args = ap.parse_args(argv)
    src, out = Path(args.bundle), Path(args.out)
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise QuantizeError(f"{src} is not a bundle (no manifest.json)")
    if out.exists():
        raise QuantizeError(f"{out} exists; choose a new --out")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise QuantizeError(
            f"{src} is bundle format {manifest.get('format_version')}, this quantize.py reads format {FORMAT_VERSION}: "
            "export it again with onnx/export.py"
        )
    if manifest.get("dtype", "float32") != "float32":
        raise QuantizeError(f"{src} is a {manifest['dtype']} bundle; quantize an fp32 bundle")
    if manifest.get("precision", {}).get("weights", "fp32") != "fp32":
        raise QuantizeError(f"{src} is already reduced-precision ({manifest['precision']['weights']}); start from an fp32 bundle")
    if args.reference_checkpoint and not (src / "hf" / "config.json").is_file():
        raise QuantizeError(f"--reference-checkpoint: {src / 'hf'} holds no transformers checkpoint (config.json)")
    graphs = manifest["graphs"]
    targets = graphs["decoder_layers"] + [graphs["decoder_head"]]
    # The CPU copies: rewritten for the int8 graphs, dropped for int4.
    cpu_copy = {}
    if "decoder_layers_cpu" in graphs:
        cpu_copy = dict(zip(targets, graphs["decoder_layers_cpu"] + [graphs["decoder_head_cpu"]]))
    # the fp32 weights files and CPU copies of the targets: replaced, or dropped
    skipped = {f"{t}.data" for t in targets} | set(cpu_copy.values()) | {f"{c}.data" for c in cpu_copy.values()}
    if args.bits != 8:
        graphs.pop("decoder_layers_cpu", None)
        graphs.pop("decoder_head_cpu", None)
        cpu_copy = {}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = []
        quantized = []  # (graph, its weights)
        for name in manifest["files"]:
            if name in targets:
                weights = quantize_graph(src / name, tmp / name, args.bits, args.block_size, args.accuracy_level)
                quantized.append((name, weights))
                files += [n for n in (name, f"{name}.data") if (tmp / n).exists()]
                msg = f"{name}: {len(weights)} matmuls -> int{args.bits}"
                if name in cpu_copy:
                    copy = cpu_copy[name]
                    n = write_int8_cpu_copy(src / copy, tmp / copy, tmp / name, weights)
                    files.append(copy)
                    msg += f"; {copy}: {n} {INT8_OP}"
                print(msg, flush=True)
            elif name in skipped:
                continue
            else:
                shutil.copy2(src / name, tmp / name)
                files.append(name)
        manifest["files"] = {n: {"sha256": sha256(tmp / n), "bytes": (tmp / n).stat().st_size} for n in files}
        manifest["precision"] = {
            "weights": f"int{args.bits}",
            "block_size": args.block_size,
            "accuracy_level": args.accuracy_level,
            "graphs": sorted(targets),
            "cpu_copies": bool(cpu_copy),
            "from": str(manifest["source"]["model_id"]),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if args.reference_checkpoint:
            n = write_reference_checkpoint(src / "hf", tmp / "hf", quantized, args.bits)
            print(f"hf/: {n} Linear weights replaced by their dequantized values", flush=True)
        make_readable(tmp)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    def decoder_bytes(folder):  # the plain decoder graphs with their weights files
        names = targets + [f"{t}.data" for t in targets]
        return sum((folder / n).stat().st_size for n in names if (folder / n).exists())

    before, after = decoder_bytes(src), decoder_bytes(out)
    total = sum(info["bytes"] for info in manifest["files"].values())
    print(f"wrote {out}: decoder weights {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB; {total / 1e6:.1f} MB read by the runtime")


if __name__ == "__main__":
    try:
        main()
    except QuantizeError as e:
        print(f"quantize.py: error: {e}", file=sys.stderr)
        sys.exit(2)
