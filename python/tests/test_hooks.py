"""Python hooks against the built-in plugins and the transformers references in tests/data, on
both tiny presets: steering (seed A's formula), component replacement (interchange), the
residual cache against `generate --save-residuals`, zero-copy arrays, and errors."""

import subprocess
import sys

import numpy as np
import pytest

import musicgen_interp as mi
from conftest import GREEDY, ROOT, differing, fixture, load, read_json


def steering_hook(v: np.ndarray, s: float, period: int, offset: int):
    """Seed A's steering at one layer's output, on the conditional rows: h <- (h + s |h| v) / (1 + s)."""
    v = v.astype(np.float32)
    s = np.float32(s)

    def hook(act, ctx):
        if ctx.call < offset or (ctx.call - offset) % period:
            return None
        h = act[ctx.cond]
        norm = np.sqrt((h * h).sum(axis=-1, keepdims=True, dtype=np.float32))
        act[ctx.cond] = (h + s * norm * v) / (np.float32(1) + s)

    return hook


def test_steering_hook_equals_the_plugin_and_transformers(preset):
    r = fixture(preset) / "reference" / "steering"
    cases = read_json(r / "cases.json")
    weights = np.load(r / "weights.npy")
    m = load(preset)
    plain = np.load(r / "plain_codes.npy")
    for name, case in cases["cases"].items():
        strengths = case["strengths"] * (len(case["layers"]) if len(case["strengths"]) == 1 else 1)
        hooks = {}
        for layer, s in zip(case["layers"], strengths):
            row = weights[layer, case["target_class"]]
            hooks[f"blocks.{layer}.hook_resid_post"] = steering_hook(row / np.linalg.norm(row), s, case["period"], case["offset"])
        ours = m.generate(cases["prompts"], steps=cases["steps"], hooks=hooks, decode=False, **GREEDY).codes
        settings = {k: case[k] for k in ("target_class", "layers", "strengths", "period", "offset")} | {"weights": str(r / "weights.npy")}
        plugin = m.generate(cases["prompts"], steps=cases["steps"], plugins=[("steering", settings)], decode=False, **GREEDY).codes
        want = np.load(r / name / "codes.npy")
        assert differing(plugin, want) == 0, f"{preset} {name}: the plugin differs from the PyTorch hooks"
        assert differing(ours, want) == 0, f"{preset} {name}: {differing(ours, want)} of {want.size} codes differ from the PyTorch hooks"
        assert np.array_equal(ours, plugin)
        assert not np.array_equal(ours, plain), f"{preset} {name}: steering changed nothing"


def test_component_replace_equals_the_interchange_plugin_and_transformers(preset):
    d = fixture(preset) / "reference" / "interchange"
    cases = read_json(d / "cases.json")
    desired = np.load(d / "means_b.npy")  # [layers, component, positions, cond/uncond, d_model]
    components = ["attn", "cross_attn", "mlp"]
    m = load(preset)
    for site in cases["sites"]:
        layer, component = site["layer"], site["component"]
        want_values = desired[layer, components.index(component), :, 0, :]

        def replace(edits, ctx):
            positions = slice(ctx.past_len, ctx.past_len + ctx.new_len)
            edits.replace[ctx.cond] = want_values[positions][None]
            edits.mask[ctx.cond] = 1.0

        point = f"blocks.{layer}.{component}.hook_out"
        ours = m.generate(cases["prompts"], steps=cases["steps"], hooks={point: mi.edit(replace)}, decode=False, **GREEDY).codes
        settings = {"mode": "intervene", "original": str(d / "means_a.npy"), "desired": str(d / "means_b.npy"),
                    "rows": [{"layer": layer, "component": component, "kind": "replace"}] * len(cases["prompts"])}
        plugin = m.generate(cases["prompts"], steps=cases["steps"], plugins=[("interchange", settings)], decode=False, **GREEDY).codes
        want = np.load(d / f"codes_replace_{layer}_{component}.npy")
        assert np.array_equal(ours, plugin), f"{preset} {point}: the edit hook and the interchange plugin differ"
        assert differing(ours, want) == 0, f"{preset} {point}: {differing(ours, want)} codes differ from PyTorch"
        assert not np.array_equal(ours, np.load(d / "codes_plain.npy"))


@pytest.mark.parametrize("reduction", ["last", "mean", "all"])
def test_run_with_cache_equals_generate_save_residuals_bit_for_bit(preset, reduction, tmp_path):
    m = load(preset)
    prompts, steps = ["80s pop track with bassy drums and synth", "calm piano"], 9
    binary = ROOT / "target" / "release" / "musicgen-interp"
    cmd = [str(binary), "--device", "cpu", "--threads", "2", "generate", "--model", str(fixture(preset)), "--steps", str(steps),
           "--top-k", "5", "--seed", "7", "--output", str(tmp_path / "clip.wav"), "--save-residuals", str(tmp_path / "res"),
           "--residual-reduction", reduction, "--save-codes", str(tmp_path / "codes.npy")]
    for p in prompts:
        cmd += ["--text", p]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    saved = read_json(tmp_path / "res" / "residuals.json")
    cache = m.run_with_cache(prompts, points=saved["points"], reduction=reduction, steps=steps, top_k=5, seed=7)
    assert np.array_equal(cache.codes, np.load(tmp_path / "codes.npy"))
    for stream, uncond in [("cond", False), ("uncond", True)]:
        want = np.load(tmp_path / "res" / f"residuals_{stream}.npy")
        got = cache.stack(saved["points"], uncond=uncond)
        assert got.dtype == want.dtype and got.shape == want.shape, (got.shape, want.shape)
        assert np.array_equal(got, want), f"{preset} {reduction} {stream}: max diff {np.abs(got - want).max()}"


