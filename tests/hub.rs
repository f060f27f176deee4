//! `--model` with a hub id: resolved through a Hugging Face cache laid out on disk (as the hub client
//! writes it), exported once into the models folder, then reused.

mod common;

use std::path::Path;
use std::process::Command;

use common::fixture;

/// A hub cache holding the tiny fixture's transformers checkpoint as `test-org/musicgen-tiny`.
fn fake_hub_cache(home: &Path) -> String {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.join("hub/models--test-org--musicgen-tiny");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture("tiny").join("hf")).unwrap().flatten() {
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    commit.to_string()
}

fn info(home: &Path, models: &Path, model: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "info", "--model", model])
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env("MUSICGEN_INTERP_MODELS", models)
        .output()
        .unwrap()
}

#[test]
fn hub_id_in_the_cache_is_exported_once_offline_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, models) = (tmp.path().join("hf"), tmp.path().join("models"));
    let commit = fake_hub_cache(&home);
    let out = info(&home, &models, "test-org/musicgen-tiny");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("offline"), "{stderr}");
    let bundle = models.join("test-org--musicgen-tiny");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["source"]["kind"], "hub");
    assert_eq!(manifest["source"]["model_id"], "test-org/musicgen-tiny");
    assert_eq!(manifest["source"]["revision"], commit.as_str());
    // The same weights export to the same graphs as the fixture's.
    for graph in ["decoder_layer_0.onnx", "decoder_head.onnx", "text_encoder.onnx"] {
        assert_eq!(std::fs::read(bundle.join(graph)).unwrap(), std::fs::read(fixture("tiny").join(graph)).unwrap(), "{graph}");
    }
    // A second use finds the bundle and does not export again.
    let before = std::fs::metadata(bundle.join("manifest.json")).unwrap().modified().unwrap();
    let again = info(&home, &models, "test-org/musicgen-tiny");
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("exporting"));
    assert_eq!(std::fs::metadata(bundle.join("manifest.json")).unwrap().modified().unwrap(), before);
}

#[test]
fn hub_id_missing_from_the_cache_offline_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Offline by HF_HUB_OFFLINE, and offline because the endpoint refuses connections.
    for (var, value) in [("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")] {
        let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
            .args(["--device", "cpu", "info", "--model", "test-org/not-cached"])
            .env("HF_HOME", tmp.path().join("hf"))
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .env(var, value)
            .env("MUSICGEN_INTERP_MODELS", tmp.path().join("models"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("no such bundle or checkpoint folder, and not in the Hugging Face cache"), "{stderr}");
        assert!(!stderr.contains("exporting"), "no exporter may start: {stderr}");
        assert!(!tmp.path().join("models").exists(), "nothing is created before the model resolves");
    }
}

/// `info --model DIR` with exports going to `models`; returns (success, stdout + stderr).
fn info_local(models: &Path, model: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "info", "--model"])
        .arg(model)
        .env("MUSICGEN_INTERP_MODELS", models)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn layers_line(log: &str) -> String {
    log.lines().find(|l| l.starts_with("decoder ")).unwrap_or_else(|| panic!("no decoder line in {log}")).to_string()
}

#[test]
fn checkpoint_folders_of_the_same_name_get_their_own_bundles_and_a_changed_one_is_exported_again() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    // Two checkpoints in folders both called `hf` (the old cache key was the folder name alone).
    let (a, b) = (tmp.path().join("tiny/hf"), tmp.path().join("tiny2/hf"));
    for (dir, fixture) in [(&a, "tiny"), (&b, "tiny2")] {
        std::fs::create_dir_all(dir).unwrap();
        for entry in std::fs::read_dir(common::fixture(fixture).join("hf")).unwrap().flatten() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let (ok, log_a) = info_local(&models, &a);
    assert!(ok, "{log_a}");
    assert!(log_a.contains("from the checkpoint folder") && !log_a.contains("Hugging Face cache"), "{log_a}");
    assert!(!log_a.contains(" 0.0 MB of graphs"), "{log_a}");
    let (ok, log_b) = info_local(&models, &b);
    assert!(ok, "{log_b}");
    let (want_a, want_b) = (common::load("tiny").decoder.num_layers(), common::load("tiny2").decoder.num_layers());
    assert_ne!(want_a, want_b, "the fixtures must differ in depth for this test");
    assert!(layers_line(&log_a).contains(&format!("{want_a} layers")), "{log_a}");
    assert!(layers_line(&log_b).contains(&format!("{want_b} layers")), "{}", layers_line(&log_b));
    // The bundles record what they were made from.
    let bundles: Vec<_> = std::fs::read_dir(&models).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    for bundle in &bundles {
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["source"]["kind"], "local");
        assert_eq!(manifest["source"]["key"].as_str().map(str::len), Some(16));
    }
    // Reused while unchanged.
    let (ok, again) = info_local(&models, &a);
    assert!(ok && !again.contains("exporting"), "{again}");
    // The weights re-saved (a new modification time): exported again, with the reason.
    let weights = std::fs::read_dir(&a).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "safetensors")).unwrap();
    let later = std::fs::metadata(&weights).unwrap().modified().unwrap() + std::time::Duration::from_secs(60);
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_modified(later).unwrap();
    let (ok, changed) = info_local(&models, &a);
    assert!(ok, "{changed}");
    assert!(changed.contains("again") && changed.contains("as it was then"), "{changed}");
}

