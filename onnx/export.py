#!/usr/bin/env python3
"""Export MusicGen (a checkpoint, or a config with random weights) to a musicgen-interp bundle.

The bundle layout, graph names, inputs and outputs are the contract in docs/BUNDLE.md.

    python onnx/export.py --preset tiny --random-weights --seed 0 --out tests/data/tiny
    python onnx/export.py --config my_config.json --random-weights --seed 3 --out models/mine
    python onnx/export.py --preset tiny --random-weights --tokenizer t5-tokenizer.json --out models/tiny-t5tok
    python onnx/export.py --model facebook/musicgen-small --out models/musicgen-small
    python onnx/export.py --model path/to/checkpoint_folder --out models/local
    python onnx/export.py --model facebook/musicgen-small --precision fp16 --out models/musicgen-small-fp16
"""

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mg_fs import swap_in  # noqa: E402
import mg_hooks  # noqa: E402

EXPORTER_VERSION = "0.5.0"
FORMAT = "musicgen-interp-bundle"
FORMAT_VERSION = 6
OPSET = 17
MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions
EXTERNAL_DATA_BYTES = 100 * 1024 * 1024  # graphs larger than this keep their weights in NAME.onnx.data
# The CPU copies of the decoder graphs: matmuls against a 2-D fp32 weight use the runtime's own
# weight-streaming kernel (src/runtime/matmul.rs, domain mg_wrappers.CPU_DOMAIN), and a layer's
# attention, cross-attention and interventions the runtime's own operators (src/runtime/attention.rs);
# a copy reads the plain graph's weights file.
CPU_OP = "StreamMatMul"
PRESETS = HERE / "presets"
# --precision fp16: the graphs converted to float16 compute (onnxruntime's own converter). The text encoder
# stays float32 (T5 overflows in float16). Every graph input and output stays float32 except the KV cache
# and the cross keys/values, which are float16 (FP16_IO).
FP16_GRAPHS = ("cross_kv", "decoder_embed", "decoder_head", "encodec_encode", "encodec_decode_latent",
               "encodec_decode_upsample")  # and every decoder_layer_{l}
FP16_IO = {"past_key", "past_value", "cross_key", "cross_value", "present_key", "present_value"}
DTYPES = {"fp32": "float32", "fp16": "float16"}
DEFAULT_GENERATION = {"guidance_scale": 3.0, "top_k": 250, "temperature": 1.0}


class ExportError(Exception):
    """A problem the user can fix; printed as one line."""


def log(msg=""):
    print(msg, flush=True)


def one_line(exc, limit=300):
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------ args


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Export MusicGen to an ONNX bundle (docs/BUNDLE.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="hub id (e.g. facebook/musicgen-small) or a local checkpoint folder")
    src.add_argument("--config", help="a MusicgenConfig JSON (like a hub config.json); needs --random-weights")
    src.add_argument("--preset", help="shorthand for --config onnx/presets/NAME.json: " + ", ".join(presets()))
    p.add_argument("--revision", help="hub revision (branch, tag or commit) for --model")
    p.add_argument("--random-weights", action="store_true", help="initialise the --config/--preset model randomly")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    p.add_argument("--tokenizer", help="a tokenizer.json for a --random-weights bundle instead of the built word-level "
                   "one (e.g. from onnx/make_t5_tokenizer.py); its ids must fit the text encoder's vocab_size")
    p.add_argument("--out", required=True, help="bundle folder to write (must not exist or be empty, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--source-key", help="what --model was made from, as the Rust runtime keys it (recorded as "
                   "manifest source.key, compared before the runtime reuses the bundle)")
    p.add_argument("--no-verify", action="store_true", help="skip running each graph once with onnxruntime")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: the decoder, cross_kv and EnCodec graphs compute in float16 (weights, activations and "
                   "the KV cache), for GPU hosts; the text encoder stays float32; implies no CPU copies (docs/BUNDLE.md)")
    p.add_argument("--targets", choices=("all", "gpu"), default="all",
                   help="gpu: write no CPU copies (decoder_layer_{l}.cpu.onnx, decoder_head.cpu.onnx) (default all)")
    args = p.parse_args(argv)
    if (args.config or args.preset) and not args.random_weights:
        p.error("--config/--preset build a model from a config: add --random-weights (or use --model for weights)")
    if args.model and args.random_weights:
        p.error("--random-weights goes with --config or --preset, not with --model")
    if args.revision and not args.model:
        p.error("--revision only applies to --model")
    if args.tokenizer and not args.random_weights:
        p.error("--tokenizer goes with --random-weights (a checkpoint ships its own tokenizer)")
    return args


