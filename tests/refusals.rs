//! Nothing silently wrong: bad input met on the command line gets a clear error early (exit status,
//! the message's key words), and no output or temporary file is left behind; input that is used
//! despite a flaw (a truncated WAV) says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects a refusal; returns stderr.
fn refused(args: &[&str]) -> String {
    let o = cli(args);
    let e = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail; stderr: {e}");
    assert!(!e.contains("panicked"), "{e}");
    e
}

fn succeeded(args: &[&str]) -> Output {
    let o = cli(args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    o
}

/// Every file under `dir`, relative.
fn assert_no_temporaries(dir: &Path) {
    let left = common::files_under(dir);
    assert!(left.iter().all(|f| !f.contains(".tmp") && !f.contains(".probe-")), "temporary files left: {left:?}");
}

fn model() -> String {
    fixture("tiny").display().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 32-bit float mono WAV written by hand: `samples`, with the header's data length claiming
/// `claimed` samples (a truncated file when more than `samples.len()`).
fn float_wav(path: &Path, rate: u32, samples: &[f32], claimed: usize) {
    let data: Vec<u8> = samples.iter().flat_map(|x| x.to_le_bytes()).collect();
    let data_len = (claimed * 4) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 4).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&32u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).unwrap();
}

fn tone(rate: u32, seconds: f32) -> Vec<f32> {
    (0..(rate as f32 * seconds) as usize).map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 0.3).collect()
}

#[test]
fn non_finite_audio_and_numbers_are_refused_naming_the_file_sample_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let out = dir.path().join("out.wav");
    let o = s(&out);
    for (bad, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let wav = dir.path().join("bad.wav");
        let mut x = tone(16000, 0.5);
        x[1234] = bad;
        let n = x.len();
        float_wav(&wav, 16000, &x, n);
        let e = refused(&["generate", "--model", &m, "--text", "x", "--audio", s(&wav), "--steps", "5", "--output", o]);
        assert!(e.contains("bad.wav") && e.contains("sample 1234") && e.contains(word), "{e}");
        // Refused before the model is loaded.
        assert!(!e.contains("loaded "), "{e}");
    }
    let ok = dir.path().join("ok.wav");
    let x = tone(16000, 0.5);
    float_wav(&ok, 16000, &x, x.len());
    for (flag, value) in [("--audio-start", "NaN"), ("--audio-duration", "nan"), ("--audio-start", "inf"), ("--temperature", "NaN"), ("--guidance-scale", "-inf")] {
        let e = refused(&["generate", "--model", &m, "--text", "x", "--audio", s(&ok), flag, value, "--steps", "5", "--output", o]);
        assert!(e.contains(flag) && e.contains("not a finite number"), "{flag} {value}: {e}");
    }
    let e = refused(&["generate", "--model", &m, "--text", "x", "--duration", "inf", "--output", o]);
    assert!(e.contains("--duration") && e.contains("not a finite number"), "{e}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    assert_no_temporaries(dir.path());
}

#[test]
fn negative_numbers_reach_the_range_check() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let out = dir.path().join("out.wav");
    let ok = dir.path().join("ok.wav");
    let x = tone(16000, 0.5);
    float_wav(&ok, 16000, &x, x.len());
    for (args, flag, words) in [
        (vec!["--duration", "-1"], "--duration", "greater than 0"),
        (vec!["--audio", s(&ok), "--audio-start", "-1", "--steps", "5"], "--audio-start", "0 or more"),
        (vec!["--audio", s(&ok), "--audio-duration", "-0.5", "--steps", "5"], "--audio-duration", "greater than 0"),
        (vec!["--steps", "-3"], "--steps", "invalid"),
    ] {
        let mut all = vec!["generate", "--model", &m, "--text", "x", "--output", s(&out)];
        all.extend(args);
        let e = refused(&all);
        assert!(e.contains(flag) && e.contains(words), "{flag}: {e}");
        assert!(!e.contains("unexpected argument"), "{flag}: {e}");
    }
    let e = refused(&["extract", "--model", &m, "--data-dir", s(dir.path()), "--output-dir", s(&dir.path().join("x")), "--segment-seconds", "-2"]);
    assert!(e.contains("--segment-seconds") && e.contains("greater than 0"), "{e}");
    assert!(!out.exists() && !dir.path().join("x").exists());
    assert_no_temporaries(dir.path());
}

