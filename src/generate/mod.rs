//! The generation loop: delay pattern, classifier-free guidance, seeded sampling, audio-prompt
//! continuation, with hooks active on every forward. Matches transformers' `generate` token for token
//! under greedy decoding.

pub mod batch;
pub mod delay;
pub mod sampling;

use std::time::{Duration, Instant};

use ndarray::{concatenate, s, Array3, Axis};

pub use batch::BatchSize;
pub use delay::DelayPattern;
pub use sampling::{Sampler, SamplingConfig, SamplingOverrides};

use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::device::Traffic;
use crate::model::MusicGen;

/// What to generate.
#[derive(Clone, Debug, Default)]
pub struct GenerationRequest {
    /// One text prompt per batch row.
    pub prompts: Vec<String>,
    /// Audio-prompt codes `[batch, codebooks, frames]` to continue (from EnCodec), if any.
    pub audio_codes: Option<Array3<i64>>,
    /// Decoder steps after the prompt (`N` steps give `N - codebooks + 1` new frames; a sequence
    /// too short for the delay pattern, under `2 * codebooks - 1` positions, is kept undelayed and
    /// gives `N` frames).
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// The random stream each batch row draws from (default: row `i` draws stream `i`). Rows given
    /// the same stream draw the same random numbers, so two runs of one prompt that differ only by
    /// an intervention differ by the intervention, not by sampling noise, whatever their batch.
    pub row_streams: Option<Vec<u64>>,
    /// The sampling seed of each batch row (default: `sampling.seed` for every row): rows generated
    /// together draw what each would draw generated alone with its own seed.
    pub row_seeds: Option<Vec<u64>>,
    /// Condition on the text encoder's layer `j` (1-based, through its final LayerNorm) instead of
    /// its last layer: the original DecoderLens over the encoder. `None` is the normal model.
    pub text_layer: Option<usize>,
}

/// What came out.
#[derive(Clone, Debug)]
pub struct Generation {
    /// `[batch, codebooks, frames]` with the delay pattern undone (audio prompt frames included).
    pub codes: Array3<i64>,
    /// The delayed sequence `[batch, codebooks, length]` the decoder saw.
    pub sequence: Array3<i64>,
    /// Decoder forwards run.
    pub steps: usize,
    pub decode_time: Duration,
    /// Bytes each forward moved between the host and the decoder's memory (the GPU's, under CUDA),
    /// the prefill first; the decoder's set-up (cross-attention keys and values, encoder mask, zero
    /// edits) is in `setup_traffic`.
    pub traffic: Vec<Traffic>,
    pub setup_traffic: Traffic,
}

/// Runs a generation with `hooks` on every forward; `progress(step, total)` after each step. A hook
/// that asks for an early exit ([`Hooks::exit_after`], the DecoderLens plugin) gets one.
pub fn generate(
    model: &mut MusicGen,
    request: &GenerationRequest,
    hooks: &mut dyn Hooks,
    progress: impl FnMut(usize, usize),
) -> Result<Generation> {
    let layers = hooks.exit_after().unwrap_or(model.decoder.num_layers());
    generate_early_exit(model, request, layers, hooks, progress)
}

