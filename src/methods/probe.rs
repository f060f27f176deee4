//! Probe training and evaluation (seed A) on extracted residuals, through probe-model plugins.
//!
//! Training: features L2-normalised per sample; classes balanced by downsampling to the smallest
//! (seeded); a stratified test split (15%, seeded); one probe per layer
//! (`blocks.{l}.hook_resid_post`), weights saved as `{loss}_weights.npy` `[layers, classes, d_model]`
//! with `{loss}_metrics.json` and their own split, `{loss}_split.json`, which records what it belongs
//! to (loss, stream, seed, the data's fingerprint and the weights' sha256).
//! Evaluation: accuracy, loss and confusion matrix per layer on the split that belongs to the weights
//! (another is refused); CSV, `.npy`, a PNG plot of accuracy and loss against layer; the best layer
//! named.

use std::path::{Path, PathBuf};

use ndarray::{s, Array1, Array2, Array3, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plugin::ProbePlugin;
use crate::model::bundle::sha256_file;
use crate::store::{write_atomic, write_npy};

/// Which CFG half the features come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Cond,
    Uncond,
}

impl std::str::FromStr for Stream {
    type Err = Error;
    /// `cond` / `uncond`, or the seed's `--residual-type` values `conditional` / `unconditional`.
    fn from_str(s: &str) -> Result<Stream> {
        match s {
            "cond" | "conditional" => Ok(Stream::Cond),
            "uncond" | "unconditional" => Ok(Stream::Uncond),
            other => Err(Error::Input(format!("unknown stream {other:?}: use cond or uncond (or the seed's conditional / unconditional)"))),
        }
    }
}

/// Training's split rule: the test fraction and the seed `train-probes` uses unless told otherwise
/// (and `evaluate` when it has to make the split itself).
pub const DEFAULT_TEST_FRACTION: f64 = 0.15;
pub const DEFAULT_SEED: u64 = 42;

/// The saved split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub seed: u64,
    pub test_fraction: f64,
    pub stream: Stream,
    pub num_classes: usize,
    /// Samples per class after balancing.
    pub per_class: usize,
    /// The probe loss the split was made for (absent in splits written before it was recorded).
    #[serde(default)]
    pub loss: Option<String>,
    /// The data it indexes: [`data_fingerprint`] of the features.
    #[serde(default)]
    pub data: Option<String>,
    /// sha256 of the weights file trained on it.
    #[serde(default)]
    pub weights_sha256: Option<String>,
}

/// The split file that belongs to weights file `weights`: `NAME_split.json` beside `NAME_weights.npy`
/// (or beside `NAME_probe.json`, a non-linear probe's states).
pub fn split_path_for(weights: &Path) -> PathBuf {
    weights.with_file_name(format!("{}_split.json", output_stem(weights)))
}

/// The prefix of an evaluation's output files for weights file `weights` (`mse` for `mse_weights.npy`
/// or `mse_probe.json`).
pub fn output_stem(weights: &Path) -> String {
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    ["_weights.npy", "_probe.json", ".npy", ".json"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name).to_string()
}

/// The split `evaluate` uses for `weights` when none is given: `NAME_split.json` beside
/// `NAME_weights.npy`, or `split.json` there (what an older training wrote) when only that exists.
pub fn default_split_for(weights: &Path) -> PathBuf {
    let own = split_path_for(weights);
    let legacy = weights.with_file_name("split.json");
    if !own.is_file() && legacy.is_file() { legacy } else { own }
}

/// The probe loss a weights file was trained with, from its name: `ce...` is ce, anything else mse.
pub fn loss_from_file_name(weights: &Path) -> String {
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.starts_with("ce") { "ce".into() } else { "mse".into() }
}

/// The folder an evaluation writes into by default: the weights' own (`.` for a bare file name).
pub fn default_output_dir(weights: &Path) -> PathBuf {
    weights.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
}

/// What `train_with` wrote for `loss` into `out`, as a file name to report: `LOSS_weights.npy`, or
/// `LOSS_probe.json` (with its states in `LOSS_probe/`) for a probe without linear weights.
pub fn trained_probes_file(out: &Path, loss: &str) -> String {
    if out.join(format!("{loss}_probe.json")).is_file() && !out.join(format!("{loss}_weights.npy")).is_file() {
        format!("{loss}_probe.json (the probes' own states in {loss}_probe/)")
    } else {
        format!("{loss}_weights.npy")
    }
}

