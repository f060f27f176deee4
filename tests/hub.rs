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
fn hub_id_missing_from_the_cache_offline_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "info", "--model", "test-org/not-cached"])
        .env("HF_HOME", tmp.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .env("MUSICGEN_INTERP_MODELS", tmp.path().join("models"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("exporting test-org/not-cached failed"), "{stderr}");
    assert!(!tmp.path().join("models/test-org--not-cached/manifest.json").exists());
}