def presets():
    return sorted(f.stem for f in PRESETS.glob("*.json"))


# ----------------------------------------------------------------------------------------- model


def read_config_dict(path: Path, flag: str):
    try:
        text = path.read_text()
    except OSError as e:
        raise ExportError(f"cannot read {flag} {path.name}: {e.strerror}; give the path of a MusicGen config JSON")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(
            f"{flag} {path.name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file"
        )
    if not isinstance(cfg, dict):
        raise ExportError(f"{flag} {path.name} must hold a JSON object (a MusicgenConfig dict)")
    missing = [k for k in ("text_encoder", "audio_encoder", "decoder") if not isinstance(cfg.get(k), dict)]
    if missing:
        raise ExportError(
            f"{flag} {path.name} is not a MusicGen config: missing object(s) {', '.join(missing)}; "
            "start from onnx/presets/tiny.json"
        )
    if cfg.get("model_type", "musicgen") != "musicgen":
        raise ExportError(f"{flag} {path.name} has model_type {cfg.get('model_type')!r}; only 'musicgen' is supported")
    return cfg


def check_supported(model):
    """Refuse what bundle format 1 cannot express, before spending time on the export."""
    from mg_wrappers import musicgen_num_quantizers

    dec = model.config.decoder
    enc = model.config.audio_encoder
    if dec.audio_channels != 1:
        raise ExportError("stereo MusicGen (audio_channels 2) is not supported by bundle format 1; use a mono model")
    if enc.chunk_length_s is not None:
        raise ExportError("EnCodec with chunk_length_s set is not supported (MusicGen needs one frame); set it to null")
    if enc.normalize:
        raise ExportError("EnCodec with normalize=true is not supported (MusicGen models use false); set it to false")
    if enc.audio_channels != 1:
        raise ExportError("EnCodec must be mono (audio_channels 1)")
    nq = musicgen_num_quantizers(model.audio_encoder)
    if nq != dec.num_codebooks:
        raise ExportError(
            f"EnCodec encodes {nq} codebooks at target_bandwidths[0] but the decoder has num_codebooks "
            f"{dec.num_codebooks}; make them agree"
        )
    if enc.codebook_size != dec.vocab_size:
        raise ExportError(
            f"EnCodec codebook_size {enc.codebook_size} differs from the decoder vocab_size {dec.vocab_size}"
        )
    if dec.hidden_size % dec.num_attention_heads:
        raise ExportError(f"decoder hidden_size {dec.hidden_size} is not divisible by {dec.num_attention_heads} heads")
    if enc.pad_mode not in ("reflect", "constant"):
        raise ExportError(f"EnCodec pad_mode {enc.pad_mode!r} is not supported; use 'reflect' (MusicGen's) or 'constant'")
    # scale_embedding: transformers 5.23 computes embed_scale but never applies it; the graph follows it


def randomize_codebooks(model, seed):
    """Random EnCodec codebooks (randomly initialised ones are all zero: every code would be 0)."""
    import torch

    ae = model.audio_encoder
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # Centre and scale each codebook on the (residual) embeddings of a probe signal with a changing
        # envelope, so that codes vary from frame to frame as they do for a trained model.
        n = ae.config.sampling_rate  # one second
        envelope = torch.linspace(0, 12.0, n).sin().abs()[None, None] + 0.05
        probe = torch.randn(1, 1, n, generator=gen) * 0.3 * envelope
        residual = ae.encoder(probe)  # [1, dim, frames]
        for layer in ae.quantizer.layers:
            cb = layer.codebook
            mean = residual.mean(dim=(0, 2))
            std = residual.std(dim=(0, 2)).clamp(min=1e-3)
            embed = mean + torch.randn(cb.embed.shape, generator=gen) * std
            cb.embed.copy_(embed)
            cb.embed_avg.copy_(embed)
            cb.cluster_size.fill_(1.0)
            residual = residual - layer.decode(layer.encode(residual))


def build_random(config_dict, seed):
    import torch
    from transformers import GenerationConfig, MusicgenConfig, MusicgenForConditionalGeneration

    try:
        config = MusicgenConfig.from_dict(config_dict)
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
    except Exception as e:  # transformers' validation raises several types
        raise ExportError(f"not a valid MusicGen config: {one_line(e)}")
    model.eval()
    randomize_codebooks(model, seed)
    # the generation settings of facebook/musicgen-* checkpoints
    pad = config.decoder.pad_token_id
    model.generation_config = GenerationConfig(
        do_sample=True,
        guidance_scale=DEFAULT_GENERATION["guidance_scale"],
        top_k=DEFAULT_GENERATION["top_k"],
        temperature=DEFAULT_GENERATION["temperature"],
        max_length=1500,
        pad_token_id=pad,
        bos_token_id=config.decoder.bos_token_id,
        decoder_start_token_id=pad,
    )
    return model


