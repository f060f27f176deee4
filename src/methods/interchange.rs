//! Interchange interventions (ISMIR 2024, seed B 2), driven by the `interchange` method plugin and
//! scored by a judge plugin.
//!
//! A concept's prompts are the seed's enumeration by default (the first `n_prompts_per_concept` of
//! 125, `prompt_sampling: enumerate`; `random` draws them, seeded by `prompt_seed`), listed in
//! `prompts.csv`.
//!
//! 1. **Means.** For every concept, generate its prompts (in batches) with the plugin in `means`
//!    mode: the time-aligned mean output of every site (self-attention, cross-attention, MLP of every
//!    layer), conditional and unconditional rows apart, `[layers, 3, positions, 2, d_model]`, saved as
//!    `means/{concept}.npy` with `means/{concept}.json` saying which model, prompts and sampling made
//!    it. A cache made by another model, prompt set or sampling is refused, never reused.
//! 2. **Baseline.** Every prompt of an original concept is generated once without intervention
//!    (`baseline/{concept}/p{i}.json`: the judge's probabilities, and the WAV).
//! 3. **Interventions.** For each ordered pair (original, desired) and each prompt of the original
//!    concept, the interventions (modes x sites) are generated in batches of `batch_size` rows, all
//!    rows the same prompt and the same random stream as its baseline, so a score difference is the
//!    intervention's and not sampling noise; the judge scores every clip and each (pair, prompt,
//!    batch) is written at once to `parts/` (its scores CSV and the judge's probabilities of its
//!    clips; a finished one is never recomputed: runs resume).
//! 4. **Merge.** When every part is there: `results/{original}__{desired}.csv` (one row per prompt,
//!    mode and site), beside it what the seed saves per pair, row for row with the CSV:
//!    `{original}__{desired}_all_probs.npy` (`[rows, labels]` f32, the judge's full probability
//!    vector p1 of every intervened clip) and `{original}__{desired}_kl_divs.npy` (`[rows, labels]`
//!    f64, the per-label terms p1 (ln p1 - ln p0) of KL(p1 || p0), not summed: precision is minus
//!    their sum); the baselines once for all pairs, `results/baselines.csv` (`row,concept,prompt,text`)
//!    with `results/baseline_probabilities.npy` (`[rows, labels]` f32, p0 of each, row for row: a
//!    results row's p0 is the baseline row of its original concept and prompt); `summary.csv` (means
//!    per pair, mode and site), plots of effectiveness and precision by layer and component, and
//!    with `save_extremes` the best and worst clip per prompt.
//!
//! `--shard i/n` deals (pair, prompt) units round-robin, so hosts of a job array share a run in one
//! output folder; the merge is the same whoever runs it.
//!
//! **Sweeps.** The means are a phase of their own on a cluster ([`Interchange::means_only`],
//! `intervene --means-only`, dealt by concept with `--shard i/n`): a sharded intervention run
//! ([`MeansPolicy::for_run`]) refuses to start while a concept's means are missing, naming them,
//! unless asked to compute them itself (`--compute-means`); an unsharded run computes them inline.
//! Every finished part records its wall time beside it (`parts/PAIR/pNNNN_bNNN.time.json`, committed
//! with the part); a part that fails records its error (`pNNNN_bNNN.failed.json`) and the shard goes
//! on with its other parts. Every shard runs its own pending parts (its failed ones included) first,
//! then retries the failed parts of other shards, each claimed by renaming its `failed.json` so two
//! shards never take the same one; a part left pending by a killed shard is that shard's to rerun.
//! [`status`] (`intervene --status DIR`) reads `plan.json` and the parts: done, pending and failed
//! per pair, and an estimate of the time to finish.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ndarray::{Array2, ArrayView1, Axis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::concepts::{self, PromptSampling};
use crate::data::Shard;
use crate::error::{Error, Result};
use crate::generate::batch::{self, BatchSize};
use crate::generate::{generate, GenerationRequest, SamplingConfig};
use crate::hooks::Component;
use crate::judge::{effectiveness, precision, Judge, JudgeConfig};
use crate::model::MusicGen;
use crate::plugin::builtin;
use crate::store::{npy_writer, write_atomic, Staged};

/// How an intervention changes a site's output on the conditional rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Add `mean_desired[t] - mean_original[t]`.
    Adjust,
    /// Set the output to `mean_desired[t]`.
    Replace,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Adjust => "adjust",
            Mode::Replace => "replace",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s.trim() {
            "adjust" => Ok(Mode::Adjust),
            "replace" => Ok(Mode::Replace),
            other => Err(Error::Input(format!("unknown intervention mode {other:?}: adjust or replace"))),
        }
    }
}

/// A site: one component of one layer, named `blocks.{layer}.{attn|cross_attn|mlp}` (the SDK's
/// grammar, shared with every plugin).
pub use crate::hooks::Site;

fn default_prompts() -> usize {
    concepts::DEFAULT_PROMPTS_PER_CONCEPT
}
fn default_duration() -> f64 {
    4.0
}
fn default_modes() -> Vec<Mode> {
    vec![Mode::Adjust, Mode::Replace]
}
/// An interchange run (the `intervene` command's flags, or its YAML config). Defaults in the docs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterveneConfig {
    /// Bundle folder, checkpoint folder or hub id.
    pub model: String,
    /// Concepts taking part (default: all ten).
    #[serde(default)]
    pub concepts: Vec<String>,
    /// Only the pairs whose original concept is this one (default: all ordered pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_concept: Option<String>,
    /// Prompts per concept (default 100), from the paper's template.
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
    /// Intervention modes (default both: adjust, replace).
    #[serde(default = "default_modes")]
    pub modes: Vec<Mode>,
    /// Sites, e.g. `blocks.3.mlp` (default: all three components of every layer).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Interventions generated together in one batch (default `auto`: sized to the device's free
    /// memory, [`crate::generate::batch`]). It names the run's parts, so the run's first start fixes
    /// it in `plan.json` and every later start and shard uses that one.
    #[serde(default)]
    pub batch_size: BatchSize,
    /// Prompts per batch when computing means and baselines (default `auto`; each host its own:
    /// means and baselines do not depend on their batch).
    #[serde(default)]
    pub means_batch_size: BatchSize,
    /// A folder of concept means computed before (by a run of the same model, prompts and sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_computed_means: Option<PathBuf>,
    /// Write the best and worst intervention's audio for each prompt.
    #[serde(default)]
    pub save_extremes: bool,
    pub judge: JudgeConfig,
    pub output: PathBuf,
}

impl InterveneConfig {
    pub fn load(path: &Path) -> Result<InterveneConfig> {
        let mut config: InterveneConfig = crate::config::load_yaml(path)?;
        config.judge.origin = Some(crate::judge::JudgeConfig::origin_in(path));
        Ok(config)
    }

