//! Property-based fuzzing (proptest) of two parsers that read whatever a user hands them, asserting
//! an `Ok` or an `Err` and never a panic:
//! - the YAML configs (`RunConfig::parse`, and the decoder-lens, intervene and probe-pipeline
//!   configs through `config::parse_yaml`): arbitrary text, and the files in `configs/` with random
//!   edits (deleted or duplicated spans, inserted characters, numbers swapped for odd values);
//! - the audio decoder (`audio::read_bytes`): real WAV bytes (16-bit, 8-bit, 24-bit, float, stereo)
//!   with random byte flips (header fields included) and truncations, then the mix-down and
//!   resampling of whatever decodes; and random bytes behind each format's magic (WAV, MP3, FLAC,
//!   Ogg).
//!
//! Bounded for CI: 4096 cases per property by default, under a second of running on 2 cores in a
//! release build (about 10 s to compile the test); set `PROPTEST_CASES` for a longer run (200,000
//! cases per property take about 20 s: `PROPTEST_CASES=200000 cargo test --release --test fuzz`).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use musicgen_interp::config::{parse_yaml, RunConfig};

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    // Failing inputs are printed, not written into the source tree.
    Config { cases, failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

fn example_configs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    assert!(!files.is_empty(), "no example configs in {}", dir.display());
    files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

/// Every config parser on `text`: each must answer, Ok or Err.
fn parse_all(text: &str) {
    let origin = Path::new("fuzz.yaml");
    let _ = RunConfig::parse(text, origin);
    let _ = parse_yaml::<musicgen_interp::decoder_lens::DecoderLensConfig>(text, origin);
    let _ = parse_yaml::<musicgen_interp::interchange::InterveneConfig>(text, origin);
    let _ = parse_yaml::<musicgen_interp::pipeline::PipelineConfig>(text, origin);
}

/// One edit of a text: at a byte position (snapped to a character boundary).
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Duplicate(usize, usize),
    /// Replace the number at or after the position with this text.
    Number(usize, &'static str),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    let odd = prop::sample::select(vec![
        ".nan", "-.inf", ".inf", "-1", "0", "1e400", "-0", "18446744073709551616", "99999999999999999999", "0x10", "~", "[]", "{}", "\"\"",
        "!!binary aGk=", "&a 1", "*a", "1.5e-320", "- 1", "'", "\"", ":",
    ]);
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), "[ -~\\t\\n]{0,12}|\\PC{0,4}").prop_map(|(p, s)| Edit::Insert(p, s)),
        (any::<usize>(), 0usize..80).prop_map(|(p, n)| Edit::Duplicate(p, n)),
        (any::<usize>(), odd).prop_map(|(p, s)| Edit::Number(p, s)),
    ]
}

fn boundary(s: &str, p: usize) -> usize {
    let mut p = if s.is_empty() { 0 } else { p % (s.len() + 1) };
    while !s.is_char_boundary(p) {
        p -= 1;
    }
    p
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut s = text.to_string();
    match edit {
        Edit::Delete(p, n) => {
            let a = boundary(&s, *p);
            let b = boundary(&s, a + n);
            s.replace_range(a..b.max(a), "");
        }
        Edit::Insert(p, t) => s.insert_str(boundary(&s, *p), t),
        Edit::Duplicate(p, n) => {
            let a = boundary(&s, *p);
            let b = boundary(&s, a + n).max(a);
            let span = s[a..b].to_string();
            s.insert_str(b, &span);
        }
        Edit::Number(p, t) => {
            let a = boundary(&s, *p);
            if let Some(off) = s[a..].find(|c: char| c.is_ascii_digit()) {
                let start = a + off;
                let end = s[start..].find(|c: char| !(c.is_ascii_digit() || c == '.')).map_or(s.len(), |e| start + e);
                s.replace_range(start..end, t);
            }
        }
    }
    s
}

