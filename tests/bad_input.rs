//! Bad bundles and a missing runtime: each gives a one-line error that names the problem and the fix,
//! never a panic.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixture, runtime};
use musicgen_interp::model::{MusicGen, Verify};
use musicgen_interp::Error;

fn load_err(dir: &Path) -> Error {
    match MusicGen::load(&runtime(), dir, Verify::Cached) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error is not one line: {msg}");
            e
        }
    }
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn the_intact_copy_loads() {
    let dir = common::copy_fixture("tiny");
    MusicGen::load(&runtime(), dir.path(), Verify::Full).expect("an unchanged copy must load");
}

#[test]
fn missing_graph_is_named() {
    let dir = common::copy_fixture("tiny");
    std::fs::remove_file(dir.path().join("decoder_layer_1.onnx")).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("decoder_layer_1.onnx") && msg.contains("re-export"), "{msg}");
}

#[test]
fn corrupt_file_fails_its_checksum() {
    let dir = common::copy_fixture("tiny");
    // Load once so the checksums are cached, then corrupt a byte without changing the size.
    MusicGen::load(&runtime(), dir.path(), Verify::Cached).unwrap();
    let path = dir.path().join("decoder_layer_0.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("decoder_layer_0.onnx is corrupt"), "{e}");
}

#[test]
fn truncated_file_is_caught_by_size() {
    let dir = common::copy_fixture("tiny");
    let path = dir.path().join("decoder_head.onnx");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
}

#[test]
fn manifest_from_another_format_version_is_refused() {
    let dir = common::copy_fixture("tiny");
    edit_manifest(dir.path(), |v| {
        v["format_version"] = 99.into();
        v["exporter_version"] = "9.9.9".into();
    });
    let e = load_err(dir.path());
    let msg = e.to_string();
    assert!(matches!(e, Error::BadManifest { .. }), "{msg}");
    let reads = format!("reads format {}", musicgen_interp::model::manifest::FORMAT_VERSION);
    assert!(msg.contains("format 99") && msg.contains("9.9.9") && msg.contains(&reads), "{msg}");
}

#[test]
fn graphs_of_another_model_size_are_refused() {
    let dir = common::copy_fixture("tiny");
    // The manifest claims a wider model than the graphs were exported for.
    edit_manifest(dir.path(), |v| {
        let d = v["decoder"]["d_model"].as_u64().unwrap();
        let hd = v["decoder"]["head_dim"].as_u64().unwrap();
        v["decoder"]["d_model"] = (2 * d).into();
        v["decoder"]["head_dim"] = (2 * hd).into();
    });
    let e = load_err(dir.path());
    let msg = e.to_string();
    assert!(matches!(e, Error::BundleMismatch { .. }), "{msg}");
    assert!(msg.contains("different model sizes"), "{msg}");
}

#[test]
fn layer_count_disagreeing_with_graph_list_is_refused() {
    let dir = common::copy_fixture("tiny");
    edit_manifest(dir.path(), |v| {
        let l = v["decoder"]["num_layers"].as_u64().unwrap();
        v["decoder"]["num_layers"] = (l + 1).into();
    });
    let e = load_err(dir.path());
    assert!(e.to_string().contains("graphs.decoder_layers lists"), "{e}");
}

#[test]
fn not_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::NotABundle { .. }), "{e}");
    assert!(e.to_string().contains("onnx/export.py"), "{e}");
}

#[test]
fn missing_runtime_library_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["info", "--model"])
        .arg(fixture("tiny"))
        .env("MUSICGEN_INTERP_ORT_LIB", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("onnxruntime library not found") && stderr.contains("scripts/setup.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cli_info_reports_sizes_and_provider() {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "info", "--model"])
        .arg(fixture("tiny2"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("tiny2").join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["decoder"]["num_layers"].as_u64().unwrap();
    assert!(stdout.contains(&format!("decoder      {layers} layers")), "{stdout}");
    assert!(stdout.contains("provider     CPUExecutionProvider"), "{stdout}");
}

/// On a host without CUDA, `--device cuda` is refused in one line naming the fix, and `auto` falls
/// back to the CPU and says why. (Skipped where the tests run on a GPU.)
#[test]
fn cuda_without_cuda_is_one_clear_line_and_auto_says_why_it_fell_back() {
    if std::env::var("MUSICGEN_INTERP_TEST_DEVICE").is_ok_and(|d| d == "cuda") {
        eprintln!("skipped: the tests run on CUDA here");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_musicgen-interp");
    let tiny = fixture("tiny");
    let out = Command::new(bin).args(["info", "--model", tiny.to_str().unwrap(), "--device", "cuda"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("CUDA execution provider could not be used") && err.contains("--device cpu") && err.contains("setup.sh --gpu"), "{err}");
    let out = Command::new(bin).args(["info", "--model", tiny.to_str().unwrap(), "--device", "auto"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CPUExecutionProvider (CUDA not used: "), "{text}");
}
