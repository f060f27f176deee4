//! Residual extraction on a synthetic labelled audio set: segments, labels, a corrupt file and an
//! unknown label handled; a run killed midway and resumed gives the same arrays as an uninterrupted
//! run; shards merged give the same arrays as one host; `extract --status` counts tracks done,
//! pending and failed (with the error) per label.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, npy};

const RATE: u32 = 16000;

fn write_wav(path: &Path, seconds: f32, f: impl Fn(f32) -> f32) {
    let spec = hound::WavSpec { channels: 1, sample_rate: RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * RATE as f32) as usize {
        w.write_sample((f(i as f32 / RATE as f32).clamp(-1.0, 1.0) * 20000.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// Three classes that differ in spectrum, two 21 s tracks each (two 10 s segments per track), a
/// corrupt file and a class outside the label map.
fn dataset(root: &Path) {
    let tone = |hz: f32| move |t: f32| (std::f32::consts::TAU * hz * t).sin() * 0.5;
    for (class, hz) in [("Classical", 220.0), ("Rock", 1800.0), ("Jazz", 660.0)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for k in 0..2 {
            write_wav(&root.join(class).join(format!("t{k}.wav")), 21.0, tone(hz * (1.0 + 0.1 * k as f32)));
        }
    }
    std::fs::write(root.join("Jazz/broken.wav"), b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    std::fs::create_dir_all(root.join("Polka")).unwrap();
    write_wav(&root.join("Polka/p.wav"), 12.0, tone(440.0));
}

fn extract_cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["--device", "cpu", "--threads", "1", "extract", "--model"])
        .arg(fixture("tiny"))
        .arg("--data-dir")
        .arg(data)
        .arg("--output-dir")
        .arg(out)
        .args(["--steps", "4", "--seed", "9"])
        .args(extra);
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn done(out: &Path) -> usize {
    std::fs::read_dir(out.join("segments"))
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "npy") && !e.file_name().to_string_lossy().starts_with('.')).count())
        .unwrap_or(0)
}

#[test]
fn extraction_labels_segments_and_reports_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    dataset(&data);
    let log = run_ok(extract_cmd(&data, &out, &[]));
    assert!(log.contains("skipped Jazz/broken.wav"), "{log}");
    assert!(log.contains("skipped 1 file(s) labelled \"Polka\""), "{log}");
    assert!(log.contains("12 segments extracted"), "{log}");
    let cond = npy::<f32>(out.join("residuals_cond.npy"));
    let uncond = npy::<f32>(out.join("residuals_uncond.npy"));
    let layers = common::load("tiny").decoder.num_layers();
    assert_eq!(cond.shape(), &[12, layers + 1, 64]);
    assert_eq!(uncond.shape(), cond.shape());
    assert_ne!(cond, uncond);
    let labels = npy::<i64>(out.join("labels.npy"));
    let mut counts = [0; 4];
    labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [4, 0, 4, 4], "Classical=0, Rock=2, Jazz=3; two segments per track");
    // The default prompt names no genre.
    let records: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("segments.json")).unwrap()).unwrap();
    assert!(records.as_array().unwrap().iter().all(|r| r["prompt"] == "Continue this music."));
    // A second run finds everything done.
    let again = run_ok(extract_cmd(&data, &out, &[]));
    assert!(again.contains("0 segments extracted, 12 already done"), "{again}");
    // Other settings into the same folder are refused rather than mixed in.
    let out2 = extract_cmd(&data, &out, &["--prompt-template", "Continue this {genre} music."]).output().unwrap();
    assert!(!out2.status.success());
    assert!(String::from_utf8_lossy(&out2.stderr).contains("other settings"));
}