/// A probe whose saved state is not a linear weight matrix (say k-nearest neighbours): `train-probes`
/// keeps each layer's state as its plugin saved it, in `NAME_probe/layer_LLL.state`, and describes
/// them in `NAME_probe.json`, which `evaluate` takes as its `--weights-file`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeStates {
    /// The plugin (built-in name or path) and the settings it was created with (JSON).
    pub probe: String,
    pub settings: String,
    pub classes: usize,
    pub d_model: usize,
    /// Each layer's state file, relative to this file's folder, and its sha256.
    pub layers: Vec<String>,
    pub sha256: Vec<String>,
}

/// Whether `path` starts as a `.npy` file does.
fn is_npy(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 6];
    let mut f = std::fs::File::open(path).map_err(Error::io(path))?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"\x93NUMPY")
}


/// Per-layer numbers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerMetrics {
    pub layer: usize,
    pub accuracy: f64,
    pub loss: f64,
    /// The number of classes (the chance accuracy is its inverse).
    pub classes: usize,
}

/// Extracted residuals of one stream: `[samples, layers, d_model]` (the embedding entry dropped, so
/// index `l` is `blocks.{l}.hook_resid_post`) and labels.
pub struct Features {
    pub x: Array3<f32>,
    pub labels: Vec<i64>,
}

impl Features {
    /// Reads `DIR/residuals_{stream}.npy` and `DIR/labels.npy` (written by `extract`).
    pub fn load(dir: &Path, stream: Stream) -> Result<Features> {
        let name = match stream {
            Stream::Cond => "residuals_cond.npy",
            Stream::Uncond => "residuals_uncond.npy",
        };
        let p = dir.join(name);
        if !p.is_file() {
            return Err(Error::Input(format!("{} does not exist: run `extract` first", p.display())));
        }
        let all: Array3<f32> =
            crate::store::read_npy(&p, "residuals [samples, points, d_model] (extract with reduction last or mean for probes)")?;
        let labels: Array1<i64> = crate::store::read_npy(&dir.join("labels.npy"), "labels [samples]")?;
        if labels.len() != all.shape()[0] {
            return Err(Error::Input(format!("{} labels for {} samples", labels.len(), all.shape()[0])));
        }
        // Point 0 is embed.hook_out; the probes are per layer output.
        Ok(Features { x: all.slice(s![.., 1.., ..]).to_owned(), labels: labels.to_vec() })
    }

    pub fn layers(&self) -> usize {
        self.x.shape()[1]
    }

    /// What a split indexes: the labels and the features' shape (hashed).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(format!("{:?}", self.x.shape()).as_bytes());
        self.labels.iter().for_each(|l| h.update(l.to_le_bytes()));
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Rows `idx` of layer `l`, each L2-normalised.
    pub fn layer(&self, l: usize, idx: &[usize]) -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((idx.len(), self.x.shape()[2]));
        for (r, &i) in idx.iter().enumerate() {
            let row = self.x.slice(s![i, l, ..]);
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            x.row_mut(r).assign(&row.mapv(|v| v / norm));
        }
        x
    }
}

