"""onnx/quantize.py on the tiny test bundle: the int8 CPU copies read the plain graphs' own int8 weights,
every file and external tensor is where the manifest and the graphs say, the hf/ checkpoint holds the
dequantized weights (transformers then computes what the quantized graphs compute), and the quantized
graphs run in onnxruntime. Run: .venv/bin/python -m pytest onnx/tests/test_quantize.py -q
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ONNX_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ONNX_DIR))

import check_bundle  # noqa: E402
from test_export import run, session  # noqa: E402
from export import unpack_panels  # noqa: E402

SOURCE = ONNX_DIR.parent / "tests" / "data" / "tiny"
OURS = "musicgen_interp"


def quantize(out, *flags):
    if not (SOURCE / "manifest.json").is_file():
        pytest.skip(f"{SOURCE} is missing: scripts/test.sh exports it")
    run(ONNX_DIR / "quantize.py", "--bundle", SOURCE, "--out", out, "--reference-checkpoint", *flags)
    return out


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    return quantize(tmp_path_factory.mktemp("q") / "int8", "--bits", "8")


@pytest.fixture(scope="module")
def int4(tmp_path_factory):
    # fp32 activations: the graphs then compute exactly with the dequantized weights (compared below)
    return quantize(tmp_path_factory.mktemp("q") / "int4", "--bits", "4", "--accuracy-level", "0")


def load(path, external=False):
    import onnx

    return onnx.load(str(path), load_external_data=external)


def pairs(bundle):
    g = json.loads((bundle / "manifest.json").read_text())["graphs"]
    return list(zip(g["decoder_layers"], g["decoder_layers_cpu"])) + [(g["decoder_head"], g["decoder_head_cpu"])]


def dequantized(node, inits, bits):
    """The [K, N] weight a MatMulNBits node (symmetric: w = (q - 2^(bits-1)) * scale) multiplies by."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    b = numpy_helper.to_array(inits[node.input[1]])
    scales = numpy_helper.to_array(inits[node.input[2]])
    n, blocks = attrs["N"], -(-attrs["K"] // attrs["block_size"])
    if bits == 4:  # low nibble first
        b = np.stack([b & 0x0F, b >> 4], axis=-1)
    q = b.reshape(n, blocks, attrs["block_size"]).astype(np.float32) - (1 << (bits - 1))
    return (q * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, : attrs["K"]].T, scales.max()


# ---------------------------------------------------------------------------------- int8 CPU copies


def test_int8_cpu_copies_read_the_plain_graphs_int8_weights(int8):
    """Each StreamMatMul of the fp32 copy is a StreamMatMulInt8 (x, then B and scales per output) whose
    B and scales are the very tensors (name, file, offset; bytes when inline) of the plain graph's
    MatMulNBits; they dequantize to the fp32 copy's weight, so each is the right weight."""
    from onnx import TensorProto, numpy_helper

    where = lambda t: sorted((d.key, d.value) for d in t.external_data)  # noqa: E731
    for plain_name, cpu_name in pairs(int8):
        plain, cpu = load(int8 / plain_name, external=True), load(int8 / cpu_name)
        fp32 = load(SOURCE / cpu_name, external=True)
        plain_inits = {t.name: t for t in plain.graph.initializer}
        cpu_inits = {t.name: t for t in cpu.graph.initializer}
        fp32_inits = {t.name: t for t in fp32.graph.initializer}
        nbits = {n.input[1]: n for n in plain.graph.node if n.op_type == "MatMulNBits"}
        stored = {t.name: where(t) for t in load(int8 / plain_name).graph.initializer}
        fp32_nodes = {n.name: n for n in fp32.graph.node if n.op_type == "StreamMatMul"}
        int8_nodes = [n for n in cpu.graph.node if n.op_type == "StreamMatMulInt8"]
        assert not any(n.op_type in ("StreamMatMul", "MatMul", "MatMulNBits") for n in cpu.graph.node), cpu_name
        assert sorted(n.name for n in int8_nodes) == sorted(fp32_nodes), cpu_name
        assert sum(len(n.output) for n in int8_nodes) == len(nbits), cpu_name
        scales = set()
        for node in int8_nodes:
            before = fp32_nodes[node.name]
            assert node.domain == OURS and list(node.output) == list(before.output), node.name
            assert len(node.input) == 1 + 2 * len(node.output) and node.input[0] == before.input[0], node.name
            for i, w in enumerate(before.input[1:]):
                b, s = node.input[1 + 2 * i], node.input[2 + 2 * i]
                assert list(nbits[b].input[1:]) == [b, s], (cpu_name, b)
                for name in (b, s):
                    assert where(cpu_inits[name]) == stored[name], (cpu_name, name)
                    if not cpu_inits[name].external_data:
                        assert cpu_inits[name].raw_data == plain_inits[name].raw_data, (cpu_name, name)
                assert cpu_inits[b].data_type == TensorProto.UINT8 and len(cpu_inits[b].dims) == 3
                assert cpu_inits[s].data_type == TensorProto.FLOAT
                got, scale = dequantized(nbits[b], plain_inits, 8)
                # the fp32 copy's weight is in panels ([K, N] in export.pack_panels' layout)
                widths = next(list(a.ints) for a in before.attribute if a.name == "widths")
                fp32_w = unpack_panels(numpy_helper.to_array(fp32_inits[w]), widths[i])
                assert np.abs(got - fp32_w).max() <= scale + 1e-6, (cpu_name, w)
                scales.add(s)
        # no fp32 weight matrix left (the scales are [N, blocks]); nothing of 1024 bytes inline
        for t in cpu.graph.initializer:
            assert t.data_type != TensorProto.FLOAT or len(t.dims) < 2 or t.name in scales, (cpu_name, t.name)
            assert len(t.raw_data) < 1024, (cpu_name, t.name)
        assert (int8 / cpu_name).stat().st_size < 1 << 20


# --------------------------------------------------------------------------------- files and manifest


@pytest.mark.parametrize("bits", [8, 4])
def test_manifest_and_external_data(bits, request):
    bundle = request.getfixturevalue(f"int{bits}")
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["precision"]["weights"] == f"int{bits}"
    assert man["precision"]["cpu_copies"] is (bits == 8)
    assert ("decoder_layers_cpu" in man["graphs"]) is (bits == 8)
    assert ("decoder_head_cpu" in man["graphs"]) is (bits == 8)
    runtime_files = {p.name for p in bundle.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert set(man["files"]) == runtime_files
    assert any(f.endswith(".cpu.onnx") for f in runtime_files) is (bits == 8)
    for name, info in man["files"].items():
        data = (bundle / name).read_bytes()
        assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest(), name
    graphs = [g for v in man["graphs"].values() for g in (v if isinstance(v, list) else [v])]
    assert set(graphs) <= set(man["files"])
    decoder = man["graphs"]["decoder_layers"] + [man["graphs"]["decoder_head"]]
    for g in graphs:
        proto = load(bundle / g)
        assert proto.ir_version <= 10, g
        stem = g.removesuffix(".onnx").removesuffix(".cpu")
        ours = f"{stem}.onnx" in decoder  # a quantized graph or its CPU copy: its tensors in STEM.onnx.data
        for t in proto.graph.initializer:
            if not t.external_data:
                assert not ours or len(t.raw_data) < 1024, (g, t.name)
                continue
            info = {d.key: d.value for d in t.external_data}
            path = bundle / info["location"]
            assert path.is_file() and info["location"] in man["files"], (g, t.name)
            assert int(info.get("offset", 0)) + int(info["length"]) <= path.stat().st_size, (g, t.name)
            assert not ours or info["location"] == f"{stem}.onnx.data", (g, t.name)


# ------------------------------------------------------------------------------------------- hf/


@pytest.mark.parametrize("bits", [8, 4])
def test_reference_checkpoint_holds_the_dequantized_weights(bits, request):
    import torch
    from transformers import MusicgenForConditionalGeneration

    bundle = request.getfixturevalue(f"int{bits}")
    assert (bundle / "hf" / "tokenizer.json").is_file()
    linears = lambda folder: {  # noqa: E731
        name: m.weight.detach().numpy()
        for name, m in MusicgenForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    got, fp32 = linears(bundle / "hf"), linears(SOURCE / "hf")
    changed = {name for name in got if not np.array_equal(got[name], fp32[name])}
    man = json.loads((bundle / "manifest.json").read_text())
    nodes = 0
    for g in man["graphs"]["decoder_layers"] + [man["graphs"]["decoder_head"]]:
        proto = load(bundle / g, external=True)
        inits = {t.name: t for t in proto.graph.initializer}
        for node in (n for n in proto.graph.node if n.op_type == "MatMulNBits"):
            want, scale = dequantized(node, inits, bits)
            hits = [name for name in changed if np.array_equal(got[name], want.T)]
            assert len(hits) == 1, (g, node.name, hits)
            # a weight close to the fp32 one, yet not it
            assert 0 < np.abs(fp32[hits[0]] - want.T).max() <= scale + 1e-6, (g, node.name)
            nodes += 1
    assert nodes == len(changed) == 2 * 8 + man["decoder"]["num_codebooks"], (nodes, len(changed))


def test_reference_of_the_checkpoint_is_what_the_graphs_compute(int4):
    """With fp32 activations (--accuracy-level 0) the quantized graphs agree with transformers run on
    hf/ within the exporter's fp32 tolerance."""
    run(ONNX_DIR / "reference.py", "--bundle", int4)
    report = check_bundle.check(int4, verbose=False)
    assert report["ok"], json.dumps(report, indent=1)


# ------------------------------------------------------------------------------------- onnxruntime


def test_quantized_graphs_run_in_onnxruntime(int8):
    man = json.loads((int8 / "manifest.json").read_text())
    d = man["decoder"]
    B, T, C, S, H, hd = 2, 3, 4, 5, d["num_heads"], d["head_dim"]
    shapes = {"past_key": (B, H, C, hd), "past_value": (B, H, C, hd), "past_len": (), "cross_key": (B, H, S, hd),
              "cross_value": (B, H, S, hd), "encoder_attention_mask": (B, S)}  # the others [B, T, D]
    hidden = np.random.default_rng(0).standard_normal((B, T, d["d_model"])).astype(np.float32)
    for g in (man["graphs"]["decoder_layers"][0], man["graphs"]["decoder_head"]):
        assert any(n.op_type == "MatMulNBits" for n in load(int8 / g).graph.node), g
        sess = session(int8 / g)
        feeds = {
            i.name: np.zeros(shapes.get(i.name, hidden.shape), np.int64 if "int64" in i.type else np.float32)
            for i in sess.get_inputs()
        }
        feeds["hidden"] = hidden
        outs = sess.run(None, feeds)
        assert all(np.isfinite(o).all() for o in outs), g
    # the head's logits: close to the fp32 head's (int8 weights and activations), not equal
    (want,) = session(SOURCE / g).run(["logits"], feeds)
    assert outs[1].shape == want.shape
    assert 0 < np.abs(outs[1] - want).max() < 0.05 * np.abs(want).max()


def test_a_weight_without_its_quantized_matmul_is_an_error(int8, tmp_path):
    import quantize

    plain, cpu = pairs(int8)[0]
    with pytest.raises(quantize.QuantizeError, match="matches no quantized matmul"):
        quantize.write_int8_cpu_copy(SOURCE / cpu, tmp_path / cpu, int8 / plain, [])


def test_a_bundle_of_another_format_is_refused(tmp_path):
    import shutil

    import quantize

    if not (SOURCE / "manifest.json").is_file():
        pytest.skip(f"{SOURCE} is missing: scripts/test.sh exports it")
    old = tmp_path / "old"
    old.mkdir()
    man = json.loads((SOURCE / "manifest.json").read_text())
    man["format_version"] = quantize.FORMAT_VERSION - 1  # say, row-major CPU copies
    (old / "manifest.json").write_text(json.dumps(man))
    shutil.copy(SOURCE / "tokenizer.json", old / "tokenizer.json")
    with pytest.raises(quantize.QuantizeError, match="export it again"):
        quantize.main(["--bundle", str(old), "--out", str(tmp_path / "int8")])
    assert not (tmp_path / "int8").exists()