#[test]
fn killed_extraction_resumes_to_the_same_arrays() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, reference, resumed) = (tmp.path().join("data"), tmp.path().join("ref"), tmp.path().join("resumed"));
    dataset(&data);
    run_ok(extract_cmd(&data, &reference, &[]));
    let mut child = extract_cmd(&data, &resumed, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while done(&resumed) < 3 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = done(&resumed);
    assert!((3..12).contains(&before), "the kill should land midway; {before} of 12 segments were done");
    assert!(!resumed.join("residuals_cond.npy").exists());
    let log = run_ok(extract_cmd(&data, &resumed, &[]));
    assert!(log.contains(&format!("{} segments extracted, {before} already done", 12 - before)), "{log}");
    for file in ["residuals_cond.npy", "residuals_uncond.npy", "labels.npy", "segments.json"] {
        assert_eq!(std::fs::read(resumed.join(file)).unwrap(), std::fs::read(reference.join(file)).unwrap(), "{file}");
    }
}

#[test]
fn shards_merge_to_what_one_host_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, one, sharded) = (tmp.path().join("data"), tmp.path().join("one"), tmp.path().join("sharded"));
    dataset(&data);
    run_ok(extract_cmd(&data, &one, &["--reduction", "mean"]));
    let a = run_ok(extract_cmd(&data, &sharded, &["--reduction", "mean", "--shard", "0/2"]));
    // Status after one shard: 7 labelled tracks (the corrupt one among them), shard 0's four
    // finished or failed, shard 1's three pending.
    let st = musicgen_interp::extract::status(&sharded).unwrap();
    assert_eq!((st.done() + st.pending(), st.done() + st.failed.len(), st.pending() - st.failed.len()), (7, 4, 3), "{st}");
    let b = run_ok(extract_cmd(&data, &sharded, &["--reduction", "mean", "--shard", "1/2"]));
    assert!(a.contains("shard 0/2 done") && b.contains("shard 1/2 done"));
    let mut status = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    status.args(["extract", "--status", "--output-dir"]).arg(&sharded);
    let shown = run_ok(status);
    // Every usable track done with its wall time recorded; the corrupt file failed, its error named.
    let st = musicgen_interp::extract::status(&sharded).unwrap();
    assert_eq!((st.done(), st.pending(), st.failed.len(), st.times.len()), (6, 1, 1, 6), "{shown}");
    assert_eq!(st.pairs.iter().find(|p| p.0 == "Jazz").map(|p| (p.1, p.2, p.3)), Some((2, 0, 1)), "{shown}");
    assert!(shown.contains("6 of 7 tracks done") && shown.contains("failed: Jazz/broken.wav") && shown.contains("estimated time to finish"), "{shown}");
    let mut merge = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    merge.args(["--device", "cpu", "extract", "--merge", "--output-dir"]).arg(&sharded);
    run_ok(merge);
    for file in ["residuals_cond.npy", "residuals_uncond.npy", "labels.npy", "segments.json"] {
        assert_eq!(std::fs::read(sharded.join(file)).unwrap(), std::fs::read(one.join(file)).unwrap(), "{file}");
    }
}

#[test]
fn a_folder_without_audio_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = extract_cmd(tmp.path(), &tmp.path().join("out"), &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no labelled audio"));
}

#[test]
fn lewtun_dataset_from_a_local_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let python = musicgen_interp::runtime::find_venv_python().expect("the project's .venv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_lewtun_cache.py");
    assert!(Command::new(python).arg(script).arg(&home).status().unwrap().success());
    let run = |out: &Path, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
        c.args(["--device", "cpu", "process-lewtun", "--model"])
            .arg(fixture("tiny"))
            .arg("--save-dir")
            .arg(out)
            .args(["--steps", "4"])
            .args(extra)
            .env("HF_HOME", &home)
            .env_remove("HF_HUB_CACHE");
        run_ok(c)
    };
    let all = tmp.path().join("all");
    let log = run(&all, &[]);
    // 6 good rows of known genres (one segment each), Pop counted, the corrupt Rock row reported.
    assert!(log.contains("6 segments extracted"), "{log}");
    assert!(log.contains("skipped 1 file(s) labelled \"Pop\""), "{log}");
    assert!(log.contains("skipped train-00001-of-00002.parquet#0000003"), "{log}");
    let mut labels: Vec<i64> = npy::<i64>(all.join("labels.npy")).iter().copied().collect();
    labels.sort();
    assert_eq!(labels, vec![0, 0, 1, 2, 3, 3], "Classical=0, Electronic=1, Rock=2, Jazz=3");
    let jazz = tmp.path().join("jazz");
    let log = run(&jazz, &["--genres", "Jazz"]);
    assert!(log.contains("2 segments extracted"), "{log}");
    let few = tmp.path().join("few");
    let log = run(&few, &["--max-samples", "3"]);
    assert!(log.contains("3 segments extracted"), "{log}");
    // Not in the cache: a clear error.
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["--device", "cpu", "process-lewtun", "--model"]).arg(fixture("tiny")).arg("--save-dir").arg(tmp.path().join("x"));
    let out = c.env("HF_HOME", tmp.path().join("empty")).env_remove("HF_HUB_CACHE").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not in the Hugging Face cache"));
}