/// Balanced, stratified split of `labels` (classes `0..num_classes`, each needs >= 2 examples).
pub fn split(labels: &[i64], num_classes: usize, test_fraction: f64, seed: u64, stream: Stream) -> Result<Split> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    // What the labels hold, for a message that suggests the right --num-classes.
    let found = {
        let distinct: std::collections::BTreeSet<i64> = labels.iter().copied().collect();
        let shown: Vec<String> = distinct.iter().take(12).map(i64::to_string).collect();
        let more = if distinct.len() > 12 { ", ..." } else { "" };
        let hint = match distinct.last() {
            Some(&max) if max >= 0 && distinct.first().is_some_and(|&m| m >= 0) => format!("; use --num-classes {}", max + 1),
            _ => String::new(),
        };
        format!("the labels hold {} class(es): {}{more}{hint}", distinct.len(), shown.join(", "))
    };
    for (i, &l) in labels.iter().enumerate() {
        let c = usize::try_from(l).ok().filter(|&c| c < num_classes).ok_or_else(|| {
            Error::Input(format!("sample {i} has label {l}, outside 0..{num_classes} (--num-classes {num_classes}); {found}"))
        })?;
        by_class[c].push(i);
    }
    for (c, members) in by_class.iter().enumerate() {
        if members.len() < 2 {
            let max = labels.iter().copied().max().unwrap_or(-1);
            let why = if c as i64 > max {
                format!("--num-classes is {num_classes}, but {found}")
            } else {
                format!("balanced training with a stratified test split needs at least 2 per class ({found}; extract more data of class {c})")
            };
            return Err(Error::Input(format!("class {c} has {} example(s): {why}", members.len())));
        }
    }
    let per_class = by_class.iter().map(Vec::len).min().unwrap_or(0);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let n_test = ((per_class as f64 * test_fraction).round() as usize).clamp(1, per_class - 1);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for members in &mut by_class {
        members.shuffle(&mut rng);
        members.truncate(per_class);
        test.extend_from_slice(&members[..n_test]);
        train.extend_from_slice(&members[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok(Split { train, test, seed, test_fraction, stream, num_classes, per_class, loss: None, data: None, weights_sha256: None })
}

fn labels_at(labels: &[i64], idx: &[usize]) -> Vec<i64> {
    idx.iter().map(|&i| labels[i]).collect()
}

/// Loss of linear scores: `mse` = mean squared error against one-hot targets (over samples and
/// classes), `ce` = mean cross-entropy of the softmax.
pub fn loss(scores: ArrayView2<'_, f32>, labels: &[i64], kind: &str) -> f64 {
    let n = scores.nrows().max(1) as f64;
    match kind {
        "ce" => scores
            .rows()
            .into_iter()
            .zip(labels)
            .map(|(r, &y)| {
                let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = r.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
                lse - r[y as usize] as f64
            })
            .sum::<f64>()
            / n,
        _ => {
            let c = scores.ncols() as f64;
            scores
                .rows()
                .into_iter()
                .zip(labels)
                .map(|(r, &y)| r.iter().enumerate().map(|(j, &v)| (v as f64 - if j as i64 == y { 1.0 } else { 0.0 }).powi(2)).sum::<f64>())
                .sum::<f64>()
                / (n * c)
        }
    }
}

fn argmax_rows(scores: ArrayView2<'_, f32>) -> Vec<i64> {
    scores.rows().into_iter().map(|r| crate::generate::sampling::argmax(r) as i64).collect()
}

/// Settings of a training run.
pub struct TrainOptions {
    pub num_classes: usize,
    /// `mse` or `ce`.
    pub loss: String,
    pub epochs: Option<u64>,
    pub stream: Stream,
    pub test_fraction: f64,
    pub seed: u64,
    /// Probe-model plugin (built-in name or path).
    pub probe: String,
}

/// The settings JSON a probe plugin is created with: `settings` (a JSON object, the plugin's own)
/// with `loss` and `epochs` added (a value of its own for either must agree with them).
fn probe_settings(o: &TrainOptions, settings: Option<&str>) -> Result<String> {
    let mut map = match settings {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return Err(Error::Input(format!("--settings {text}: give a JSON object, e.g. '{{\"model\": \"ridge\", \"alpha\": 1.0}}'"))),
            Err(e) => return Err(Error::Input(format!("--settings {text}: not JSON ({e})"))),
        },
    };
    for (key, value, flag) in [("loss", serde_json::json!(o.loss), "--loss-type"), ("epochs", serde_json::json!(o.epochs), "--epochs")] {
        match map.get(key) {
            Some(v) if *v != value && !(key == "epochs" && o.epochs.is_none()) => {
                return Err(Error::Input(format!("--settings sets {key} {v}, but {flag} is {value}: give it once")))
            }
            Some(_) => {}
            None => {
                map.insert(key.into(), value);
            }
        }
    }
    Ok(serde_json::Value::Object(map).to_string())
}

/// Trains one probe per layer; writes `{loss}_weights.npy`, `{loss}_split.json` and
/// `{loss}_metrics.json` into `out`. Returns the test metrics per layer.
pub fn train(data: &Path, out: &Path, o: &TrainOptions, progress: impl FnMut(usize, usize)) -> Result<Vec<LayerMetrics>> {
    train_with(data, out, o, None, progress)
}

/// [`train`] with the probe plugin's own settings (a JSON object; `loss` and `epochs` are added from
/// `o`). A probe that saves linear weights gives `{loss}_weights.npy`; one that saves other state
/// gives `{loss}_probe.json` and `{loss}_probe/` ([`ProbeStates`]).
pub fn train_with(data: &Path, out: &Path, o: &TrainOptions, settings: Option<&str>, mut progress: impl FnMut(usize, usize)) -> Result<Vec<LayerMetrics>> {
    let f = Features::load(data, o.stream)?;
    let mut sp = split(&f.labels, o.num_classes, o.test_fraction, o.seed, o.stream)?;
    sp.loss = Some(o.loss.clone());
    sp.data = Some(f.fingerprint());
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    if o.loss == "mse" && o.epochs.is_some() {
        eprintln!("note: the mse probe is solved in closed form; epochs is ignored");
    }
    let settings = probe_settings(o, settings)?;
    let (layers, d) = (f.layers(), f.x.shape()[2]);
    let mut weights = Array3::<f32>::zeros((layers, o.num_classes, d));
    let (ytr, yte) = (labels_at(&f.labels, &sp.train), labels_at(&f.labels, &sp.test));
    let tmp = tempfile_in(out)?;
    let mut metrics = Vec::new();
    let mut rows = Vec::new();
    // A probe saving `.npy` weights [classes, d_model] is linear (its layers go into one weights
    // file); any other saved state is kept per layer as the plugin wrote it.
    let mut states: Option<ProbeStates> = None;
    let states_dir = out.join(format!("{}_probe", o.loss));
    for l in 0..layers {
        let (xtr, xte) = (f.layer(l, &sp.train), f.layer(l, &sp.test));
        let mut probe = ProbePlugin::load(&o.probe, &settings)?;
        probe.fit(xtr.view(), &ytr, o.num_classes)?;
        probe.save(&tmp)?;
        let linear = is_npy(&tmp)?;
        if l > 0 && linear == states.is_some() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Input(format!("probe {} saved linear weights for some layers and other state for others", probe.name())));
        }
        let (str_, ste) = if linear {
            let w: Array2<f32> = crate::store::read_npy(&tmp, &format!("the weights probe {} saved [classes, d_model]", probe.name()))?;
            if w.dim() != (o.num_classes, d) {
                return Err(Error::Input(format!("probe {} saved weights {:?}, expected [{}, {d}]", probe.name(), w.dim(), o.num_classes)));
            }
            weights.index_axis_mut(Axis(0), l).assign(&w);
            (xtr.dot(&w.t()), xte.dot(&w.t()))
        } else {
            let st = states.get_or_insert_with(|| ProbeStates {
                probe: o.probe.clone(),
                settings: settings.clone(),
                classes: o.num_classes,
                d_model: d,
                layers: Vec::new(),
                sha256: Vec::new(),
            });
            std::fs::create_dir_all(&states_dir).map_err(Error::io(&states_dir))?;
            let name = format!("layer_{l:03}.state");
            let dest = states_dir.join(&name);
            std::fs::rename(&tmp, &dest).map_err(Error::io(&dest))?;
            st.layers.push(format!("{}_probe/{name}", o.loss));
            st.sha256.push(sha256_file(&dest)?);
            (probe.scores(xtr.view(), o.num_classes)?, probe.scores(xte.view(), o.num_classes)?)
        };
        let acc = |s: &Array2<f32>, y: &[i64]| argmax_rows(s.view()).iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
        let m = LayerMetrics { layer: l, accuracy: acc(&ste, &yte), loss: loss(ste.view(), &yte, &o.loss), classes: o.num_classes };
        rows.push(serde_json::json!({
            "layer": l, "point": crate::hooks::HookPoint::ResidPost(l).to_string(),
            "train_accuracy": acc(&str_, &ytr), "train_loss": loss(str_.view(), &ytr, &o.loss),
            "test_accuracy": m.accuracy, "test_loss": m.loss,
        }));
        metrics.push(m);
        progress(l + 1, layers);
    }
    let _ = std::fs::remove_file(&tmp);
    let weights_path = match &states {
        None => {
            let path = out.join(format!("{}_weights.npy", o.loss));
            write_npy(&path, &weights)?;
            path
        }
        Some(st) => {
            let path = out.join(format!("{}_probe.json", o.loss));
            write_atomic(&path, serde_json::to_string_pretty(st).expect("json").as_bytes())?;
            path
        }
    };
    sp.weights_sha256 = Some(sha256_file(&weights_path)?);
    write_atomic(&split_path_for(&weights_path), serde_json::to_string_pretty(&sp).expect("json").as_bytes())?;
    let best = best_layer(&metrics);
    let summary = serde_json::json!({
        "loss": o.loss, "probe": o.probe, "settings": serde_json::from_str::<serde_json::Value>(&settings).unwrap_or_default(),
        "weights": weights_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "stream": o.stream, "num_classes": o.num_classes,
        "train_samples": sp.train.len(), "test_samples": sp.test.len(), "per_class": sp.per_class,
        "epochs_ignored": o.loss == "mse" && o.epochs.is_some(),
        "best_layer": best, "layers": rows,
    });
    write_atomic(&out.join(format!("{}_metrics.json", o.loss)), serde_json::to_string_pretty(&summary).expect("json").as_bytes())?;
    Ok(metrics)
}

fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    Ok(dir.join(format!(".probe-{}.npy", std::process::id())))
}

/// The layer with the highest accuracy (lowest loss among ties).
pub fn best_layer(m: &[LayerMetrics]) -> usize {
    m.iter()
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy).then(b.loss.total_cmp(&a.loss)))
        .map_or(0, |x| x.layer)
}

/// What `evaluate` produced.
pub struct Evaluation {
    pub metrics: Vec<LayerMetrics>,
    /// `[layers, classes, classes]`: rows true class, columns predicted.
    pub confusion: Array3<i64>,
    pub best: usize,
    pub split: Split,
    /// The weights came without a split and `evaluate` made this one (to be saved and named).
    pub made_split: bool,
}

/// How `evaluate` makes the split for weights that come without one (trained elsewhere): training's
/// rule ([`split`]: balanced, stratified, [`DEFAULT_TEST_FRACTION`], [`DEFAULT_SEED`]) on this stream.
pub struct SplitRule {
    pub num_classes: usize,
    /// The stream to split (default cond); when given, an existing split must be of it.
    pub stream: Option<Stream>,
}

/// Per-layer test scores `[test samples, classes]` of the probes in `weights`: a linear weights
/// `.npy` `[layers, classes, d]`, or a `NAME_probe.json` of per-layer plugin states.
fn layer_scores(weights: &Path, f: &Features, test: &[usize], classes_expected: usize) -> Result<(usize, Vec<Array2<f32>>)> {
    let d = f.x.shape()[2];
    let misfit = |what: String| {
        Error::Input(format!("{what} do not fit the features ({} layers, d_model {d}) and split ({classes_expected} classes)", f.layers()))
    };
    if weights.extension().is_some_and(|e| e == "json") {
        let st: ProbeStates = serde_json::from_slice(&std::fs::read(weights).map_err(Error::io(weights))?)
            .map_err(|e| Error::Input(format!("{}: not a probe-state file written by train-probes ({e})", weights.display())))?;
        if st.layers.len() != f.layers() || st.d_model != d || st.classes != classes_expected || st.sha256.len() != st.layers.len() {
            return Err(misfit(format!("the probes of {} ({} layers, d_model {}, {} classes)", weights.display(), st.layers.len(), st.d_model, st.classes)));
        }
        let base = weights.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for (file, sha) in st.layers.iter().zip(&st.sha256) {
            let path = base.join(file);
            if sha256_file(&path)? != *sha {
                return Err(Error::Input(format!("{} changed since train-probes wrote {}", path.display(), weights.display())));
            }
            let mut probe = ProbePlugin::load(&st.probe, &st.settings)?;
            probe.load_weights(&path)?;
            out.push(probe.scores(f.layer(out.len(), test).view(), st.classes)?);
        }
        return Ok((st.classes, out));
    }
    let w: Array3<f32> = crate::store::read_npy(weights, "probe weights [layers, classes, d_model]")?;
    let (layers, classes, wd) = w.dim();
    if layers != f.layers() || wd != d || classes != classes_expected {
        return Err(misfit(format!("weights {:?}", w.dim())));
    }
    Ok((classes, (0..layers).map(|l| f.layer(l, test).dot(&w.index_axis(Axis(0), l).t())).collect()))
}

