"""The fp16 bundle profile (export.py --precision fp16) and --targets gpu: graph input/output types exactly as
docs/BUNDLE.md says (float16 KV cache and cross K/V, float32 elsewhere), GroupQueryAttention on the fp16 cache,
the manifest's dtype, no CPU copies, checksums; onnxruntime (CPU) on the fp16 graphs against the fp32 bundle's
and against the float16 / float32 transformers references; quantize.py's refusal.
Run: .venv/bin/python -m pytest onnx/tests/test_fp16.py -q
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

FP16_IO = {"past_key", "past_value", "cross_key", "cross_value", "present_key", "present_value"}
CONVERTED = ("cross_kv", "decoder_embed", "decoder_head", "encodec_encode", "encodec_decode_latent",
             "encodec_decode_upsample")
# fp16 layer vs the fp32 bundle's layer, same weights source and inputs: max |diff| / max |fp32 output|
# (measured on tiny: 1.5e-5 (resid_post) .. 5.5e-4 (attn_out, present_key), abs 2e-5 .. 2.7e-4)
LAYER_REL_TOL = 2e-3
# the whole decoder (embed, layers, head) vs transformers' references, max abs (states of magnitude ~1-5):
# measured on tiny: states 4.9e-3 / logits 8.5e-4 vs the float16 reference, 2.0e-3 / 4.2e-4 vs float32
STATES_TOL = {"float16": 2e-2, "float32": 1e-2}


def export(out, preset, *flags):
    run(ONNX_DIR / "export.py", "--preset", preset, "--random-weights", "--seed", "0", "--out", out, *flags)
    return out


@pytest.fixture(scope="module", params=["tiny", "tiny2"])
def pair(request, tmp_path_factory):
    """(fp32 bundle, fp16 bundle with both references) of one preset, seed 0."""
    base = tmp_path_factory.mktemp(f"{request.param}-fp16")
    fp32 = export(base / "fp32", request.param, "--no-verify")
    fp16 = export(base / "fp16", request.param, "--precision", "fp16")
    run(ONNX_DIR / "reference.py", "--bundle", fp16)
    run(ONNX_DIR / "reference.py", "--bundle", fp16, "--dtype", "float32", "--out", fp16 / "reference-fp32")
    return fp32, fp16


def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def graph_names(man):
    return [g for v in man["graphs"].values() for g in (v if isinstance(v, list) else [v])]


def io_types(path):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}


def test_graph_io_types(pair):
    """Converted graphs: exactly FP16_IO is float16 (cross_kv's outputs, a layer's cache and cross K/V),
    everything else as in the fp32 bundle; the text encoder is the fp32 graph itself, byte for byte."""
    from onnx import TensorProto

    fp32, fp16 = pair
    man = manifest(fp16)
    assert graph_names(man) == [g for g in graph_names(manifest(fp32)) if ".cpu." not in g]
    half = set()
    for g in graph_names(man):
        got, want = io_types(fp16 / g), io_types(fp32 / g)
        assert list(got) == list(want), g
        for name, t in got.items():
            if name in FP16_IO:
                assert t == TensorProto.FLOAT16, (g, name)
                half.add((g.split("_")[0] if g.startswith("decoder_layer") else g, name))
            else:
                assert t == want[name] and t in (TensorProto.FLOAT, TensorProto.INT64), (g, name, t)
    assert {n for g, n in half if g == "cross_kv.onnx"} == {"cross_key", "cross_value"}
    assert {n for g, n in half if g == "decoder"} == FP16_IO
    assert (fp16 / "text_encoder.onnx").read_bytes() == (fp32 / "text_encoder.onnx").read_bytes()


def test_weights_are_float16_and_attention_reads_the_fp16_cache(pair):
    """Every weight matrix of a converted graph is float16 (the text encoder's float32); each layer's
    GroupQueryAttention takes past_key / past_value straight from the graph inputs (no Cast) and writes
    present_key / present_value; large graphs keep external data."""
    import onnx
    from onnx import TensorProto

    _, fp16 = pair
    man = manifest(fp16)
    layers = man["graphs"]["decoder_layers"]
    for g in layers + [f"{s}.onnx" for s in CONVERTED]:
        m = onnx.load(str(fp16 / g), load_external_data=False)
        mats = [t for t in m.graph.initializer if len(t.dims) >= 2 and np.prod(t.dims) > 1]  # matrices, conv kernels
        assert mats and all(t.data_type == TensorProto.FLOAT16 for t in mats), g
        assert not any(t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 1 for t in m.graph.initializer), g
        if g in layers or g == "decoder_head.onnx":
            assert f"{g}.data" in man["files"], g
            assert all(t.external_data for t in m.graph.initializer if len(t.dims) == 2), g
    for g in layers:
        m = onnx.load(str(fp16 / g), load_external_data=False)
        (gqa,) = [n for n in m.graph.node if n.op_type == "GroupQueryAttention"]
        assert list(gqa.input[3:5]) == ["past_key", "past_value"], g
        assert list(gqa.output[1:3]) == ["present_key", "present_value"], g
    te = onnx.load(str(fp16 / "text_encoder.onnx"))
    assert all(t.data_type != TensorProto.FLOAT16 for t in te.graph.initializer)


def test_manifest_dtype_no_cpu_copies_and_checksums(pair):
    fp32, fp16 = pair
    man = manifest(fp16)
    assert man["dtype"] == "float16" and "dtype" not in manifest(fp32)
    assert man["format_version"] == manifest(fp32)["format_version"]
    assert "decoder_layers_cpu" not in man["graphs"] and "decoder_head_cpu" not in man["graphs"]
    assert not list(fp16.glob("*.cpu.onnx*"))
    runtime_files = {p.name for p in fp16.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert set(man["files"]) == runtime_files
    for name, info in man["files"].items():
        data = (fp16 / name).read_bytes()
        assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest(), name


def layer_feeds(man, rng, past_len=5, T=1, B=2, C=8, S=4):
    d = man["decoder"]
    H, hd, D = d["num_heads"], d["head_dim"], d["d_model"]
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    mask = np.ones((B, S), np.int64)
    mask[1] = 0  # an unconditional row: all-zero mask, cross-attention output 0
    feeds = {"hidden": f(B, T, D), "past_key": f(B, H, C, hd), "past_value": f(B, H, C, hd),
             "past_len": np.array(past_len, np.int64), "cross_key": f(B, H, S, hd), "cross_value": f(B, H, S, hd),
             "encoder_attention_mask": mask}
    feeds["cross_key"][1] = feeds["cross_value"][1] = 0
    for comp in ("attn", "cross_attn", "mlp"):
        feeds[f"{comp}_add"] = f(B, T, D) * 0.1
        feeds[f"{comp}_replace"] = f(B, T, D)
        feeds[f"{comp}_mask"] = (rng.random((B, T, D)) < 0.2).astype(np.float32)
    return feeds


@pytest.mark.parametrize("past_len,T", [(0, 3), (5, 1)])
def test_fp16_layer_matches_fp32_layer(pair, past_len, T):
    """onnxruntime CPU: each fp16 decoder layer against the fp32 bundle's layer (the same seed-0 weights,
    unrounded) on the same inputs (the fp16 graph's cache and cross K/V rounded to float16), a prefill and a
    cached step with edits; within LAYER_REL_TOL of each output's magnitude, present at positions < past_len + T."""
    fp32, fp16 = pair
    man = manifest(fp16)
    rng = np.random.default_rng(3)
    for g in man["graphs"]["decoder_layers"]:
        feeds = layer_feeds(man, rng, past_len, T, B=1 if past_len and T > 1 else 2)
        s32, s16 = session(fp32 / g), session(fp16 / g)
        half = {k: (v.astype(np.float16) if k in FP16_IO else v) for k, v in feeds.items()}
        got = s16.run(None, half)
        # the fp32 layer on the same (rounded) cache values
        want = s32.run(None, {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in half.items()})
        for out, a, b in zip(s16.get_outputs(), got, want):
            assert a.dtype == (np.float16 if out.name in FP16_IO else np.float32), out.name
            if out.name.startswith("present_"):
                a, b = a[:, :, : past_len + T], b[:, :, : past_len + T]
            a = a.astype(np.float32)
            assert np.isfinite(a).all(), (g, out.name)
            rel = np.abs(a - b).max() / np.abs(b).max()
            assert rel < LAYER_REL_TOL, (g, out.name, rel)
        assert np.all(got[2][1] == 0), "an all-zero mask row gives cross-attention output 0"


@pytest.mark.parametrize("ref,dtype", [("reference", "float16"), ("reference-fp32", "float32")])
def test_fp16_bundle_against_transformers(pair, ref, dtype):
    """The numpy host (check_bundle.py) over the fp16 graphs on the reference cases (fp16 cache), against
    transformers computing in float16 and in float32 on the same rounded weights; EnCodec decodes the
    reference's codes within tolerance (its codes are reported: float16 moves nearest-code decisions)."""
    _, fp16 = pair
    meta = json.loads((fp16 / ref / "cases.json").read_text())
    assert meta["dtype"] == dtype and meta["weights"] == "float16"
    report = check_bundle.check(fp16, fp16 / ref, verbose=False, tol=STATES_TOL[dtype], codes_exact=False)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["text"]["hidden_states"] < 1e-4  # the text encoder stays float32


def test_references_are_float32_and_finite(pair):
    _, fp16 = pair
    for ref in ("reference", "reference-fp32"):
        files = list((fp16 / ref).rglob("*.npy"))
        assert files
        for f in files:
            a = np.load(f)
            assert a.dtype in (np.float32, np.int64), f
            assert a.dtype != np.float32 or np.isfinite(a).all(), f


def test_quantize_refuses_fp16(pair, tmp_path):
    _, fp16 = pair
    res = run(ONNX_DIR / "quantize.py", "--bundle", fp16, "--out", tmp_path / "q", check=False)
    assert res.returncode == 2 and not (tmp_path / "q").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "quantize an fp32 bundle" in lines[0], res.stderr


def test_targets_gpu_omits_cpu_copies(tmp_path):
    """fp32 --targets gpu: the same plain graphs (byte for byte as the default export's), no copies."""
    full = export(tmp_path / "all", "tiny", "--no-verify")
    gpu = export(tmp_path / "gpu", "tiny", "--no-verify", "--targets", "gpu")
    man, man_full = manifest(gpu), manifest(full)
    assert "decoder_layers_cpu" not in man["graphs"] and "decoder_head_cpu" not in man["graphs"]
    assert "dtype" not in man and not list(gpu.glob("*.cpu.onnx*"))
    assert man["files"] == {k: v for k, v in man_full["files"].items() if ".cpu." not in k}
    runtime_files = {p.name for p in gpu.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert set(man["files"]) == runtime_files