#[test]
fn prompt_sets_extract_from_text_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("prompts.csv");
    std::fs::write(
        &set,
        "text,label\nA slow string quartet,Classical\n\"Bebop, with a walking bass\",Jazz\nDistorted guitars,Rock\nA polka,Polka\nAn organ fugue,Classical\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["--device", "cpu", "extract", "--model"]).arg(fixture("tiny")).arg("--prompts").arg(&set).arg("--output-dir").arg(&out).args(["--steps", "6"]);
    c.args(["--labels", "Classical=0,Electronic=1,Rock=2,Jazz=3"]);
    let log = run_ok(c);
    assert!(log.contains("4 segments extracted") && log.contains("skipped 1 prompt(s) labelled \"Polka\""), "{log}");
    let labels: Vec<i64> = npy::<i64>(out.join("labels.npy")).iter().copied().collect();
    assert_eq!(labels, vec![0, 3, 2, 0]);
    let records: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("segments.json")).unwrap()).unwrap();
    assert_eq!(records[1]["prompt"], "Bebop, with a walking bass");
    assert_eq!(npy::<f32>(out.join("residuals_cond.npy")).shape()[0], 4);
}

#[test]
fn concept_prompt_sets_feed_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("concepts.csv");
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["concept-prompts", "--concepts", "piano,Jazz", "--n-prompts-per-concept", "3", "--output"]).arg(&set);
    run_ok(c);
    let text = std::fs::read_to_string(&set).unwrap();
    assert_eq!(text.lines().count(), 1 + 6);
    assert!(text.lines().nth(1).unwrap().contains("with a piano melody. Use a "), "{text}");
    let out = tmp.path().join("out");
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["--device", "cpu", "extract", "--model"]).arg(fixture("tiny")).arg("--prompts").arg(&set).arg("--output-dir").arg(&out);
    c.args(["--labels", "piano=0,jazz=1", "--steps", "4"]);
    assert!(run_ok(c).contains("6 segments extracted"));
    assert_eq!(npy::<i64>(out.join("labels.npy")).iter().copied().collect::<Vec<_>>(), vec![0, 0, 0, 1, 1, 1]);
    // Without --labels the set's own labels are the classes, in order of appearance; --max-samples
    // takes them evenly across classes, not the first rows (all piano).
    let out = tmp.path().join("few");
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    c.args(["--device", "cpu", "extract", "--model"]).arg(fixture("tiny")).arg("--prompts").arg(&set).arg("--output-dir").arg(&out);
    c.args(["--max-samples", "4", "--steps", "4"]);
    let log = run_ok(c);
    assert!(log.contains("classes from the prompt set's labels: piano=0,jazz=1") && log.contains("4 segments extracted"), "{log}");
    assert_eq!(npy::<i64>(out.join("labels.npy")).iter().copied().collect::<Vec<_>>(), vec![0, 0, 1, 1]);
    let mut bad = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"));
    let e = bad.args(["concept-prompts", "--concepts", "polka", "--output"]).arg(tmp.path().join("x.csv")).output().unwrap();
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("unknown concept"));
}
