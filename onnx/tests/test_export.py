"""The exporter's own checks: export the tiny presets, run every graph with onnxruntime and compare with
transformers (reference cases and extra shapes), check the manifest, export from a local checkpoint folder,
and the one-line errors. Run: .venv/bin/python -m pytest onnx/tests -q
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ONNX_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ONNX_DIR))

import check_bundle  # noqa: E402

PY = sys.executable
TOL = 1e-4
ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def run(*args, check=True, env=None):
    env = dict(ENV, **(env or {}))
    res = subprocess.run([PY, *map(str, args)], capture_output=True, text=True, env=env, cwd=ONNX_DIR.parent)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="session", params=["tiny", "tiny2"])
def bundle(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "bundle"
    run(ONNX_DIR / "export.py", "--preset", request.param, "--random-weights", "--seed", "0", "--out", out)
    run(ONNX_DIR / "reference.py", "--bundle", out)
    return out


@pytest.fixture(scope="session")
def hf_models():
    cache = {}

    def load(folder):
        import torch
        from transformers import MusicgenForConditionalGeneration

        key = str(folder)
        if key not in cache:
            torch.set_grad_enabled(False)
            cache[key] = MusicgenForConditionalGeneration.from_pretrained(key, dtype=torch.float32).eval()
        return cache[key]

    return load


def session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- reference cases


def test_graphs_match_reference(bundle):
    report = check_bundle.check(bundle, verbose=False)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["encodec"]["codes_equal"]


def test_large_cache_with_junk_beyond_past_len(bundle):
    report = check_bundle.check(bundle, capacity=16, garbage=True, verbose=False)
    assert report["ok"], json.dumps(report, indent=1)


def test_reference_is_meaningful(bundle):
    ref = bundle / "reference"
    meta = json.loads((ref / "cases.json").read_text())
    assert meta["decoder"]["calls"] == [[0, 6], [6, 1], [7, 1], [8, 1]]
    ids = np.load(ref / "decoder/input_ids.npy")
    assert ids.dtype == np.int64 and ids.shape[0] == 4 and ids.shape[2] == 9
    assert (ids[:, :, 0] == 2048).all() and (ids[:, :, 1:] == 2048).any() and ids.max() == 2048
    codes = np.load(ref / "encodec/codes.npy")
    assert len(np.unique(codes)) > codes.size // 4, "random EnCodec codebooks should give varied codes"
    last = len(meta["decoder"]["hooks"]) // 5 - 1
    for case in ("add", "replace", "resid"):
        for c in range(4):
            a = np.load(ref / f"decoder/{case}/call{c}/logits.npy")
            p = np.load(ref / f"decoder/plain/call{c}/logits.npy")
            if case == "replace" and c == 2:
                # position 7 is odd and the last layer's MLP output never reaches the cache: no effect
                assert np.abs(a - p).max() < 1e-6
            else:
                assert np.abs(a[:2] - p[:2]).max() > 1e-3, f"{case} call{c}: intervention had no effect"
            # rows are independent: the unconditional rows never see the conditional-row interventions
            assert np.abs(a[2:] - p[2:]).max() < 1e-6, f"{case} call{c}: unconditional rows changed"
    # unconditional rows: all-zero states and mask give exactly zero cross-attention output
    for l in range(last + 1):
        x = np.load(ref / f"decoder/plain/call0/blocks.{l}.cross_attn.hook_out.npy")
        assert np.all(x[2:] == 0) and np.abs(x[:2]).max() > 0
    # the component hook records the value before the intervention
    a = np.load(ref / "decoder/add/call0/blocks.0.attn.hook_out.npy")
    p = np.load(ref / "decoder/plain/call0/blocks.0.attn.hook_out.npy")
    assert np.abs(a - p).max() < 1e-6


# ----------------------------------------------------------------------------- manifest and files


def test_manifest(bundle):
    import onnx

    man = json.loads((bundle / "manifest.json").read_text())
    assert man["format"] == "musicgen-interp-bundle" and man["format_version"] == 6
    assert man["source"]["kind"] == "random" and man["source"]["seed"] == 0
    audio = man["audio"]
    assert audio["hop_length"] * audio["frame_rate"] == audio["sample_rate"] and 1 <= audio["decode_context_frames"] <= 16
    L = man["decoder"]["num_layers"]
    assert len(man["graphs"]["decoder_layers"]) == L
    assert len(man["hook_points"]) == 2 + 5 * L
    assert man["hook_points"][0] == "embed.hook_out" and man["hook_points"][-1] == "ln_final.hook_normalized"
    runtime_files = {p.name for p in bundle.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert set(man["files"]) == runtime_files
    for name, info in man["files"].items():
        data = (bundle / name).read_bytes()
        assert info["bytes"] == len(data), name
        assert info["sha256"] == hashlib.sha256(data).hexdigest(), name
    graphs = [g for v in man["graphs"].values() for g in (v if isinstance(v, list) else [v])]
    for g in graphs:
        assert g in man["files"]
        model = onnx.load(str(bundle / g), load_external_data=False)
        assert model.ir_version <= 10, g
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17, g
    assert (bundle / "hf" / "config.json").is_file() and (bundle / "hf" / "tokenizer.json").is_file()


def test_cpu_copies_use_the_runtime_operators_and_weights_in_panels(bundle):
    """The `*.cpu.onnx` decoder graphs (the Rust tests check their numbers against the plain graphs and
    transformers) have the plain graphs' inputs and outputs; the head's codebook heads are one
    StreamMatMul; a layer has its eight weight matmuls as StreamMatMul (q, k, v in one node), its two
    attentions and three interventions as the runtime's operators. Each copy keeps its weights in
    its own `STEM.cpu.onnx.data` at page-aligned offsets; a StreamMatMul weight is the plain graph's
    [K, N] weight in panels of 16 columns, N in the node's `widths`."""
    import numpy as np
    import onnx
    from collections import Counter
    from onnx import numpy_helper

    from export import PANEL, unpack_panels

    man = json.loads((bundle / "manifest.json").read_text())
    g = man["graphs"]
    pairs = list(zip(g["decoder_layers"], g["decoder_layers_cpu"])) + [(g["decoder_head"], g["decoder_head_cpu"])]
    assert len(pairs) == man["decoder"]["num_layers"] + 1
    ours = "musicgen_interp"
    for plain_name, cpu_name in pairs:
        plain = onnx.load(str(bundle / plain_name))
        cpu = onnx.load(str(bundle / cpu_name), load_external_data=False)
        assert (bundle / cpu_name).stat().st_size < 1 << 20, cpu_name
        assert f"{cpu_name}.data" in man["files"], cpu_name
        assert [i.name for i in cpu.graph.input] == [i.name for i in plain.graph.input], cpu_name
        assert [o.name for o in cpu.graph.output] == [o.name for o in plain.graph.output], cpu_name
        for t in cpu.graph.initializer:
            assert len(t.raw_data) < 1024 or t.external_data, (cpu_name, t.name)
            info = {d.key: d.value for d in t.external_data}
            assert not info or (info["location"] == f"{cpu_name}.data" and int(info["offset"]) % 4096 == 0), (cpu_name, t.name)
        onnx.load_external_data_for_model(cpu, str(bundle))
        weights = {i.name: numpy_helper.to_array(i) for i in cpu.graph.initializer}
        plain_weights = [numpy_helper.to_array(i) for i in plain.graph.initializer if len(i.dims) == 2]
        plain_matmuls = {n.input[1] for n in plain.graph.node if n.op_type == "MatMul"}
        plain_by_name = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
        streamed = 0
        for node in cpu.graph.node:
            if node.op_type == "StreamMatMul":
                widths = next(list(a.ints) for a in node.attribute if a.name == "widths")
                assert len(node.input) == len(node.output) + 1 == len(widths) + 1, (cpu_name, node.name)
                for w, n in zip(node.input[1:], widths):
                    packed = weights[w]
                    assert packed.ndim == 3 and packed.shape[0] == -(-n // PANEL) and packed.shape[2] == PANEL
                    assert not packed[-1, :, n - (packed.shape[0] - 1) * PANEL:].any(), "padding is zero"
                    w2 = unpack_panels(packed, n)
                    assert any(p.shape == w2.shape and np.array_equal(p, w2) for p in plain_weights), (cpu_name, w)
                streamed += len(node.output)
            assert node.op_type != "MatMul" or node.input[1] not in weights, (cpu_name, node.name)
        assert streamed == sum(1 for w in plain_matmuls if w in plain_by_name and plain_by_name[w].ndim == 2)
        ops = Counter(n.op_type for n in cpu.graph.node if n.domain == ours)
        if plain_name == g["decoder_head"]:
            # the codebook heads, all of one input, in one node
            assert ops == {"StreamMatMul": 1} and streamed == man["decoder"]["num_codebooks"], (ops, streamed)
        else:
            # q, k and v in one node; out, cross q, cross out, fc1, fc2; self- and cross-attention;
            # three edits
            assert streamed == 8, streamed
            assert ops == {"StreamMatMul": 6, "CachedAttention": 1, "CrossAttention": 1, "Intervene": 3}, ops
            assert not any(n.op_type == "GroupQueryAttention" for n in cpu.graph.node)
            assert len(cpu.graph.node) < len(plain.graph.node) // 2, (len(cpu.graph.node), len(plain.graph.node))


def test_panels_round_trip_with_a_partial_last_panel():
    import numpy as np

    from export import pack_panels, unpack_panels

    w = np.arange(5 * 37, dtype=np.float32).reshape(5, 37)
    p = pack_panels(w)
    assert p.shape == (3, 5, 16)
    assert np.array_equal(p[1, 2], w[2, 16:32]) and not p[2, :, 5:].any()
    assert np.array_equal(unpack_panels(p, 37), w)


I64, F32 = "tensor(int64)", "tensor(float)"


def test_graph_interfaces(bundle):
    man = json.loads((bundle / "manifest.json").read_text())

    def sig(name):
        s = session(bundle / name)
        return (
            [(i.name, i.type, len(i.shape)) for i in s.get_inputs()],
            [(o.name, o.type, len(o.shape)) for o in s.get_outputs()],
        )

    g = man["graphs"]
    assert sig(g["text_encoder"]) == (
        [("input_ids", I64, 2), ("attention_mask", I64, 2)],
        [("last_hidden_state", F32, 3), ("hidden_states", F32, 4), ("normed_hidden_states", F32, 4)],
    )
    assert sig(g["cross_kv"]) == (
        [("encoder_hidden_states", F32, 3), ("encoder_attention_mask", I64, 2)],
        [("cross_key", F32, 5), ("cross_value", F32, 5)],
    )
    assert sig(g["decoder_embed"]) == ([("input_ids", I64, 3), ("past_len", I64, 0)], [("hidden", F32, 3)])
    comp = [(f"{c}_{k}", F32, 3) for c in ("attn", "cross_attn", "mlp") for k in ("add", "replace", "mask")]
    for layer in g["decoder_layers"]:
        assert sig(layer) == (
            [("hidden", F32, 3), ("past_key", F32, 4), ("past_value", F32, 4), ("past_len", I64, 0),
             ("cross_key", F32, 4), ("cross_value", F32, 4), ("encoder_attention_mask", I64, 2)] + comp,
            [("resid_post", F32, 3), ("attn_out", F32, 3), ("cross_attn_out", F32, 3), ("mlp_out", F32, 3),
             ("present_key", F32, 4), ("present_value", F32, 4)],
        )
    assert sig(g["decoder_head"]) == ([("hidden", F32, 3)], [("normed", F32, 3), ("logits", F32, 4)])
    assert sig(g["encodec_encode"]) == ([("audio", F32, 3)], [("codes", I64, 3)])
    assert sig(g["encodec_decode_latent"]) == ([("codes", I64, 3)], [("latent", F32, 3)])
    assert sig(g["encodec_decode_upsample"]) == ([("latent", F32, 3)], [("audio", F32, 3)])


# ------------------------------------------------------------------ other shapes, against transformers


def test_text_encoder_other_shapes(bundle, hf_models):
    import torch

    model = hf_models(bundle / "hf")
    vocab = model.config.text_encoder.vocab_size
    rng = np.random.default_rng(1)
    sess = session(bundle / "text_encoder.onnx")
    for B, S in [(1, 1), (3, 40), (2, 200)]:  # long texts reach T5's logarithmic position buckets
        ids = rng.integers(3, vocab, size=(B, S)).astype(np.int64)
        mask = np.ones((B, S), np.int64)
        if B > 1:
            mask[-1, S // 2 + 1 :] = 0
            ids[-1, S // 2 + 1 :] = 0
        want = model.text_encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        last, hidden, _ = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        assert hidden.shape[:3] == (model.config.text_encoder.num_layers + 1, B, S)
        assert np.abs(last - want.last_hidden_state.numpy()).max() <= TOL, (B, S)


def test_decoder_embed_far_positions(bundle, hf_models):
    """Positions past max_position_embeddings work (transformers grows its sinusoid table)."""
    import torch

    model = hf_models(bundle / "hf")
    dec = model.decoder.model.decoder
    K = dec.num_codebooks
    sess = session(bundle / "decoder_embed.onnx")
    rng = np.random.default_rng(2)
    for past, T in [(0, 1), (1500, 3), (2046, 5)]:
        ids = rng.integers(0, 2049, size=(2, K, T)).astype(np.int64)
        t = torch.from_numpy(ids)
        tok = sum(dec.embed_tokens[k](t[:, k]) for k in range(K))
        pos = dec.embed_positions(t, past)
        (got,) = sess.run(None, {"input_ids": ids, "past_len": np.array(past, np.int64)})
        assert np.abs(got - (tok + pos).numpy()).max() <= TOL, (past, T)


def test_encodec_other_lengths(bundle, hf_models):
    import torch

    ae = hf_models(bundle / "hf").audio_encoder
    enc = session(bundle / "encodec_encode.onnx")
    latent_graph, upsample_graph = session(bundle / "encodec_decode_latent.onnx"), session(bundle / "encodec_decode_upsample.onnx")
    rng = np.random.default_rng(3)
    hop = ae.config.hop_length
    for B, N in [(1, 1), (2, 100), (1, hop + 1), (2, 3 * hop)]:
        audio = (rng.standard_normal((B, 1, N)) * 0.3).astype(np.float32)
        want = ae.encode(torch.from_numpy(audio), return_dict=True).audio_codes[0].numpy()
        (got,) = enc.run(None, {"audio": audio})
        assert got.shape == want.shape and np.array_equal(got, want), (B, N)
    K = ae.quantizer.get_num_quantizers_for_bandwidth(ae.config.target_bandwidths[0])
    for B, F in [(1, 1), (2, 2), (1, 3), (2, 7)]:  # short inputs take EnCodec's reflect-padding branch
        codes = rng.integers(0, ae.config.codebook_size, size=(B, K, F)).astype(np.int64)
        want = ae.decode(torch.from_numpy(codes)[None], [None]).audio_values.numpy()
        (latent,) = latent_graph.run(None, {"codes": codes})
        (got,) = upsample_graph.run(None, {"latent": latent})
        assert got.shape == want.shape == (B, 1, F * hop), (B, F)
        assert np.abs(got - want).max() <= TOL, (B, F)


def test_encodec_upsample_decodes_in_chunks_with_the_manifests_context(bundle, hf_models):
    """Decoding the latent in overlapping chunks (decode_context_frames either side, the rest cut
    away) gives transformers' full decode: how the runtime decodes long clips in little memory."""
    import torch

    manifest = json.loads((bundle / "manifest.json").read_text())
    ctx, hop = manifest["audio"]["decode_context_frames"], manifest["audio"]["hop_length"]
    ae = hf_models(bundle / "hf").audio_encoder
    latent_graph, upsample_graph = session(bundle / "encodec_decode_latent.onnx"), session(bundle / "encodec_decode_upsample.onnx")
    K = ae.quantizer.get_num_quantizers_for_bandwidth(ae.config.target_bandwidths[0])
    F, chunk = 41, 7
    codes = np.random.default_rng(5).integers(0, ae.config.codebook_size, size=(1, K, F)).astype(np.int64)
    want = ae.decode(torch.from_numpy(codes)[None], [None]).audio_values.numpy()
    (latent,) = latent_graph.run(None, {"codes": codes})
    pieces = []
    for a in range(0, F, chunk):
        b = min(F, a + chunk)
        lo, hi = max(0, a - ctx), min(F, b + ctx)
        (audio,) = upsample_graph.run(None, {"latent": np.ascontiguousarray(latent[:, :, lo:hi])})
        pieces.append(audio[:, :, (a - lo) * hop : (b - lo) * hop])
    got = np.concatenate(pieces, axis=2)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL


# ----------------------------------------------------------------------------- CLI


def test_export_from_local_checkpoint(bundle, tmp_path):
    out = tmp_path / "local"
    res = run(ONNX_DIR / "export.py", "--model", bundle / "hf", "--out", out)
    assert "decoder_layer_0.onnx" in res.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"] == {
        "kind": "local",
        "model_id": "hf",
        "revision": None,
        "seed": None,
        "path": str((bundle / "hf").resolve()),
    }
    assert not (out / "hf").exists()
    report = check_bundle.check(out, bundle / "reference", verbose=False)
    assert report["ok"], json.dumps(report, indent=1)
    from tokenizers import Tokenizer

    prompts = json.loads((bundle / "reference" / "cases.json").read_text())["text"]["prompts"]
    a = Tokenizer.from_file(str(out / "tokenizer.json")).encode_batch(prompts)
    b = Tokenizer.from_file(str(bundle / "tokenizer.json")).encode_batch(prompts)
    assert [e.ids for e in a] == [e.ids for e in b]


def test_export_from_hub_cache(bundle, tmp_path):
    """The --model HUB_ID path, offline, from a hub-style cache holding the tiny checkpoint."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--local-test--musicgen-tiny"
    shutil.copytree(bundle / "hf", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "from_hub"
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run(ONNX_DIR / "export.py", "--model", "local-test/musicgen-tiny", "--out", out, "--no-verify", env=env)
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"] == {"kind": "hub", "model_id": "local-test/musicgen-tiny", "revision": commit, "seed": None}
    ref = json.loads((bundle / "manifest.json").read_text())
    assert [man["files"][g]["sha256"] for g in ref["graphs"]["decoder_layers"]] == [
        ref["files"][g]["sha256"] for g in ref["graphs"]["decoder_layers"]
    ], "the same weights should export to the same layer graphs"
    res = run(ONNX_DIR / "export.py", "--model", "local-test/no-such-model", "--out", tmp_path / "x", check=False,
              env=env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot load MusicGen from local-test/no-such-model" in res.stderr


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"model_type": "musicgen", "decoder": {}}', "missing object(s) text_encoder, audio_encoder"),
        ("BAD_VALUE", "not a valid MusicGen config"),
    ],
)
def test_bad_config_is_one_line(tmp_path, content, fragment):
    cfg = tmp_path / "bad.json"
    if content == "BAD_VALUE":
        good = json.loads((ONNX_DIR / "presets" / "tiny.json").read_text())
        good["audio_encoder"]["norm_type"] = "batch_norm"
        content = json.dumps(good)
    cfg.write_text(content)
    out = tmp_path / "out"
    res = run(ONNX_DIR / "export.py", "--config", cfg, "--random-weights", "--out", out, check=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export.py: error: "), res.stderr
    assert fragment in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_refuses_non_empty_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = run(ONNX_DIR / "export.py", "--preset", "tiny", "--random-weights", "--out", out, check=False)
    assert res.returncode == 2 and "--force" in res.stderr
    assert (out / "keep.txt").read_text() == "x"