/// Real WAV files of several layouts, written by hound.
fn wavs() -> Vec<Vec<u8>> {
    use hound::{SampleFormat, WavSpec, WavWriter};
    let mut out = Vec::new();
    let specs = [(1u16, 16u16, SampleFormat::Int, 16000u32), (2, 16, SampleFormat::Int, 44100), (1, 8, SampleFormat::Int, 8000), (1, 32, SampleFormat::Float, 32000), (2, 24, SampleFormat::Int, 22050)];
    for (channels, bits, format, rate) in specs {
        let mut cursor = std::io::Cursor::new(Vec::new());
        {
            let mut w = WavWriter::new(&mut cursor, WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format: format }).unwrap();
            for i in 0..600 {
                let x = (i as f32 * 0.05).sin() * 0.5;
                for _ in 0..channels {
                    match (format, bits) {
                        (SampleFormat::Float, _) => w.write_sample(x).unwrap(),
                        (_, 8) => w.write_sample((x * 100.0) as i8).unwrap(),
                        (_, 16) => w.write_sample((x * 20000.0) as i16).unwrap(),
                        _ => w.write_sample((x * 4_000_000.0) as i32).unwrap(),
                    }
                }
            }
            w.finalize().unwrap();
        }
        out.push(cursor.into_inner());
    }
    out
}

fn decode(bytes: Vec<u8>, ext: &str) {
    let _ = musicgen_interp::audio::read_bytes(bytes, Some(ext), Path::new("fuzz"));
}

/// The seeds of the mutations are valid: each example config parses as one of the config types,
/// and each WAV decodes.
#[test]
fn the_unmutated_inputs_are_accepted() {
    let origin = Path::new("example.yaml");
    for text in example_configs() {
        let ok = RunConfig::parse(&text, origin).is_ok()
            || parse_yaml::<musicgen_interp::decoder_lens::DecoderLensConfig>(&text, origin).is_ok()
            || parse_yaml::<musicgen_interp::interchange::InterveneConfig>(&text, origin).is_ok()
            || parse_yaml::<musicgen_interp::pipeline::PipelineConfig>(&text, origin).is_ok();
        assert!(ok, "no parser accepts:\n{text}");
    }
    for bytes in wavs() {
        let audio = musicgen_interp::audio::read_bytes(bytes, Some("wav"), Path::new("seed.wav")).unwrap();
        assert_eq!(audio.frames(), 600);
    }
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn configs_from_arbitrary_text(text in "\\PC{0,200}|[a-z_:\\[\\]{}\\-,.0-9 \\n#&*!|>'\"]{0,300}") {
        parse_all(&text);
    }

    #[test]
    fn configs_with_random_edits(which in any::<prop::sample::Index>(), edits in prop::collection::vec(edit_strategy(), 1..6)) {
        let configs = example_configs();
        let mut text = which.get(&configs).clone();
        for e in &edits {
            text = apply(&text, e);
        }
        parse_all(&text);
    }

    #[test]
    fn wav_with_flipped_bytes_and_truncation(
        which in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        header_flips in prop::collection::vec((0usize..48, any::<u8>()), 0..3),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let all = wavs();
        let mut bytes = which.get(&all).clone();
        let n = bytes.len();
        for (at, x) in &flips {
            bytes[at.index(n)] ^= x;
        }
        for (at, x) in &header_flips {
            bytes[*at] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(n + 1));
        }
        // What decodes must also mix down and resample to the model's rate.
        if let Ok(audio) = musicgen_interp::audio::read_bytes(bytes, Some("wav"), Path::new("fuzz.wav")) {
            let _ = musicgen_interp::audio::window(&audio, Path::new("fuzz.wav"), 32000, 0.0, None);
        }
    }

    #[test]
    fn random_bytes_behind_each_formats_magic(
        format in 0usize..5,
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (magic, ext): (&[u8], &str) = [
            (&b"RIFF\x24\x08\x00\x00WAVEfmt "[..], "wav"),
            (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
            (b"\xff\xfb\x90\x64", "mp3"),
            (b"fLaC\x00\x00\x00\x22", "flac"),
            (b"OggS\x00\x02", "ogg"),
        ][format];
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&tail);
        decode(bytes, ext);
    }
}

