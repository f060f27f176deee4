//! The classifier judge: any ONNX audio classifier the user supplies scores clips. The graph takes
//! mono audio `[clips, samples]` at its sample rate and returns one score per class `[clips,
//! classes]`; a label map names the classes (CSV with a `name` or `display_name` column, in output
//! order, as AudioSet's `class_labels_indices.csv`; a CSV with only an `index` column, or no label map,
//! names each class by its index). Scores become probabilities by `activation`: `softmax` (logits,
//! the default), `sigmoid` (multi-label logits; then normalised to sum to 1), or `none` (already
//! probabilities; normalised).
//!
//! Settings: `model` (the .onnx file, or a judge folder holding `classifier.onnx`), `labels`,
//! `sample_rate`, optional `input` / `output` tensor names (default: the graph's first),
//! `activation`. The classifier runs on the onnxruntime library the host offers in its host
//! information (ABI 4), so both share one runtime and its thread pool.
//!
//! A judge folder's metadata, `NAME.json` beside `NAME.onnx` (`onnx/export_passt.py` and
//! `onnx/make_classifier.py` write it), gives the defaults: `sample_rate`, `activation`, `input`,
//! `output`, `labels` (relative to the folder) and the clip lengths the graph takes, `min_samples` /
//! `max_samples` (a clip outside them is refused by name before the graph runs). A setting that
//! contradicts the metadata's `sample_rate` or `activation` is refused; `labels`, `input` and
//! `output` given in the settings win.

use std::path::{Path, PathBuf};

use musicgen_interp_sdk::ndarray::{Array2, ArrayView2, Axis};
use musicgen_interp_sdk::{export_judge, Judge};
use ort::session::Session;
use ort::value::{TensorRef, ValueType};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    model: String,
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    activation: Option<Activation>,
}

/// A judge folder's `NAME.json` (other keys, e.g. where the weights came from, are the exporter's).
#[derive(serde::Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    activation: Option<Activation>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    min_samples: Option<usize>,
    #[serde(default)]
    max_samples: Option<usize>,
}

#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum Activation {
    #[default]
    Softmax,
    Sigmoid,
    None,
}

pub struct OnnxJudge {
    session: Session,
    input: String,
    output: String,
    labels: Vec<String>,
    sample_rate: u32,
    activation: Activation,
    /// Clip lengths the graph takes (samples), from the metadata.
    lengths: (usize, usize),
}

/// The classifier file of `model` (a judge folder means its `classifier.onnx`) and its metadata, if
/// it has any (`NAME.json` beside `NAME.onnx`).
fn locate(model: &str) -> Result<(PathBuf, Metadata), String> {
    let mut path = PathBuf::from(model);
    if path.is_dir() {
        path = path.join("classifier.onnx");
    }
    if !path.is_file() {
        return Err(format!("onnx-judge: classifier {} does not exist", path.display()));
    }
    let meta_path = path.with_extension("json");
    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("onnx-judge: the classifier's metadata {}: {e}", meta_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metadata::default(),
        Err(e) => return Err(format!("onnx-judge: the classifier's metadata {}: {e}", meta_path.display())),
    };
    Ok((path, meta))
}

/// The setting, or the metadata's value; both given and different is an error.
fn agree<T: PartialEq + std::fmt::Debug>(name: &str, setting: Option<T>, meta: Option<T>, meta_path: &Path) -> Result<Option<T>, String> {
    match (setting, meta) {
        (Some(s), Some(m)) if s != m => Err(format!(
            "onnx-judge: {name} is {s:?} in the settings but {m:?} in the classifier's metadata {}: drop the setting or give the value the classifier was made for",
            meta_path.display()
        )),
        (s, m) => Ok(s.or(m)),
    }
}

