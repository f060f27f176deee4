//! Each sub-command lists only the flags that apply to it: the runtime flags (how the graphs run)
//! appear under the commands that load a model and not under those that never do, and they are
//! still taken before the sub-command name by every command, as scripts give them.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const RUNTIME_FLAGS: [&str; 7] = ["--device", "--threads", "--plain-graphs", "--ort-lib", "--no-spin", "--verify-all", "--gpus"];

#[test]
fn commands_without_a_model_list_no_runtime_flags() {
    for command in ["train-probes", "evaluate", "concept-prompts", "plugins"] {
        let text = help(&[command]);
        for flag in RUNTIME_FLAGS {
            assert!(!text.contains(flag), "{command} --help lists {flag}:\n{text}");
        }
        assert!(text.contains("--dry-run"), "{command} --help lacks --dry-run:\n{text}");
    }
}

#[test]
fn commands_that_load_a_model_list_them() {
    for command in ["generate", "info", "inspect", "extract", "process-lewtun", "probe-pipeline", "decoder-lens", "intervene", "run", "bench", "compare"] {
        let text = help(&[command]);
        for flag in RUNTIME_FLAGS {
            assert!(text.contains(flag), "{command} --help lacks {flag}:\n{text}");
        }
    }
    assert!(help(&[]).contains("--device"), "the top-level help lacks --device");
}

#[test]
fn runtime_flags_go_before_any_command_and_after_a_model_command() {
    let bin = env!("CARGO_BIN_EXE_musicgen-interp");
    let dry = |args: &[&str]| Command::new(bin).arg("--dry-run").args(args).output().unwrap();
    let before = dry(&["--device", "cpu", "train-probes", "--data-dir", "d", "--output-dir", "o"]);
    assert!(before.status.success() && String::from_utf8_lossy(&before.stdout).starts_with("device: Cpu"), "{}", String::from_utf8_lossy(&before.stderr));
    let after = dry(&["train-probes", "--data-dir", "d", "--output-dir", "o", "--device", "cpu"]);
    assert!(!after.status.success(), "train-probes took --device after its name");
    let gen = ["generate", "--model", "m", "--text", "t", "--output", "o.wav"];
    let (a, b) = (dry(&[&["--device", "cpu"][..], &gen].concat()), dry(&[&gen[..], &["--device", "cpu"]].concat()));
    assert!(a.status.success() && b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).starts_with("device: Cpu"));
    // --gpus on one side of the name and --device on the other conflict, as on one side.
    let both = dry(&[&["--gpus", "1"][..], &gen, &["--device", "cpu"]].concat());
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("cannot be used with"), "{}", String::from_utf8_lossy(&both.stderr));
}
