//! The paper's prompt sets, exactly as the seed enumerates them (SPEC, "Seed B, as published"):
//! - `concept-prompts` writes, for every concept, the seed's 125 prompts in its order; the expected
//!   prompts below (the 1st, 8th, 50th and 125th of two instrument and two genre concepts) are
//!   written out by hand from SPEC's lists (genres rock, pop, electronic, jazz, classical; moods
//!   emotional, passionate, groovy, energetic, happy; instruments guitar, piano, trumpet, violin,
//!   flute; tempi fast, medium, slow, slow to medium, medium to fast; an instrument concept's loops
//!   genre > mood > tempo, a genre concept's mood > instrument > tempo; hip-hop written `hiphop`);
//! - `--n-prompts-per-concept n` takes the first n; `--prompt-sampling random` keeps the earlier
//!   seeded draws; a prompt seed without random draws, and more prompts than the 125, are refused
//!   with nothing written;
//! - `intervene` and `decoder-lens` configs take the same `prompt_sampling` key; DecoderLens without
//!   prompts or concepts runs the seed's prompt.

use std::collections::BTreeMap;
use std::path::Path;

use musicgen_interp::data::concepts::{self, PromptSampling};
use musicgen_interp::decoder_lens::DecoderLensConfig;
use musicgen_interp::interchange::InterveneConfig;

/// (concept, [(1-based position, prompt)]), derived by hand from SPEC's lists.
const EXPECTED: [(&str, [(usize, &str); 4]); 4] = [
    (
        "guitar",
        [
            (1, "Compose a emotional rock piece, with a guitar melody. Use a fast tempo."),
            (8, "Compose a passionate rock piece, with a guitar melody. Use a slow tempo."),
            (50, "Compose a happy pop piece, with a guitar melody. Use a medium to fast tempo."),
            (125, "Compose a happy classical piece, with a guitar melody. Use a medium to fast tempo."),
        ],
    ),
    (
        "trumpet",
        [
            (1, "Compose a emotional rock piece, with a trumpet melody. Use a fast tempo."),
            (8, "Compose a passionate rock piece, with a trumpet melody. Use a slow tempo."),
            (50, "Compose a happy pop piece, with a trumpet melody. Use a medium to fast tempo."),
            (125, "Compose a happy classical piece, with a trumpet melody. Use a medium to fast tempo."),
        ],
    ),
    (
        "jazz",
        [
            (1, "Compose a emotional jazz piece, with a guitar melody. Use a fast tempo."),
            (8, "Compose a emotional jazz piece, with a piano melody. Use a slow tempo."),
            (50, "Compose a passionate jazz piece, with a flute melody. Use a medium to fast tempo."),
            (125, "Compose a happy jazz piece, with a flute melody. Use a medium to fast tempo."),
        ],
    ),
    (
        "hip-hop",
        [
            (1, "Compose a emotional hiphop piece, with a guitar melody. Use a fast tempo."),
            (8, "Compose a emotional hiphop piece, with a piano melody. Use a slow tempo."),
            (50, "Compose a passionate hiphop piece, with a flute melody. Use a medium to fast tempo."),
            (125, "Compose a happy hiphop piece, with a flute melody. Use a medium to fast tempo."),
        ],
    ),
];

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap()
}

/// A `text,label` prompt CSV as `concept-prompts` writes it (texts quoted; they hold a comma):
/// label -> texts, in file order; and the labels in order of first appearance.
fn read_prompt_csv(path: &Path) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("text,label"));
    let (mut by, mut order) = (BTreeMap::<String, Vec<String>>::new(), Vec::new());
    for line in lines {
        let (quoted, label) = line.rsplit_once(',').unwrap();
        let prompt = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap_or_else(|| panic!("unquoted text in {line:?}"));
        if !by.contains_key(label) {
            order.push(label.to_string());
        }
        by.entry(label.to_string()).or_default().push(prompt.to_string());
    }
    (by, order)
}

