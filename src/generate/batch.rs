//! How many rows a sweep generates per forward: a number the user gives, or `auto`, sized to the
//! free memory of the device the decoder runs on.
//!
//! The rule for `auto` ([`choose`]), stated once:
//!
//! - **A row's memory** is what the decoder keeps for it over a whole generation, counted from the
//!   bundle's sizes: the self-attention cache (`2 x layers x heads x head_dim x positions`) and the
//!   cross-attention keys and values (`2 x layers x heads x head_dim x text tokens`) in the bundle's
//!   dtype, plus one forward's activations (`positions x (4 x d_model + ffn_dim)` float32, the
//!   widest a layer holds at once) and its logits (`codebooks x vocab` float32); all of it twice
//!   under classifier-free guidance (a conditional and an unconditional row).
//! - **The memory it may use** is half of what is free now, after the model loaded: on CUDA the
//!   device's free memory (`cudaMemGetInfo`), on the CPU provider the host's available memory
//!   (`MemAvailable`). The other half is left for onnxruntime's arena, which grows in large steps,
//!   and for cuBLAS / cuDNN workspaces.
//! - **The batch** is that memory over a row's, at least 1 and at most the cap: 64 on CUDA (past it a
//!   musicgen-small step is compute-bound, so more rows stop paying), 8 on the CPU provider, whose
//!   matrix products are compute-bound from a few rows on; and never more rows than the work has.
//!
//! Batching never changes a number: every row draws from its own random stream
//! (`GenerationRequest::row_streams`) and every clip is decoded and judged alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::model::MusicGen;

/// Rows per forward: `auto` ([`choose`]) or a fixed number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchSize {
    #[default]
    Auto,
    Rows(usize),
}

impl FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(BatchSize::Auto),
            n => match n.parse::<usize>() {
                Ok(0) => Err("must be 1 or more, or auto".into()),
                Ok(n) => Ok(BatchSize::Rows(n)),
                Err(_) => Err(format!("{n:?} is not a number of rows or auto")),
            },
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Auto => f.write_str("auto"),
            BatchSize::Rows(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for BatchSize {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            BatchSize::Auto => s.serialize_str("auto"),
            BatchSize::Rows(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Rows(u64),
            Word(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Rows(n) => n.to_string().parse(),
            Raw::Word(w) => w.parse(),
        };
        parsed.map_err(|e| serde::de::Error::custom(format!("batch size: {e}")))
    }
}

/// What one generation needs per row, from the bundle's sizes.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Decoder positions of the whole generation (prompt + steps).
    pub positions: usize,
    /// Text tokens of the longest prompt.
    pub text_tokens: usize,
    /// Classifier-free guidance: two decoder rows per prompt.
    pub guided: bool,
}

impl Shape {
    /// A generation of `positions` positions from `prompts` (the longest sets the text tokens).
    pub fn of(model: &MusicGen, prompts: &[&str], positions: usize, guided: bool) -> Result<Shape> {
        let (_, mask) = model.text.tokenize(prompts)?;
        Ok(Shape { positions, text_tokens: mask.ncols(), guided })
    }
}

/// Largest rows per forward `auto` picks on CUDA and on the CPU provider.
pub const CUDA_CAP: usize = 64;
pub const CPU_CAP: usize = 8;

/// The batch `auto` chose, and why (printed by the commands).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub rows: usize,
    pub why: String,
}

/// Bytes the decoder holds for one prompt over a generation of `shape` (both rows under guidance).
pub fn bytes_per_row(model: &MusicGen, shape: Shape) -> u64 {
    let c = &model.decoder.config;
    let kv = model.decoder.dtype().bytes() as u64;
    let width = (c.num_heads * c.head_dim) as u64;
    let layers = c.num_layers as u64;
    let cache = 2 * layers * width * shape.positions as u64 * kv;
    let cross = 2 * layers * width * shape.text_tokens as u64 * kv;
    let activations = shape.positions as u64 * (4 * c.d_model + c.ffn_dim) as u64 * 4;
    let logits = (c.num_codebooks * c.vocab_size) as u64 * 4;
    let rows = if shape.guided { 2 } else { 1 };
    rows * (cache + cross + activations + logits)
}