/// Evaluates `weights` (`[layers, classes, d]` `.npy`, or a non-linear probe's `NAME_probe.json`) on
/// the test split `split_path`, which must be the one written with them (its recorded weights sha256
/// and data fingerprint are checked).
pub fn evaluate(data: &Path, weights: &Path, split_path: &Path, loss_kind: &str) -> Result<Evaluation> {
    evaluate_with(data, weights, split_path, loss_kind, None)
}

/// [`evaluate`]; without a file at `split_path` and with `fallback`, the split is made by training's
/// rule ([`SplitRule`]), said so on stderr, and returned with `made_split` set (the caller saves it).
pub fn evaluate_with(data: &Path, weights: &Path, split_path: &Path, loss_kind: &str, fallback: Option<&SplitRule>) -> Result<Evaluation> {
    let (sp, f, made_split) = if !split_path.is_file() {
        let Some(rule) = fallback else {
            return Err(Error::Input(format!(
                "no split at {}: train-probes writes NAME_split.json beside NAME_weights.npy; pass the split the weights were trained with (--split)",
                split_path.display()
            )));
        };
        let stream = rule.stream.unwrap_or_default();
        let f = Features::load(data, stream)?;
        let mut sp = split(&f.labels, rule.num_classes, DEFAULT_TEST_FRACTION, DEFAULT_SEED, stream)?;
        sp.loss = Some(loss_kind.to_string());
        sp.data = Some(f.fingerprint());
        sp.weights_sha256 = Some(sha256_file(weights)?);
        eprintln!(
            "no split for {} (no {}): made train-probes' split myself: {} stream, balanced to {} per class, stratified, test fraction {}, seed {} -> {} test samples (held out only if the weights were not trained on them)",
            weights.display(),
            split_path.display(),
            format!("{:?}", sp.stream).to_lowercase(),
            sp.per_class,
            sp.test_fraction,
            sp.seed,
            sp.test.len()
        );
        (sp, f, true)
    } else {
        let sp: Split = serde_json::from_slice(&std::fs::read(split_path).map_err(Error::io(split_path))?)
            .map_err(|e| Error::Input(format!("{}: {e}", split_path.display())))?;
        let made_for = || {
            format!(
                "loss {}, stream {}, seed {}",
                sp.loss.as_deref().unwrap_or("unrecorded"),
                format!("{:?}", sp.stream).to_lowercase(),
                sp.seed
            )
        };
        match &sp.weights_sha256 {
            Some(recorded) if *recorded != sha256_file(weights)? => {
                return Err(Error::Input(format!(
                    "the split {} was written for other weights ({}), not {}: evaluate with the split trained with them (--split)",
                    split_path.display(),
                    made_for(),
                    weights.display()
                )))
            }
            Some(_) => {}
            None => eprintln!("note: {} records no weights (an older split); it cannot be checked against {}", split_path.display(), weights.display()),
        }
        if let Some(stream) = fallback.and_then(|r| r.stream) {
            if stream != sp.stream {
                return Err(Error::Input(format!(
                    "--stream {}, but the split {} was made on the {} stream",
                    format!("{stream:?}").to_lowercase(),
                    split_path.display(),
                    format!("{:?}", sp.stream).to_lowercase()
                )));
            }
        }
        let f = Features::load(data, sp.stream)?;
        if let Some(recorded) = &sp.data {
            if *recorded != f.fingerprint() {
                return Err(Error::Input(format!(
                    "the split {} was made on other data than {} (its labels or shapes differ): another dataset or extraction?",
                    split_path.display(),
                    data.display()
                )));
            }
        }
        (sp, f, false)
    };
    if let Some(&bad) = sp.test.iter().find(|&&i| i >= f.labels.len()) {
        return Err(Error::Input(format!("the split names sample {bad}, but the data has {}: another dataset?", f.labels.len())));
    }
    let (classes, scores) = layer_scores(weights, &f, &sp.test, sp.num_classes)?;
    let layers = scores.len();
    let y = labels_at(&f.labels, &sp.test);
    let mut confusion = Array3::<i64>::zeros((layers, classes, classes));
    let mut metrics = Vec::new();
    for (l, scores) in scores.iter().enumerate() {
        let pred = argmax_rows(scores.view());
        for (&t, &p) in y.iter().zip(&pred) {
            confusion[[l, t as usize, p as usize]] += 1;
        }
        let accuracy = pred.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
        metrics.push(LayerMetrics { layer: l, accuracy, loss: loss(scores.view(), &y, loss_kind), classes });
    }
    let best = best_layer(&metrics);
    Ok(Evaluation { metrics, confusion, best, split: sp, made_split })
}