/// A generation whose decoder exits after its first `layers` layers at every step (DecoderLens):
/// the final LayerNorm and the heads read that layer's residual, and the sampled tokens are fed back.
pub fn generate_early_exit(
    model: &mut MusicGen,
    request: &GenerationRequest,
    layers: usize,
    hooks: &mut dyn Hooks,
    mut progress: impl FnMut(usize, usize),
) -> Result<Generation> {
    let b = request.prompts.len();
    if b == 0 {
        return Err(Error::Input("no prompt given".into()));
    }
    let model_layers = model.decoder.num_layers();
    hooks.check_points(model_layers)?;
    if layers == 0 || layers > model_layers {
        return Err(Error::Input(format!("cannot exit after {layers} layers: the model has layers 1 to {model_layers} to exit after")));
    }
    if request.max_new_tokens == 0 {
        return Err(Error::Input("nothing to generate: max_new_tokens is 0".into()));
    }
    let sampling = &request.sampling;
    let streams = match &request.row_streams {
        Some(s) if s.len() != b => return Err(Error::Input(format!("{} row streams for {b} prompts", s.len()))),
        Some(s) => s.clone(),
        None => (0..b as u64).collect(),
    };
    let seeds = match &request.row_seeds {
        Some(s) if s.len() != b => return Err(Error::Input(format!("{} row seeds for {b} prompts", s.len()))),
        Some(s) => s.clone(),
        None => Vec::new(),
    };
    let mut sampler = Sampler::with_rows(sampling.clone(), &seeds, &streams)?;
    let cfg = model.decoder.config.clone();
    let k = cfg.num_codebooks;

    // Undelayed decoder prompt: the start token, then any audio-prompt frames.
    let start = Array3::from_elem((b, k, 1), cfg.bos_token_id);
    let prompt = match &request.audio_codes {
        None => start,
        Some(codes) => {
            if codes.shape()[0] != b || codes.shape()[1] != k {
                return Err(Error::Input(format!("audio codes {:?} do not fit {b} prompts x {k} codebooks", codes.shape())));
            }
            concatenate(Axis(2), &[start.view(), codes.view()]).expect("same batch and codebooks")
        }
    };
    let max_length = prompt.shape()[2].saturating_add(request.max_new_tokens);
    if max_length > cfg.max_position_embeddings {
        return Err(Error::Input(format!(
            "{max_length} decoder positions (prompt {} + {} steps) exceed the model's position table of {}; ask for a shorter clip",
            prompt.shape()[2],
            request.max_new_tokens,
            cfg.max_position_embeddings
        )));
    }
    let pattern = DelayPattern::new(prompt.view(), cfg.pad_token_id, max_length)?;

    let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
    let text = model.text.encode(&prompts)?;
    let states = match request.text_layer {
        None => text.last_hidden_state.view(),
        Some(j) => {
            let layers = text.normed_hidden_states.shape()[0] - 1;
            if j == 0 || j > layers {
                return Err(Error::Input(format!("text encoder layer {j} does not exist: it has layers 1..={layers}")));
            }
            text.normed_hidden_states.index_axis(Axis(0), j)
        }
    };
    let mut state = if sampling.guided() {
        model.decoder.start_guided(states, text.attention_mask.view())?
    } else {
        model.decoder.start(states, text.attention_mask.view(), 0..b)?
    };
    model.decoder.reserve(&mut state, max_length)?;
    let setup_traffic = state.traffic();
    let mut traffic = Vec::new();
    let copies = state.rows() / b;

    let mut seq = Array3::<i64>::from_elem((b, k, max_length), cfg.pad_token_id);
    let first = pattern.first_predicted();
    seq.slice_mut(s![.., .., ..first]).assign(&pattern.prompt_ids());
    let total = max_length - first;
    let started = Instant::now();
    let mut pos = first;
    let mut steps = 0;
    while pos < max_length {
        let from = state.past_len();
        let input = seq.slice(s![.., .., from..pos]);
        let rows = if copies == 1 { input.to_owned() } else { concatenate(Axis(0), &vec![input; copies]).expect("rows") };
        let out = model.decoder.forward_to(&mut state, rows.view(), hooks, layers)?;
        traffic.push(out.traffic);
        let last = out.logits.index_axis(Axis(2), out.logits.shape()[2] - 1);
        let logits = if sampling.guided() { sampling::guide(last, sampling.guidance_scale) } else { last.to_owned() };
        let next = sampler.sample(logits.view());
        seq.slice_mut(s![.., .., pos]).assign(&next);
        pattern.apply_at(&mut seq, pos);
        pos += 1;
        steps += 1;
        hooks.step_end(steps)?;
        progress(steps, total);
    }
    let codes = pattern.revert(&seq)?;
    Ok(Generation { codes, sequence: seq, steps, decode_time: started.elapsed(), traffic, setup_traffic })
}