    /// The run's concepts, checked (an unknown one is an error naming the ten), after the prompt
    /// settings (a prompt seed without random draws, more prompts than the enumeration has).
    pub fn concepts(&self) -> Result<Vec<&'static str>> {
        concepts::check_prompt_settings(self.n_prompts_per_concept, self.prompt_sampling, self.prompt_seed)?;
        if self.concepts.is_empty() {
            return Ok(concepts::all());
        }
        self.concepts.iter().map(|c| concepts::concept(c)).collect()
    }

    /// The sampling settings it gives: `seed`, `top_k`, `temperature`, `guidance_scale`.
    pub fn sampling_overrides(&self) -> crate::generate::SamplingOverrides {
        crate::generate::SamplingOverrides { seed: self.seed, top_k: self.top_k, temperature: self.temperature, guidance_scale: self.guidance_scale }
    }

    fn sampling(&self, model: &MusicGen) -> SamplingConfig {
        self.sampling_overrides().resolve(&model.manifest().generation)
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub means_computed: usize,
    /// Concept means read from the means folder (computed before).
    pub means_loaded: usize,
    pub units_done: usize,
    pub units_skipped: usize,
    pub units_left_to_other_shards: usize,
    /// Failed parts of other shards this shard ran again (and finished).
    pub units_retried: usize,
    /// Parts that failed in this run: (part, error); each also recorded in its `failed.json`.
    pub units_failed: Vec<(String, String)>,
    /// `means_only`: concepts dealt to other shards.
    pub means_left_to_other_shards: usize,
    pub merged: bool,
}

/// Whether an intervention run may compute missing concept means itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeansPolicy {
    /// Compute missing means inline (a single host: the run does everything in one go).
    Compute,
    /// Refuse to start while a concept's means are missing (a job array: the means phase,
    /// `--means-only`, makes them once instead of every shard making them again).
    Require,
}

impl MeansPolicy {
    /// The rule: an unsharded run (`0/1`) computes missing means; a sharded one requires them,
    /// unless `compute` (`--compute-means`) asks for the inline computation.
    pub fn for_run(shard: Shard, compute: bool) -> MeansPolicy {
        if shard.count == 1 || compute {
            MeansPolicy::Compute
        } else {
            MeansPolicy::Require
        }
    }
}

/// What `plan.json` holds: the run's parts, for [`status`] (which loads no model).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub pairs: Vec<(String, String)>,
    pub concepts: Vec<String>,
    pub n_prompts: usize,
    /// Batches of interventions per (pair, prompt).
    pub batches: usize,
    pub means_dir: PathBuf,
    /// Interventions per batch, fixed by the run's first start (absent in plans of earlier
    /// versions, whose batch size the run's settings give).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// What the parts' numbers depend on (absent in plans of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunIdentity>,
}

/// What an intervention run's parts depend on, besides its pairs and prompts per concept: a start
/// whose settings give another is refused, so one output folder never mixes two runs' parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Hash of the bundle's file checksums.
    pub model: String,
    /// Hash of every concept's prompts.
    pub prompts: String,
    /// `mode site`, in the parts' row order.
    pub interventions: Vec<String>,
    /// Decoder steps per clip.
    pub steps: usize,
    pub sampling: SamplingConfig,
}

impl Plan {
    /// Reads `dir`'s plan, if a start wrote one.
    pub fn read(dir: &Path) -> Result<Option<Plan>> {
        let path = dir.join("plan.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path)(e)),
        }
    }

    /// The first difference between this plan and a start's `other`, in words.
    fn differs_from(&self, other: &Plan) -> Option<String> {
        if self.pairs != other.pairs {
            return Some("other concept pairs".into());
        }
        if self.n_prompts != other.n_prompts {
            return Some(format!("{} prompts per concept, not {}", other.n_prompts, self.n_prompts));
        }
        let (Some(have), Some(want)) = (&self.run, &other.run) else { return None };
        [
            (have.model != want.model, "another model".to_string()),
            (have.prompts != want.prompts, "another prompt set".into()),
            (have.interventions != want.interventions, "other modes or sites".into()),
            (have.steps != want.steps, format!("{} steps a clip, not {}", want.steps, have.steps)),
            (have.sampling != want.sampling, "other sampling settings".into()),
        ]
        .into_iter()
        .find_map(|(d, what)| d.then_some(what))
    }
}

/// A part's wall time (`pNNNN_bNNN.time.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartTime {
    pub seconds: f64,
    /// The shard that ran it, `i/n`.
    pub shard: String,
    /// Seconds since the Unix epoch when it finished.
    pub finished: u64,
}

/// A failed part's error (`pNNNN_bNNN.failed.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartFailure {
    pub error: String,
    pub shard: String,
    pub at: u64,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One scored intervention (a row of the results CSV).
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    pub original: String,
    pub desired: String,
    pub prompt: usize,
    pub mode: Mode,
    pub site: Site,
    pub p0_original: f64,
    pub p0_desired: f64,
    pub p1_original: f64,
    pub p1_desired: f64,
    pub effectiveness: f64,
    pub precision: f64,
}

const CSV_HEADER: &str = "original,desired,prompt,mode,site,layer,component,p0_original,p0_desired,p1_original,p1_desired,effectiveness,precision\n";

impl Score {
    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{:.8e},{:.8e},{:.8e},{:.8e},{:.8e},{:.8e}\n",
            self.original,
            self.desired,
            self.prompt,
            self.mode.name(),
            self.site,
            self.site.layer,
            self.site.component.name(),
            self.p0_original,
            self.p0_desired,
            self.p1_original,
            self.p1_desired,
            self.effectiveness,
            self.precision
        )
    }

    fn parse(line: &str) -> Result<Score> {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || Error::Input(format!("results line {line:?} is not a score row"));
        if f.len() != 13 {
            return Err(bad());
        }
        let num = |i: usize| f[i].parse::<f64>().map_err(|_| bad());
        Ok(Score {
            original: f[0].into(),
            desired: f[1].into(),
            prompt: f[2].parse().map_err(|_| bad())?,
            mode: f[3].parse()?,
            site: f[4].parse()?,
            p0_original: num(7)?,
            p0_desired: num(8)?,
            p1_original: num(9)?,
            p1_desired: num(10)?,
            effectiveness: num(11)?,
            precision: num(12)?,
        })
    }
}

fn sha(parts: impl IntoIterator<Item = String>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What a means file was made from; a cache whose metadata differs is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeansMeta {
    pub concept: String,
    /// Hash of the bundle's file checksums.
    pub model: String,
    /// Hash of the concept's prompts.
    pub prompts: String,
    pub n_prompts: usize,
    /// How the prompts were chosen (a cache from before this was recorded used random draws).
    #[serde(default = "legacy_sampling")]
    pub prompt_sampling: PromptSampling,
    pub positions: usize,
    pub sampling: SamplingConfig,
    pub layout: String,
}

fn legacy_sampling() -> PromptSampling {
    PromptSampling::Random
}

/// The random stream of prompt `i` of concept `c`: its baseline and all its interventions share it.
fn stream(concept: &str, prompt: usize) -> u64 {
    let c = concepts::all().iter().position(|x| *x == concept).unwrap_or(0) as u64;
    (c << 32) | prompt as u64
}

fn io_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))
}

fn pair_name(o: &str, d: &str) -> String {
    format!("{o}__{d}")
}

/// A run in progress: the model, the judge, the resolved settings.
pub struct Interchange<'a> {
    model: &'a mut MusicGen,
    judge: &'a mut Judge,
    config: InterveneConfig,
    pairs: Vec<(&'static str, &'static str)>,
    prompts: BTreeMap<&'static str, Vec<String>>,
    interventions: Vec<(Mode, Site)>,
    steps: usize,
    sampling: SamplingConfig,
    fingerprint: String,
    means_dir: PathBuf,
    /// Interventions per part (the plan's, or this start's choice when it writes the plan).
    batch: usize,
    /// Prompts per forward for means and baselines.
    means_batch: usize,
    /// How the batch sizes were chosen, for the command to print.
    notes: Vec<String>,
}