/// Saves a split `evaluate` made to `path` (atomically).
pub fn write_split(path: &Path, sp: &Split) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(sp).expect("json").as_bytes())
}

/// Writes `{stem}_evaluation.csv`, `{stem}_confusion.npy` and the best layer's
/// `{stem}_confusion_best.csv` into `dir`.
pub fn write_evaluation(dir: &Path, stem: &str, e: &Evaluation) -> Result<()> {
    let mut csv = String::from("layer,point,accuracy,loss\n");
    for m in &e.metrics {
        csv.push_str(&format!("{},{},{:.6},{:.6}\n", m.layer, crate::hooks::HookPoint::ResidPost(m.layer), m.accuracy, m.loss));
    }
    write_atomic(&dir.join(format!("{stem}_evaluation.csv")), csv.as_bytes())?;
    write_npy(&dir.join(format!("{stem}_confusion.npy")), &e.confusion)?;
    let c = e.confusion.index_axis(Axis(0), e.best);
    let mut best = String::from("true\\predicted");
    for j in 0..c.ncols() {
        best.push_str(&format!(",{j}"));
    }
    best.push('\n');
    for (i, row) in c.rows().into_iter().enumerate() {
        best.push_str(&i.to_string());
        for v in row {
            best.push_str(&format!(",{v}"));
        }
        best.push('\n');
    }
    write_atomic(&dir.join(format!("{stem}_confusion_best.csv")), best.as_bytes())
}

