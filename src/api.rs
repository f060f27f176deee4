//! Library calls for hosts other than the CLI (the Python package in `python/`): the steps a
//! `generate` command resolves from its flags, an audio prompt's codes, a capture of any hook
//! points reduced over positions, the residual files a generation saves, and an extraction from a folder or prompt set, each as one
//! function, so that a binding does not repeat the command line's logic.

use std::path::Path;

use ndarray::{s, Array2, Array3, ArrayD, ArrayView3, ArrayViewMut3, Axis};

use crate::error::{Error, Result};
use crate::generate::SamplingConfig;
use crate::hooks::{check_points, ForwardContext, HookPoint, Hooks, Reduction};
use crate::model::{Manifest, MusicGen, Verify};
use crate::runtime::Runtime;

/// Loads a bundle folder, or a checkpoint folder or hub id exported once into the models folder
/// (as the CLI's `--model`).
pub fn load_model(runtime: &Runtime, spec: &str, verify: Verify) -> Result<MusicGen> {
    let dir = crate::model::hub::resolve(spec, &crate::model::hub::models_dir())?;
    MusicGen::load(runtime, &dir, verify)
}

/// Decoder steps for a request: `steps` when given, else `duration` seconds (default 8) times the
/// frame rate plus `codebooks - 1` (the delay pattern's tail), as `generate --duration`.
pub fn steps_for(manifest: &Manifest, steps: Option<usize>, duration: Option<f64>) -> Result<usize> {
    match (steps, duration) {
        (Some(_), Some(_)) => Err(Error::Input("give steps or duration, not both".into())),
        (Some(0), None) => Err(Error::Input("nothing to generate: steps is 0".into())),
        (Some(n), None) => Ok(n),
        (None, d) => {
            let d = crate::error::finite("duration", d.unwrap_or(8.0))?;
            if d <= 0.0 {
                return Err(Error::Input(format!("duration must be positive, got {d}")));
            }
            Ok((d * manifest.audio.frame_rate).round() as usize + manifest.decoder.num_codebooks - 1)
        }
    }
}

/// Samples of audio that `steps` decoder steps decode to: the delay pattern's `codebooks - 1` tail
/// makes no frame of its own, every other step one frame of EnCodec's hop.
pub fn clip_samples(manifest: &Manifest, steps: usize) -> usize {
    steps.saturating_sub(manifest.decoder.num_codebooks - 1) * manifest.audio.hop_length
}

/// Sampling settings: the given values, the bundle's defaults for the rest (as the CLI's flags).
pub fn sampling(manifest: &Manifest, top_k: Option<usize>, temperature: Option<f32>, guidance_scale: Option<f32>, seed: u64) -> Result<SamplingConfig> {
    let s = crate::generate::SamplingOverrides { seed, top_k, temperature, guidance_scale }.resolve(&manifest.generation);
    for (name, v) in [("temperature", s.temperature), ("guidance_scale", s.guidance_scale)] {
        if !v.is_finite() {
            return Err(Error::Input(format!("{name} must be a finite number, got {v}")));
        }
    }
    Ok(s)
}

/// The codes `[batch, codebooks, frames]` of an audio prompt (any format [`crate::audio::read`]
/// reads), windowed from `start_s` for `duration_s` seconds (default: to the end), resampled to the
/// model's rate and encoded by EnCodec, repeated for `batch` rows.
pub fn audio_prompt_codes(model: &mut MusicGen, path: &Path, start_s: f64, duration_s: Option<f64>, batch: usize) -> Result<Array3<i64>> {
    let audio = crate::audio::read(path)?;
    encode_audio_prompt(model, &audio, path, start_s, duration_s, batch)
}

/// [`audio_prompt_codes`] of audio already decoded from `path` (so that an unusable file is refused
/// before the model loads).
pub fn encode_audio_prompt(model: &mut MusicGen, audio: &crate::audio::Audio, path: &Path, start_s: f64, duration_s: Option<f64>, batch: usize) -> Result<Array3<i64>> {
    let rate = model.manifest().audio.sample_rate;
    let wave = crate::audio::window(audio, path, rate, start_s, duration_s)?;
    let wave = Array3::from_shape_vec((1, 1, wave.len()), wave).expect("shape");
    let codes = model.encodec.encode(wave.view())?;
    let views: Vec<_> = (0..batch).map(|_| codes.view()).collect();
    Ok(ndarray::concatenate(Axis(0), &views).expect("same codebooks and frames"))
}

