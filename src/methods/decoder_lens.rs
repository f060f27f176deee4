//! DecoderLens (ISMIR 2024, seed B 1), run through the `decoder-lens` method plugin:
//! - for each layer k = 1..L, every prompt is generated with the decoder exited after layer k (one
//!   WAV per prompt and layer, fixed seed);
//! - the self-similarity of layers: cosine similarity between the time-averaged residual streams
//!   after each layer (the full model's generation, conditional rows), averaged over prompts
//!   (`self_similarity.npy` + PNG);
//! - with a judge: per layer, how highly the classifier ranks the prompt's concept in the early-exit
//!   clip (NDCG; `ndcg.csv`, `ndcg_by_layer.csv`, `ndcg.png`);
//! - optionally the original DecoderLens over the text encoder: the decoder cross-attends to text
//!   encoder layer j (through its final LayerNorm) instead of the last, one WAV per prompt and j.
//!
//! Prompts: your own, or the paper's prompt sets of some concepts (the seed's enumeration by
//! default, see `data::concepts`), or with neither the seed's DecoderLens prompt, [`SEED_PROMPT`].

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array3, Axis};
use serde::{Deserialize, Serialize};

use crate::data::concepts::{self, PromptSampling};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerationRequest};
use crate::hooks::{Hooks, Reduction, ResidualCapture};
use crate::judge::{ndcg, Judge, JudgeConfig};
use crate::model::MusicGen;
use crate::plugin::builtin;
use crate::store::{write_atomic, write_npy};

/// The prompt of the seed's DecoderLens (`decoderlens_main.py`), run when no prompt and no concept
/// set is given.
pub const SEED_PROMPT: &str = "Compose a happy rock piece with a guitar melody. Use a fast tempo.";

fn default_prompts() -> usize {
    concepts::DEFAULT_PROMPTS_PER_CONCEPT
}
fn default_duration() -> f64 {
    4.0
}

/// A DecoderLens run (the `decoder-lens` command's flags, or its YAML config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderLensConfig {
    /// Bundle folder, checkpoint folder or hub id.
    pub model: String,
    /// Prompts of your own (then `concept` names their concept, for NDCG)...
    #[serde(default)]
    pub prompts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<String>,
    /// ... or the paper's prompt sets of these concepts; with neither, the seed's prompt
    /// ([`SEED_PROMPT`], its concept `concept` if given).
    #[serde(default)]
    pub concepts: Vec<String>,
    /// Prompts per concept (default 100).
    #[serde(default = "default_prompts")]
    pub n_prompts_per_concept: usize,
    /// `enumerate` (default): the seed's enumeration, the first n of 125; `random`: seeded draws.
    #[serde(default)]
    pub prompt_sampling: PromptSampling,
    /// Seed of the random prompt draws (default 0; `random` only).
    #[serde(default)]
    pub prompt_seed: u64,
    /// Seconds per clip (default 4).
    #[serde(default = "default_duration")]
    pub duration: f64,
    /// Sampling seed (default 0); unset top_k / temperature / guidance_scale take the bundle's.
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
    /// Also run the original DecoderLens over the text encoder's layers.
    #[serde(default)]
    pub text_layers: bool,
    /// Prompts generated together: a number, or `auto` (the default: sized to the device's free
    /// memory, [`crate::generate::batch`]). The outputs do not depend on it.
    #[serde(default)]
    pub batch_size: crate::generate::BatchSize,
    /// The classifier for NDCG (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeConfig>,
    pub output: PathBuf,
}

impl DecoderLensConfig {
    /// The sampling settings it gives: `seed`, `top_k`, `temperature`, `guidance_scale`.
    pub fn sampling_overrides(&self) -> crate::generate::SamplingOverrides {
        crate::generate::SamplingOverrides { seed: self.seed, top_k: self.top_k, temperature: self.temperature, guidance_scale: self.guidance_scale }
    }

    pub fn load(path: &Path) -> Result<DecoderLensConfig> {
        let mut config: DecoderLensConfig = crate::config::load_yaml(path)?;
        if let Some(judge) = config.judge.as_mut() {
            judge.origin = Some(crate::judge::JudgeConfig::origin_in(path));
        }
        Ok(config)
    }