def test_in_place_edits_are_zero_copy_and_change_the_run(preset):
    m = load(preset)
    point = f"blocks.{m.config.layers - 1}.hook_resid_pre"
    seen = []

    def scale(act, ctx):
        seen.append((act.ctypes.data == ctx.data_ptr, act.flags.owndata, act.flags.writeable, act.shape, ctx.rows))
        act[ctx.cond] *= 3.0  # returns None: the in-place edit is what counts

    args = dict(steps=8, decode=False, **GREEDY)
    plain = m.generate(["warm synth pad"], **args).codes
    edited = m.generate(["warm synth pad"], hooks={point: scale}, **args).codes
    assert len(seen) == 8 and all(s[0] and not s[1] and s[2] for s in seen), seen[:2]  # the decoder's own buffer
    assert all(s[3] == (2, 1, m.config.d_model) for s in seen[1:]) and seen[0][3][0] == 2
    assert not np.array_equal(plain, edited), "an in-place edit did not change the run"
    # Returning the replacement instead gives the same run.
    returned = m.generate(["warm synth pad"], hooks={point: lambda a, c: np.concatenate([a[c.cond] * 3.0, a[c.uncond]])}, **args).codes
    assert np.array_equal(returned, edited)


def test_a_wrong_shape_and_a_kept_array_are_clear_value_errors(preset):
    m = load(preset)
    d = m.config.d_model
    with pytest.raises(ValueError, match=r"returned an array of shape \[2, 1, 3\].*\[rows, positions, d_model\] = \[2, 1, %d\]" % d):
        m.generate(["x"], steps=4, hooks={"embed.hook_out": lambda a, c: a[:, :, :3]}, decode=False)
    with pytest.raises(ValueError, match="read-only here"):
        m.generate(["x"], steps=4, hooks={"blocks.0.mlp.hook_out": lambda a, c: a * 2}, decode=False)
    kept = []
    with pytest.raises(ValueError, match=r"kept its activation array.*act\.copy\(\)"):
        m.generate(["x"], steps=4, hooks={"embed.hook_out": lambda a, c: kept.append(a)}, decode=False)
    assert not kept[0].flags.writeable and np.isfinite(kept[0]).all()  # now a copy it may read
    with pytest.raises(ValueError, match="unknown hook point"):
        m.generate(["x"], steps=4, hooks={"blocks.0.resid": lambda a, c: None})
    with pytest.raises(ValueError, match="blocks.0 to blocks"):
        m.generate(["x"], steps=4, hooks={f"blocks.{m.config.layers}.hook_resid_post": lambda a, c: None})


def test_an_exception_in_a_hook_surfaces_with_its_traceback_and_the_model_still_works(preset):
    m = load(preset)

    class Boom(Exception):
        pass

    def failing(act, ctx):
        if ctx.call == 3:
            raise Boom(f"at call {ctx.call}")

    with pytest.raises(Boom, match="at call 3") as info:
        m.generate(["x"], steps=6, hooks={"blocks.0.hook_resid_post": failing}, decode=False)
    assert any(entry.name == "failing" for entry in info.traceback), "the hook's own frame is in the traceback"
    a = m.generate(["x"], steps=6, decode=False, **GREEDY).codes
    b = m.generate(["x"], steps=6, decode=False, **GREEDY).codes
    assert np.array_equal(a, b)


def test_library_errors_keep_their_message(preset):
    m = load(preset)
    with pytest.raises(ValueError, match="empty text prompt"):
        m.generate(["  "], steps=3)
    with pytest.raises(mi.MusicGenError, match="no built-in plugin of that name"):
        m.generate(["x"], steps=3, plugins=[("no-such-plugin", {})])
    with pytest.raises(ValueError, match="exceed the model's position table"):
        m.generate(["x"], steps=10**6, decode=False)


def test_ctrl_c_stops_a_generation_between_steps():
    # A child process interrupted by SIGINT mid-generation exits by KeyboardInterrupt, not by finishing.
    code = (
        "import musicgen_interp as mi, os, signal, threading, time\n"
        "m = mi.MusicGen.load(%r, 'cpu', threads=2)\n"
        "steps = []\n"
        "def tick(a, c):\n"
        "    steps.append(c.call)\n"
        "    if c.call == 3: threading.Timer(0.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start(); time.sleep(0.2)\n"
        "try:\n"
        "    m.generate(['x'], steps=400, hooks={'embed.hook_out': tick}, decode=False)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after', len(steps)); raise SystemExit(0)\n"
        "raise SystemExit('finished without interruption')\n"
    ) % str(fixture("tiny"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.split()[-1]) < 400


def test_extract_batches_give_the_one_by_one_bits(tmp_path):
    """A prompt set extracted one generation at a time and in automatic batches: the same arrays,
    bit for bit (each segment samples from its own seed; the kernels' arithmetic per row does not
    depend on the batch); a batch size of 0 is a ValueError."""
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("text,label\nA slow string quartet,Classical\nBebop with a walking bass,Jazz\nDistorted guitars,Rock\n")
    m = load("tiny")
    one = m.extract(tmp_path / "one", prompts=prompts, steps=6, seed=3, batch_size=1)
    auto = m.extract(tmp_path / "auto", prompts=prompts, steps=6, seed=3)
    for name in ["residuals_cond", "residuals_uncond"]:
        a, b = np.load(tmp_path / "one" / f"{name}.npy"), np.load(tmp_path / "auto" / f"{name}.npy")
        assert a.shape[0] == 3 and np.array_equal(a, b), name
    assert one["extracted"] == auto["extracted"] == 3
    with pytest.raises(ValueError, match="batch_size"):
        m.extract(tmp_path / "zero", prompts=prompts, steps=6, batch_size=0)