fn concept_prompts(out: &Path, extra: &[&str]) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let o = cli(&[&["concept-prompts", "--output", out.to_str().unwrap()], extra].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_prompt_csv(out)
}

#[test]
fn concept_prompt_csv_is_the_seeds_enumeration() {
    let tmp = tempfile::tempdir().unwrap();
    let (all, order) = concept_prompts(&tmp.path().join("all.csv"), &["--n-prompts-per-concept", "125"]);
    assert_eq!(order, ["guitar", "piano", "trumpet", "violin", "classical", "pop", "jazz", "rock", "electronic", "hip-hop"]);
    for (c, prompts) in &all {
        assert_eq!(prompts.len(), 125, "{c}");
        let mut distinct = prompts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 125, "{c}: every (slot, slot, slot) once");
        assert!(prompts.iter().all(|p| p.starts_with("Compose a ") && p.ends_with(" tempo.")), "{c}");
    }
    for (c, expected) in EXPECTED {
        for (position, want) in expected {
            assert_eq!(all[c][position - 1], want, "{c}: prompt {position} of 125");
        }
    }
    // Flute is among a genre concept's instruments, never an instrument concept's own; no genre
    // concept is written hip-hop.
    assert_eq!(all["rock"].iter().filter(|p| p.contains(" flute melody")).count(), 25);
    assert!(all.values().flatten().all(|p| !p.contains("hip-hop")));
    assert!(all["violin"].iter().all(|p| p.contains(" violin melody") && !p.contains("hiphop")));

    // The default: the first 100 of each; hiphop names the hip-hop concept.
    let (first, _) = concept_prompts(&tmp.path().join("default.csv"), &[]);
    for (c, prompts) in &first {
        assert_eq!(prompts[..], all[c][..100], "{c}: the first 100 of its 125");
    }
    let (hiphop, order) = concept_prompts(&tmp.path().join("hiphop.csv"), &["--concepts", "hiphop,Jazz", "--n-prompts-per-concept", "3"]);
    assert_eq!(order, ["hip-hop", "jazz"]);
    assert_eq!(hiphop["hip-hop"][..], all["hip-hop"][..3]);
}

#[test]
fn random_draws_stay_available_and_bad_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (random, _) = concept_prompts(&tmp.path().join("random.csv"), &["--prompt-sampling", "random", "--seed", "3", "--n-prompts-per-concept", "150"]);
    let (enumerated, _) = concept_prompts(&tmp.path().join("enum.csv"), &["--n-prompts-per-concept", "5"]);
    for c in concepts::all() {
        assert_eq!(random[c], concepts::random_prompts(c, 150, 3).unwrap(), "{c}");
        assert_ne!(random[c][..5], enumerated[c][..], "{c}: random draws are not the enumeration");
    }
    // The earlier default's draws, unchanged (the first draw of trumpet and of hip-hop at seed 0, as
    // written before the enumeration became the default).
    assert_eq!(concepts::prompts("trumpet", 1, PromptSampling::Random, 0).unwrap()[0], RANDOM_TRUMPET_0);
    assert_eq!(concepts::prompts("hip-hop", 1, PromptSampling::Random, 0).unwrap()[0], RANDOM_HIPHOP_0);

    for (args, want) in [
        (&["--n-prompts-per-concept", "126"][..], "the seed's enumeration has 125 per concept"),
        (&["--seed", "4"][..], "prompt_seed 4 only applies to prompt_sampling: random"),
        (&["--prompt-sampling", "shuffled"][..], "invalid value 'shuffled'"),
        (&["--concepts", "polka"][..], "unknown concept \"polka\""),
    ] {
        let out = tmp.path().join("refused.csv");
        let o = cli(&[&["concept-prompts", "--output", out.to_str().unwrap()], args].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing written");
    }
}

const RANDOM_TRUMPET_0: &str = "Compose a emotional electronic piece, with a trumpet melody. Use a slow to medium tempo.";
const RANDOM_HIPHOP_0: &str = "Compose a groovy hip-hop piece, with a guitar melody. Use a medium to fast tempo.";