def load_pretrained(name, revision):
    import torch
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    kw = {"revision": revision} if revision else {}
    local = Path(name).is_dir()
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
    if not local and (looks_like_path or Path(name).exists()):
        raise ExportError(f"--model {name}: no such checkpoint folder; give a folder with config.json or a hub id")
    hint = (
        "check the folder holds config.json, the weights and the tokenizer files"
        if local
        else "check the id and --revision, or that it is in the Hugging Face cache (no network: HF_HUB_OFFLINE=1)"
    )
    label = Path(name).name if local else name

    def reason(e):
        text = one_line(e, 160)
        if "couldn't connect" in text or "cached files" in text or "offline" in text.lower():
            return "not in the local Hugging Face cache and the hub cannot be reached"
        return text

    try:
        model = MusicgenForConditionalGeneration.from_pretrained(name, dtype=torch.float32, **kw)
    except Exception as e:
        raise ExportError(f"cannot load MusicGen from {label}: {reason(e)}; {hint}")
    if not isinstance(model, MusicgenForConditionalGeneration):
        raise ExportError(f"{label} is not a MusicgenForConditionalGeneration checkpoint")
    try:
        tok = AutoTokenizer.from_pretrained(name, **kw)
    except Exception as e:
        raise ExportError(f"cannot load the tokenizer of {label}: {reason(e)}; {hint}")
    model.eval()
    revision_out = None if local else hub_commit(name, revision)
    source = {
        "kind": "local" if local else "hub",
        "model_id": Path(name).resolve().name if local else name,
        "revision": revision_out,
        "seed": None,
    }
    return model, tok, source


def hub_commit(name, revision):
    """The commit a hub load came from: the snapshot folder of its cached config.json (else the revision asked)."""
    try:
        from transformers.utils.hub import cached_file

        snapshot = Path(cached_file(name, "config.json", revision=revision)).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", snapshot):
            return snapshot
    except Exception:
        pass
    return revision


def bundle_tokenizer(model, hf_tok, tokenizer_file=None):
    """The tokenizers-library tokenizer the bundle ships (no padding/truncation rule: the host pads):
    the checkpoint's, the one in `tokenizer_file` (random weights), or the built word-level one."""
    from tokenizers import Tokenizer

    from mg_tokenizer import build_tokenizer, without_padding

    tcfg = model.config.text_encoder
    if tokenizer_file is not None:
        return without_padding(given_tokenizer(Path(tokenizer_file), tcfg))
    if hf_tok is None:
        try:
            return build_tokenizer(tcfg.vocab_size, tcfg.pad_token_id, tcfg.eos_token_id, 2)
        except ValueError as e:
            raise ExportError(str(e))
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("the checkpoint's tokenizer has no tokenizers backend (tokenizer.json); cannot export it")
    return without_padding(Tokenizer.from_str(backend.to_str()))