impl<'a> Interchange<'a> {
    /// Checks the settings against the model and the judge (unknown concepts, sites past the last
    /// layer) before anything is generated.
    pub fn new(model: &'a mut MusicGen, judge: &'a mut Judge, config: InterveneConfig) -> Result<Interchange<'a>> {
        let concepts = config.concepts()?;
        if concepts.len() < 2 {
            return Err(Error::Input("interchange needs at least two concepts".into()));
        }
        let fixed = config.fixed_concept.as_deref().map(concepts::concept).transpose()?;
        if let Some(f) = fixed {
            if !concepts.contains(&f) {
                return Err(Error::Input(format!("fixed concept {f} is not among the run's concepts ({})", concepts.join(", "))));
            }
        }
        let pairs: Vec<_> = concepts
            .iter()
            .flat_map(|&o| concepts.iter().map(move |&d| (o, d)))
            .filter(|(o, d)| o != d && fixed.is_none_or(|f| f == *o))
            .collect();
        if config.n_prompts_per_concept == 0 {
            return Err(Error::Input("n_prompts_per_concept must be positive".into()));
        }
        concepts::check_prompt_settings(config.n_prompts_per_concept, config.prompt_sampling, config.prompt_seed)?;
        if config.modes.is_empty() {
            return Err(Error::Input("no intervention mode given (adjust, replace)".into()));
        }
        let layers = model.decoder.num_layers();
        let sites: Vec<Site> = if config.sites.is_empty() {
            (0..layers).flat_map(|layer| Component::ALL.map(|component| Site { layer, component })).collect()
        } else {
            config.sites.iter().map(|s| s.parse::<Site>().map_err(Error::from)).collect::<Result<_>>()?
        };
        if let Some(s) = sites.iter().find(|s| s.layer >= layers) {
            return Err(Error::Input(format!("site {s}: the model has layers 0..{layers}")));
        }
        let mut modes = config.modes.clone();
        modes.sort();
        modes.dedup();
        let interventions = modes.iter().flat_map(|&m| sites.iter().map(move |&s| (m, s))).collect();
        let man = model.manifest();
        let steps = crate::api::steps_for(man, None, Some(config.duration))?;
        if steps + 1 > man.decoder.max_position_embeddings {
            return Err(Error::Input(format!("{} s needs {} positions; the model has {}", config.duration, steps + 1, man.decoder.max_position_embeddings)));
        }
        judge.check_clip(crate::api::clip_samples(man, steps), man.audio.sample_rate)?;
        let fingerprint = sha(man.files.iter().map(|(k, v)| format!("{k}:{}", v.sha256)));
        let prompts = concepts.iter().map(|&c| Ok((c, concepts::prompts(c, config.n_prompts_per_concept, config.prompt_sampling, config.prompt_seed)?))).collect::<Result<_>>()?;
        let sampling = config.sampling(model);
        sampling.check()?;
        let means_dir = config.pre_computed_means.clone().unwrap_or_else(|| config.output.join("means"));
        let mut run = Interchange { model, judge, config, pairs, prompts, interventions, steps, sampling, fingerprint, means_dir, batch: 0, means_batch: 0, notes: Vec::new() };
        run.choose_batches()?;
        Ok(run)
    }

    /// The batch sizes: interventions per part from the run's plan when a start wrote one (a given
    /// size that differs is refused, as is a plan of other settings), else this start's choice;
    /// prompts per forward for means and baselines on this host.
    fn choose_batches(&mut self) -> Result<()> {
        let texts: Vec<&str> = self.prompts.values().flatten().map(String::as_str).collect();
        let shape = batch::Shape::of(self.model, &texts, self.steps + 1, self.sampling.guided())?;
        let planned = Plan::read(&self.config.output)?;
        if let Some(what) = planned.as_ref().and_then(|plan| plan.differs_from(&self.plan_with(None))) {
            return Err(self.other_run(&what));
        }
        let n = self.interventions.len();
        let (rows, why) = match (planned.as_ref().and_then(|p| p.batch_size), self.config.batch_size) {
            (Some(fixed), BatchSize::Rows(given)) if given != fixed => {
                return Err(Error::Input(format!(
                    "batch size {given}: this run's parts in {} are batches of {fixed} interventions (plan.json); give batch size {fixed} or auto to resume it, or use another output folder",
                    self.config.output.display()
                )))
            }
            (Some(fixed), _) => (fixed, format!("batch size {fixed} (fixed by the run's plan.json)")),
            (None, size) => {
                let old = planned.as_ref().map(|p| p.batches);
                let c = batch::choose(self.model, size, shape, n)?;
                // A plan of an earlier version: its batch count must be this size's.
                if let Some(batches) = old.filter(|&b| b != n.div_ceil(c.rows)) {
                    return Err(Error::Input(format!(
                        "{} holds an intervention run in {batches} batches per prompt, written by an earlier version; give the batch size it ran with to resume it",
                        self.config.output.display()
                    )));
                }
                (c.rows, c.why)
            }
        };
        self.batch = rows;
        self.notes.push(format!("interventions: {why}"));
        let means = batch::choose(self.model, self.config.means_batch_size, shape, self.config.n_prompts_per_concept)?;
        self.means_batch = means.rows;
        self.notes.push(format!("means and baselines: {}", means.why));
        Ok(())
    }

    /// The refusal of a start whose settings differ (`what`) from the run's plan in the output folder.
    fn other_run(&self, what: &str) -> Error {
        Error::Input(format!(
            "{} holds an intervention run with {what} than this one; its parts would mix with this run's. Use another output folder, or this run's own settings to resume it",
            self.config.output.display()
        ))
    }

    /// How the batch sizes were chosen (one line each).
    pub fn batch_notes(&self) -> &[String] {
        &self.notes
    }

    /// Interventions per part.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn pairs(&self) -> &[(&'static str, &'static str)] {
        &self.pairs
    }

    /// Every (pair, prompt, batch) unit, in the order a single host runs them.
    fn units(&self) -> Vec<(usize, usize, usize)> {
        let n = self.config.n_prompts_per_concept;
        let chunks = self.interventions.len().div_ceil(self.batch);
        (0..self.pairs.len()).flat_map(|p| (0..n).flat_map(move |i| (0..chunks).map(move |c| (p, i, c)))).collect()
    }

    fn part_path(&self, pair: usize, prompt: usize, chunk: usize) -> PathBuf {
        let (o, d) = self.pairs[pair];
        self.config.output.join("parts").join(pair_name(o, d)).join(format!("p{prompt:04}_b{chunk:03}.csv"))
    }

    /// The judge's probabilities of a part's clips, `[rows, labels]`, row for row with its CSV.
    fn part_probs_path(&self, pair: usize, prompt: usize, chunk: usize) -> PathBuf {
        self.part_path(pair, prompt, chunk).with_extension("probs.npy")
    }

    /// A part is done when its scores and its probabilities are both there (they are committed
    /// together; a part without its probabilities is run again).
    fn part_done(&self, pair: usize, prompt: usize, chunk: usize) -> bool {
        self.part_path(pair, prompt, chunk).is_file() && self.part_probs_path(pair, prompt, chunk).is_file()
    }

    fn owns(shard: Shard, n_prompts: usize, pair: usize, prompt: usize) -> bool {
        shard.owns(pair * n_prompts + prompt)
    }

    /// The concepts whose means the run needs, in the run's order.
    fn run_concepts(&self) -> Vec<&'static str> {
        let mut cs: Vec<&'static str> = Vec::new();
        for &(o, d) in &self.pairs {
            for c in [o, d] {
                if !cs.contains(&c) {
                    cs.push(c);
                }
            }
        }
        let order = concepts::all();
        cs.sort_by_key(|c| order.iter().position(|x| x == c));
        cs
    }

    /// The plan this start would write, with `batch` interventions per part.
    fn plan_with(&self, batch: Option<usize>) -> Plan {
        Plan {
            pairs: self.pairs.iter().map(|&(o, d)| (o.to_string(), d.to_string())).collect(),
            concepts: self.run_concepts().iter().map(|c| c.to_string()).collect(),
            n_prompts: self.config.n_prompts_per_concept,
            batches: batch.map_or(0, |b| self.interventions.len().div_ceil(b)),
            means_dir: self.means_dir.clone(),
            batch_size: batch,
            run: Some(RunIdentity {
                model: self.fingerprint.clone(),
                prompts: sha(self.prompts.values().flatten().cloned()),
                interventions: self.interventions.iter().map(|(m, s)| format!("{} {s}", m.name())).collect(),
                steps: self.steps,
                sampling: self.sampling.clone(),
            }),
        }
    }

    /// `intervene.resolved.yaml`, `prompts.csv` and `plan.json` (what [`status`] reads). The plan
    /// is written once, by the run's first start (of several at once, the first to link it); a
    /// later start keeps it. A plan another start wrote since [`Self::choose_batches`] looked is
    /// checked as that was; returns false when it fixed another batch size than this start chose
    /// (this start then takes that one and must list its parts again).
    fn write_run_files(&mut self) -> Result<bool> {
        let out = &self.config.output;
        io_dir(out)?;
        write_atomic(&out.join("intervene.resolved.yaml"), serde_yaml::to_string(&self.config).expect("yaml").as_bytes())?;
        let mut csv = String::from("concept,prompt,text\n");
        for (c, ps) in &self.prompts {
            for (i, p) in ps.iter().enumerate() {
                csv.push_str(&format!("{c},{i},\"{p}\"\n"));
            }
        }
        write_atomic(&out.join("prompts.csv"), csv.as_bytes())?;
        let path = out.join("plan.json");
        let mine = self.plan_with(Some(self.batch));
        let json = serde_json::to_string_pretty(&mine).expect("json");
        let plan = match Plan::read(out)? {
            Some(old) if old.batch_size.is_some() && old.run.is_some() => old,
            // A plan of an earlier version, checked in `choose_batches`: completed with this start's.
            Some(_) => {
                write_atomic(&path, json.as_bytes())?;
                mine
            }
            None if crate::store::create_new(&path, json.as_bytes())? => mine,
            // Another start linked its plan first, after `choose_batches` looked.
            None => Plan::read(out)?.ok_or_else(|| Error::Internal(format!("{} vanished after another start wrote it", path.display())))?,
        };
        if let Some(what) = plan.differs_from(&self.plan_with(None)) {
            return Err(self.other_run(&what));
        }
        let fixed = plan.batch_size.unwrap_or(self.batch);
        if fixed != self.batch {
            if let BatchSize::Rows(given) = self.config.batch_size {
                return Err(Error::Input(format!("batch size {given}: another start of this run fixed {fixed} a moment ago (plan.json); give {fixed} or auto")));
            }
            self.notes.push(format!("interventions: batch size {fixed} (fixed by another start's plan.json a moment ago)"));
            self.batch = fixed;
            return Ok(false);
        }
        Ok(true)
    }

    /// The means phase of a sweep: computes (or checks, if cached) the means of this shard's
    /// concepts (the run's concepts in the paper's order, dealt round-robin by `--shard i/n`), into
    /// the means folder (the output's `means/`, or `pre_computed_means`). No baselines, no
    /// interventions.
    pub fn means_only(&mut self, shard: Shard, mut progress: impl FnMut(&str)) -> Result<Report> {
        self.write_run_files()?;
        let mut report = Report::default();
        for (k, c) in self.run_concepts().into_iter().enumerate() {
            if !shard.owns(k) {
                report.means_left_to_other_shards += 1;
            } else if self.check_means(c)? {
                report.means_loaded += 1;
            } else {
                self.compute_means(c, &mut progress)?;
                report.means_computed += 1;
            }
        }
        Ok(report)
    }

    /// Runs this shard's share, then merges if every unit of every shard is done; missing means
    /// are computed by an unsharded run and refused by a sharded one ([`MeansPolicy::for_run`]).
    pub fn run(&mut self, shard: Shard, progress: impl FnMut(&str)) -> Result<Report> {
        self.run_with(shard, MeansPolicy::for_run(shard, false), progress)
    }

    /// Runs this shard's pending parts (its failed ones included), then the failed parts of other
    /// shards (each claimed first), then merges if every part of every shard is done. A part that
    /// fails is recorded (`failed.json`, and in the report) and the shard goes on.
    pub fn run_with(&mut self, shard: Shard, means: MeansPolicy, mut progress: impl FnMut(&str)) -> Result<Report> {
        let mut report = Report::default();
        let n = self.config.n_prompts_per_concept;
        let units = self.units();
        let mine: Vec<_> = units.iter().copied().filter(|&(p, i, _)| Self::owns(shard, n, p, i)).collect();
        report.units_left_to_other_shards = units.len() - mine.len();
        let todo: Vec<_> = mine.iter().copied().filter(|&(p, i, c)| !self.part_done(p, i, c)).collect();
        report.units_skipped = mine.len() - todo.len();
        let foreign: Vec<_> = units
            .iter()
            .copied()
            .filter(|&(p, i, c)| !Self::owns(shard, n, p, i) && !self.part_done(p, i, c) && self.part_failed_path(p, i, c).is_file())
            .collect();

        // Means of every concept a pending unit needs: checked (or refused) before anything runs.
        let mut needed: Vec<&'static str> = todo.iter().chain(&foreign).flat_map(|&(p, _, _)| [self.pairs[p].0, self.pairs[p].1]).collect();
        needed.sort();
        needed.dedup();
        let mut missing = Vec::new();
        for &c in &needed {
            if self.check_means(c)? {
                report.means_loaded += 1;
            } else {
                missing.push(c);
            }
        }
        if let (Some(c), Some(dir)) = (missing.first(), &self.config.pre_computed_means) {
            return Err(Error::Input(format!(
                "--pre-computed-means {}: no means for concept {c} ({} missing); compute them there with `intervene --means-only`",
                dir.display(),
                self.means_paths(c).0.display()
            )));
        }
        if means == MeansPolicy::Require && !missing.is_empty() {
            return Err(Error::Input(format!(
                "no concept means for {} in {}: a sharded run does not compute them (every shard would); run the means phase first, `intervene --means-only` with this run's settings (shardable by concept with --shard i/n), or pass --compute-means to compute them in this shard",
                missing.join(", "),
                self.means_dir.display()
            )));
        }
        if !self.write_run_files()? {
            // Another start fixed the run's batch size a moment ago: list the parts in its batches.
            return self.run_with(shard, means, progress);
        }
        for c in missing {
            self.compute_means(c, &mut progress)?;
            report.means_computed += 1;
        }
        // Baselines of every prompt a pending unit needs.
        let mut prompts: Vec<(&'static str, usize)> = todo.iter().chain(&foreign).map(|&(p, i, _)| (self.pairs[p].0, i)).collect();
        prompts.sort();
        prompts.dedup();
        self.ensure_baselines(&prompts, &mut progress)?;

        let label = format!("{}/{}", shard.index, shard.count);
        for (k, &(p, i, c)) in todo.iter().enumerate() {
            let (o, d) = self.pairs[p];
            progress(&format!("{o} -> {d}, prompt {i}, batch {c} ({}/{})", k + 1, todo.len()));
            if self.attempt(p, i, c, &label, &mut report)? {
                report.units_done += 1;
            }
        }
        for &(p, i, c) in &foreign {
            // Claimed by renaming its failure record: of several shards, one gets it.
            let failed = self.part_failed_path(p, i, c);
            let claim = failed.with_extension("").with_extension("retrying.json");
            if std::fs::rename(&failed, &claim).is_err() {
                continue;
            }
            let (o, d) = self.pairs[p];
            progress(&format!("retrying {o} -> {d}, prompt {i}, batch {c} (failed in another shard)"));
            let ok = self.attempt(p, i, c, &label, &mut report);
            let _ = std::fs::remove_file(&claim);
            if ok? {
                report.units_retried += 1;
            }
        }
        if units.iter().all(|&(p, i, c)| self.part_done(p, i, c)) {
            self.merge()?;
            report.merged = true;
        }
        Ok(report)
    }

    /// Runs one part; a failure is recorded in its `failed.json` and the report (false).
    fn attempt(&mut self, p: usize, i: usize, c: usize, shard: &str, report: &mut Report) -> Result<bool> {
        let failed = self.part_failed_path(p, i, c);
        match self.run_unit(p, i, c, shard) {
            Ok(()) => {
                if failed.is_file() {
                    std::fs::remove_file(&failed).map_err(Error::io(&failed))?;
                }
                Ok(true)
            }
            Err(e) => {
                let record = PartFailure { error: e.to_string(), shard: shard.to_string(), at: now() };
                write_atomic(&failed, serde_json::to_string_pretty(&record).expect("json").as_bytes())?;
                report.units_failed.push((self.part_name(p, i, c), e.to_string()));
                Ok(false)
            }
        }
    }

    fn part_name(&self, pair: usize, prompt: usize, chunk: usize) -> String {
        let (o, d) = self.pairs[pair];
        format!("{} p{prompt:04} b{chunk:03}", pair_name(o, d))
    }

    fn part_failed_path(&self, pair: usize, prompt: usize, chunk: usize) -> PathBuf {
        self.part_path(pair, prompt, chunk).with_extension("failed.json")
    }

    fn means_paths(&self, concept: &str) -> (PathBuf, PathBuf) {
        (self.means_dir.join(format!("{concept}.npy")), self.means_dir.join(format!("{concept}.json")))
    }

    fn means_meta(&self, concept: &'static str) -> MeansMeta {
        MeansMeta {
            concept: concept.into(),
            model: self.fingerprint.clone(),
            prompts: sha(self.prompts[concept].iter().cloned()),
            n_prompts: self.config.n_prompts_per_concept,
            prompt_sampling: self.config.prompt_sampling,
            positions: self.steps,
            sampling: self.sampling.clone(),
            layout: "[layer, component (attn, cross_attn, mlp), position, cond/uncond, d_model]".into(),
        }
    }

    /// True when a concept's means are cached and were made by this model, prompt set, clip
    /// length and sampling; false when they are missing; an error when they were made otherwise.
    fn check_means(&self, concept: &'static str) -> Result<bool> {
        let (npy, json) = self.means_paths(concept);
        let want = self.means_meta(concept);
        if json.is_file() && npy.is_file() {
            let text = std::fs::read_to_string(&json).map_err(Error::io(&json))?;
            let have: MeansMeta = serde_json::from_str(&text).map_err(|e| Error::Corrupt { path: json.clone(), reason: e.to_string() })?;
            let differs = [
                (have.model != want.model, "another model"),
                (have.prompts != want.prompts || have.n_prompts != want.n_prompts || have.prompt_sampling != want.prompt_sampling, "another prompt set"),
                (have.positions != want.positions, "another clip length"),
                (have.sampling != want.sampling, "other sampling settings"),
            ];
            if let Some((_, what)) = differs.iter().find(|(d, _)| *d) {
                return Err(Error::Input(format!(
                    "the mean activations in {} were computed with {what} than this run; refusing to reuse them (use another output folder, delete them, or point --pre-computed-means at means of this model and prompt set)",
                    npy.display()
                )));
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Computes a concept's means into the means folder (a given `pre_computed_means` folder only
    /// in the means phase: an intervention run refuses one that lacks a concept).
    fn compute_means(&mut self, concept: &'static str, progress: &mut impl FnMut(&str)) -> Result<()> {
        let (npy, json) = self.means_paths(concept);
        let want = self.means_meta(concept);
        io_dir(&self.means_dir)?;
        let settings = builtin::Interchange::Means { layers: self.model.decoder.num_layers(), positions: self.steps, output: &npy };
        let mut plugin = builtin::method(builtin::INTERCHANGE, &settings)?;
        plugin.run_start(&serde_json::json!({"concept": concept}).to_string())?;
        let prompts = self.prompts[concept].clone();
        for (b, batch) in prompts.chunks(self.means_batch).enumerate() {
            let first = b * self.means_batch;
            progress(&format!("means of {concept}: prompts {first}..{} of {}", first + batch.len(), prompts.len()));
            let request = GenerationRequest {
                prompts: batch.to_vec(),
                max_new_tokens: self.steps,
                sampling: self.sampling.clone(),
                row_streams: Some((first..first + batch.len()).map(|i| stream(concept, i)).collect()),
                ..Default::default()
            };
            generate(self.model, &request, &mut plugin, |_, _| {})?;
        }
        plugin.run_end()?;
        write_atomic(&json, serde_json::to_string_pretty(&want).expect("json").as_bytes())
    }

    fn baseline_path(&self, concept: &str, prompt: usize) -> PathBuf {
        self.config.output.join("baseline").join(concept).join(format!("p{prompt:04}.json"))
    }

    fn ensure_baselines(&mut self, prompts: &[(&'static str, usize)], progress: &mut impl FnMut(&str)) -> Result<()> {
        let todo: Vec<_> = prompts.iter().copied().filter(|&(c, i)| !self.baseline_path(c, i).is_file()).collect();
        for batch in todo.chunks(self.means_batch) {
            progress(&format!("baselines: {} clips", batch.len()));
            let request = GenerationRequest {
                prompts: batch.iter().map(|&(c, i)| self.prompts[c][i].clone()).collect(),
                max_new_tokens: self.steps,
                sampling: self.sampling.clone(),
                row_streams: Some(batch.iter().map(|&(c, i)| stream(c, i)).collect()),
                ..Default::default()
            };
            let (probs, wave) = self.generate_and_judge(&request, &mut crate::hooks::NoHooks)?;
            let rate = self.model.manifest().audio.sample_rate;
            for (row, &(c, i)) in batch.iter().enumerate() {
                let path = self.baseline_path(c, i);
                io_dir(path.parent().expect("has parent"))?;
                crate::audio::write_wav(&path.with_extension("wav"), &wave.row(row).to_vec(), rate)?;
                let body = serde_json::json!({"concept": c, "prompt": i, "text": self.prompts[c][i], "probabilities": probs.row(row).to_vec()});
                write_atomic(&path, body.to_string().as_bytes())?;
            }
        }
        Ok(())
    }

    fn baseline(&self, concept: &str, prompt: usize) -> Result<Vec<f32>> {
        let path = self.baseline_path(concept, prompt);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let corrupt = |e: serde_json::Error| Error::Corrupt { path: path.clone(), reason: e.to_string() };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(corrupt)?;
        serde_json::from_value(v["probabilities"].clone()).map_err(corrupt)
    }

    /// Generates `request` with `hooks`, decodes, and judges: (probabilities, waveforms `[rows, samples]`).
    fn generate_and_judge(&mut self, request: &GenerationRequest, hooks: &mut dyn crate::hooks::Hooks) -> Result<(Array2<f32>, Array2<f32>)> {
        let out = generate(self.model, request, hooks, |_, _| {})?;
        // One clip per decode (and per judge call): a clip's numbers never depend on its batch.
        let mut rows = Vec::new();
        for r in 0..out.codes.shape()[0] {
            rows.push(self.model.encodec.decode(out.codes.slice(ndarray::s![r..r + 1, .., ..]))?.index_axis_move(Axis(0), 0).index_axis_move(Axis(0), 0));
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let wave = ndarray::stack(Axis(0), &views).map_err(|e| Error::Input(format!("decoded clips differ in length: {e}")))?;
        let rate = self.model.manifest().audio.sample_rate;
        let probs = self.judge.probabilities(wave.view(), rate)?;
        Ok((probs, wave))
    }

    /// One (pair, prompt, batch of interventions): generate, judge, score, write the part.
    fn run_unit(&mut self, pair: usize, prompt: usize, chunk: usize, shard: &str) -> Result<()> {
        let started = Instant::now();
        let (o, d) = self.pairs[pair];
        let batch: Vec<(Mode, Site)> = self.interventions.chunks(self.batch).nth(chunk).expect("chunk in range").to_vec();
        let rows = batch.iter().map(|(m, s)| Some(builtin::InterchangeRow { layer: s.layer, component: s.component.name(), kind: m.name() })).collect();
        let (original, desired) = (self.means_paths(o).0, self.means_paths(d).0);
        let settings = builtin::Interchange::Intervene { original: &original, desired: &desired, rows };
        let mut plugin = builtin::method(builtin::INTERCHANGE, &settings)?;
        let request = GenerationRequest {
            prompts: vec![self.prompts[o][prompt].clone(); batch.len()],
            max_new_tokens: self.steps,
            sampling: self.sampling.clone(),
            row_streams: Some(vec![stream(o, prompt); batch.len()]),
            ..Default::default()
        };
        let (p1, wave) = self.generate_and_judge(&request, &mut plugin)?;
        let p0 = ndarray::Array1::from(self.baseline(o, prompt)?);
        let scores: Vec<Score> = batch
            .iter()
            .enumerate()
            .map(|(r, &(mode, site))| {
                let row = p1.row(r);
                let (p0o, p0d) = (self.judge.concept_probability(p0.view(), o), self.judge.concept_probability(p0.view(), d));
                let (p1o, p1d) = (self.judge.concept_probability(row, o), self.judge.concept_probability(row, d));
                Score {
                    original: o.into(),
                    desired: d.into(),
                    prompt,
                    mode,
                    site,
                    p0_original: p0o,
                    p0_desired: p0d,
                    p1_original: p1o,
                    p1_desired: p1d,
                    effectiveness: effectiveness(p0o, p0d, p1o, p1d),
                    precision: precision(row, p0.view()),
                }
            })
            .collect();
        let path = self.part_path(pair, prompt, chunk);
        let dir = path.parent().expect("has parent").to_path_buf();
        io_dir(&dir)?;
        if self.config.save_extremes {
            // This batch's best and worst clips; the merge keeps the prompt's overall best and worst.
            let rate = self.model.manifest().audio.sample_rate;
            let by = |a: &&Score, b: &&Score| a.effectiveness.total_cmp(&b.effectiveness);
            for s in [scores.iter().max_by(by), scores.iter().min_by(by)].into_iter().flatten() {
                let r = scores.iter().position(|x| x == s).expect("present");
                crate::audio::write_wav(&dir.join(extreme_name(prompt, s)), &wave.row(r).to_vec(), rate)?;
            }
        }
        let body: String = std::iter::once(CSV_HEADER.to_string()).chain(scores.iter().map(Score::csv)).collect();
        let mut staged = Staged::new();
        staged.stage_with(&self.part_probs_path(pair, prompt, chunk), npy_writer(&p1))?;
        staged.stage(&path, body.as_bytes())?;
        let time = PartTime { seconds: started.elapsed().as_secs_f64(), shard: shard.to_string(), finished: now() };
        staged.stage(&path.with_extension("time.json"), serde_json::to_string_pretty(&time).expect("json").as_bytes())?;
        staged.commit()
    }

    /// Joins every part into the result files, the summary and the plots.
    pub fn merge(&self) -> Result<()> {
        let out = &self.config.output;
        let results = out.join("results");
        let plots = out.join("plots");
        io_dir(&results)?;
        io_dir(&plots)?;
        let mut all: Vec<Score> = Vec::new();
        let labels = self.judge.labels().len();
        for &(o, d) in &self.pairs {
            let dir = out.join("parts").join(pair_name(o, d));
            // Each score with its clip's probabilities p1.
            let mut rows: Vec<(Score, Vec<f32>)> = Vec::new();
            for (p, i, c) in self.units() {
                if self.pairs[p] != (o, d) {
                    continue;
                }
                let path = self.part_path(p, i, c);
                let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
                let probs_path = self.part_probs_path(p, i, c);
                let probs: Array2<f32> = crate::store::read_npy(&probs_path, "the judge's probabilities [clips, labels]")?;
                let scores: Vec<Score> = text.lines().skip(1).filter(|l| !l.is_empty()).map(Score::parse).collect::<Result<_>>()?;
                if probs.dim() != (scores.len(), labels) {
                    return Err(Error::Input(format!(
                        "{} holds {:?} probabilities, but {} has {} scores and the judge {labels} labels; delete both to run that part again",
                        probs_path.display(),
                        probs.dim(),
                        path.display(),
                        scores.len()
                    )));
                }
                rows.extend(scores.into_iter().zip(probs.rows().into_iter().map(|r| r.to_vec())));
            }
            rows.sort_by(|(a, _), (b, _)| (a.prompt, a.mode, a.site).cmp(&(b.prompt, b.mode, b.site)));
            let mut p1 = Array2::<f32>::zeros((rows.len(), labels));
            let mut kl = Array2::<f64>::zeros((rows.len(), labels));
            for (r, (s, probs)) in rows.iter().enumerate() {
                let p0 = self.baseline(o, s.prompt)?;
                p1.row_mut(r).assign(&ArrayView1::from(probs.as_slice()));
                kl.row_mut(r).assign(&ndarray::Array1::from(kl_terms(ArrayView1::from(probs.as_slice()), ArrayView1::from(p0.as_slice()))));
            }
            let scores: Vec<Score> = rows.into_iter().map(|(s, _)| s).collect();
            let body: String = std::iter::once(CSV_HEADER.to_string()).chain(scores.iter().map(Score::csv)).collect();
            let name = pair_name(o, d);
            let mut staged = Staged::new();
            staged.stage(&results.join(format!("{name}.csv")), body.as_bytes())?;
            staged.stage_with(&results.join(format!("{name}_all_probs.npy")), npy_writer(&p1))?;
            staged.stage_with(&results.join(format!("{name}_kl_divs.npy")), npy_writer(&kl))?;
            staged.commit()?;
            if self.config.save_extremes {
                let ex = out.join("extremes").join(pair_name(o, d));
                io_dir(&ex)?;
                for i in 0..self.config.n_prompts_per_concept {
                    let of_prompt: Vec<&Score> = scores.iter().filter(|s| s.prompt == i).collect();
                    let by = |a: &&&Score, b: &&&Score| a.effectiveness.total_cmp(&b.effectiveness);
                    for (tag, s) in [("best", of_prompt.iter().max_by(by)), ("worst", of_prompt.iter().min_by(by))] {
                        let Some(s) = s else { continue };
                        let from = dir.join(extreme_name(i, s));
                        let to = ex.join(format!("p{i:04}_{tag}_{}_{}.wav", s.mode.name(), s.site));
                        let bytes = std::fs::read(&from).map_err(Error::io(&from))?;
                        write_atomic(&to, &bytes)?;
                    }
                }
            }
            for mode in [Mode::Adjust, Mode::Replace] {
                let of_mode: Vec<&Score> = scores.iter().filter(|s| s.mode == mode).collect();
                if !of_mode.is_empty() {
                    plot_scores(&plots.join(format!("{}_{}.png", pair_name(o, d), mode.name())), &format!("{o} -> {d}, {}", mode.name()), &of_mode)?;
                }
            }
            all.extend(scores);
        }
        self.merge_baselines(&results)?;
        // Summary: mean and standard deviation per pair, mode and site.
        let mut groups: BTreeMap<(String, String, Mode, Site), Vec<&Score>> = BTreeMap::new();
        for s in &all {
            groups.entry((s.original.clone(), s.desired.clone(), s.mode, s.site)).or_default().push(s);
        }
        let mut csv = String::from("original,desired,mode,site,layer,component,n,effectiveness_mean,effectiveness_std,precision_mean,precision_std\n");
        for ((o, d, mode, site), v) in &groups {
            let (em, es) = mean_std(v.iter().map(|s| s.effectiveness));
            let (pm, ps) = mean_std(v.iter().map(|s| s.precision));
            csv.push_str(&format!("{o},{d},{},{site},{},{},{},{em:.6e},{es:.6e},{pm:.6e},{ps:.6e}\n", mode.name(), site.layer, site.component.name(), v.len()));
        }
        write_atomic(&out.join("summary.csv"), csv.as_bytes())?;
        for mode in [Mode::Adjust, Mode::Replace] {
            let of_mode: Vec<&Score> = all.iter().filter(|s| s.mode == mode).collect();
            if !of_mode.is_empty() {
                plot_scores(&plots.join(format!("all_pairs_{}.png", mode.name())), &format!("all pairs, {}", mode.name()), &of_mode)?;
            }
        }
        Ok(())
    }

    /// `results/baselines.csv` (`row,concept,prompt,text`: every prompt of every original concept,
    /// concepts in the run's order, prompts in order) and `results/baseline_probabilities.npy`
    /// (`[rows, labels]` f32, the judge's probabilities p0 of each unintervened clip, row for row).
    fn merge_baselines(&self, results: &Path) -> Result<()> {
        let mut originals: Vec<&'static str> = Vec::new();
        for &(o, _) in &self.pairs {
            if !originals.contains(&o) {
                originals.push(o);
            }
        }
        let n = self.config.n_prompts_per_concept;
        let labels = self.judge.labels().len();
        let mut p0 = Array2::<f32>::zeros((originals.len() * n, labels));
        let mut csv = String::from("row,concept,prompt,text\n");
        for (k, &c) in originals.iter().enumerate() {
            for i in 0..n {
                let row = k * n + i;
                let probs = self.baseline(c, i)?;
                if probs.len() != labels {
                    let path = self.baseline_path(c, i);
                    return Err(Error::Input(format!("{} holds {} probabilities but the judge has {labels} labels; delete it to judge that baseline again", path.display(), probs.len())));
                }
                p0.row_mut(row).assign(&ArrayView1::from(probs.as_slice()));
                csv.push_str(&format!("{row},{c},{i},\"{}\"\n", self.prompts[c][i]));
            }
        }
        let mut staged = Staged::new();
        staged.stage(&results.join("baselines.csv"), csv.as_bytes())?;
        staged.stage_with(&results.join("baseline_probabilities.npy"), npy_writer(&p0))?;
        staged.commit()
    }
}

/// A sweep's progress as [`status`] reads it from its output folder.
#[derive(Clone, Debug)]
pub struct Status {
    pub dir: PathBuf,
    /// What is counted ("parts"; "tracks" for `extract`) and what groups them ("pair"; "label").
    pub unit: &'static str,
    pub group: &'static str,
    /// Per group (pair `original__desired`): (name, done, pending, failed).
    pub pairs: Vec<(String, usize, usize, usize)>,
    /// Failed parts: (part, its record).
    pub failed: Vec<(String, PartFailure)>,
    /// Concepts whose means are missing from the means folder.
    pub means_missing: Vec<String>,
    pub concepts: usize,
    /// Wall times of the finished parts that recorded one, seconds.
    pub times: Vec<f64>,
    /// Shards that finished a part within [`Status::active_window`] of the newest finish.
    pub active_workers: usize,
    /// Seconds since the newest part finished.
    pub since_last: Option<u64>,
    pub merged: bool,
}

impl Status {
    /// Counts the shards active now from each finish (time, shard).
    pub fn set_workers(&mut self, finishes: &[(u64, String)]) {
        let now = now();
        let window = self.active_window();
        let mut active: Vec<&String> = finishes.iter().filter(|(t, _)| now.saturating_sub(*t) <= window).map(|(_, s)| s).collect();
        active.sort();
        active.dedup();
        self.active_workers = active.len();
        self.since_last = finishes.iter().map(|(t, _)| now.saturating_sub(*t)).min();
    }

    pub fn done(&self) -> usize {
        self.pairs.iter().map(|p| p.1).sum()
    }
    /// Parts not done (the failed ones included).
    pub fn pending(&self) -> usize {
        self.pairs.iter().map(|p| p.2 + p.3).sum()
    }
    pub fn median_seconds(&self) -> Option<f64> {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        (!t.is_empty()).then(|| if t.len() % 2 == 1 { t[t.len() / 2] } else { (t[t.len() / 2 - 1] + t[t.len() / 2]) / 2.0 })
    }
    /// A shard counts as active when it finished a part within five median part times (at least a
    /// minute) of now.
    pub fn active_window(&self) -> u64 {
        self.median_seconds().map_or(60, |m| ((5.0 * m).ceil() as u64).max(60))
    }
    /// Seconds to finish: pending parts x median part time / active workers (one when none is
    /// active, as when the next shard starts); none before any part has finished.
    pub fn eta_seconds(&self) -> Option<f64> {
        self.median_seconds().map(|m| self.pending() as f64 * m / self.active_workers.max(1) as f64)
    }
}

fn hms(s: f64) -> String {
    let s = s.round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.done() + self.pending();
        let unit = self.unit;
        writeln!(f, "{}: {} of {total} {unit} done, {} pending ({} failed)", self.dir.display(), self.done(), self.pending(), self.failed.len())?;
        if self.concepts == 0 {
        } else if self.means_missing.is_empty() {
            writeln!(f, "concept means: all {} there", self.concepts)?;
        } else {
            writeln!(f, "concept means: {} of {} missing ({}): run `intervene --means-only` first", self.means_missing.len(), self.concepts, self.means_missing.join(", "))?;
        }
        let w = self.pairs.iter().map(|p| p.0.len()).max().unwrap_or(4).max(4);
        writeln!(f, "{:<w$}  {:>7}  {:>7}  {:>6}", self.group, "done", "pending", "failed")?;
        for (name, d, p, x) in &self.pairs {
            writeln!(f, "{name:<w$}  {d:>7}  {:>7}  {x:>6}", p + x)?;
        }
        for (part, why) in &self.failed {
            writeln!(f, "failed: {part} (shard {}): {}", why.shard, why.error)?;
        }
        match (self.median_seconds(), self.eta_seconds()) {
            (Some(m), Some(eta)) => {
                let since = self.since_last.map_or(String::new(), |s| format!(", the last {s} s ago"));
                let one = unit.trim_end_matches('s');
                writeln!(f, "median {one} time {m:.2} s over {} {unit}{since}; {} shard(s) finished one in the last {} s", self.times.len(), self.active_workers, self.active_window())?;
                if self.pending() > 0 {
                    writeln!(f, "estimated time to finish: {} pending x {m:.2} s / {} worker(s) = {}", self.pending(), self.active_workers.max(1), hms(eta))?;
                }
            }
            _ => writeln!(f, "no {} with a recorded time has finished yet: no time estimate", unit.trim_end_matches('s'))?,
        }
        if self.merged {
            let files = if unit == "parts" { "results/ and summary.csv are" } else { "residuals_cond.npy, residuals_uncond.npy and labels.npy are" };
            writeln!(f, "merged: {files} up to date")
        } else if self.failed.is_empty() && self.pending() == 0 {
            writeln!(f, "every {} is done: merge (intervene: run any shard again; extract: --merge)", unit.trim_end_matches('s'))
        } else if self.failed.is_empty() {
            writeln!(f, "not merged yet")
        } else if unit == "parts" {
            writeln!(f, "not merged yet; rerun any shard to retry the failed parts")
        } else {
            writeln!(f, "not merged yet; rerun a failed track's shard to retry it")
        }
    }
}

/// The progress of an `intervene` run in `dir` (from its `plan.json` and parts; no model loaded).
pub fn status(dir: &Path) -> Result<Status> {
    let plan_path = dir.join("plan.json");
    if !plan_path.is_file() {
        return Err(Error::Input(format!("{} holds no intervene run (no plan.json: no shard has started there yet)", dir.display())));
    }
    let plan: Plan = serde_json::from_slice(&std::fs::read(&plan_path).map_err(Error::io(&plan_path))?).map_err(|e| Error::Corrupt { path: plan_path.clone(), reason: e.to_string() })?;
    let mut st = Status {
        dir: dir.to_path_buf(),
        unit: "parts",
        group: "pair",
        pairs: Vec::new(),
        failed: Vec::new(),
        means_missing: plan.concepts.iter().filter(|c| !plan.means_dir.join(format!("{c}.json")).is_file()).cloned().collect(),
        concepts: plan.concepts.len(),
        times: Vec::new(),
        active_workers: 0,
        since_last: None,
        merged: false,
    };
    let mut finishes: Vec<(u64, String)> = Vec::new();
    let mut newest_part = None;
    for (o, d) in &plan.pairs {
        let name = pair_name(o, d);
        let folder = dir.join("parts").join(&name);
        let (mut done, mut pending, mut failed) = (0, 0, 0);
        for i in 0..plan.n_prompts {
            for c in 0..plan.batches {
                let csv = folder.join(format!("p{i:04}_b{c:03}.csv"));
                if csv.is_file() && csv.with_extension("probs.npy").is_file() {
                    done += 1;
                    if let Ok(m) = std::fs::metadata(&csv).and_then(|m| m.modified()) {
                        newest_part = newest_part.max(Some(m));
                    }
                    if let Ok(t) = std::fs::read(csv.with_extension("time.json")).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<PartTime>(&b).map_err(|e| e.to_string())) {
                        st.times.push(t.seconds);
                        finishes.push((t.finished, t.shard));
                    }
                } else if let Ok(b) = std::fs::read(csv.with_extension("failed.json")) {
                    let why: PartFailure = serde_json::from_slice(&b).unwrap_or(PartFailure { error: "(unreadable failure record)".into(), shard: "?".into(), at: 0 });
                    st.failed.push((format!("{name} p{i:04} b{c:03}"), why));
                    failed += 1;
                } else {
                    pending += 1;
                }
            }
        }
        st.pairs.push((name, done, pending, failed));
    }
    st.set_workers(&finishes);
    // Merged when the summary is newer than every part.
    st.merged = st.pending() == 0
        && std::fs::metadata(dir.join("summary.csv")).and_then(|m| m.modified()).is_ok_and(|s| newest_part.is_none_or(|p| s >= p));
    Ok(st)
}

/// The per-label terms of KL(p1 || p0), `p1 (ln p1 - ln p0)` (the seed's `kl_divs`: torch's
/// `kl_div(log p0, log p1, log_target=True, reduction="none")`), on the probabilities as
/// [`precision`] takes them (each renormalised in f64; p0 raised to `EPS` under a logarithm), so
/// that precision is minus their sum.
fn kl_terms(p1: ArrayView1<'_, f32>, p0: ArrayView1<'_, f32>) -> Vec<f64> {
    let norm = |p: ArrayView1<'_, f32>| {
        let total: f64 = p.iter().map(|&x| x as f64).sum();
        p.iter().map(|&x| x as f64 / total).collect::<Vec<f64>>()
    };
    let (a, b) = (norm(p1), norm(p0));
    a.iter().zip(&b).map(|(&a, &b)| if a <= 0.0 { 0.0 } else { a * (a.ln() - b.max(crate::judge::EPS).ln()) }).collect()
}

fn extreme_name(prompt: usize, s: &Score) -> String {
    format!("p{prompt:04}_{}_{}.wav", s.mode.name(), s.site)
}

fn mean_std(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = xs.collect();
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

/// Mean effectiveness and precision by layer (0-based), one line per component (its own marker
/// and dash, shifted a little sideways), with error bars of one standard deviation: over the
/// prompts for a pair's plot (the `_std` columns of `summary.csv`), over prompts and pairs for
/// `all_pairs`.
pub fn plot_scores(path: &Path, title: &str, scores: &[&Score]) -> Result<()> {
    use crate::plot::{Marker, Panel, Series, LINE_COLOURS};
    let styles = [(LINE_COLOURS[0], Marker::Circle, false), (LINE_COLOURS[1], Marker::Square, true), (LINE_COLOURS[2], Marker::Triangle, false)];
    let series = |f: fn(&Score) -> f64| -> Vec<Series> {
        Component::ALL
            .iter()
            .zip(styles)
            .filter_map(|(&c, (colour, marker, dashed))| {
                let mut by_layer: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
                for s in scores.iter().filter(|s| s.site.component == c) {
                    by_layer.entry(s.site.layer).or_default().push(f(s));
                }
                let stats: Vec<(usize, (f64, f64))> = by_layer.iter().map(|(&l, v)| (l, mean_std(v.iter().copied()))).collect();
                (!by_layer.is_empty()).then(|| {
                    Series::new(c.name(), stats.iter().map(|&(l, (m, _))| (l as f64, m)).collect(), colour)
                        .std(stats.iter().map(|&(_, (_, s))| s).collect())
                        .marker(marker)
                        .dashed(dashed)
                })
            })
            .collect()
    };
    let (eff, prec) = (series(|s| s.effectiveness), series(|s| s.precision));
    let mut top = Panel::new(format!("{title}: effectiveness by layer (mean, bars: ±1 std)"), "effectiveness");
    let mut bottom = Panel::new(format!("{title}: precision (-KL) by layer (mean, bars: ±1 std)"), "precision (-KL)");
    top.dodge = true;
    bottom.dodge = true;
    crate::plot::png(path, (900, 660), |root| {
        let (upper, lower) = root.split_vertically(330);
        crate::plot::by_layer(&upper, &top, &eff)?;
        crate::plot::by_layer(&lower, &bottom, &prec)
    })
}

/// Reads a merged results CSV (for tests and notebooks).
pub fn read_results(path: &Path) -> Result<Vec<Score>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    text.lines().skip(1).filter(|l| !l.is_empty()).map(Score::parse).collect()
}