#[test]
fn configs_take_the_sampling_mode_and_decoder_lens_defaults_to_the_seeds_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    // DecoderLens: the seed's prompt when none is given; the enumeration for concepts.
    let lens = DecoderLensConfig::load(&yaml("lens.yaml", "model: m\noutput: o\n")).unwrap();
    let seed_prompt = "Compose a happy rock piece with a guitar melody. Use a fast tempo.";
    assert_eq!(lens.prompt_set().unwrap(), vec![(seed_prompt.to_string(), None)]);
    let lens = DecoderLensConfig::load(&yaml("lens.yaml", "model: m\noutput: o\nconcept: rock\n")).unwrap();
    assert_eq!(lens.prompt_set().unwrap(), vec![(seed_prompt.to_string(), Some("rock"))]);
    let lens = DecoderLensConfig::load(&yaml("lens.yaml", "model: m\noutput: o\nconcepts: [jazz, guitar]\nn_prompts_per_concept: 2\n")).unwrap();
    assert_eq!(lens.prompt_sampling, PromptSampling::Enumerate);
    let texts: Vec<String> = lens.prompt_set().unwrap().into_iter().map(|p| p.0).collect();
    assert_eq!(
        texts,
        [
            "Compose a emotional jazz piece, with a guitar melody. Use a fast tempo.",
            "Compose a emotional jazz piece, with a guitar melody. Use a medium tempo.",
            "Compose a emotional rock piece, with a guitar melody. Use a fast tempo.",
            "Compose a emotional rock piece, with a guitar melody. Use a medium tempo.",
        ]
    );
    let lens = DecoderLensConfig::load(&yaml("lens.yaml", "model: m\noutput: o\nconcepts: [jazz]\nn_prompts_per_concept: 2\nprompt_sampling: random\nprompt_seed: 3\n")).unwrap();
    assert_eq!(lens.prompt_set().unwrap().into_iter().map(|p| p.0).collect::<Vec<_>>(), concepts::random_prompts("jazz", 2, 3).unwrap());
    for (body, want) in [
        ("concepts: [jazz]\nconcept: jazz\n", "concept names the concept of your own prompts"),
        ("concepts: [jazz]\nprompt_seed: 3\n", "prompt_seed 3 only applies to prompt_sampling: random"),
        ("concepts: [jazz]\nn_prompts_per_concept: 200\n", "has 125 per concept"),
    ] {
        let lens = DecoderLensConfig::load(&yaml("lens.yaml", &format!("model: m\noutput: o\n{body}"))).unwrap();
        let err = lens.prompt_set().unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
    let err = DecoderLensConfig::load(&yaml("lens.yaml", "model: m\noutput: o\nprompt_sampling: shuffled\n")).unwrap_err().to_string();
    assert!(err.contains("prompt_sampling") && err.contains("line 3"), "{err}");

    // intervene: the key, its default, and the early refusal (before any model or judge loads).
    let judge = "judge:\n  settings: {}\n";
    let ic = InterveneConfig::load(&yaml("ic.yaml", &format!("model: m\noutput: o\n{judge}"))).unwrap();
    assert_eq!(ic.prompt_sampling, PromptSampling::Enumerate);
    let ic = InterveneConfig::load(&yaml("ic.yaml", &format!("model: m\noutput: o\nprompt_sampling: random\nprompt_seed: 2\n{judge}"))).unwrap();
    assert_eq!((ic.prompt_sampling, ic.prompt_seed), (PromptSampling::Random, 2));
    assert_eq!(ic.concepts().unwrap().len(), 10);
    let ic = InterveneConfig::load(&yaml("ic.yaml", &format!("model: m\noutput: o\nn_prompts_per_concept: 126\n{judge}"))).unwrap();
    assert!(ic.concepts().unwrap_err().to_string().contains("has 125 per concept"));
}
