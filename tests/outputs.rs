//! What a command leaves behind when it cannot do what was asked: hook points the model does not have,
//! unusable steering weights, outputs that cannot be written, a plugin that does not load, Ctrl-C,
//! and temporaries of killed runs. Each case checks the exit status, the message's key words, and
//! that no output or temporary file is left.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{files_under as files, fixture};

fn cli_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).current_dir(dir).args(["--device", "cpu"]).args(args).output().unwrap()
}

fn fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn model() -> String {
    fixture("tiny").display().to_string()
}

/// Steering weights `[layers, 4, d_model]`, with `nan` at [0, 2, 5] when asked.
fn weights(path: &Path, layers: usize, nan: bool) {
    let d = common::load("tiny").decoder.config.d_model;
    let mut w = ndarray::Array3::<f32>::from_elem((layers, 4, d), 0.1);
    if nan {
        w[[0, 2, 5]] = f32::NAN;
    }
    musicgen_interp::store::write_npy(path, &w).unwrap();
}

#[test]
fn a_hook_point_past_the_last_layer_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = common::load("tiny").decoder.num_layers();
    // Weights with more layers than the model: the plugin's own check passes, the model's must not.
    let w = tmp.path().join("w.npy");
    weights(&w, layers + 3, false);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let err = fails(&cli_in(
        tmp.path(),
        &[
            "generate", "--model", &model(), "--text", "jazz", "--steps", "6", "--output", "out/clip.wav", "--steering-weights", "w.npy",
            "--target-class", "2", "--target-layers", &(layers + 1).to_string(), "--layer-strengths", "0.5",
        ],
    ));
    let want = format!("blocks.{}.hook_resid_post", layers + 1);
    assert!(err.contains("plugin steering") && err.contains(&want) && err.contains(&format!("blocks.0 to blocks.{}", layers - 1)), "{err}");
    assert!(files(&out).is_empty(), "{:?}", files(&out));
}

#[test]
fn steering_weights_with_nan_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w.npy");
    weights(&w, 2, true);
    let err = fails(&cli_in(
        tmp.path(),
        &[
            "generate", "--model", &model(), "--text", "jazz", "--steps", "6", "--output", "clip.wav", "--steering-weights", "w.npy",
            "--target-class", "2", "--target-layers", "0", "--layer-strengths", "0.5",
        ],
    ));
    assert!(err.contains("non-finite") && err.contains("layer 0, class 2, index 5") && !err.contains("is zero"), "{err}");
    assert!(!tmp.path().join("clip.wav").exists());
}

#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    // /proc takes no new files, even for root (whom permission bits do not stop).
    for (args, what) in [
        (vec!["--output", "/proc/clip.wav"], "/proc/clip.wav"),
        (vec!["--output", "clip.wav", "--save-codes", "/proc/codes.npy"], "/proc/codes.npy"),
        (vec!["--output", "."], "is a folder"),
    ] {
        let m = model();
        let mut all = vec!["generate", "--model", m.as_str(), "--text", "jazz", "--steps", "6"];
        all.extend(args);
        let err = fails(&cli_in(tmp.path(), &all));
        assert!(err.contains(what) && !err.contains("loaded"), "{err}");
        assert!(files(tmp.path()).is_empty(), "{:?}", files(tmp.path()));
    }
}

#[test]
fn every_command_checks_its_outputs_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let pipeline = tmp.path().join("pipeline.yaml");
    let yaml = format!("model: {}\ndata_dir: data\noutput: /proc/out\nsteer:\n  target_class: 0\n  strengths: [1]\n  prompts: [a]\n", model());
    std::fs::write(&pipeline, yaml).unwrap();
    let m = model();
    let d = data.to_str().unwrap();
    let p = pipeline.to_str().unwrap();
    let commands: [&[&str]; 7] = [
        &["extract", "--model", &m, "--data-dir", d, "--output-dir", "/proc/out"],
        &["train-probes", "--data-dir", d, "--output-dir", "/proc/out", "--num-classes", "2"],
        &["evaluate", "--data-dir", d, "--weights-file", "w.npy", "--num-classes", "2", "--output-plot", "/proc/out.png"],
        &["concept-prompts", "--output", "/proc/out.csv"],
        &["intervene", "--model", &m, "--concepts", "guitar,piano", "--judge-model", "c.onnx", "--judge-labels", "l.csv", "--output-dir", "/proc/out"],
        &["decoder-lens", "--model", &m, "--concepts", "jazz", "--n-prompts-per-concept", "1", "--output-dir", "/proc/out"],
        &["probe-pipeline", p],
    ];
    for args in commands {
        let err = fails(&cli_in(tmp.path(), args));
        // Refused for the output, before the data, the judge or the model are read.
        assert!(err.contains("cannot write /proc/out") && !err.contains("loaded"), "{args:?}: {err}");
        assert_eq!(files(tmp.path()), ["pipeline.yaml"], "{args:?}");
    }
}