/// The residual files of a generation, staged into `dir`: `residuals_cond.npy` and (with guidance)
/// `residuals_uncond.npy`, `[points, batch, (positions,) d_model]`, and `residuals.json` naming the
/// points, axes and shapes (what `generate --save-residuals` writes).
pub fn stage_residuals(staged: &mut crate::store::Staged, dir: &Path, capture: &crate::hooks::ResidualCapture, batch: usize, guided: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let all = capture.result()?;
    let mut files = serde_json::Map::new();
    let halves: &[(&str, std::ops::Range<usize>)] =
        if guided { &[("cond", 0..batch), ("uncond", batch..2 * batch)] } else { &[("cond", 0..batch)] };
    for (name, rows) in halves {
        let part = all.slice_axis(Axis(1), ndarray::Slice::from(rows.clone())).to_owned();
        let file = format!("residuals_{name}.npy");
        staged.stage_with(&dir.join(&file), crate::store::npy_writer(&part))?;
        files.insert((*name).into(), serde_json::json!({"file": file, "shape": part.shape()}));
    }
    let sidecar = serde_json::json!({
        "points": capture.points().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "axes": if all.ndim() == 4 { "[point, batch, position, d_model]" } else { "[point, batch, d_model]" },
        "arrays": files,
    });
    staged.stage(&dir.join("residuals.json"), serde_json::to_string_pretty(&sidecar).expect("json").as_bytes())
}

/// The file of clip `i` of a batch written to `path`: `NAME_i.EXT` (`.wav` when `path` has none).
pub fn numbered_output(path: &Path, i: usize) -> std::path::PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "wav".into());
    path.with_file_name(format!("{stem}_{i}.{ext}"))
}

/// Captures chosen hook points (residual and component points alike) over a whole generation,
/// reduced over positions as [`crate::hooks::ResidualCapture`] reduces them, with the same
/// arithmetic (so the same point gives the same bits either way).
pub struct PointCapture {
    reduction: Reduction,
    points: Vec<HookPoint>,
    sums: Vec<Option<Array2<f64>>>,
    last: Vec<Option<Array2<f32>>>,
    all: Vec<Vec<Array3<f32>>>,
    positions: Vec<usize>,
}

impl PointCapture {
    pub fn new(points: Vec<HookPoint>, reduction: Reduction) -> Self {
        let n = points.len();
        PointCapture { reduction, points, sums: vec![None; n], last: vec![None; n], all: vec![Vec::new(); n], positions: vec![0; n] }
    }

    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    /// Each point's array: `[rows, d_model]` for last and mean, `[rows, positions, d_model]` for all.
    pub fn results(&self) -> Result<Vec<(HookPoint, ArrayD<f32>)>> {
        let never = |p: &HookPoint| Error::Input(format!("hook point {p} was never reached in this generation"));
        (0..self.points.len())
            .map(|i| {
                let p = self.points[i];
                let a = match self.reduction {
                    Reduction::Last => self.last[i].clone().ok_or_else(|| never(&p))?.into_dyn(),
                    Reduction::Mean => {
                        let n = self.positions[i] as f64;
                        self.sums[i].as_ref().ok_or_else(|| never(&p))?.mapv(|x| (x / n) as f32).into_dyn()
                    }
                    Reduction::All => {
                        let views: Vec<_> = self.all[i].iter().map(|c| c.view()).collect();
                        ndarray::concatenate(Axis(1), &views).map_err(|_| never(&p))?.into_dyn()
                    }
                };
                Ok((p, a))
            })
            .collect()
    }

    fn record(&mut self, point: HookPoint, h: ArrayView3<'_, f32>) {
        let Some(i) = self.points.iter().position(|p| *p == point) else { return };
        let t = h.shape()[1];
        self.positions[i] += t;
        match self.reduction {
            Reduction::Last => self.last[i] = Some(h.slice(s![.., t - 1, ..]).to_owned()),
            Reduction::Mean => {
                let sum = h.mapv(f64::from).sum_axis(Axis(1));
                match &mut self.sums[i] {
                    Some(acc) => *acc += &sum,
                    slot => *slot = Some(sum),
                }
            }
            Reduction::All => self.all[i].push(h.to_owned()),
        }
    }
}

