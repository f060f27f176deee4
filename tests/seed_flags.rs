//! The seeds' flags as their users spell them: each seed spelling resolves (`--dry-run`: the
//! command's settings as the run would use them, printed before anything loads) to the same settings
//! as this tool's spelling, and a different value resolves differently (the comparison can fail).

use std::process::Command;

/// `--dry-run ARGS`: (success, stdout, stderr).
fn dry(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).arg("--dry-run").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn resolved(args: &[&str]) -> String {
    let (ok, stdout, stderr) = dry(args);
    assert!(ok, "{args:?}: {stderr}");
    assert!(!stdout.trim().is_empty(), "{args:?} printed nothing");
    stdout
}

/// The seed's command line and ours resolve alike, contain `expect`, and `other` (ours with another
/// value) resolves differently.
fn same(seed: &[&str], ours: &[&str], expect: &str, other: &[&str]) {
    let (a, b) = (resolved(seed), resolved(ours));
    assert_eq!(a, b, "seed {seed:?} vs ours {ours:?}");
    assert!(a.contains(expect), "{seed:?} resolved without {expect:?}: {a}");
    assert_ne!(resolved(other), b, "{other:?} should resolve differently from {ours:?}");
}

const JUDGE: [&str; 4] = ["--judge-model", "j.onnx", "--judge-labels", "l.csv"];

fn intervene<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["intervene", "--output-dir", "out"];
    v.extend(JUDGE);
    v.extend(extra);
    v
}

#[test]
fn seed_b_intervene_flags() {
    let m = ["--model", "m"];
    // --fixed_concept takes the paper's index (2 = trumpet); -1 means every concept.
    same(&intervene(&[&m[..], &["--fixed_concept", "2"]].concat()), &intervene(&[&m[..], &["--fixed-concept", "trumpet"]].concat()), "\"trumpet\"", &intervene(&[&m[..], &["--fixed-concept", "violin"]].concat()));
    same(&intervene(&[&m[..], &["--fixed_concept", "-1"]].concat()), &intervene(&m), "fixed_concept: None", &intervene(&[&m[..], &["--fixed-concept", "0"]].concat()));
    // --model_size small is the hub id facebook/musicgen-small as --model.
    same(&intervene(&["--model_size", "small"]), &intervene(&["--model", "facebook/musicgen-small"]), "facebook/musicgen-small", &intervene(&["--model-size", "medium"]));
    same(
        &intervene(&[&m[..], &["--n_prompts_per_concept", "7"]].concat()),
        &intervene(&[&m[..], &["--n-prompts-per-concept", "7"]].concat()),
        "n_prompts_per_concept: 7",
        &intervene(&[&m[..], &["--n-prompts-per-concept", "8"]].concat()),
    );
    // The seed's bare --pre_computed_means: the means cached in the output folder.
    same(
        &intervene(&[&m[..], &["--pre_computed_means"]].concat()),
        &intervene(&[&m[..], &["--pre-computed-means", "out/means"]].concat()),
        "\"out/means\"",
        &intervene(&m),
    );
    same(&intervene(&[&m[..], &["--save_extremes"]].concat()), &intervene(&[&m[..], &["--save-extremes"]].concat()), "save_extremes: true", &intervene(&m));
}

