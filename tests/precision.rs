//! The reduced-precision bundle (onnx/quantize.py, int8 weight-only decoder matmuls): smaller, runs
//! through the same runtime and hooks, and stays close to the fp32 bundle (itself checked against
//! transformers in parity.rs).

mod common;

use common::{fixture, runtime};
use musicgen_interp::bench::fidelity;
use musicgen_interp::model::{MusicGen, Verify};

fn int8() -> std::path::PathBuf {
    let dir = fixture("tiny").with_file_name("tiny-int8");
    assert!(dir.join("manifest.json").is_file(), "{} is missing: run `bash scripts/test.sh`", dir.display());
    dir
}

#[test]
fn int8_bundle_is_smaller_and_says_so() {
    let rt = runtime();
    let q = MusicGen::load(&rt, int8(), Verify::Full).unwrap();
    let f = MusicGen::load(&rt, fixture("tiny"), Verify::Cached).unwrap();
    let p = q.manifest().precision.as_ref().expect("precision recorded");
    assert_eq!(p.weights, "int8");
    assert!(f.manifest().precision.is_none());
    let bytes = |m: &MusicGen| -> u64 { p.graphs.iter().map(|g| m.manifest().graph_bytes(g)).sum() };
    assert!((bytes(&q) as f64) < 0.6 * bytes(&f) as f64, "int8 {} vs fp32 {} bytes", bytes(&q), bytes(&f));
    // The int8 CPU copies have no weights file of their own: they read the quantized plain graphs'
    // tensors, so what the session reads counts those files once.
    let man = q.manifest();
    let copies = q.decoder.graph_files();
    assert!(copies.iter().all(|g| g.ends_with(".cpu.onnx") && !man.files.contains_key(&format!("{g}.data"))), "{copies:?}");
    let plain_data: u64 = p.graphs.iter().map(|g| man.files[&format!("{g}.data")].bytes).sum();
    let copy_files: u64 = copies.iter().map(|g| man.files[*g].bytes).sum();
    assert_eq!(copies.iter().map(|g| man.graph_bytes(g)).sum::<u64>(), copy_files + plain_data);
    assert!(q.loaded_bytes() < f.loaded_bytes(), "int8 {} vs fp32 {} bytes loaded", q.loaded_bytes(), f.loaded_bytes());
}

#[test]
fn int8_follows_fp32_closely() {
    let rt = runtime();
    let mut q = MusicGen::load(&rt, int8(), Verify::Cached).unwrap();
    let mut f = MusicGen::load(&rt, fixture("tiny"), Verify::Cached).unwrap();
    let fid = fidelity(&mut q, &mut f, "80s pop track with bassy drums and synth", 50).unwrap();
    let min = fid.residual_cosine.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!("int8 vs fp32: residual cosine min {min:.6}, next-token agreement {:.3}", fid.token_agreement);
    assert!(min >= 0.999, "residual cosine {min}");
    assert!(fid.token_agreement >= 0.9, "agreement {}", fid.token_agreement);
    // The oracle can fail: the fp32 bundle against itself agrees fully, so the measure is not vacuous.
    let mut f2 = MusicGen::load(&rt, fixture("tiny"), Verify::Cached).unwrap();
    let same = fidelity(&mut f2, &mut f, "80s pop track with bassy drums and synth", 50).unwrap();
    assert_eq!(same.token_agreement, 1.0);
    // And the int8 numbers are not fp32's: the weights really were quantized.
    assert!(min < 1.0 - 1e-9 || fid.token_agreement < 1.0, "int8 reproduced fp32 exactly: nothing was quantized");
}