def given_tokenizer(path: Path, tcfg):
    """--tokenizer: a tokenizer.json whose every id (added tokens too) is below the text encoder's vocab_size
    and whose `<pad>` / `</s>` ids are the text config's pad and eos ids."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ExportError(f"--tokenizer {path} is not a file; give a tokenizer.json (onnx/make_t5_tokenizer.py writes one)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises plain Exception for a bad file
        raise ExportError(f"--tokenizer {path.name} is not a tokenizers tokenizer.json: {one_line(e)}")
    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    if size > tcfg.vocab_size:
        raise ExportError(
            f"--tokenizer {path.name} has ids up to {size - 1} ({size} ids) but the text encoder's vocab_size is "
            f"{tcfg.vocab_size}; train a smaller tokenizer or use a config with a larger text vocab_size"
        )
    for token, want, what in (("<pad>", tcfg.pad_token_id, "pad_token_id"), ("</s>", tcfg.eos_token_id, "eos_token_id")):
        got = tok.token_to_id(token)
        if got != want:
            raise ExportError(
                f"--tokenizer {path.name} gives {token} the id {got}, but the text encoder's {what} is {want}; "
                "the tokenizer must use the model's special ids"
            )
    return tok


# ----------------------------------------------------------------------------------------- graphs


def sha256(path: Path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mb(n):
    return f"{n / 1e6:.1f} MB"


def graph_specs(model):
    """(file stem, wrapper, example inputs, input names, output names, dynamic axes) of every graph."""
    import torch

    import mg_wrappers as W

    dcfg = model.config.decoder
    tcfg = model.config.text_encoder
    L, D, H = dcfg.num_hidden_layers, dcfg.hidden_size, dcfg.num_attention_heads
    hd, K, V = D // H, dcfg.num_codebooks, dcfg.vocab_size
    B, S, T, C, P = 2, 5, 3, 7, 4
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, tcfg.vocab_size, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.int64)
    mask[1, 3:] = 0
    ehs = torch.randn(B, S, tcfg.d_model, generator=g)
    codes_in = torch.randint(0, V + 1, (B, K, T), generator=g)
    hidden = torch.randn(B, T, D, generator=g)
    f32 = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    zeros = torch.zeros(B, T, D)
    hop = model.audio_encoder.config.hop_length
    audio = torch.randn(B, 1, 3 * hop + hop // 3, generator=g) * 0.3
    codes = torch.randint(0, V, (B, K, 4), generator=g)
    with torch.no_grad():
        latent = W.EncodecDecodeLatent(model.audio_encoder).eval()(codes)

    bt = {0: "B", 1: "T"}
    specs = [
        (
            "text_encoder",
            W.TextEncoder(model.text_encoder),
            (ids, mask),
            ["input_ids", "attention_mask"],
            ["last_hidden_state", "hidden_states", "normed_hidden_states"],
            {
                "input_ids": {0: "B", 1: "S"},
                "attention_mask": {0: "B", 1: "S"},
                "last_hidden_state": {0: "B", 1: "S"},
                "hidden_states": {1: "B", 2: "S"},
                "normed_hidden_states": {1: "B", 2: "S"},
            },
        ),
        (
            "cross_kv",
            W.CrossKV(model),
            (ehs, mask),
            ["encoder_hidden_states", "encoder_attention_mask"],
            ["cross_key", "cross_value"],
            {
                "encoder_hidden_states": {0: "B", 1: "S"},
                "encoder_attention_mask": {0: "B", 1: "S"},
                "cross_key": {1: "B", 3: "S"},
                "cross_value": {1: "B", 3: "S"},
            },
        ),
        (
            "decoder_embed",
            W.DecoderEmbed(model),
            (codes_in, torch.tensor(P, dtype=torch.int64)),
            ["input_ids", "past_len"],
            ["hidden"],
            {"input_ids": {0: "B", 2: "T"}, "hidden": bt},
        ),
    ]
    layer_inputs = ["hidden", "past_key", "past_value", "past_len", "cross_key", "cross_value", "encoder_attention_mask"]
    for comp in ("attn", "cross_attn", "mlp"):
        layer_inputs += [f"{comp}_add", f"{comp}_replace", f"{comp}_mask"]
    layer_outputs = ["resid_post", "attn_out", "cross_attn_out", "mlp_out", "present_key", "present_value"]
    layer_axes = {
        "hidden": bt,
        "past_key": {0: "B", 2: "C"},
        "past_value": {0: "B", 2: "C"},
        "cross_key": {0: "B", 2: "S"},
        "cross_value": {0: "B", 2: "S"},
        "encoder_attention_mask": {0: "B", 1: "S"},
        "present_key": {0: "B", 2: "C"},
        "present_value": {0: "B", 2: "C"},
    }
    for name in layer_inputs[7:] + layer_outputs[:4]:
        layer_axes[name] = bt
    dec_layers = W.decoder_stack(model).layers
    for l in range(L):
        comp_mask = torch.zeros(B, T, D)
        comp_mask[0, 1] = 1.0
        example = (
            hidden,
            f32(B, H, C, hd),
            f32(B, H, C, hd),
            # a prefill: onnxruntime's GroupQueryAttention takes several new positions over a
            # non-empty cache for one row at a time only (the host splits such calls by row)
            torch.tensor(0, dtype=torch.int64),
            f32(B, H, S, hd),
            f32(B, H, S, hd),
            mask,
            f32(B, T, D),
            f32(B, T, D),
            comp_mask,
            zeros,
            zeros,
            zeros,
            zeros,
            zeros,
            zeros,
        )
        specs.append(
            (f"decoder_layer_{l}", W.DecoderLayer(dec_layers[l], H), example, layer_inputs, layer_outputs, layer_axes)
        )
    specs += [
        (
            "decoder_head",
            W.DecoderHead(model),
            (hidden,),
            ["hidden"],
            ["normed", "logits"],
            {"hidden": bt, "normed": bt, "logits": {0: "B", 2: "T"}},
        ),
        (
            "encodec_encode",
            W.EncodecEncode(model.audio_encoder),
            (audio,),
            ["audio"],
            ["codes"],
            {"audio": {0: "B", 2: "N"}, "codes": {0: "B", 2: "F"}},
        ),
        (
            "encodec_decode_latent",
            W.EncodecDecodeLatent(model.audio_encoder),
            (codes,),
            ["codes"],
            ["latent"],
            {"codes": {0: "B", 2: "F"}, "latent": {0: "B", 2: "F"}},
        ),
        (
            "encodec_decode_upsample",
            W.EncodecDecodeUpsample(model.audio_encoder),
            (latent,),
            ["latent"],
            ["audio"],
            {"latent": {0: "B", 2: "F"}, "audio": {0: "B", 2: "N"}},
        ),
    ]
    return specs


def position_nodes(graph):
    """decoder_embed's sinusoid path: every node not computed from the embedding tables (positions from
    `past_len` and the input's length, the frequencies, angles, cos and sin), kept float32 in an fp16 export:
    transformers computes its position table in float32 and rounds it once, while angles computed in
    float16 (or with float16 frequencies) would be off by up to 0.25 rad near position 1000."""
    from onnx import TensorProto

    tables = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    names = []
    for node in graph.node:  # topologically sorted
        if any(i in tables for i in node.input):
            tables.update(node.output)
        else:
            names.append(node.name)
    return names


def to_float16(proto, stem):
    """`proto` converted to float16 compute by onnxruntime's own converter: float32 IO kept except FP16_IO
    (the KV cache and cross keys/values, which become float16 with no cast in front of the attention);
    the converter's default op block list stays float32 with casts (docs/BUNDLE.md)."""
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    io = list(proto.graph.input) + list(proto.graph.output)
    before = {v.name: v.type.tensor_type.elem_type for v in io}
    blocked = position_nodes(proto.graph) if stem == "decoder_embed" else None
    if blocked:
        # The converter puts a cast on every typed value a blocked node reads or writes, so a chain of blocked
        # nodes would round each step to float16: only the values leaving the chain get their type (and a cast).
        import onnx

        typed = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
        inside = {o for n in proto.graph.node if n.name in blocked for o in n.output}
        leaving = {i for n in proto.graph.node if n.name not in blocked for i in n.input if i in inside}
        proto.graph.value_info.extend(
            typed[v] for v in sorted(leaving) if v in typed and typed[v].type.tensor_type.elem_type == TensorProto.FLOAT
        )
    out = convert_float_to_float16(
        proto, keep_io_types=[n for n in before if n not in FP16_IO], disable_shape_infer=True,
        node_block_list=blocked,
    )
    OnnxModel(out).topological_sort()  # the converter appends its input casts after their consumers
    for v in list(out.graph.input) + list(out.graph.output):
        got, was = v.type.tensor_type.elem_type, before[v.name]
        want = TensorProto.FLOAT16 if v.name in FP16_IO else was
        if got != want:
            raise ExportError(f"{stem}: fp16 conversion made {v.name} type {got}, expected {want} (exporter bug)")
    if stem.startswith("decoder_layer_"):
        gqa = [n for n in out.graph.node if n.op_type == "GroupQueryAttention"]
        if len(gqa) != 1 or list(gqa[0].input[3:5]) != ["past_key", "past_value"] or \
                list(gqa[0].output[1:3]) != ["present_key", "present_value"]:
            raise ExportError(f"{stem}: GroupQueryAttention does not read and write the fp16 cache directly (exporter bug)")
    return out


