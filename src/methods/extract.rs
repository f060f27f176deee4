//! Residual extraction (seed A's dataset processing): every track is resampled to the model's rate
//! (mono), cut into non-overlapping segments, and each segment is fed as an audio prompt with a text
//! prompt from a template (label-free by default); MusicGen continues it while every layer's residual
//! stream is captured, conditional and unconditional rows apart, reduced over time.
//!
//! On disk (`OUT/`): `extract.json` (the settings; a resumed or sharded run must match them),
//! `segments/KEY.json` + `segments/KEY.npy` per segment (`[points, 2, d_model]`, or
//! `[points, 2, positions, d_model]` with reduction `all`; row 0 conditional, row 1 unconditional).
//! A segment is done when its `.npy` exists: files are written atomically, so a killed job resumes
//! without redoing or losing finished segments. `merge` joins them into `residuals_cond.npy`,
//! `residuals_uncond.npy` (`[segments, points, d_model]`), `labels.npy` and `segments.json`.
//!
//! For [`status`] (`extract --status`): every run writes `items.json` (the tracks in scan order,
//! the same for every shard), and each track its record in `tracks/`: `TRACK.json` when all its
//! segments are done (wall time, shard), `TRACK.failed.json` when it could not be used or its
//! generation failed (the error; removed when a rerun of its shard finishes it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array3, ArrayD, Axis};
use serde::{Deserialize, Serialize};

use crate::data::{segment_bounds, Item, Scan, Shard};
use crate::error::{Error, Result};
use crate::generate::{generate, BatchSize, GenerationRequest, SamplingConfig};
use crate::hooks::{Reduction, ResidualCapture};
use crate::model::MusicGen;
use crate::store::{write_atomic, write_npy};

/// Settings of an extraction; stored in `extract.json` and compared on resume.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtractSettings {
    pub model: String,
    pub segment_seconds: f64,
    /// Shorter tracks give one shorter segment if they last at least this long.
    pub min_seconds: f64,
    /// `{genre}` is replaced by the track's label name; the default names no label.
    pub prompt_template: String,
    /// Decoder steps generated after each audio prompt.
    pub steps: usize,
    pub reduction: Reduction,
    pub guidance_scale: f32,
    pub top_k: usize,
    pub temperature: f32,
    /// Each segment samples with `seed` plus a hash of its key: the same on every host and shard.
    pub seed: u64,
}

pub const DEFAULT_PROMPT: &str = "Continue this music.";

impl ExtractSettings {
    /// The sampling every segment uses (its seed then offset by the segment's key).
    fn sampling(&self) -> SamplingConfig {
        SamplingConfig { guidance_scale: self.guidance_scale, top_k: self.top_k, temperature: self.temperature, seed: self.seed }
    }
}

/// One segment's record (`segments/KEY.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub key: String,
    pub item: String,
    pub segment: usize,
    pub label: i64,
    pub label_name: String,
    pub start_s: f64,
    pub end_s: f64,
    pub prompt: String,
    pub points: Vec<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct ExtractReport {
    pub extracted: usize,
    pub already_done: usize,
    /// (item id, reason) for files that could not be used; the rest were processed.
    pub failed: Vec<(String, String)>,
    /// How the batch size was chosen.
    pub batch: String,
}

/// FNV-1a: a stable hash, the same on every host and run.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

fn key_of(item: &Item, segment: usize) -> String {
    let safe: String = item.id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    // The id's own hash keeps keys distinct when sanitising maps two ids to one string.
    format!("{safe}.{:08x}.{segment:03}", fnv(item.id.as_bytes()) as u32)
}

/// A finished track's record (`tracks/TRACK.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackTime {
    pub segments: usize,
    /// Wall time of the segments extracted by the run that finished it (none when every segment
    /// was already there).
    pub seconds: Option<f64>,
    pub shard: String,
    pub finished: u64,
}