impl Hooks for PointCapture {
    fn wants(&self, point: &HookPoint) -> bool {
        self.points.contains(point)
    }
    fn check_points(&self, layers: usize) -> Result<()> {
        check_points("run_with_cache", &self.points, layers)
    }
    fn on_residual(&mut self, _ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
        self.record(point, h.view());
        Ok(())
    }
    fn on_component(&mut self, _ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> Result<()> {
        self.record(point, out);
        Ok(())
    }
}

/// Where an extraction's labelled items come from.
pub enum ExtractSource<'a> {
    /// A folder with one sub-folder of audio files per class, or a `labels.csv`.
    Folder(&'a Path),
    /// A prompt set (`text,label` CSV or JSON), generated from text alone.
    Prompts(&'a Path),
}

/// `extract` as the CLI runs it for a folder or prompt set: scan (optionally a label map
/// `name=id,...` and at most `max_samples` items taken evenly across classes), extract the segments
/// this shard owns (resuming), and merge when the shard is the only one. Returns the report and
/// the merged arrays, if merged.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    model: &mut MusicGen,
    source: ExtractSource<'_>,
    labels: Option<&str>,
    max_samples: Option<usize>,
    out: &Path,
    settings: &crate::extract::ExtractSettings,
    shard: crate::data::Shard,
    batch: crate::generate::BatchSize,
    progress: impl FnMut(&str),
) -> Result<(crate::extract::ExtractReport, Option<crate::extract::Merged>)> {
    use crate::data;
    crate::store::check_writable(out, true)?;
    let given = labels.map(data::LabelMap::parse).transpose()?;
    let mut scan = match source {
        ExtractSource::Prompts(p) => data::scan_prompts(p, given.as_ref())?.0,
        ExtractSource::Folder(d) => data::scan_folder(d, &given.unwrap_or_default())?,
    };
    if scan.items.is_empty() {
        return Err(Error::Input("no labelled items to extract (check the labels)".into()));
    }
    if let Some(n) = max_samples {
        scan.keep_stratified(n);
    }
    let report = crate::extract::extract(model, &scan, out, settings, shard, batch, progress)?;
    let merged = if shard.count == 1 { Some(crate::extract::merge(out)?) } else { None };
    Ok((report, merged))
}

/// A PNG of values by layer (0-based), one line per named series (up to three colours, then
/// markers and dashes tell them apart), with the project's plot style; written atomically.
pub fn plot_by_layer(path: &Path, title: &str, y_desc: &str, series: &[(String, Vec<f64>)]) -> Result<()> {
    use crate::plot::{Marker, Panel, Series, LINE_COLOURS};
    if series.is_empty() || series.iter().any(|(_, v)| v.is_empty()) {
        return Err(Error::Input("nothing to plot: give at least one series with a value per layer".into()));
    }
    if let Some((name, _)) = series.iter().find(|(_, v)| v.iter().any(|x| !x.is_finite())) {
        return Err(Error::Input(format!("series {name:?} holds a value that is not a finite number")));
    }
    let lines: Vec<Series> = series
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let points = v.iter().enumerate().map(|(l, y)| (l as f64, *y)).collect();
            Series::new(name.clone(), points, LINE_COLOURS[i % LINE_COLOURS.len()]).marker(Marker::nth(i)).dashed(i >= LINE_COLOURS.len())
        })
        .collect();
    let panel = Panel::new(title, y_desc);
    crate::plot::png(path, (900, 420), |root| crate::plot::by_layer(&root, &panel, &lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_reduces_like_the_residual_capture() {
        use crate::hooks::ResidualCapture;
        let ctx = ForwardContext { call: 0, past_len: 0, new_len: 3, rows: 2, conditional_rows: 0..1 };
        for reduction in [Reduction::Last, Reduction::Mean, Reduction::All] {
            let mut ours = PointCapture::new(vec![HookPoint::Embed, HookPoint::ResidPost(0)], reduction);
            let mut theirs = ResidualCapture::new(1, reduction);
            for (call, t) in [3usize, 1, 1].into_iter().enumerate() {
                let mut h = Array3::from_shape_fn((2, t, 4), |(r, p, d)| (r * 7 + p * 3 + d + call) as f32 * 0.37);
                for point in [HookPoint::Embed, HookPoint::ResidPost(0)] {
                    ours.on_residual(&ctx, point, h.view_mut()).unwrap();
                    theirs.on_residual(&ctx, point, h.view_mut()).unwrap();
                }
            }
            let want = theirs.result().unwrap();
            for (i, (_, got)) in ours.results().unwrap().into_iter().enumerate() {
                assert_eq!(got, want.index_axis(Axis(0), i), "{reduction:?}");
            }
        }
        let never = PointCapture::new(vec![HookPoint::LnFinal], Reduction::Last).results().unwrap_err().to_string();
        assert!(never.contains("ln_final.hook_normalized"), "{never}");
    }
}