#[test]
fn staged_outputs_appear_together_or_not_at_all() {
    use musicgen_interp::store::Staged;
    let tmp = tempfile::tempdir().unwrap();
    // A later output that cannot be written: the earlier one is not left alone.
    let mut staged = Staged::new();
    staged.stage(&tmp.path().join("new/clip.wav"), b"wav").unwrap();
    std::fs::write(tmp.path().join("file"), b"").unwrap();
    assert!(staged.stage(&tmp.path().join("file/codes.npy"), b"npy").is_err());
    drop(staged);
    // ... nor the folder created for it.
    assert_eq!(files(tmp.path()), ["file"]);
    assert!(!tmp.path().join("new").exists(), "the folder made for an output that was dropped is left");
    std::fs::remove_file(tmp.path().join("file")).unwrap();
    // Nothing appears under its final name before commit; everything after.
    let mut staged = Staged::new();
    staged.stage(&tmp.path().join("a.wav"), b"a").unwrap();
    staged.stage(&tmp.path().join("b.npy"), b"b").unwrap();
    assert!(!tmp.path().join("a.wav").exists());
    staged.commit().unwrap();
    assert_eq!(files(tmp.path()), ["a.wav", "b.npy"]);
}

#[test]
fn create_new_writes_once_whoever_races() {
    use musicgen_interp::store::create_new;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run/plan.json");
    // Eight writers at once: exactly one wins, and the file holds its bytes whole.
    let wins: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|i| {
            let path = path.clone();
            s.spawn(move || create_new(&path, format!("writer {i}").as_bytes()).unwrap())
        }).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    let winner = wins.iter().position(|w| *w).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("writer {winner}"));
    // No temporaries are left beside it, and a later writer changes nothing.
    assert_eq!(files(tmp.path()), ["run/plan.json"]);
    assert!(!create_new(&path, b"late").unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("writer {winner}"));
}

#[test]
fn outputs_in_missing_folders_create_them() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model();
    let args = ["generate", "--model", m.as_str(), "--text", "jazz", "--steps", "6", "--output", "runs/a/clip.wav", "--save-codes", "runs/b/codes.npy"];
    let out = cli_in(tmp.path(), &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(files(tmp.path()), ["runs/a/clip.wav", "runs/b/codes.npy"]);
    // A file where a folder must go is refused before the model loads.
    std::fs::write(tmp.path().join("taken"), b"").unwrap();
    let err = fails(&cli_in(tmp.path(), &["generate", "--model", m.as_str(), "--text", "jazz", "--steps", "6", "--output", "taken/clip.wav"]));
    assert!(err.contains("taken is a file, not a folder") && !err.contains("loaded"), "{err}");
}

#[test]
fn run_with_a_plugin_that_does_not_load_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("run.yaml");
    std::fs::write(&config, format!("model: {}\nprompts: [a]\noutput: out\nplugins:\n  - plugin: no-such-plugin\n", model())).unwrap();
    let err = fails(&cli_in(tmp.path(), &["run", "run.yaml"]));
    assert!(err.contains("no-such-plugin"), "{err}");
    assert!(!tmp.path().join("out").exists(), "the output folder was created");
    // And with a missing model: nothing either, and no exporter starts.
    std::fs::write(&config, "model: no/such-model-here\nprompts: [a]\noutput: out\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .current_dir(tmp.path())
        .args(["--device", "cpu", "run", "run.yaml"])
        .env("HF_HUB_OFFLINE", "1")
        .env("MUSICGEN_INTERP_MODELS", tmp.path().join("models"))
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(!tmp.path().join("out").exists() && !tmp.path().join("models").exists());
}

#[test]
fn a_config_runs_from_any_working_folder() {
    // Paths in the config are relative to its own folder.
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("configs");
    std::fs::create_dir_all(&sub).unwrap();
    let bundle = tmp.path().join("bundle");
    std::os::unix::fs::symlink(fixture("tiny"), &bundle).unwrap();
    std::fs::write(sub.join("run.yaml"), "model: ../bundle\nprompts: [a]\nsteps: 6\noutput: ../runs/x\n").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = cli_in(elsewhere.path(), &["run", sub.join("run.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tmp.path().join("runs/x/clip.wav").is_file() && tmp.path().join("runs/x/config.resolved.yaml").is_file());
    assert!(files(elsewhere.path()).is_empty());
}

#[test]
fn stale_temporaries_of_dead_runs_are_cleaned_and_live_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    // A pid above the kernel's limit never runs; this test's own pid is alive.
    let dead = tmp.path().join(".clip.wav.tmp-4194305");
    let alive = tmp.path().join(format!(".other.npy.tmp-{}", std::process::id()));
    std::fs::write(&dead, b"half a file").unwrap();
    std::fs::write(&alive, b"being written").unwrap();
    let out = cli_in(tmp.path(), &["generate", "--model", &model(), "--text", "jazz", "--steps", "6", "--output", "clip.wav"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dead.exists() && alive.exists());
    assert_eq!(files(tmp.path()).iter().filter(|f| f.contains(".tmp-")).count(), 1);
}

#[test]
fn ctrl_c_exits_130_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .current_dir(tmp.path())
        .args(["--device", "cpu", "generate", "--model", &model(), "--text", "jazz", "--steps", "1500", "--output", "clip.wav", "--save-codes", "codes.npy"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the model is loaded and decoding has begun.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("loaded") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "ended before loading: {seen}");
        seen.push_str(&line);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: kill takes plain integers and touches no memory; the pid is this test's own child,
    // not yet waited for, so it cannot have been reused.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let stderr = format!("{seen}{rest}");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(files(tmp.path()).is_empty(), "{:?}", files(tmp.path()));
}
