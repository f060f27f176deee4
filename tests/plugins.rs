//! Plugins: a third-party plugin built outside the workspace against the SDK alone, loaded through a
//! YAML run; ABI-version refusal; panics and errors ending the run cleanly; steering parity with a
//! PyTorch forward-hook implementation (onnx/reference_steering.py); the seed's CLI flags giving the
//! same run as the YAML form.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ndarray::Ix3;

use common::{fixture, load, npy};
use musicgen_interp::generate::{generate, GenerationRequest, SamplingConfig};
use musicgen_interp::plugin::MethodPlugin;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Builds `tests/plugin_fixtures/NAME` as a standalone crate in a temporary folder (depending on the
/// SDK by path only) and returns its library.
fn build_external(name: &str, sdk: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("musicgen-interp-plugin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::copy(Path::new(ROOT).join(format!("tests/plugin_fixtures/{name}/src/lib.rs")), dir.join("src/lib.rs")).unwrap();
    let deps = if sdk {
        format!("musicgen-interp-sdk = {{ path = {:?} }}\nserde_json = \"1\"\n", Path::new(ROOT).join("plugins/sdk"))
    } else {
        String::new()
    };
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.0.1\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n{deps}\n[workspace]\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    // Same versions as the workspace, and a shared target folder, so the build reuses what is compiled.
    std::fs::copy(Path::new(ROOT).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target = Path::new(ROOT).join("target/plugin-tests");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(out.status.success(), "building {name}: {}", String::from_utf8_lossy(&out.stderr));
    let lib = target.join("release").join(format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    assert!(lib.is_file(), "{} not built", lib.display());
    let _ = std::fs::remove_dir_all(&dir);
    lib
}

fn recorder() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_external("recorder", true))
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap()
}

fn write_config(dir: &Path, steps: usize, plugins: &str) -> PathBuf {
    let path = dir.join("run.yaml");
    let yaml = format!(
        "model: {}\nseed: 3\nsteps: {steps}\ntop_k: 1\nprompts:\n  - \"slow jazz\"\n  - \"fast techno\"\nplugins:\n{plugins}output: {}\n",
        fixture("tiny").display(),
        dir.join("out").display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn external_plugin_is_loaded_from_yaml_and_sees_its_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 7;
    let config = write_config(dir.path(), steps, &format!("  - plugin: {}\n    settings: {{}}\n", recorder().display()));
    let out = cli(&["run", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calls: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("out/calls.json")).unwrap()).unwrap();
    // One forward per step: every hook it asked for fired once per forward, nothing else did.
    assert_eq!(calls["on_residual blocks.0.hook_resid_post"], steps);
    assert_eq!(calls["on_component blocks.0.mlp.hook_out"], steps);
    assert_eq!(calls["edit_components 0"], steps);
    assert!(calls.get("edit_components 1").is_none());
    assert_eq!(calls["step_end"], steps);
    assert_eq!((calls["run_start"].as_u64(), calls["run_end"].as_u64()), (Some(1), Some(1)));
    // The resolved config sits beside the outputs and parses back.
    let resolved = std::fs::read_to_string(dir.path().join("out/config.resolved.yaml")).unwrap();
    let parsed = musicgen_interp::config::RunConfig::parse(&resolved, Path::new("resolved")).unwrap();
    // Every setting as used, the bundle's defaults (guidance 3, temperature 1) written out.
    let g = &parsed;
    assert_eq!((g.steps, g.top_k, g.temperature, g.guidance_scale), (Some(steps), Some(1), Some(1.0), Some(3.0)), "{resolved}");
    assert!(dir.path().join("out/clip_0.wav").is_file() && dir.path().join("out/codes.npy").is_file());
}

#[test]
fn plugin_edits_flow_into_the_run() {
    // The recorder's MLP edit (through the SDK's edit buffers) changes the generated codes.
    let dir = tempfile::tempdir().unwrap();
    let run = |settings: &str, sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let config = write_config(&d, 12, &format!("  - plugin: {}\n    settings: {settings}\n", recorder().display()));
        let out = cli(&["run", config.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        npy::<i64>(d.join("out/codes.npy"))
    };
    let plain = run("{}", "a");
    let edited = run("{add_to_mlp: 5.0}", "b");
    assert_ne!(plain, edited);
}

#[test]
fn panicking_and_failing_plugins_end_the_run_cleanly() {
    for (settings, expect) in [
        ("{panic_at: on_residual}", "plugin panicked: recorder was told to panic at on_residual"),
        ("{fail_at: on_component}", "recorder was told to fail at on_component"),
        ("{fail_at: step_end}", "recorder was told to fail at step_end"),
        ("{panic_at: create}", "plugin panicked: recorder was told to panic at create"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), 5, &format!("  - plugin: {}\n    settings: {settings}\n", recorder().display()));
        let out = cli(&["run", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{settings}: the run should fail");
        assert!(stderr.contains(expect), "{settings}: {stderr}");
        assert!(stderr.contains("recorder"), "{stderr}");
        assert!(!stderr.contains("thread 'main' panicked"), "the host itself panicked: {stderr}");
        assert!(!stderr.contains("stack backtrace"), "the plugin's panic leaked onto stderr: {stderr}");
        // A plugin that cannot be created stops the run before its folder exists; otherwise the
        // files already written stay valid, and nothing half-written is left.
        if settings.contains("create") {
            assert!(!dir.path().join("out").exists(), "{settings}: the run's folder was created");
            continue;
        }
        let resolved = std::fs::read_to_string(dir.path().join("out/config.resolved.yaml")).unwrap();
        musicgen_interp::config::RunConfig::parse(&resolved, Path::new("resolved")).unwrap();
        assert!(!dir.path().join("out/clip_0.wav").exists());
    }
}

#[test]
fn plugin_of_another_abi_version_is_refused_naming_both() {
    let lib = build_external("old_abi", false);
    let err = MethodPlugin::load(lib.to_str().unwrap(), "{}").err().expect("must be refused").to_string();
    assert!(err.contains("ABI version 999") && err.contains(&format!("ABI version {}", musicgen_interp::plugin::ABI_VERSION)), "{err}");
}

#[test]
fn bad_yaml_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "model: x\nprompts: [a]\nplugins:\n  - plugin: steering\n    setings: {}\n").unwrap();
    let out = cli(&["run", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown field `setings`") && stderr.contains("line 5"), "{stderr}");
}

#[test]
fn plugin_settings_errors_name_the_yaml_line_and_column() {
    // The steering plugin parses its settings from JSON the host wrote; its complaint is placed in
    // the YAML file the user wrote (the line and column hold the offending item or key), and nothing
    // is created.
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{weights: w.npy, target_class: 0, layers: [0, x], strengths: [1]}", "expected usize", "plugins[0].settings.layers[1]", "x"),
        ("\n      weights: w.npy\n      target_class: 0\n      layers: [0]\n      strengths: [1]\n      strenght: 2\n", "unknown field `strenght`", "plugins[0].settings.strenght", "strenght: 2"),
    ];
    for (settings, what, path, held) in cases {
        let config = write_config(dir.path(), 3, &format!("  - plugin: steering\n    settings: {settings}\n"));
        let out = cli(&["run", config.to_str().unwrap()]);
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{e}");
        assert!(e.contains(what) && e.contains(&format!(": {path})")) && !e.contains("line 1 column"), "{e}");
        let at = e.split("run.yaml line ").nth(1).and_then(|r| r.split_once(':')).map(|(p, _)| p.to_string()).expect(&e);
        let (line, column) = at.split_once(", column ").map(|(l, c)| (l.parse::<usize>().unwrap(), c.parse::<usize>().unwrap())).expect(&e);
        let text = std::fs::read_to_string(&config).unwrap();
        let there = &text.lines().nth(line - 1).unwrap()[column - 1..];
        assert!(there.starts_with(held), "line {line} column {column} holds {there:?}: {e}");
        assert!(!dir.path().join("out").exists());
    }
}

fn steering_settings(reference: &Path, case: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "weights": reference.join("weights.npy"),
        "target_class": case["target_class"],
        "layers": case["layers"],
        "strengths": case["strengths"],
        "period": case["period"],
        "offset": case["offset"],
    })
}

#[test]
fn steering_matches_pytorch_forward_hooks() {
    for preset in common::PRESETS {
        let r = fixture(preset).join("reference/steering");
        let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("cases.json")).unwrap()).unwrap();
        let prompts: Vec<String> = serde_json::from_value(cases["prompts"].clone()).unwrap();
        let steps = cases["steps"].as_u64().unwrap() as usize;
        let mut m = load(preset);
        let plain = npy::<i64>(r.join("plain_codes.npy")).into_dimensionality::<Ix3>().unwrap();
        for (name, case) in cases["cases"].as_object().unwrap() {
            let mut plugin = MethodPlugin::load("steering", &steering_settings(&r, case).to_string()).unwrap();
            let request = GenerationRequest {
                prompts: prompts.clone(),
                audio_codes: None,
                max_new_tokens: steps,
                sampling: SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 },
                ..Default::default()
            };
            let out = generate(&mut m, &request, &mut plugin, |_, _| {}).unwrap();
            let want = npy::<i64>(r.join(name).join("codes.npy")).into_dimensionality::<Ix3>().unwrap();
            let differ = out.codes.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{preset} {name}: {differ} of {} steered codes differ from the PyTorch hooks", want.len());
            assert_ne!(out.codes, plain, "{preset} {name}: steering changed nothing");
        }
    }
}

