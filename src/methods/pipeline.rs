//! The probe workflow end to end, from one YAML file (`musicgen-interp probe-pipeline CONFIG.yaml`):
//! extract residuals of a labelled dataset -> train one probe per layer -> evaluate on the saved
//! split -> steer towards a class with the trained probe's directions -> report what moved, plain
//! clips against steered ones with the same seeds: the probe's own reading (circular by
//! construction: the direction added is the probe's, so it reads as a sanity check of the wiring,
//! not as evidence) and, when `steer.judge` names one, an independent audio classifier's probability
//! of the target class on the decoded clips. Each stage writes into its own sub-folder of `output`;
//! extraction resumes, the other stages are quick and rerun.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis};
use serde::{Deserialize, Serialize};

use crate::data::{scan_folder, LabelMap, Shard};
use crate::error::{Error, Result};
use crate::extract::{ExtractSettings, DEFAULT_PROMPT};
use crate::generate::{generate, GenerationRequest, SamplingOverrides};
use crate::hooks::{Hooks, Reduction, ResidualCapture};
use crate::model::MusicGen;
use crate::plugin::builtin;
use crate::probe::{Stream, TrainOptions};
use crate::store::write_atomic;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub model: String,
    /// Labelled audio: class sub-folders or labels.csv.
    pub data_dir: PathBuf,
    /// `name=id,...` (default: the seed's four genres).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    pub output: PathBuf,
    #[serde(default)]
    pub extract: ExtractStage,
    #[serde(default)]
    pub train: TrainStage,
    pub steer: SteerStage,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractStage {
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_reduction")]
    pub reduction: Reduction,
    #[serde(default = "default_prompt")]
    pub prompt_template: String,
    #[serde(default = "ten")]
    pub segment_seconds: f64,
    #[serde(default)]
    pub seed: u64,
    /// Segments generated together: a number, or `auto` (the default).
    #[serde(default)]
    pub batch_size: crate::generate::BatchSize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    #[serde(default = "mse")]
    pub loss: String,
    #[serde(default)]
    pub epochs: Option<u64>,
    #[serde(default = "default_probe")]
    pub probe: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerStage {
    pub target_class: usize,
    /// Layers to steer; empty = the best layer of the evaluation.
    #[serde(default)]
    pub layers: Vec<usize>,
    pub strengths: Vec<f32>,
    #[serde(default = "one")]
    pub period: u64,
    #[serde(default)]
    pub offset: u64,
    pub prompts: Vec<String>,
    #[serde(default = "default_steer_steps")]
    pub steps: usize,
    #[serde(default)]
    pub seed: u64,
    /// An audio classifier to judge the plain and steered clips by (the `judge:` block of
    /// `intervene`); its concept for the target class is the class's name in `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::judge::JudgeConfig>,
}

fn default_steps() -> usize {
    50
}
fn default_steer_steps() -> usize {
    100
}
fn default_reduction() -> Reduction {
    Reduction::Mean
}
fn default_prompt() -> String {
    DEFAULT_PROMPT.into()
}
fn ten() -> f64 {
    10.0
}
fn mse() -> String {
    "mse".into()
}
fn default_probe() -> String {
    crate::plugin::builtin::LINEAR_PROBE.into()
}
fn one() -> u64 {
    1
}

impl Default for ExtractStage {
    fn default() -> Self {
        ExtractStage { steps: default_steps(), reduction: default_reduction(), prompt_template: default_prompt(), segment_seconds: ten(), seed: 0, batch_size: Default::default() }
    }
}

impl Default for TrainStage {
    fn default() -> Self {
        TrainStage { loss: mse(), epochs: None, probe: default_probe() }
    }
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<PipelineConfig> {
        let mut config: PipelineConfig = crate::config::load_yaml(path)?;
        if let Some(judge) = config.steer.judge.as_mut() {
            use crate::config::Seg;
            judge.origin = Some(crate::config::Origin::new(path, &[Seg::Key("steer".into()), Seg::Key("judge".into()), Seg::Key("settings".into())]));
        }
        Ok(config)
    }
}

/// What steering moved, per steered layer: plain clips (`before`) against steered clips with the
/// same seeds (`after`).
#[derive(Clone, Debug, Serialize)]
pub struct SteeringEffect {
    pub layer: usize,
    /// Share of clips the steering probe itself puts in the target class (circular: its own
    /// direction was added).
    pub probe_target_share_before: f64,
    pub probe_target_share_after: f64,
    /// The judge's mean probability of the target class over the clips, if a judge is configured.
    pub judge_target_probability_before: Option<f64>,
    pub judge_target_probability_after: Option<f64>,
}

/// The probe's class for each clip at `layer`: residual (conditional row, mean over positions),
/// L2-normalised, scored with `W[layer]`.
fn classify(capture: &ResidualCapture, weights: &Array3<f32>, layer: usize, clips: usize) -> Result<Vec<usize>> {
    let r = capture.result()?; // [points, rows, d]; point 0 is the embedding
    let w = weights.index_axis(Axis(0), layer);
    Ok((0..clips)
        .map(|c| {
            let x = r.index_axis(Axis(0), layer + 1).index_axis(Axis(0), c).to_owned();
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            let scores = w.dot(&x.mapv(|v| v / norm).into_dimensionality::<ndarray::Ix1>().expect("vector"));
            crate::generate::sampling::argmax(scores.view())
        })
        .collect())
}

/// Runs every stage; returns the steering effect per steered layer. `_ort_library` is unused since plugins get the runtime through the host information (ABI 4); a
/// judge plugin that runs its own graphs.
pub fn run(model: &mut MusicGen, config: &PipelineConfig, _ort_library: &Path, mut say: impl FnMut(String)) -> Result<Vec<SteeringEffect>> {
    let out = &config.output;
    let labels = match &config.labels {
        Some(spec) => LabelMap::parse(spec)?,
        None => LabelMap::default(),
    };
    let num_classes = labels.num_classes();
    let s = &config.steer;
    if s.target_class >= num_classes {
        return Err(Error::Input(format!("steer.target_class {} is outside the {num_classes} classes", s.target_class)));
    }
    // The judge loads before any work, so a judge that cannot judge the target fails early.
    let target_name = labels.0.iter().find(|(_, &id)| id == s.target_class as i64).map(|(n, _)| n.clone());
    let mut judge = match &s.judge {
        Some(j) => {
            let name = target_name.clone().ok_or_else(|| Error::Input(format!("steer.judge: class {} has no name in the label map", s.target_class)))?;
            let concept = crate::data::concepts::concept(&name)?;
            Some((crate::judge::Judge::load(j, &[concept])?, concept))
        }
        None => None,
    };
    if let Some((j, _)) = judge.as_mut() {
        let man = model.manifest();
        j.check_clip(crate::api::clip_samples(man, s.steps), man.audio.sample_rate)?;
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    write_atomic(&out.join("pipeline.resolved.yaml"), serde_yaml::to_string(config).expect("yaml").as_bytes())?;

    // 1. extract (resumable)
    let scan = scan_folder(&config.data_dir, &labels)?;
    let defaults = model.manifest().generation.clone();
    let e = &config.extract;
    // The pipeline's stages set only the seed; the rest is the bundle's.
    let sampling = SamplingOverrides { seed: e.seed, ..Default::default() }.resolve(&defaults);
    let settings = ExtractSettings {
        model: config.model.clone(),
        segment_seconds: e.segment_seconds,
        min_seconds: 2.0,
        prompt_template: e.prompt_template.clone(),
        steps: e.steps,
        reduction: e.reduction,
        guidance_scale: sampling.guidance_scale,
        top_k: sampling.top_k,
        temperature: sampling.temperature,
        seed: sampling.seed,
    };
    let ext_dir = out.join("extract");
    let report = crate::extract::extract(model, &scan, &ext_dir, &settings, Shard::ALL, e.batch_size, |_| {})?;
    for (id, why) in &report.failed {
        say(format!("extract: skipped {id}: {why}"));
    }
    let merged = crate::extract::merge(&ext_dir)?;
    say(format!("extract: {} segments ({} new)", merged.labels.len(), report.extracted));

    // 2. train
    let probe_dir = out.join("probes");
    let t = &config.train;
    let options = TrainOptions {
        num_classes,
        loss: t.loss.clone(),
        epochs: t.epochs,
        stream: Stream::Cond,
        test_fraction: 0.15,
        seed: 42,
        probe: t.probe.clone(),
    };
    crate::probe::train(&ext_dir, &probe_dir, &options, |_, _| {})?;
    let weights_path = probe_dir.join(format!("{}_weights.npy", t.loss));

    // 3. evaluate
    let ev = crate::probe::evaluate(&ext_dir, &weights_path, &crate::probe::split_path_for(&weights_path), &t.loss)?;
    crate::probe::write_evaluation(&probe_dir, &t.loss, &ev)?;
    crate::probe::plot(&probe_dir.join("evaluation.png"), &ev.metrics, &t.loss, ev.best)?;
    say(format!("evaluate: best layer {} (test accuracy {:.3})", ev.best, ev.metrics[ev.best].accuracy));

    // 4. steer with the probe's directions, and 5. measure with the probe itself and the judge
    let layers = if s.layers.is_empty() { vec![ev.best] } else { s.layers.clone() };
    let weights: Array3<f32> = crate::store::read_npy(&weights_path, "probe weights [layers, classes, d_model]")?;
    let steer_settings = builtin::Steering { weights: &weights_path, target_class: s.target_class, layers: &layers, strengths: &s.strengths, period: s.period, offset: s.offset };
    let request = GenerationRequest {
        prompts: s.prompts.clone(),
        audio_codes: None,
        max_new_tokens: s.steps,
        sampling: SamplingOverrides { seed: s.seed, ..Default::default() }.resolve(&defaults),
        ..Default::default()
    };
    let steer_dir = out.join("steer");
    std::fs::create_dir_all(&steer_dir).map_err(Error::io(&steer_dir))?;
    let n_layers = model.decoder.num_layers();
    let clips = s.prompts.len();
    let rate = model.manifest().audio.sample_rate;
    let mut run_one = |steered: bool| -> Result<(ResidualCapture, Option<f64>)> {
        let mut capture = ResidualCapture::new(n_layers, Reduction::Mean);
        let result = if steered {
            let mut plugin = builtin::method(builtin::STEERING, &steer_settings)?;
            let mut hooks: Vec<&mut dyn Hooks> = vec![&mut plugin, &mut capture];
            generate(model, &request, &mut hooks, |_, _| {})?
        } else {
            generate(model, &request, &mut capture, |_, _| {})?
        };
        let wave = model.encodec.decode(result.codes.view())?;
        let mono = wave.index_axis(Axis(1), 0);
        for c in 0..clips {
            let name = format!("{}_{c}.wav", if steered { "steered" } else { "plain" });
            crate::audio::write_wav(&steer_dir.join(name), &mono.row(c).to_vec(), rate)?;
        }
        let judged = match judge.as_mut() {
            Some((j, concept)) => {
                let probs = j.probabilities(mono, rate)?;
                Some(probs.rows().into_iter().map(|p| j.concept_probability(p, concept)).sum::<f64>() / clips as f64)
            }
            None => None,
        };
        Ok((capture, judged))
    };
    let (plain, judged_plain) = run_one(false)?;
    let (steered, judged_steered) = run_one(true)?;
    let mut effects = Vec::new();
    let mut csv = String::from(
        "layer,target_class,clips,probe_target_share_before,probe_target_share_after,judge_target_probability_before,judge_target_probability_after\n",
    );
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    let name = target_name.as_deref().unwrap_or("?");
    for &l in &layers {
        let share = |c: &ResidualCapture| -> Result<f64> {
            Ok(classify(c, &weights, l, clips)?.iter().filter(|&&p| p == s.target_class).count() as f64 / clips as f64)
        };
        let effect = SteeringEffect {
            layer: l,
            probe_target_share_before: share(&plain)?,
            probe_target_share_after: share(&steered)?,
            judge_target_probability_before: judged_plain,
            judge_target_probability_after: judged_steered,
        };
        csv.push_str(&format!(
            "{l},{},{clips},{:.4},{:.4},{},{}\n",
            s.target_class,
            effect.probe_target_share_before,
            effect.probe_target_share_after,
            cell(judged_plain),
            cell(judged_steered)
        ));
        say(format!(
            "steer: layer {l}: the steering probe itself reads class {} ({name}) in {:.0}% of plain clips, {:.0}% of steered ones (circular: its own direction was added)",
            s.target_class,
            100.0 * effect.probe_target_share_before,
            100.0 * effect.probe_target_share_after
        ));
        effects.push(effect);
    }
    match (judged_plain, judged_steered) {
        (Some(before), Some(after)) => {
            let p = |x: f64| if x == 0.0 || x >= 1e-3 { format!("{x:.4}") } else { format!("{x:.3e}") };
            say(format!("steer: the judge's mean probability of {name}: {} plain, {} steered", p(before), p(after)))
        }
        _ => say("steer: no judge configured (steer.judge): nothing independent of the probe measured the steered audio".into()),
    }
    write_atomic(&steer_dir.join("steering_report.csv"), csv.as_bytes())?;
    write_atomic(&steer_dir.join("steering_report.json"), serde_json::to_string_pretty(&effects).expect("json").as_bytes())?;
    Ok(effects)
}