/// A track in `items.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedTrack {
    pub id: String,
    pub track: String,
    pub label: String,
}

fn track_key(item: &Item) -> String {
    key_of(item, 0).rsplit_once('.').expect("key has a segment").0.to_string()
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v).expect("json").as_bytes())
}

/// Prepares `out` for `settings`: creates it, or checks that an earlier run used the same settings.
pub fn prepare(out: &Path, settings: &ExtractSettings) -> Result<()> {
    std::fs::create_dir_all(out.join("segments")).map_err(Error::io(out))?;
    let path = out.join("extract.json");
    if path.is_file() {
        let old: ExtractSettings = serde_json::from_slice(&std::fs::read(&path).map_err(Error::io(&path))?)
            .map_err(|e| Error::Corrupt { path: path.clone(), reason: e.to_string() })?;
        if &old != settings {
            return Err(Error::Input(format!(
                "{} holds an extraction with other settings ({}); use another output folder or the same settings to resume",
                out.display(),
                serde_json::to_string(&old).unwrap_or_default()
            )));
        }
        return Ok(());
    }
    write_atomic(&path, serde_json::to_string_pretty(settings).expect("json").as_bytes())
}

/// One segment to generate: its key, track, text prompt, audio prompt and seed.
struct Job {
    key: String,
    /// The item's index in the scan.
    item: usize,
    /// The track's index among this run's open tracks.
    track: usize,
    segment: usize,
    prompt: String,
    /// `[1, codebooks, frames]`, or none for a prompt-set entry (text alone).
    codes: Option<Array3<i64>>,
    span: (f64, f64),
    seed: u64,
}

/// A track with segments still to generate.
struct OpenTrack {
    item: usize,
    segments: usize,
    remaining: usize,
    /// Its share of the batches' wall time so far.
    seconds: f64,
}