def export_one(folder: Path, stem, module, example, in_names, out_names, axes, verify, fp16=False, cpu_copies=True):
    import numpy as np
    import onnx
    import torch
    from mg_wrappers import CPU_DOMAIN

    path = folder / f"{stem}.onnx"
    t0 = time.time()
    module.eval()

    def trace(dst, custom_opsets):
        torch.onnx.export(
            module,
            example,
            str(dst),
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
            custom_opsets=custom_opsets,
        )

    layer = stem.startswith("decoder_layer_")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace(path, {"com.microsoft": 1} if layer else None)
        if layer and cpu_copies:
            # the CPU copy's own operators, traced from the same module (weights relinked below)
            module.cpu_ops = True
            try:
                trace(folder / f"{stem}.cpu.onnx", {CPU_DOMAIN: 1})
            finally:
                module.cpu_ops = False
    proto = onnx.load(str(path))
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != list(in_names) or got_out != list(out_names):
        raise ExportError(f"{stem}: exported names {got_in} -> {got_out} differ from the contract (exporter bug)")
    half = fp16 and (layer or stem in FP16_GRAPHS)
    if half:
        proto = to_float16(proto, stem)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    data_file = f"{stem}.onnx.data"
    cpu_copy = cpu_copies and (layer or stem == "decoder_head")
    if layer or stem == "decoder_head" or proto.ByteSize() > EXTERNAL_DATA_BYTES:
        path.unlink()
        onnx.save_model(
            proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_file,
            size_threshold=1024,
        )
        files = [path.name, data_file]
    else:
        onnx.save_model(proto, str(path))
        files = [path.name]
    onnx.checker.check_model(str(path))
    del proto
    if cpu_copy:
        files += write_cpu_copy(folder, stem, traced=layer)
    size = sum((folder / f).stat().st_size for f in files)
    msg = f"  {path.name:<24} {mb(size):>10}  {time.time() - t0:5.1f} s{'  fp16' if half else ''}"
    if verify:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = {n: t.numpy() for n, t in zip(in_names, example)}
        got = sess.run(None, {i.name: feeds[i.name].astype(np.float16) if i.type == "tensor(float16)" else feeds[i.name]
                              for i in sess.get_inputs()})
        with torch.no_grad():
            want = module(*example)
        want = want if isinstance(want, (tuple, list)) else (want,)
        diff = 0.0
        for name, g_, w_ in zip(out_names, got, want):
            w_ = w_.numpy()
            if name.startswith("present_"):
                # only the cache positions < past_len + T are defined (the example's past_len is 0)
                t = feeds["hidden"].shape[1]
                g_, w_ = g_[:, :, :t], w_[:, :, :t]
            if g_.shape != w_.shape:
                raise ExportError(f"{stem}: onnxruntime gives shape {g_.shape}, torch {w_.shape} (exporter bug)")
            if g_.dtype.kind == "i":
                diff = max(diff, float((g_ != w_).sum()))
            else:  # (an fp16 graph against the fp32 torch module: its rounding)
                diff = max(diff, float(np.abs(g_.astype(np.float32) - w_).max()) if g_.size else 0.0)
        msg += f"  check {diff:.1e}"
        del sess
    log(msg)
    return files