    /// The prompts and their concepts (checked).
    pub fn prompt_set(&self) -> Result<Vec<(String, Option<&'static str>)>> {
        if self.prompts.is_empty() && self.concepts.is_empty() {
            let concept = self.concept.as_deref().map(concepts::concept).transpose()?;
            return Ok(vec![(SEED_PROMPT.to_string(), concept)]);
        }
        if !self.prompts.is_empty() {
            if !self.concepts.is_empty() {
                return Err(Error::Input("give prompts or concepts, not both".into()));
            }
            let concept = self.concept.as_deref().map(concepts::concept).transpose()?;
            if self.prompts.iter().any(|p| p.trim().is_empty()) {
                return Err(Error::Input("empty text prompt".into()));
            }
            return Ok(self.prompts.iter().map(|p| (p.clone(), concept)).collect());
        }
        if self.concept.is_some() {
            return Err(Error::Input("concept names the concept of your own prompts (or of the seed's prompt); with concepts, each prompt set has its own".into()));
        }
        concepts::check_prompt_settings(self.n_prompts_per_concept, self.prompt_sampling, self.prompt_seed)?;
        let mut out = Vec::new();
        for c in &self.concepts {
            let c = concepts::concept(c)?;
            out.extend(concepts::prompts(c, self.n_prompts_per_concept, self.prompt_sampling, self.prompt_seed)?.into_iter().map(|p| (p, Some(c))));
        }
        Ok(out)
    }