/// Splits one CSV line, honouring double quotes (`""` inside quotes is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// Class names in order from a label-map CSV.
fn read_labels(path: &Path) -> Result<Vec<String>, String> {
    let path = path.display();
    let body = std::fs::read_to_string(path.to_string()).map_err(|e| format!("label map {path}: {e}"))?;
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or_else(|| format!("label map {path} is empty"))?);
    let column = ["display_name", "name", "label"].iter().find_map(|want| header.iter().position(|h| h.eq_ignore_ascii_case(want)));
    let Some(column) = column else {
        // Index-only: the classes are named by their indices, which must count up from 0.
        let index = header
            .iter()
            .position(|h| h.eq_ignore_ascii_case("index"))
            .ok_or_else(|| format!("label map {path}: the header {header:?} has no `name`, `display_name` or `index` column"))?;
        return lines
            .enumerate()
            .map(|(i, l)| match csv_fields(l).get(index).map(|f| f.parse::<usize>()) {
                Some(Ok(n)) if n == i => Ok(i.to_string()),
                _ => Err(format!("label map {path} line {}: index {i} expected (an index-only map lists 0, 1, 2, ... in output order)", i + 2)),
            })
            .collect();
    };
    lines
        .enumerate()
        .map(|(i, l)| csv_fields(l).get(column).cloned().ok_or_else(|| format!("label map {path} line {}: no column {column}", i + 2)))
        .collect()
}

/// The plugin's onnxruntime environment, made once per process (the `ort` crate allows one): it
/// joins the host's, whose global thread pool the sessions then share.
fn environment(library: &str) -> Result<ort::environment::Environment, String> {
    static ENV: std::sync::OnceLock<Result<ort::environment::Environment, String>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| format!("onnx-judge: loading onnxruntime {library}: {e}"))?;
        // (After init_from: building the pool options already calls into onnxruntime.)
        let pool = ort::environment::GlobalThreadPoolOptions::default().with_spin_control(false).map_err(|e| e.to_string())?;
        builder
            .with_name("musicgen-interp-judge")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| format!("onnx-judge: onnxruntime environment: {e}"))
    })
    .clone()
}

impl Judge for OnnxJudge {
    const NAME: &'static str = "onnx-judge";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn create(config: &str) -> Result<Self, String> {
        let s: Settings = serde_json::from_str(config).map_err(|e| format!("onnx-judge settings: {e}"))?;
        let (model, meta) = locate(&s.model)?;
        let meta_path = model.with_extension("json");
        let sample_rate = agree("sample_rate", s.sample_rate, meta.sample_rate, &meta_path)?
            .ok_or("onnx-judge: no sample_rate: give the rate the classifier expects (its folder has no metadata naming it)")?;
        if sample_rate == 0 {
            return Err("onnx-judge: sample_rate must be positive".into());
        }
        let activation = agree("activation", s.activation, meta.activation, &meta_path)?.unwrap_or_default();
        let lengths = (meta.min_samples.unwrap_or(1).max(1), meta.max_samples.unwrap_or(usize::MAX));
        if lengths.0 > lengths.1 {
            return Err(format!("onnx-judge: the classifier's metadata {} says min_samples {} > max_samples {}", meta_path.display(), lengths.0, lengths.1));
        }
        // The settings' label map, else the metadata's (relative to the classifier's folder).
        let folder = model.parent().unwrap_or(Path::new("."));
        let labels = match s.labels.map(PathBuf::from).or_else(|| meta.labels.map(|l| folder.join(l))) {
            Some(path) => Some(read_labels(&path)?),
            None => None,
        };
        // The onnxruntime library the host runs on (ABI 4's host information): one runtime and one
        // thread pool for the host's graphs and the judge's.
        let ort_library = musicgen_interp_sdk::host_info().onnxruntime_library.ok_or("onnx-judge: the host offers no onnxruntime library to run the classifier on")?;
        let env = environment(&ort_library)?;
        let session = Session::builder(&env)
            .and_then(|mut b| b.commit_from_file(&model))
            .map_err(|e| format!("onnx-judge: loading classifier {}: {e}", model.display()))?;
        let input = s.input.or(meta.input).or_else(|| session.inputs().first().map(|i| i.name().to_string())).ok_or("onnx-judge: the classifier has no input")?;
        let output = s.output.or(meta.output).or_else(|| session.outputs().first().map(|o| o.name().to_string())).ok_or("onnx-judge: the classifier has no output")?;
        if !session.inputs().iter().any(|i| i.name() == input) {
            return Err(format!("onnx-judge: the classifier has no input {input:?}"));
        }
        let outlet = session.outputs().iter().find(|o| o.name() == output).ok_or_else(|| format!("onnx-judge: the classifier has no output {output:?}"))?;
        // The class count the graph declares, when it is static.
        let classes = match outlet.dtype() {
            ValueType::Tensor { shape, .. } if shape.len() == 2 && shape[1] > 0 => Some(shape[1] as usize),
            _ => None,
        };
        // (A label map of another length than the declared classes is refused when a clip is judged,
        // as for a graph that declares none.)
        let labels = match (labels, classes) {
            (Some(l), _) => l,
            (None, Some(c)) => (0..c).map(|i| i.to_string()).collect(),
            (None, None) => return Err("onnx-judge: no label map, and the classifier's output does not declare its class count: give `labels`".into()),
        };
        Ok(OnnxJudge { session, input, output, labels, sample_rate, activation, lengths })
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }

    fn judge(&mut self, audio: ArrayView2<'_, f32>) -> Result<Array2<f32>, String> {
        let (low, high) = self.lengths;
        if audio.ncols() < low || audio.ncols() > high {
            let secs = |n: usize| n as f64 / self.sample_rate as f64;
            return Err(format!(
                "onnx-judge: a clip of {} samples ({:.3} s at {} Hz): the classifier takes {low}..={high} samples ({:.3}..={:.3} s)",
                audio.ncols(),
                secs(audio.ncols()),
                self.sample_rate,
                secs(low),
                secs(high)
            ));
        }
        let audio = audio.as_standard_layout();
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => TensorRef::from_array_view(&audio).map_err(|e| e.to_string())?])
            .map_err(|e| format!("onnx-judge: running the classifier: {e}"))?;
        let scores = outputs
            .get(&self.output)
            .ok_or_else(|| format!("onnx-judge: the classifier returned no output {:?}", self.output))?
            .try_extract_array::<f32>()
            .map_err(|e| format!("onnx-judge: output {}: {e}", self.output))?
            .to_owned()
            .into_dimensionality::<musicgen_interp_sdk::ndarray::Ix2>()
            .map_err(|_| format!("onnx-judge: output {} is not [clips, classes]", self.output))?;
        if scores.ncols() != self.labels.len() {
            return Err(format!("onnx-judge: the classifier gives {} classes but the label map names {}", scores.ncols(), self.labels.len()));
        }
        let mut probs = scores.mapv(|x| x as f64);
        for mut row in probs.axis_iter_mut(Axis(0)) {
            match self.activation {
                Activation::Softmax => {
                    let max = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                    row.mapv_inplace(|x| (x - max).exp());
                }
                Activation::Sigmoid => row.mapv_inplace(|x| 1.0 / (1.0 + (-x).exp())),
                Activation::None => {}
            }
            let total: f64 = row.sum();
            if total.is_nan() || total <= 0.0 || total.is_infinite() {
                return Err("onnx-judge: the classifier's scores do not form a distribution (sum not positive)".into());
            }
            row.mapv_inplace(|x| x / total);
        }
        Ok(probs.mapv(|x| x as f32))
    }
}