PANEL = 16  # columns per panel of a CPU copy's weight (src/runtime/matmul.rs)
DATA_ALIGN = 4096  # offset of each tensor in a CPU copy's weights file (page-aligned, so it can be mapped)


def pack_panels(w):
    """A [K, N] weight in the CPU copies' layout: [ceil(N / 16), K, 16], panel p holding columns
    16p..16p+16 of every row, the last panel zero-padded (one panel is one run of K cache lines)."""
    import numpy as np

    k, n = w.shape
    panels = -(-n // PANEL)
    padded = np.zeros((k, panels * PANEL), w.dtype)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2))


def unpack_panels(packed, n):
    """The [K, N] weight that pack_panels(w) stores."""
    panels, k, _ = packed.shape
    return packed.transpose(1, 0, 2).reshape(k, panels * PANEL)[:, :n]


def write_weights_file(proto, folder: Path, location):
    """Moves every initializer of 1024 bytes or more into `location` (one file, each tensor at a
    page-aligned offset) and points the initializer at it."""
    from onnx import TensorProto

    with open(folder / location, "wb") as f:
        for t in proto.graph.initializer:
            if len(t.raw_data) < 1024:
                continue
            f.write(b"\0" * (-f.tell() % DATA_ALIGN))
            offset = f.tell()
            f.write(t.raw_data)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value