/// Extracts every segment of the items this shard owns that is not done yet, `batch` segments per
/// generation (segments batched together have audio prompts of one length; each draws from its own
/// seed, so batching changes no segment's draws).
pub fn extract(
    model: &mut MusicGen,
    scan: &Scan,
    out: &Path,
    settings: &ExtractSettings,
    shard: Shard,
    batch: BatchSize,
    mut progress: impl FnMut(&str),
) -> Result<ExtractReport> {
    prepare(out, settings)?;
    let tracks_dir = out.join("tracks");
    std::fs::create_dir_all(&tracks_dir).map_err(Error::io(&tracks_dir))?;
    let plan: Vec<PlannedTrack> = scan.items.iter().map(|i| PlannedTrack { id: i.id.clone(), track: track_key(i), label: i.label_name.clone() }).collect();
    write_json(&out.join("items.json"), &plan)?;
    let label = format!("{}/{}", shard.index, shard.count);
    let man = model.manifest().clone();
    let rate = man.audio.sample_rate;
    let segment_len = (settings.segment_seconds * rate as f64).round() as usize;
    let min_len = (settings.min_seconds * rate as f64).round() as usize;
    let texts: Vec<String> = scan.items.iter().map(|i| i.text.clone().unwrap_or_else(|| settings.prompt_template.replace("{genre}", &i.label_name))).collect();
    let frames = (settings.segment_seconds * man.audio.frame_rate).ceil() as usize;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let shape = crate::generate::batch::Shape::of(model, &texts, 1 + frames + settings.steps, settings.sampling().guided())?;
    // Work to batch: a prompt set's entries (one generation each); a track's segments are not known
    // before its audio is read, so audio sets no bound.
    let owned = scan.items.iter().enumerate().filter(|(p, _)| shard.owns(*p));
    let work = if scan.items.iter().all(|i| i.text.is_some()) { owned.count() } else { usize::MAX };
    let chosen = crate::generate::batch::choose(model, batch, shape, work)?;
    let mut report = ExtractReport { batch: chosen.why.clone(), ..Default::default() };

    let record_path = |item: &Item| tracks_dir.join(format!("{}.json", track_key(item)));
    let fail = |item: &Item, why: &str| {
        let failed = record_path(item).with_extension("failed.json");
        write_json(&failed, &crate::interchange::PartFailure { error: why.to_string(), shard: label.clone(), at: crate::interchange::now() })
    };
    // A track is finished when its last segment is: its record (with the time, when this run
    // extracted any of it), and its failure record of an earlier run gone.
    let finish = |item: &Item, segments: usize, seconds: Option<f64>| -> Result<()> {
        let record = record_path(item);
        if seconds.is_some() || !record.is_file() {
            write_json(&record, &TrackTime { segments, seconds, shard: label.clone(), finished: crate::interchange::now() })?;
        }
        let failed = record.with_extension("failed.json");
        if failed.is_file() {
            std::fs::remove_file(&failed).map_err(Error::io(&failed))?;
        }
        Ok(())
    };

    let mut open: Vec<OpenTrack> = Vec::new();
    // Jobs waiting for a batch, by audio-prompt length (none: text alone).
    let mut waiting: std::collections::BTreeMap<Option<usize>, Vec<Job>> = Default::default();
    let mut loader = crate::data::AudioLoader::default();
    let run_batch = |model: &mut MusicGen, jobs: Vec<Job>, open: &mut Vec<OpenTrack>, report: &mut ExtractReport, progress: &mut dyn FnMut(&str)| -> Result<()> {
        let started = Instant::now();
        if let Err(e) = save_segments(model, out, settings, scan, &jobs) {
            for j in &jobs {
                fail(&scan.items[j.item], &e.to_string())?;
            }
            return Err(e);
        }
        let share = started.elapsed().as_secs_f64() / jobs.len() as f64;
        for j in &jobs {
            report.extracted += 1;
            progress(&j.key);
            let t = &mut open[j.track];
            t.seconds += share;
            t.remaining -= 1;
            if t.remaining == 0 {
                finish(&scan.items[t.item], t.segments, Some(t.seconds))?;
            }
        }
        Ok(())
    };
    for (position, item) in scan.items.iter().enumerate() {
        if !shard.owns(position) {
            continue;
        }
        let seed_of = |key: &str| settings.seed.wrapping_add(fnv(key.as_bytes()));
        let done = |key: &str| out.join("segments").join(format!("{key}.npy")).is_file();
        let mut jobs = Vec::new();
        let segments = if let Some(text) = &item.text {
            // A prompt-set entry: one generation from the text alone.
            let key = key_of(item, 0);
            if !done(&key) {
                jobs.push(Job { seed: seed_of(&key), key, item: position, track: open.len(), segment: 0, prompt: text.clone(), codes: None, span: (0.0, 0.0) });
            }
            1
        } else {
            let wave = match loader.load(item, rate) {
                Ok(w) => w,
                Err(e) => {
                    fail(item, &e.to_string())?;
                    report.failed.push((item.id.clone(), e.to_string()));
                    progress(&format!("skipped {}: {e}", item.id));
                    continue;
                }
            };
            let bounds = segment_bounds(wave.len(), segment_len, min_len);
            if bounds.is_empty() {
                let why = format!("lasts {:.2} s, shorter than the minimum segment of {} s (--min-seconds)", wave.len() as f64 / rate as f64, settings.min_seconds);
                progress(&format!("skipped {}: {why}", item.id));
                fail(item, &why)?;
                report.failed.push((item.id.clone(), why));
                continue;
            }
            let prompt = settings.prompt_template.replace("{genre}", &item.label_name);
            for (k, &(start, end)) in bounds.iter().enumerate() {
                let key = key_of(item, k);
                if done(&key) {
                    continue;
                }
                let audio = Array3::from_shape_vec((1, 1, end - start), wave[start..end].to_vec()).expect("shape");
                let codes = match model.encodec.encode(audio.view()) {
                    Ok(c) => c,
                    Err(e) => {
                        fail(item, &e.to_string())?;
                        return Err(e);
                    }
                };
                let span = (start as f64 / rate as f64, end as f64 / rate as f64);
                jobs.push(Job { seed: seed_of(&key), key, item: position, track: open.len(), segment: k, prompt: prompt.clone(), codes: Some(codes), span });
            }
            bounds.len()
        };
        report.already_done += segments - jobs.len();
        if jobs.is_empty() {
            finish(item, segments, None)?;
            continue;
        }
        open.push(OpenTrack { item: position, segments, remaining: jobs.len(), seconds: 0.0 });
        for job in jobs {
            let group = waiting.entry(job.codes.as_ref().map(|c| c.shape()[2])).or_default();
            group.push(job);
            if group.len() == chosen.rows {
                let full = std::mem::take(group);
                run_batch(model, full, &mut open, &mut report, &mut progress)?;
            }
        }
    }
    for (_, jobs) in std::mem::take(&mut waiting) {
        if !jobs.is_empty() {
            run_batch(model, jobs, &mut open, &mut report, &mut progress)?;
        }
    }
    Ok(report)
}