    /// The concepts a judge must know.
    pub fn judged_concepts(&self) -> Result<Vec<&'static str>> {
        let mut c: Vec<&'static str> = self.prompt_set()?.into_iter().filter_map(|p| p.1).collect();
        c.sort();
        c.dedup();
        Ok(c)
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct LensReport {
    /// `[layers, layers]`.
    pub self_similarity: Array2<f32>,
    /// Mean NDCG per decoder exit layer, `[l]`: exit after `blocks.{l}` (0-based), if judged.
    pub ndcg_by_layer: Option<Vec<f64>>,
    /// Mean NDCG per text-encoder layer, if run and judged.
    pub ndcg_by_text_layer: Option<Vec<f64>>,
    pub clips: usize,
    /// How the batch size was chosen.
    pub batch: String,
}

fn clip_name(n_prompts: usize, prompt: usize, what: &str, k: usize) -> String {
    if n_prompts == 1 { format!("{what}_{k:02}.wav") } else { format!("prompt{prompt:03}_{what}_{k:02}.wav") }
}

/// Runs DecoderLens; `judge` scores NDCG when given.
pub fn run(model: &mut MusicGen, mut judge: Option<&mut Judge>, config: &DecoderLensConfig, mut progress: impl FnMut(&str)) -> Result<LensReport> {
    let prompts = config.prompt_set()?;
    let man = model.manifest().clone();
    let steps = crate::api::steps_for(&man, None, Some(config.duration))?;
    let sampling = config.sampling_overrides().resolve(&man.generation);
    let texts: Vec<&str> = prompts.iter().map(|p| p.0.as_str()).collect();
    let shape = crate::generate::batch::Shape::of(model, &texts, steps + 1, sampling.guided())?;
    let chosen = crate::generate::batch::choose(model, config.batch_size, shape, prompts.len())?;
    let batch_size = chosen.rows;
    if let Some(j) = judge.as_deref_mut() {
        j.check_clip(crate::api::clip_samples(&man, steps), man.audio.sample_rate)?;
    }
    let out = &config.output;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    write_atomic(&out.join("decoder_lens.resolved.yaml"), serde_yaml::to_string(config).expect("yaml").as_bytes())?;
    let mut csv = String::from("prompt,concept,text\n");
    for (i, (p, c)) in prompts.iter().enumerate() {
        csv.push_str(&format!("{i},{},\"{p}\"\n", c.unwrap_or("")));
    }
    write_atomic(&out.join("prompts.csv"), csv.as_bytes())?;

    let layers = model.decoder.num_layers();
    let rate = man.audio.sample_rate;
    let n = prompts.len();
    // Residual means of the full model (for the self-similarity), conditional rows: [layers, prompts, d].
    let mut means = Array3::<f32>::zeros((layers, n, man.decoder.d_model));
    let mut ndcg_rows = String::from("variant,layer,prompt,concept,ndcg\n");
    let mut ndcg_layer: Vec<Vec<f64>> = vec![Vec::new(); layers];
    let text_layers = if config.text_layers { man.text_encoder.num_layers } else { 0 };
    let mut ndcg_text: Vec<Vec<f64>> = vec![Vec::new(); text_layers];
    let runs: Vec<(&str, usize)> = (1..=layers).map(|k| ("layer", k)).chain((1..=text_layers).map(|j| ("text_layer", j))).collect();
    let lens_method = builtin::Method::open(builtin::DECODER_LENS)?;
    for (what, k) in runs {
        let mut codes = Vec::new();
        for (b, batch) in prompts.chunks(batch_size).enumerate() {
            let first = b * batch_size;
            progress(&format!("{what} {k}: prompts {first}..{} of {n}", first + batch.len()));
            let request = GenerationRequest {
                prompts: batch.iter().map(|p| p.0.clone()).collect(),
                max_new_tokens: steps,
                sampling: sampling.clone(),
                row_streams: Some((first as u64..(first + batch.len()) as u64).collect()),
                text_layer: (what == "text_layer").then_some(k),
                ..Default::default()
            };
            let exit = if what == "layer" { k } else { layers };
            let mut lens = lens_method.create(&builtin::DecoderLens { exit_after: exit })?;
            let full = what == "layer" && k == layers;
            let mut capture = ResidualCapture::new(layers, Reduction::Mean);
            let mut hooks: Vec<&mut dyn Hooks> = vec![&mut lens];
            if full {
                hooks.push(&mut capture);
            }
            let g = generate(model, &request, &mut hooks, |_, _| {})?;
            drop(hooks);
            if full {
                let r = capture.result()?;
                // Points: embed, then each layer's output; rows: conditional first.
                for l in 0..layers {
                    for row in 0..batch.len() {
                        means.slice_mut(s![l, first + row, ..]).assign(&r.slice(s![l + 1, row, ..]));
                    }
                }
            }
            if what == "layer" {
                codes.push(g.codes.clone());
            }
            for row in 0..batch.len() {
                let wave = model.encodec.decode(g.codes.slice(s![row..row + 1, .., ..]))?;
                let samples: Vec<f32> = wave.slice(s![0, 0, ..]).to_vec();
                // Files and CSVs name layers 0-based: layer_00 exits after blocks.0, text_layer_00
                // conditions on the first T5 block's output.
                crate::audio::write_wav(&out.join(clip_name(n, first + row, what, k - 1)), &samples, rate)?;
                let (Some(j), Some(concept)) = (judge.as_deref_mut(), batch[row].1) else { continue };
                let probs = j.probabilities(ndarray::ArrayView2::from_shape((1, samples.len()), &samples).expect("one row"), rate)?;
                let score = ndcg(probs.row(0), j.concept_labels(concept));
                ndcg_rows.push_str(&format!("{what},{},{},{concept},{score:.6}\n", k - 1, first + row));
                if what == "layer" { ndcg_layer[k - 1].push(score) } else { ndcg_text[k - 1].push(score) }
            }
        }
        if what == "layer" {
            // Every prompt's codes of this exit, [prompts, codebooks, frames], whatever the batches.
            let views: Vec<_> = codes.iter().map(|c| c.view()).collect();
            let all = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Internal(format!("codes of one exit differ in shape: {e}")))?;
            write_npy(&out.join(format!("codes_layer_{:02}.npy", k - 1)), &all)?;
        }
    }