/// A PNG of test accuracy (on 0..1, with the chance level 1 / classes dashed) and loss against
/// layer (0-based, `blocks.{layer}.hook_resid_post`), written atomically.
pub fn plot(path: &Path, metrics: &[LayerMetrics], loss_kind: &str, best: usize) -> Result<()> {
    use crate::plot::{Panel, Series, LINE_COLOURS};
    let acc: Vec<(f64, f64)> = metrics.iter().map(|m| (m.layer as f64, m.accuracy)).collect();
    let loss: Vec<(f64, f64)> = metrics.iter().map(|m| (m.layer as f64, m.loss)).collect();
    let classes = metrics.first().map_or(0, |m| m.classes);
    let mut top = Panel::new(format!("probe test accuracy by layer (best: layer {best})"), "test accuracy");
    top.y_range = Some((0.0, 1.0));
    if classes > 0 {
        let chance = 1.0 / classes as f64;
        top.reference = Some((chance, format!("chance (1/{classes} = {})", crate::plot::tick_label(chance, 2))));
    }
    let bottom = Panel::new(format!("test loss ({loss_kind}) by layer"), format!("test loss ({loss_kind})"));
    crate::plot::png(path, (900, 560), |root| {
        let (upper, lower) = root.split_vertically(280);
        crate::plot::by_layer(&upper, &top, &[Series::new("test accuracy", acc, LINE_COLOURS[0])])?;
        crate::plot::by_layer(&lower, &bottom, &[Series::new("test loss", loss, LINE_COLOURS[1]).marker(crate::plot::Marker::Square)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_balanced_stratified_and_seeded() {
        let labels: Vec<i64> = (0..40).map(|i| if i < 25 { 0 } else { 1 }).collect();
        let s = split(&labels, 2, 0.15, 7, Stream::Cond).unwrap();
        assert_eq!(s.per_class, 15);
        assert_eq!(s.test.len(), 2 * 2); // round(15 * 0.15) = 2 per class
        assert_eq!(s.train.len(), 2 * 13);
        assert!(s.test.iter().all(|i| !s.train.contains(i)));
        assert_eq!(s, split(&labels, 2, 0.15, 7, Stream::Cond).unwrap());
        assert_ne!(s.test, split(&labels, 2, 0.15, 8, Stream::Cond).unwrap().test);
        let e = split(&[0, 0, 1], 2, 0.15, 0, Stream::Cond).unwrap_err().to_string();
        assert!(e.contains("class 1 has 1 example"), "{e}");
        let e = split(&[0, 0, 5], 2, 0.15, 0, Stream::Cond).unwrap_err().to_string();
        assert!(e.contains("label 5, outside 0..2"), "{e}");
    }

    #[test]
    fn losses() {
        let s = ndarray::arr2(&[[1.0f32, 0.0], [0.0, 1.0]]);
        assert_eq!(loss(s.view(), &[0, 1], "mse"), 0.0);
        let ce = loss(s.view(), &[0, 1], "ce");
        assert!((ce - (1.0 + (-1.0f64).exp()).ln()).abs() < 1e-9);
    }
}