export_judge!(OnnxJudge);

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_of(body: &str) -> Result<Vec<String>, String> {
        let dir = std::env::temp_dir().join(format!("onnx-judge-labels-{}-{}", std::process::id(), body.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.csv");
        std::fs::write(&path, body).unwrap();
        let got = read_labels(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        got
    }

    #[test]
    fn label_maps_named_or_index_only() {
        assert_eq!(labels_of("index,mid,display_name\n0,/m/a,Speech\n1,/m/b,\"Violin, fiddle\"\n").unwrap(), ["Speech", "Violin, fiddle"]);
        assert_eq!(labels_of("index\n0\n1\n2\n").unwrap(), ["0", "1", "2"]);
        let err = labels_of("index\n0\n2\n").unwrap_err();
        assert!(err.contains("line 3: index 1 expected"), "{err}");
        let err = labels_of("id,what\n0,x\n").unwrap_err();
        assert!(err.contains("no `name`, `display_name` or `index` column"), "{err}");
    }

    #[test]
    fn settings_and_metadata_agree_or_are_refused() {
        let meta = Path::new("judge/classifier.json");
        assert_eq!(agree("sample_rate", None, Some(32000), meta).unwrap(), Some(32000));
        assert_eq!(agree("sample_rate", Some(32000), Some(32000), meta).unwrap(), Some(32000));
        assert_eq!(agree("sample_rate", Some(16000), None, meta).unwrap(), Some(16000));
        let err = agree("sample_rate", Some(16000), Some(32000), meta).unwrap_err();
        assert!(err.contains("sample_rate is 16000 in the settings but 32000") && err.contains("classifier.json"), "{err}");
        assert!(agree("activation", Some(Activation::Sigmoid), Some(Activation::Softmax), meta).is_err());
    }
}