    let sim = self_similarity(&means);
    write_npy(&out.join("self_similarity.npy"), &sim)?;
    write_npy(&out.join("residual_means.npy"), &means)?;
    if layers >= 2 {
        // Row and column l: blocks.{l}.hook_resid_post (0-based); colours on the fixed [-1, 1].
        crate::plot::heatmap(
            &out.join("self_similarity.png"),
            "cosine similarity of time-averaged layer outputs",
            "cosine similarity",
            sim.view(),
            crate::plot::ColourRange::default(),
        )?;
    }

    let judged = judge.is_some() && prompts.iter().any(|p| p.1.is_some());
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (by_layer, by_text) = if judged {
        write_atomic(&out.join("ndcg.csv"), ndcg_rows.as_bytes())?;
        let by_layer: Vec<f64> = ndcg_layer.iter().map(mean).collect();
        let by_text: Vec<f64> = ndcg_text.iter().map(mean).collect();
        let mut csv = String::from("variant,layer,ndcg_mean,clips\n");
        for (k, v) in by_layer.iter().enumerate() {
            csv.push_str(&format!("layer,{k},{v:.6},{}\n", ndcg_layer[k].len()));
        }
        for (j, v) in by_text.iter().enumerate() {
            csv.push_str(&format!("text_layer,{j},{v:.6},{}\n", ndcg_text[j].len()));
        }
        write_atomic(&out.join("ndcg_by_layer.csv"), csv.as_bytes())?;
        plot_ndcg(&out.join("ndcg.png"), &by_layer, &by_text)?;
        (Some(by_layer), config.text_layers.then_some(by_text))
    } else {
        (None, None)
    };
    Ok(LensReport { self_similarity: sim, ndcg_by_layer: by_layer, ndcg_by_text_layer: by_text, clips: n * (layers + text_layers), batch: chosen.why })
}

/// Cosine similarity between layers of `[layers, prompts, d]`, averaged over prompts.
pub fn self_similarity(means: &Array3<f32>) -> Array2<f32> {
    let (layers, n, _) = means.dim();
    let mut sim = Array2::<f32>::zeros((layers, layers));
    for p in 0..n {
        let m = means.index_axis(Axis(1), p);
        let norms: Vec<f32> = m.rows().into_iter().map(|r| r.dot(&r).sqrt().max(1e-12)).collect();
        for a in 0..layers {
            for b in 0..layers {
                sim[[a, b]] += m.row(a).dot(&m.row(b)) / (norms[a] * norms[b]) / n as f32;
            }
        }
    }
    sim
}

/// NDCG against layer, 0-based as in the files and CSVs: `by_layer[l]` exits after decoder layer
/// `l`, `by_text[j]` conditions on text-encoder layer `j`'s output.
pub fn plot_ndcg(path: &Path, by_layer: &[f64], by_text: &[f64]) -> Result<()> {
    use crate::plot::{Marker, Panel, Series, LINE_COLOURS};
    let line = |v: &[f64]| v.iter().enumerate().map(|(i, &x)| (i as f64, x)).collect::<Vec<_>>();
    let mut series = vec![Series::new("decoder: exit after layer", line(by_layer), LINE_COLOURS[0]).marker(Marker::Circle)];
    if !by_text.is_empty() {
        series.push(Series::new("text encoder: condition on layer", line(by_text), LINE_COLOURS[1]).marker(Marker::Square).dashed(true));
    }
    let mut panel = Panel::new("NDCG of the prompt's concept by layer (DecoderLens)", "mean NDCG");
    panel.y_range = Some((0.0, 1.0));
    panel.x_desc = "layer (0-based)".into();
    crate::plot::png(path, (900, 420), |root| crate::plot::by_layer(&root, &panel, &series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_similarity_is_cosine_averaged_over_prompts() {
        // Two layers, two prompts: parallel vectors for prompt 0, orthogonal for prompt 1.
        let m = Array3::from_shape_vec((2, 2, 2), vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 0.0]).unwrap();
        let s = self_similarity(&m);
        assert!((s[[0, 0]] - 1.0).abs() < 1e-6 && (s[[1, 1]] - 1.0).abs() < 1e-6);
        assert!((s[[0, 1]] - 0.5).abs() < 1e-6 && (s[[1, 0]] - 0.5).abs() < 1e-6);
    }
}