#[test]
fn seed_b_gpus_is_the_device() {
    let base = intervene(&["--model", "m"]);
    let with = |flags: &[&str]| -> Vec<String> { flags.iter().chain(base.iter()).map(|s| s.to_string()).collect() };
    let run = |v: Vec<String>| resolved(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(with(&["--gpus", "1"])), run(with(&["--device", "cuda"])));
    assert_eq!(run(with(&["--gpus", "0"])), run(with(&["--device", "cpu"])));
    assert!(run(with(&["--gpus", "2"])).starts_with("device: Cuda"));
    assert_ne!(run(with(&["--gpus", "1"])), run(with(&["--gpus", "0"])));
    let (_, _, stderr) = dry(&with(&["--gpus", "4"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stderr.contains("--gpus 4 (the seed's flag) is --device cuda here") && stderr.contains("--shard"), "{stderr}");
}

#[test]
fn seed_b_flags_elsewhere() {
    same(
        &["decoder-lens", "--model", "m", "--output-dir", "o", "--concepts", "jazz", "--n_prompts_per_concept", "3"],
        &["decoder-lens", "--model", "m", "--output-dir", "o", "--concepts", "jazz", "--n-prompts-per-concept", "3"],
        "n_prompts_per_concept: 3",
        &["decoder-lens", "--model", "m", "--output-dir", "o", "--concepts", "jazz", "--n-prompts-per-concept", "4"],
    );
    same(
        &["decoder-lens", "--model_size", "small", "--output-dir", "o"],
        &["decoder-lens", "--model", "facebook/musicgen-small", "--output-dir", "o"],
        "facebook/musicgen-small",
        &["decoder-lens", "--model-size", "large", "--output-dir", "o"],
    );
    same(
        &["concept-prompts", "--output", "p.csv", "--n_prompts_per_concept", "3"],
        &["concept-prompts", "--output", "p.csv", "--n-prompts-per-concept", "3"],
        "n_prompts_per_concept: 3",
        &["concept-prompts", "--output", "p.csv"],
    );
}

#[test]
fn seed_a_flags() {
    // --max-tokens N: N new tokens, our decoder steps.
    let gen = |extra: &[&'static str]| -> Vec<&'static str> { [&["generate", "--model", "m", "--text", "t", "--output", "o.wav"][..], extra].concat() };
    same(&gen(&["--max-tokens", "512"]), &gen(&["--steps", "512"]), "steps: Some(\n            512,", &gen(&["--steps", "511"]));
    let ext = |extra: &[&'static str]| -> Vec<&'static str> { [&["process-lewtun", "--model", "m", "--save-dir", "o"][..], extra].concat() };
    same(&ext(&["--max-tokens", "64"]), &ext(&["--steps", "64"]), "steps: 64", &ext(&[]));
    // --residual-type conditional|unconditional is our --stream cond|uncond; --loss-type cross_entropy is ce.
    let train = |extra: &[&'static str]| -> Vec<&'static str> { [&["train-probes", "--data-dir", "d", "--output-dir", "o"][..], extra].concat() };
    same(&train(&["--residual-type", "unconditional"]), &train(&["--stream", "uncond"]), "stream: Uncond", &train(&["--stream", "cond"]));
    same(&train(&["--residual-type", "conditional"]), &train(&["--stream", "cond"]), "stream: Cond", &train(&["--stream", "uncond"]));
    same(&train(&["--loss-type", "cross_entropy"]), &train(&["--loss-type", "ce"]), "loss_type: \"ce\"", &train(&["--loss-type", "mse"]));
    let eval = |extra: &[&'static str]| -> Vec<&'static str> { [&["evaluate", "--data-dir", "d", "--weights-file", "w.npy", "--output-plot", "p.png"][..], extra].concat() };
    same(&eval(&["--loss-type", "cross_entropy"]), &eval(&["--loss-type", "ce"]), "loss_type: Some(\n        \"ce\",", &eval(&[]));
    same(&eval(&["--residual-type", "unconditional"]), &eval(&["--stream", "uncond"]), "Uncond", &eval(&[]));
}

#[test]
fn bad_seed_values_are_refused_with_what_is_accepted() {
    let (ok, _, e) = dry(&intervene(&["--model", "m", "--fixed_concept", "10"]));
    assert!(!ok && e.contains("--fixed-concept 10") && e.contains("0 guitar") && e.contains("-1 for all"), "{e}");
    let (ok, _, e) = dry(&intervene(&["--model_size", "huge"]));
    assert!(!ok && e.contains("huge") && e.contains("small"), "{e}");
    let (ok, _, e) = dry(&["train-probes", "--data-dir", "d", "--output-dir", "o", "--loss-type", "hinge"]);
    assert!(!ok && e.contains("cross_entropy"), "{e}");
    let (ok, _, e) = dry(&["train-probes", "--data-dir", "d", "--output-dir", "o", "--residual-type", "both"]);
    assert!(!ok && e.contains("conditional"), "{e}");
    let (ok, _, e) = dry(&["--gpus", "1", "--device", "cpu", "plugins"]);
    assert!(!ok && e.contains("cannot be used with"), "{e}");
}