/// The rule of this module's documentation over `free` bytes; `work` is the most rows the job has.
pub fn rule(free: Option<u64>, per_row: u64, on_host: bool, work: usize) -> Choice {
    let cap = if on_host { CPU_CAP } else { CUDA_CAP };
    let work = work.max(1);
    let (fits, memory) = match free {
        Some(free) => ((free / 2 / per_row.max(1)) as usize, format!("{} free", crate::model::device::bytes(free))),
        None => (cap, "free memory unknown".to_string()),
    };
    let rows = fits.clamp(1, cap).min(work);
    let limit = if rows == work && work < fits.min(cap) {
        "the work's size"
    } else if fits < cap {
        "memory"
    } else {
        "the cap"
    };
    let device = if on_host { "host" } else { "device" };
    Choice {
        rows,
        why: format!(
            "batch size auto: {rows} row{} ({memory} on the {device}, {} a row, cap {cap}; limited by {limit})",
            if rows == 1 { "" } else { "s" },
            crate::model::device::bytes(per_row)
        ),
    }
}

/// `size` resolved for a job of `work` rows shaped `shape`: the given number, or `auto`'s
/// [`rule`] over the decoder's free memory now.
pub fn choose(model: &MusicGen, size: BatchSize, shape: Shape, work: usize) -> Result<Choice> {
    match size {
        BatchSize::Rows(0) => Err(Error::Input("batch size must be 1 or more".into())),
        BatchSize::Rows(n) => Ok(Choice { rows: n, why: format!("batch size {n} (given)") }),
        BatchSize::Auto => Ok(rule(model.decoder.free_memory(), bytes_per_row(model, shape), model.decoder.state_on_host(), work)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_auto_and_refuses_the_rest() {
        assert_eq!("auto".parse::<BatchSize>(), Ok(BatchSize::Auto));
        assert_eq!("16".parse::<BatchSize>(), Ok(BatchSize::Rows(16)));
        assert!("0".parse::<BatchSize>().unwrap_err().contains("1 or more"));
        assert!("-3".parse::<BatchSize>().is_err());
        assert!("big".parse::<BatchSize>().unwrap_err().contains("auto"));
        let y: BatchSize = serde_yaml::from_str("auto").unwrap();
        assert_eq!(y, BatchSize::Auto);
        let y: BatchSize = serde_yaml::from_str("12").unwrap();
        assert_eq!(y, BatchSize::Rows(12));
        assert!(serde_yaml::from_str::<BatchSize>("0").is_err());
        assert_eq!(serde_yaml::to_string(&BatchSize::Rows(5)).unwrap().trim(), "5");
        assert_eq!(serde_yaml::to_string(&BatchSize::Auto).unwrap().trim(), "auto");
    }

    #[test]
    fn the_rule_is_half_the_free_memory_over_a_row_within_the_cap_and_the_work() {
        let gib = 1u64 << 30;
        // 40 GiB free, 1 GiB a row: 20 rows fit; CUDA's cap is 64.
        let c = rule(Some(40 * gib), gib, false, 1000);
        assert_eq!(c.rows, 20, "{}", c.why);
        assert!(c.why.contains("limited by memory"), "{}", c.why);
        // Plenty of memory: the cap.
        assert_eq!(rule(Some(1000 * gib), gib, false, 1000).rows, CUDA_CAP);
        assert_eq!(rule(Some(1000 * gib), gib, true, 1000).rows, CPU_CAP);
        // Less work than fits: the work.
        let c = rule(Some(1000 * gib), gib, false, 6);
        assert_eq!(c.rows, 6);
        assert!(c.why.contains("the work's size"), "{}", c.why);
        // Not even one row fits: still one (the run fails the way a batch of one would).
        assert_eq!(rule(Some(gib), 4 * gib, false, 10).rows, 1);
        // Free memory unknown: the cap.
        assert_eq!(rule(None, gib, true, 100).rows, CPU_CAP);
    }
}
