//! The classifier judge: any ONNX audio classifier the user supplies scores clips. The graph takes
//! mono audio `[clips, samples]` at its sample rate and returns one score per class `[clips,
//! classes]`; a label map names the classes (CSV with a `name` or `display_name` column, in output
//! order, as AudioSet's `class_labels_indices.csv`). Scores become probabilities by `activation`:
//! `softmax` (logits, the default), `sigmoid` (multi-label logits, e.g. PaSST on AudioSet; then
//! normalised to sum to 1), or `none` (already probabilities; normalised).
//!
//! Settings: `model`, `labels`, `sample_rate`, optional `input` / `output` tensor names (default:
//! the graph's first), `activation`, and `ort_library` (the host fills it with the onnxruntime
//! library it runs on, so both share one runtime and its thread pool).

use musicgen_interp_sdk::ndarray::{Array2, ArrayView2, Axis};
use musicgen_interp_sdk::{export_judge, Judge};
use ort::session::Session;
use ort::value::TensorRef;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    model: String,
    labels: String,
    sample_rate: u32,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    activation: Activation,
    ort_library: String,
}

#[derive(serde::Deserialize, Default, Clone, Copy)]
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
fn read_labels(path: &str) -> Result<Vec<String>, String> {
    let body = std::fs::read_to_string(path).map_err(|e| format!("label map {path}: {e}"))?;
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or_else(|| format!("label map {path} is empty"))?);
    let column = ["display_name", "name", "label"]
        .iter()
        .find_map(|want| header.iter().position(|h| h.eq_ignore_ascii_case(want)))
        .ok_or_else(|| format!("label map {path}: the header {header:?} has no `name` or `display_name` column"))?;
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
        if s.sample_rate == 0 {
            return Err("onnx-judge: sample_rate must be positive".into());
        }
        let labels = read_labels(&s.labels)?;
        if !std::path::Path::new(&s.model).is_file() {
            return Err(format!("onnx-judge: classifier {} does not exist", s.model));
        }
        let env = environment(&s.ort_library)?;
        let session = Session::builder(&env)
            .and_then(|mut b| b.commit_from_file(&s.model).map_err(ort::Error::from))
            .map_err(|e| format!("onnx-judge: loading classifier {}: {e}", s.model))?;
        let input = s.input.or_else(|| session.inputs().first().map(|i| i.name().to_string())).ok_or("onnx-judge: the classifier has no input")?;
        let output = s.output.or_else(|| session.outputs().first().map(|o| o.name().to_string())).ok_or("onnx-judge: the classifier has no output")?;
        if !session.inputs().iter().any(|i| i.name() == input) {
            return Err(format!("onnx-judge: the classifier has no input {input:?}"));
        }
        Ok(OnnxJudge { session, input, output, labels, sample_rate: s.sample_rate, activation: s.activation })
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }

    fn judge(&mut self, audio: ArrayView2<'_, f32>) -> Result<Array2<f32>, String> {
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
            if !(total > 0.0) || !total.is_finite() {
                return Err("onnx-judge: the classifier's scores do not form a distribution (sum not positive)".into());
            }
            row.mapv_inplace(|x| x / total);
        }
        Ok(probs.mapv(|x| x as f32))
    }
}

export_judge!(OnnxJudge);