/// An extraction folder as `extract` leaves it: `[samples, points, d_model]` residuals and labels.
fn features(dir: &Path, labels: &[i64]) {
    let n = labels.len();
    let x = ndarray::Array3::<f32>::from_shape_fn((n, 3, 8), |(i, p, j)| ((i * 7 + p * 3 + j) % 5) as f32 + labels[i] as f32 * (j == labels[i] as usize) as u8 as f32);
    ndarray_npy::write_npy(dir.join("residuals_cond.npy"), &x).unwrap();
    ndarray_npy::write_npy(dir.join("labels.npy"), &ndarray::Array1::from(labels.to_vec())).unwrap();
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["train-probes", "--data-dir", s(data), "--output-dir", s(out)];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

fn refused_owned(args: &[String]) -> String {
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn npy_read_errors_say_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = dir.path().join("probes");
    let labels = [0i64, 0, 0, 1, 1, 1];
    features(&data, &labels);
    let residuals = data.join("residuals_cond.npy");
    let good = std::fs::read(&residuals).unwrap();
    let leaks = ["incorrect descriptor", "NDIM", "failed to fill whole buffer", "ParseHeader"];
    // float64 instead of float32
    ndarray_npy::write_npy(&residuals, &ndarray::Array3::<f64>::zeros((6, 3, 8))).unwrap();
    let e = refused_owned(&train(&data, &out, &["--num-classes", "2"]));
    assert!(e.contains("residuals_cond.npy") && e.contains("as float32") && e.contains("found float64 (<f8) of shape (6, 3, 8)"), "{e}");
    // two axes instead of three
    ndarray_npy::write_npy(&residuals, &ndarray::Array2::<f32>::zeros((6, 8))).unwrap();
    let e = refused_owned(&train(&data, &out, &["--num-classes", "2"]));
    assert!(e.contains("with 3 axes") && e.contains("found float32 (<f4) of shape (6, 8)"), "{e}");
    // cut short
    std::fs::write(&residuals, &good[..good.len() - 10]).unwrap();
    let e = refused_owned(&train(&data, &out, &["--num-classes", "2"]));
    assert!(e.contains("residuals_cond.npy") && e.contains("truncated") && e.contains("only"), "{e}");
    // not a .npy at all
    std::fs::write(&residuals, b"residuals, as CSV\n1,2,3\n").unwrap();
    let e = refused_owned(&train(&data, &out, &["--num-classes", "2"]));
    assert!(e.contains("residuals_cond.npy") && e.contains("not a .npy file"), "{e}");
    // labels of the wrong type
    std::fs::write(&residuals, &good).unwrap();
    ndarray_npy::write_npy(data.join("labels.npy"), &ndarray::Array1::<f64>::zeros(6)).unwrap();
    let e = refused_owned(&train(&data, &out, &["--num-classes", "2"]));
    assert!(e.contains("labels.npy") && e.contains("as int64") && e.contains("found float64"), "{e}");
    // steering weights given to generate (read by the steering plugin through the same helper)
    let w = dir.path().join("w.npy");
    ndarray_npy::write_npy(&w, &ndarray::Array2::<f32>::zeros((2, 64))).unwrap();
    let wav = dir.path().join("o.wav");
    let e = refused(&[
        "generate", "--model", &model(), "--text", "x", "--steps", "5", "--output", s(&wav), "--steering-weights", s(&w), "--target-class", "0",
        "--target-layers", "0", "--layer-strengths", "0.5",
    ]);
    assert!(e.contains("w.npy") && e.contains("steering weights") && e.contains("with 3 axes") && e.contains("shape (2, 64)"), "{e}");
    assert!(!wav.exists());
    for leak in leaks {
        assert!(!e.contains(leak), "{e}");
    }
    assert!(common::files_under(&out).is_empty(), "refused training left {:?}", common::files_under(&out));
    assert_no_temporaries(dir.path());
}

#[test]
fn num_classes_that_do_not_fit_the_labels_suggest_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = dir.path().join("probes");
    features(&data, &[0, 1, 0, 1, 0, 1, 0, 1]);
    // the default --num-classes 4
    let e = refused_owned(&train(&data, &out, &[]));
    assert!(e.contains("class 2 has 0 example(s)") && e.contains("--num-classes is 4") && e.contains("2 class(es): 0, 1") && e.contains("use --num-classes 2"), "{e}");
    let e = refused_owned(&train(&data, &out, &["--num-classes", "1"]));
    assert!(e.contains("label 1, outside 0..1") && e.contains("use --num-classes 2"), "{e}");
    assert!(common::files_under(&out).is_empty(), "refused training left {:?}", common::files_under(&out));
    succeeded(&train(&data, &out, &["--num-classes", "2"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.join("mse_weights.npy").is_file());
    assert_no_temporaries(dir.path());
}

#[test]
fn a_plugin_that_cannot_be_loaded_gives_the_loaders_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    features(&data, &[0, 1, 0, 1, 0, 1]);
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"this is text, not a shared library; it is long enough to hold an ELF header's worth of bytes").unwrap();
    let out = dir.path().join("probes");
    let e = refused_owned(&train(&data, &out, &["--num-classes", "2", "--probe", s(&junk)]));
    assert!(e.contains("libjunk.so") && e.contains("cannot load"), "{e}");
    // The loader's own reason follows dlopen's bare "dlopen failed".
    let reason = e.split("dlopen failed").nth(1).unwrap_or("");
    assert!(reason.contains("ELF") || reason.contains("too short"), "{e}");
    assert!(common::files_under(&out).is_empty(), "{:?}", common::files_under(&out));
}