#[test]
fn a_missing_path_or_a_file_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.onnx");
    std::fs::write(&file, b"x").unwrap();
    let (ok, log) = info_local(&tmp.path().join("models"), &file);
    assert!(!ok && log.contains("is a file"), "{log}");
    let (ok, log) = info_local(&tmp.path().join("models"), &tmp.path().join("no/such/dir"));
    assert!(!ok && log.contains("no such bundle or checkpoint folder"), "{log}");
}

/// `process-lewtun --dataset REPO` with `HF_HOME`, `--genres Jazz`, 4 steps; (success, stdout + stderr).
fn lewtun(home: &Path, out: &Path, repo: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["--device", "cpu", "process-lewtun", "--dataset", repo, "--model"])
        .arg(fixture("tiny"))
        .arg("--save-dir")
        .arg(out)
        .args(["--steps", "4", "--genres", "Jazz"])
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn lewtun_dataset_under_another_repo_id_from_the_cache() {
    // The stand-in for lewtun/music_genres, cached under the seed's copy's id.
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let python = musicgen_interp::runtime::find_venv_python().expect("the project's .venv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_lewtun_cache.py");
    assert!(Command::new(python).arg(script).arg(&home).status().unwrap().success());
    std::fs::rename(home.join("hub/datasets--lewtun--music_genres"), home.join("hub/datasets--roovy54--lewtun_music_genres_modified")).unwrap();
    // Offline: read from the cache without the hub.
    let (ok, log) = lewtun(&home, &tmp.path().join("jazz"), "roovy54/lewtun_music_genres_modified", &[("HF_HUB_OFFLINE", "1")]);
    assert!(ok, "{log}");
    assert!(log.contains("2 segments extracted") && !log.contains("downloading"), "{log}");
    let labels = common::npy::<i64>(tmp.path().join("jazz/labels.npy"));
    assert_eq!(labels.iter().copied().collect::<Vec<_>>(), vec![3, 3], "Jazz=3");
    // The default id is not that cache's: refused offline, naming it, before the model loads.
    let (ok, log) = lewtun(&home, &tmp.path().join("default"), "lewtun/music_genres", &[("HF_HUB_OFFLINE", "1")]);
    assert!(!ok && log.contains("dataset lewtun/music_genres is not in the Hugging Face cache") && log.contains("HF_HUB_OFFLINE"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("loaded ")), "the model must not load: {log}");
}

#[test]
fn lewtun_dataset_missing_offline_is_refused_at_once_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Offline by HF_HUB_OFFLINE, and offline because the endpoint refuses connections.
    for env in [("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")] {
        let start = std::time::Instant::now();
        let (ok, log) = lewtun(&tmp.path().join("hf"), &tmp.path().join("out"), "test-org/some-genres", &[env]);
        assert!(!ok, "{log}");
        assert!(log.contains("dataset test-org/some-genres is not in the Hugging Face cache") && log.contains("cannot be downloaded now"), "{log}");
        assert!(!log.contains("downloading") && !log.lines().any(|l| l.starts_with("loaded ")), "{log}");
        assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
        assert!(!tmp.path().join("out").exists(), "nothing written");
    }
    // --dataset without the hub dataset reader is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "extract", "--model", "m", "--data-dir", "d", "--output-dir"])
        .arg(tmp.path().join("o"))
        .args(["--dataset", "a/b"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("read it with --lewtun"), "{err}");
}

/// A checkpoint that needs exporting, with an exporter that cannot run: the error says it is the
/// exporter's (not "invalid input"), names what is wrong, and nothing is left in the models folder.
#[test]
fn an_exporter_that_cannot_run_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = tmp.path().join("hf");
    std::fs::create_dir_all(&checkpoint).unwrap();
    for entry in std::fs::read_dir(common::fixture("tiny").join("hf")).unwrap().flatten() {
        std::fs::copy(entry.path(), checkpoint.join(entry.file_name())).unwrap();
    }
    let models = tmp.path().join("models");
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "info", "--model"])
        .arg(&checkpoint)
        .env("MUSICGEN_INTERP_MODELS", &models)
        .env("MUSICGEN_INTERP_EXPORTER", tmp.path().join("no-export.py"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("exporter: MUSICGEN_INTERP_EXPORTER=") && err.contains("is not a file") && !err.contains("invalid input"), "{err}");
    assert!(std::fs::read_dir(&models).map_or(true, |d| d.count() == 0), "a failed export left files in {}", models.display());
}