#[test]
fn seed_cli_flags_give_the_same_run_as_yaml() {
    let r = fixture("tiny").join("reference/steering");
    let dir = tempfile::tempdir().unwrap();
    let weights = r.join("weights.npy");
    let plugins = format!(
        "  - plugin: steering\n    settings:\n      weights: {}\n      target_class: 1\n      layers: [0, 1]\n      strengths: [0.5, 0.3]\n      period: 3\n      offset: 1\n",
        weights.display()
    );
    let config = write_config(dir.path(), 15, &plugins);
    let out = cli(&["run", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flags_codes = dir.path().join("flags.npy");
    let flags_wav = dir.path().join("flags.wav");
    let out = cli(&[
        "generate", "--model", fixture("tiny").to_str().unwrap(), "--text", "slow jazz", "--text", "fast techno", "--steps", "15",
        "--top-k", "1", "--seed", "3", "--output", flags_wav.to_str().unwrap(), "--save-codes", flags_codes.to_str().unwrap(),
        "--steering-weights", weights.to_str().unwrap(), "--target-class", "1", "--target-layers", "0", "1",
        "--layer-strengths", "0.5", "0.3", "--steering-period", "3", "--offset", "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(npy::<i64>(&flags_codes), npy::<i64>(dir.path().join("out/codes.npy")));
    assert_eq!(std::fs::read(dir.path().join("flags_0.wav")).unwrap(), std::fs::read(dir.path().join("out/clip_0.wav")).unwrap());
}

#[test]
fn plugins_command_lists_the_builtin() {
    let out = cli(&["plugins"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("steering") && stdout.contains("Method") && stdout.contains(&format!("ABI {}", musicgen_interp::plugin::ABI_VERSION)), "{stdout}");
}

#[test]
fn example_configs_parse() {
    let mut n = 0;
    for entry in std::fs::read_dir(Path::new(ROOT).join("configs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            // Run configs; the probe workflow, DecoderLens and interchange runs have their own schemas.
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            let parsed = if name.starts_with("probe-pipeline") {
                musicgen_interp::pipeline::PipelineConfig::load(&p).map(drop)
            } else if name.starts_with("decoder-lens") {
                musicgen_interp::decoder_lens::DecoderLensConfig::load(&p).map(drop)
            } else if name.starts_with("intervene") {
                musicgen_interp::interchange::InterveneConfig::load(&p).map(drop)
            } else {
                musicgen_interp::config::RunConfig::load(&p).map(drop)
            };
            parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn external_probe_model_fits_predicts_saves_and_loads() {
    use musicgen_interp::plugin::ProbePlugin;
    let lib = build_external("centroid", true);
    let spec = lib.to_str().unwrap();
    // Two well-separated classes in 3 dimensions.
    let x = ndarray::arr2(&[[1.0f32, 0.0, 0.0], [1.1, 0.1, 0.0], [0.0, 0.0, 1.0], [0.1, 0.0, 1.2]]);
    let y = [0i64, 0, 1, 1];
    let mut p = ProbePlugin::load(spec, "{}").unwrap();
    assert_eq!(p.name(), "centroid");
    p.fit(x.view(), &y, 2).unwrap();
    assert_eq!(p.predict(x.view()).unwrap(), y.to_vec());
    let scores = p.scores(x.view(), 2).unwrap();
    assert!(scores[[0, 0]] > scores[[0, 1]] && scores[[3, 1]] > scores[[3, 0]]);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("centroids.json");
    p.save(&saved).unwrap();
    let mut q = ProbePlugin::load(spec, "{}").unwrap();
    q.load_weights(&saved).unwrap();
    assert_eq!(q.predict(x.view()).unwrap(), y.to_vec());
    // Its errors come back as errors: a label outside the classes.
    let err = q.fit(x.view(), &[0, 0, 1, 5], 2).unwrap_err().to_string();
    assert!(err.contains("label 5 outside 0..2"), "{err}");
    // A probe is not a method, and the other way round.
    assert!(MethodPlugin::load(spec, "{}").is_err());
    assert!(ProbePlugin::load("steering", "{}").is_err());
}
