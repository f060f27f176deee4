//! Shared test helpers: the runtime, the fixture bundles, reading reference arrays.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayBase, ArrayD, Data, Dimension};
use ndarray_npy::ReadableElement;

use musicgen_interp::model::{MusicGen, Verify};
use musicgen_interp::runtime::{Device, Runtime, RuntimeOptions};

/// The test fixtures exported by scripts/test.sh (presets `tiny` and `tiny2`).
pub const PRESETS: [&str; 2] = ["tiny", "tiny2"];

pub fn fixture(preset: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(preset);
    assert!(
        dir.join("manifest.json").is_file() && dir.join("reference/cases.json").is_file(),
        "test fixture {} is missing: run `bash scripts/test.sh` (it exports the tiny bundles and their transformers references)",
        dir.display()
    );
    dir
}

/// A private copy of a fixture bundle's top-level files to break or modify, without its hidden files:
/// other tests load the shared fixture at the same time, and the verification cache's temporary file
/// (`..verified.json.tmp-PID`) can appear in the listing and be renamed away before it is copied.
pub fn copy_fixture(preset: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(preset)).unwrap().flatten() {
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if entry.file_type().unwrap().is_file() && !hidden {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// The runtime options the tests run with: the device `MUSICGEN_INTERP_TEST_DEVICE` (cpu by default;
/// cuda on a GPU host), two threads.
pub fn runtime_options() -> RuntimeOptions {
    let device: Device = std::env::var("MUSICGEN_INTERP_TEST_DEVICE").unwrap_or_else(|_| "cpu".into()).parse().unwrap();
    RuntimeOptions { device, threads: 2, ..Default::default() }
}

/// The device the tests run on: `MUSICGEN_INTERP_TEST_DEVICE` (cpu by default; cuda on a GPU host).
pub fn runtime() -> Runtime {
    let rt = Runtime::init(&runtime_options()).expect("onnxruntime");
    eprintln!("provider: {}", rt.describe());
    rt
}

pub fn load(preset: &str) -> MusicGen {
    MusicGen::load(&runtime(), fixture(preset), Verify::Cached).expect("loading the fixture bundle")
}

pub fn npy<T: ReadableElement>(path: impl AsRef<Path>) -> ArrayD<T> {
    let path = path.as_ref();
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A tolerance: `|got - want| <= abs + rel * scale`, where `scale` is the reference's largest
/// magnitude. A bare `f32` is an absolute tolerance.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub abs: f32,
    pub rel: f32,
}

impl Tol {
    pub const fn new(abs: f32, rel: f32) -> Tol {
        Tol { abs, rel }
    }
}

impl From<f32> for Tol {
    fn from(abs: f32) -> Tol {
        Tol { abs, rel: 0.0 }
    }
}

/// Largest absolute difference; infinite where one side is not finite and the other differs from
/// it (a NaN or infinity where the reference has a number, or the other way round), so that no
/// comparison skips a NaN. Panics on a shape mismatch.
pub fn max_abs_diff<S1, S2, D1, D2>(a: &ArrayBase<S1, D1>, b: &ArrayBase<S2, D2>) -> f32
where
    S1: Data<Elem = f32>,
    S2: Data<Elem = f32>,
    D1: Dimension,
    D2: Dimension,
{
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| match (x.is_finite(), y.is_finite()) {
            (true, true) => (x - y).abs(),
            _ if x == y || (x.is_nan() && y.is_nan()) => 0.0,
            _ => f32::INFINITY,
        })
        .fold(0.0, f32::max)
}

/// Asserts `max |a - b| <= tol.abs + tol.rel * max |b|` (`b` is the reference), naming what was
/// compared. Any non-finite value of `a` where `b` is finite fails. The reference must not be
/// trivially small for the tolerance: its largest magnitude must be at least 10 times the allowed
/// difference, or a comparison at that tolerance could not tell the output from zeros.
pub fn assert_close<S1, S2, D1, D2>(what: &str, a: &ArrayBase<S1, D1>, b: &ArrayBase<S2, D2>, tol: impl Into<Tol>)
where
    S1: Data<Elem = f32>,
    S2: Data<Elem = f32>,
    D1: Dimension,
    D2: Dimension,
{
    let tol = tol.into();
    assert_eq!(a.shape(), b.shape(), "{what}: shape mismatch");
    let d = max_abs_diff(a, b);
    let scale = b.iter().filter(|x| x.is_finite()).map(|x| x.abs()).fold(0.0, f32::max);
    let allowed = tol.abs + tol.rel * scale;
    eprintln!("{what}: max abs diff {d:.2e} (allowed {allowed:.2e}; reference max |x| {scale:.2e})");
    let bad = a.iter().zip(b.iter()).position(|(x, y)| !x.is_finite() && y.is_finite());
    assert!(bad.is_none(), "{what}: a non-finite value ({}) at flat index {} where the reference is {}", a.iter().nth(bad.unwrap()).unwrap(), bad.unwrap(), b.iter().nth(bad.unwrap()).unwrap());
    assert!(d <= allowed, "{what}: max abs diff {d:e} > {allowed:e} (reference max |x| {scale:e})");
    assert!(
        scale >= 10.0 * allowed,
        "{what}: the reference's largest magnitude {scale:e} is under 10x the tolerance {allowed:e}: the comparison cannot tell the output from zeros"
    );
}

/// Every file under `dir`, hidden ones included, relative to it, sorted (none when `dir` does not
/// exist).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