/// The progress of an extraction in `out` (from `items.json` and `tracks/`; no model loaded): tracks
/// done, pending and failed per label, and the time to finish from the tracks' own wall times.
pub fn status(out: &Path) -> Result<crate::interchange::Status> {
    let path = out.join("items.json");
    if !path.is_file() {
        return Err(Error::Input(format!("{} holds no extraction (no items.json: no shard has started there yet)", out.display())));
    }
    let plan: Vec<PlannedTrack> = serde_json::from_slice(&std::fs::read(&path).map_err(Error::io(&path))?).map_err(|e| Error::Corrupt { path: path.clone(), reason: e.to_string() })?;
    let mut st = crate::interchange::Status {
        dir: out.to_path_buf(),
        unit: "tracks",
        group: "label",
        pairs: Vec::new(),
        failed: Vec::new(),
        means_missing: Vec::new(),
        concepts: 0,
        times: Vec::new(),
        active_workers: 0,
        since_last: None,
        merged: false,
    };
    let mut finishes = Vec::new();
    for t in &plan {
        let i = match st.pairs.iter().position(|p| p.0 == t.label) {
            Some(i) => i,
            None => {
                st.pairs.push((t.label.clone(), 0, 0, 0));
                st.pairs.len() - 1
            }
        };
        let record = out.join("tracks").join(format!("{}.json", t.track));
        if let Ok(b) = std::fs::read(&record) {
            st.pairs[i].1 += 1;
            if let Ok(r) = serde_json::from_slice::<TrackTime>(&b) {
                if let Some(s) = r.seconds {
                    st.times.push(s);
                    finishes.push((r.finished, r.shard));
                }
            }
        } else if let Ok(b) = std::fs::read(record.with_extension("failed.json")) {
            let why = serde_json::from_slice(&b).unwrap_or(crate::interchange::PartFailure { error: "(unreadable failure record)".into(), shard: "?".into(), at: 0 });
            st.failed.push((t.id.clone(), why));
            st.pairs[i].3 += 1;
        } else {
            st.pairs[i].2 += 1;
        }
    }
    st.set_workers(&finishes);
    st.merged = st.pending() == 0 && out.join("segments.json").is_file();
    Ok(st)
}