def write_cpu_copy(folder: Path, stem, traced):
    """`STEM.cpu.onnx` with its weights in `STEM.cpu.onnx.data`: STEM.onnx, or with `traced` the graph
    the exporter traced with the runtime's own attention and intervention operators (already at
    STEM.cpu.onnx, for a layer). In both, each MatMul whose second input is a 2-D fp32 weight becomes
    the runtime's StreamMatMul (same input and output; attribute `widths` gives each weight's N), its
    weight stored in panels (pack_panels). Returns the two file names."""
    import onnx
    from mg_wrappers import CPU_DOMAIN
    from onnx import TensorProto, helper, numpy_helper

    name = f"{stem}.cpu.onnx"
    proto = onnx.load(str(folder / (name if traced else f"{stem}.onnx")))  # with the weights
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    inits = {i.name: i for i in proto.graph.initializer}
    weights = {n for n, i in inits.items() if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT}
    # Weight matmuls of one input (q, k and v; the codebook heads) become one StreamMatMul node with
    # a weight and an output each, so they stream in one parallel section. The node takes the place
    # of the first of them: its input exists there, and every consumer of theirs comes later.
    groups = {}  # input -> positions of its weight matmuls
    nodes = list(proto.graph.node)
    for i, node in enumerate(nodes):
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in weights:
            groups.setdefault(node.input[0], []).append(i)
    if not groups:
        raise ExportError(f"{stem}: no matmul against a weight found for the CPU copy (exporter bug)")
    streamed = [nodes[i].input[1] for group in groups.values() for i in group]
    for node in nodes:
        if not (node.op_type == "MatMul" and node.input[1] in weights) and set(node.input) & set(streamed):
            raise ExportError(f"{stem}: a streamed weight is also an input of {node.name} (exporter bug)")
    for x, group in groups.items():
        first = nodes[group[0]]
        widths = [int(inits[nodes[i].input[1]].dims[1]) for i in group]
        nodes[group[0]] = helper.make_node(
            CPU_OP, [x] + [nodes[i].input[1] for i in group], [nodes[i].output[0] for i in group], name=first.name,
            domain=CPU_DOMAIN, widths=widths,
        )
        for i in group[1:]:
            nodes[i] = None
    for w in set(streamed):
        inits[w].CopyFrom(numpy_helper.from_array(pack_panels(numpy_helper.to_array(inits[w])), w))
    nodes = [n for n in nodes if n is not None]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if not any(o.domain == CPU_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(CPU_DOMAIN, 1))
    data = f"{name}.data"
    write_weights_file(proto, folder, data)
    onnx.save_model(proto, str(folder / name))
    return [name, data]


def manifest(model, source, graph_files, tokenizer_file, folder: Path, dtype="float32", cpu_copies=True):
    import mg_wrappers as W

    dcfg = model.config.decoder
    tcfg = model.config.text_encoder
    acfg = model.config.audio_encoder
    context, hop = W.decode_context_frames(model.audio_encoder)
    L = dcfg.num_hidden_layers
    gen = model.generation_config
    generation = {
        k: (getattr(gen, k, None) if getattr(gen, k, None) is not None else v) for k, v in DEFAULT_GENERATION.items()
    }
    hooks = mg_hooks.hook_points(L)
    files = {}
    for name in [f for fs in graph_files.values() for f in fs] + [tokenizer_file]:
        p = folder / name
        files[name] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    graphs = {
        "text_encoder": "text_encoder.onnx",
        "cross_kv": "cross_kv.onnx",
        "decoder_embed": "decoder_embed.onnx",
        "decoder_layers": [f"decoder_layer_{l}.onnx" for l in range(L)],
        "decoder_head": "decoder_head.onnx",
        "decoder_layers_cpu": [f"decoder_layer_{l}.cpu.onnx" for l in range(L)],
        "decoder_head_cpu": "decoder_head.cpu.onnx",
        "encodec_encode": "encodec_encode.onnx",
        "encodec_decode_latent": "encodec_decode_latent.onnx",
        "encodec_decode_upsample": "encodec_decode_upsample.onnx",
    }
    if not cpu_copies:
        del graphs["decoder_layers_cpu"], graphs["decoder_head_cpu"]
    man = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exporter_version": EXPORTER_VERSION,
        "source": source,
        "text_encoder": {
            "num_layers": tcfg.num_layers,
            "d_model": tcfg.d_model,
            "num_heads": tcfg.num_heads,
            "vocab_size": tcfg.vocab_size,
            "pad_token_id": tcfg.pad_token_id,
            "eos_token_id": tcfg.eos_token_id,
        },
        "decoder": {
            "num_layers": L,
            "d_model": dcfg.hidden_size,
            "num_heads": dcfg.num_attention_heads,
            "head_dim": dcfg.hidden_size // dcfg.num_attention_heads,
            "ffn_dim": dcfg.ffn_dim,
            "num_codebooks": dcfg.num_codebooks,
            "vocab_size": dcfg.vocab_size,
            "max_position_embeddings": dcfg.max_position_embeddings,
            "pad_token_id": dcfg.pad_token_id,
            "bos_token_id": dcfg.bos_token_id,
        },
        "audio": {
            "sample_rate": acfg.sampling_rate,
            "frame_rate": acfg.frame_rate,
            "channels": dcfg.audio_channels,
            "num_codebooks": W.musicgen_num_quantizers(model.audio_encoder),
            "codebook_size": acfg.codebook_size,
            "hop_length": hop,
            "decode_context_frames": context,
        },
        "generation": generation,
        "graphs": graphs,
        "tokenizer": tokenizer_file,
        "hook_points": hooks,
        "files": files,
    }
    if dtype != "float32":  # absent: float32 (the bundles before this field)
        man["dtype"] = dtype
    return man