#[test]
fn info_says_whether_checksums_were_hashed_now_or_trusted() {
    let dir = common::copy_fixture("tiny");
    let b = s(dir.path()).to_string();
    let info = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["info", "--model", &b]);
        cli(&args)
    };
    let first = info(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(text.contains("checksums verified now"), "{text}");
    // A flipped byte in a weights file, size and date kept.
    let path = dir.path().join("decoder_head.onnx.data");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
    let second = info(&[]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(text.contains("verified earlier (size and date unchanged") && text.contains("--verify-all"), "{text}");
    assert!(!text.contains("checksums verified now"), "{text}");
    let e = stderr(&info(&["--verify-all"]));
    assert!(e.contains("decoder_head.onnx.data is corrupt"), "{e}");
    let help = String::from_utf8_lossy(&cli(&["--help"]).stdout).into_owned();
    assert!(help.contains("--verify-all") && help.contains("modification date"), "{help}");
}

#[test]
fn steps_help_says_what_small_counts_give() {
    let help = String::from_utf8_lossy(&cli(&["generate", "--help"]).stdout).into_owned();
    assert!(help.contains("N - K + 1") && help.contains("gives N frames"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    // tiny has 4 codebooks: 5 steps are too few for the delay pattern (5 frames), 12 give 12 - 4 + 1.
    for (steps, frames) in [("5", 5), ("6", 3), ("12", 9)] {
        let codes = dir.path().join(format!("codes{steps}.npy"));
        let out = dir.path().join(format!("o{steps}.wav"));
        succeeded(&["generate", "--model", &m, "--text", "x", "--steps", steps, "--output", s(&out), "--save-codes", s(&codes)]);
        assert_eq!(common::npy::<i64>(&codes).shape()[2], frames, "--steps {steps}");
    }
}

#[test]
fn extract_counts_short_and_non_finite_tracks_and_warns_of_truncated_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for class in ["Jazz", "Rock"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
    }
    let good = tone(16000, 1.5);
    float_wav(&data.join("Jazz/good.wav"), 16000, &good, good.len());
    let short = tone(16000, 0.4);
    float_wav(&data.join("Jazz/short.wav"), 16000, &short, short.len());
    let mut nan = tone(16000, 1.5);
    nan[777] = f32::NAN;
    float_wav(&data.join("Rock/nan.wav"), 16000, &nan, nan.len());
    let cut = tone(16000, 1.2);
    float_wav(&data.join("Rock/cut.wav"), 16000, &cut, 2 * cut.len());
    let out: PathBuf = dir.path().join("out");
    let o = succeeded(&[
        "extract", "--model", &model(), "--data-dir", s(&data), "--output-dir", s(&out), "--segment-seconds", "1", "--min-seconds", "1",
        "--steps", "4",
    ]);
    let (stdout, e) = (String::from_utf8_lossy(&o.stdout).into_owned(), stderr(&o));
    assert!(stdout.contains("2 segments extracted") && stdout.contains("2 tracks unusable"), "{stdout}\n{e}");
    assert!(e.contains("skipped Jazz/short.wav") && e.contains("lasts 0.40 s") && e.contains("--min-seconds"), "{e}");
    assert!(e.contains("skipped Rock/nan.wav") && e.contains("sample 777") && e.contains("NaN"), "{e}");
    assert!(e.contains("cut.wav is truncated") && e.contains(&format!("promises {}", 2 * cut.len())) && e.contains(&format!("{} were read", cut.len())), "{e}");
    let merged: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("segments.json")).unwrap()).unwrap();
    let items: Vec<&str> = merged.as_array().unwrap().iter().map(|r| r["item"].as_str().unwrap()).collect();
    assert_eq!(items, vec!["Jazz/good.wav", "Rock/cut.wav"]);
    assert_no_temporaries(dir.path());
}

#[test]
fn decoder_lens_with_prompts_and_concepts_is_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lens");
    let m = fixture("tiny");
    let e = refused(&["decoder-lens", "--model", m.to_str().unwrap(), "--text", "x", "--concepts", "jazz", "--output-dir", out.to_str().unwrap()]);
    assert!(e.contains("give prompts or concepts, not both") && !e.contains("loaded"), "{e}");
    assert!(!out.exists());
}

/// A file the tool wrote that no longer reads back is named as damaged, with what to do, not as
/// the user's invalid input: a sweep's plan.json and an extraction's items.json, read by `--status`.
#[test]
fn a_damaged_run_file_is_named_with_what_to_do() {
    let bin = env!("CARGO_BIN_EXE_musicgen-interp");
    let dir = tempfile::tempdir().unwrap();
    for (file, args) in [("plan.json", vec!["intervene", "--status"]), ("items.json", vec!["extract", "--status", "--output-dir"])] {
        std::fs::write(dir.path().join(file), b"{\"pairs\": [").unwrap();
        let out = std::process::Command::new(bin).args(&args).arg(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(file) && err.contains("is damaged") && err.contains("delete it and run again") && !err.contains("invalid input"), "{err}");
    }
}