/// Generates a batch of segments (audio prompts of one length, or text alone) with their residuals
/// captured, and writes each one's record and array (the array last: its presence marks the
/// segment done). Row `i` samples with its segment's own seed.
fn save_segments(model: &mut MusicGen, out: &Path, settings: &ExtractSettings, scan: &Scan, jobs: &[Job]) -> Result<()> {
    let audio_codes = match jobs[0].codes {
        None => None,
        Some(_) => {
            let views: Vec<_> = jobs.iter().map(|j| j.codes.as_ref().expect("a batch is all audio or all text").view()).collect();
            Some(ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Internal(format!("a batch's audio prompts differ in length: {e}")))?)
        }
    };
    let request = GenerationRequest {
        prompts: jobs.iter().map(|j| j.prompt.clone()).collect(),
        audio_codes,
        max_new_tokens: settings.steps,
        sampling: settings.sampling(),
        row_streams: Some(vec![0; jobs.len()]),
        row_seeds: Some(jobs.iter().map(|j| j.seed).collect()),
        ..Default::default()
    };
    let mut capture = ResidualCapture::new(model.decoder.num_layers(), settings.reduction);
    generate(model, &request, &mut capture, |_, _| {})?;
    let all = capture.result()?; // [points, rows, ...]: the conditional rows, then the unconditional
    let n = jobs.len();
    let rows = all.shape()[1];
    for (i, job) in jobs.iter().enumerate() {
        // This segment's conditional row and (under guidance) its unconditional row.
        let picked: Vec<usize> = if rows == 2 * n { vec![i, n + i] } else { vec![i] };
        let mine = all.select(Axis(1), &picked);
        let item = &scan.items[job.item];
        let record = SegmentRecord {
            key: job.key.clone(),
            item: item.id.clone(),
            segment: job.segment,
            label: item.label,
            label_name: item.label_name.clone(),
            start_s: job.span.0,
            end_s: job.span.1,
            prompt: job.prompt.clone(),
            points: capture.points().iter().map(|p| p.to_string()).collect(),
        };
        write_atomic(&out.join("segments").join(format!("{}.json", job.key)), serde_json::to_string_pretty(&record).expect("json").as_bytes())?;
        write_npy(&out.join("segments").join(format!("{}.npy", job.key)), &mine)?;
    }
    Ok(())
}

/// The merged arrays of a finished extraction.
pub struct Merged {
    /// `[segments, points, d_model]` (or with positions for reduction `all`).
    pub cond: ArrayD<f32>,
    pub uncond: ArrayD<f32>,
    pub labels: Vec<i64>,
    pub records: Vec<SegmentRecord>,
}

/// Joins every finished segment (in key order) and writes the merged files into `out`.
pub fn merge(out: &Path) -> Result<Merged> {
    let dir = out.join("segments");
    let mut keys: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(Error::io(&dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    keys.sort();
    if keys.is_empty() {
        return Err(Error::Input(format!("{} has no extracted segments", out.display())));
    }
    let (mut cond, mut uncond, mut labels, mut records) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for npy in &keys {
        let json = npy.with_extension("json");
        let record: SegmentRecord = serde_json::from_slice(&std::fs::read(&json).map_err(Error::io(&json))?)
            .map_err(|e| Error::Corrupt { path: json.clone(), reason: e.to_string() })?;
        let a: ArrayD<f32> = crate::store::read_npy(npy, "a segment's residuals [points, 2, d_model]")?;
        cond.push(a.index_axis(Axis(1), 0).to_owned());
        uncond.push(a.index_axis(Axis(1), 1).to_owned());
        labels.push(record.label);
        records.push(record);
    }
    let stack = |parts: &[ArrayD<f32>]| -> Result<ArrayD<f32>> {
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        ndarray::stack(Axis(0), &views)
            .map_err(|_| Error::Input("segments differ in shape (reduction `all` with different lengths): use the per-segment files".into()))
    };
    let merged = Merged { cond: stack(&cond)?, uncond: stack(&uncond)?, labels, records };
    write_npy(&out.join("residuals_cond.npy"), &merged.cond)?;
    write_npy(&out.join("residuals_uncond.npy"), &merged.uncond)?;
    write_npy(&out.join("labels.npy"), &ndarray::Array1::from(merged.labels.clone()))?;
    write_atomic(&out.join("segments.json"), serde_json::to_string_pretty(&merged.records).expect("json").as_bytes())?;
    Ok(merged)
}