def write_bundle(model, tok, source, folder: Path, verify: bool, precision="fp32", cpu_copies=True):
    """Everything goes into `folder` (a fresh temporary folder)."""
    specs = graph_specs(model)
    graph_files = {}
    for stem, module, example, ins, outs, axes in specs:
        graph_files[stem] = export_one(
            folder, stem, module, example, ins, outs, axes, verify, fp16=precision == "fp16", cpu_copies=cpu_copies
        )
    tok.save(str(folder / "tokenizer.json"))
    log("  tokenizer.json")
    if source["kind"] == "random":
        from transformers import PreTrainedTokenizerFast

        hf = folder / "hf"
        model.save_pretrained(str(hf))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
        fast.save_pretrained(str(hf))
        log("  hf/ (transformers checkpoint of the same weights, with the tokenizer)")
    man = manifest(model, source, graph_files, "tokenizer.json", folder, DTYPES[precision], cpu_copies)
    (folder / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
    return man


def make_readable(folder: Path):
    """mkdtemp creates 0700 and some writers 0600: give the bundle ordinary permissions (umask applies)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def folder_size(path: Path, skip=()):
    """Bytes of the files under `path`, leaving out sub-folders named in `skip` (relative to `path`:
    a bundle written into a folder called `hf` still counts)."""
    files = (f for f in path.rglob("*") if f.is_file())
    return sum(f.stat().st_size for f in files if not any(s in f.relative_to(path).parts for s in skip))


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {args.out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ExportError(f"--out {args.out} exists and is not empty; pass --force to replace it")

    cfg_dict = None
    if args.preset:
        path = PRESETS / f"{args.preset}.json"
        if not path.is_file():
            raise ExportError(f"unknown --preset {args.preset!r}; choose one of: {', '.join(presets())}")
        cfg_dict = read_config_dict(path, "--preset")
    elif args.config:
        cfg_dict = read_config_dict(Path(args.config), "--config")

    t_start = time.time()
    log("loading transformers ...")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch  # noqa: F401
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    if cfg_dict is not None:
        model = build_random(cfg_dict, args.seed)
        hf_tok = None
        source = {
            "kind": "random",
            "model_id": args.preset if args.preset else Path(args.config).name,
            "revision": None,
            "seed": args.seed,
        }
    else:
        model, hf_tok, source = load_pretrained(args.model, args.revision)
        if source["kind"] == "local":
            source["path"] = str(Path(args.model).resolve())
    if args.source_key:
        source["key"] = args.source_key
    check_supported(model)
    tok = bundle_tokenizer(model, hf_tok, args.tokenizer)
    dcfg = model.config.decoder
    log(
        f"model: {source['kind']} {source['model_id']}  decoder {dcfg.num_hidden_layers} layers x "
        f"{dcfg.hidden_size}, {dcfg.num_attention_heads} heads, {dcfg.num_codebooks} codebooks"
    )

    # The CPU copies are fp32 panel kernels (src/runtime/matmul.rs): an fp16 bundle has none.
    cpu_copies = args.targets == "all" and args.precision == "fp32"
    if args.precision == "fp16":
        log("precision fp16: decoder, cross_kv and EnCodec graphs in float16 (text encoder float32); "
            + ("no CPU copies (they are fp32 kernels; --targets all has nothing more to write)"
               if args.targets == "all" else "no CPU copies (--targets gpu)"))
    elif not cpu_copies:
        log("targets gpu: no CPU copies of the decoder graphs")

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        with torch.no_grad():
            write_bundle(model, tok, source, tmp, verify=not args.no_verify, precision=args.precision,
                         cpu_copies=cpu_copies)
        make_readable(tmp)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    runtime = folder_size(out, skip=("hf",))
    what = ("the plain decoder graphs and their CPU copies each hold the weights" if cpu_copies
            else f"{DTYPES[args.precision]}, no CPU copies")
    log(f"wrote {args.out}: {mb(runtime)} of graphs ({what}), {mb(folder_size(out))} in all, "
        f"{time.time() - t_start:.1f} s")


if __name__ == "__main__":
    try:
        main()
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("export.py: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # an exporter bug or an unforeseen model: one line, traceback on request
        if os.environ.get("EXPORT_TRACEBACK"):
            raise
        print(
            f"export.py: error: export failed ({type(e).__name__}: {one_line(e, 200)}); nothing was written; "
            "set EXPORT_TRACEBACK=1 for the traceback",
            file=sys.stderr,
        )
        sys.exit(1)
