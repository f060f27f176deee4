//! Judging clips with an audio classifier: a judge plugin (built-in `onnx-judge` runs any ONNX
//! classifier with a label map) gives class probabilities per clip; the concept map says which
//! classifier labels stand for each concept. The scores the ISMIR 2024 methods use are here:
//! concept probabilities, effectiveness and precision of an intervention, NDCG of a concept's rank.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::data::concepts;
use crate::error::{Error, Result};
use crate::plugin::JudgePlugin;

/// Probabilities below this are raised to it before a logarithm.
pub const EPS: f64 = 1e-12;

/// The classifier's label names for each of the paper's concepts (AudioSet's names, which PaSST and
/// other AudioSet classifiers use).
pub fn default_concept_labels() -> BTreeMap<String, Vec<String>> {
    [
        ("guitar", "Guitar"),
        ("piano", "Piano"),
        ("trumpet", "Trumpet"),
        ("violin", "Violin, fiddle"),
        ("classical", "Classical music"),
        ("pop", "Pop music"),
        ("jazz", "Jazz"),
        ("rock", "Rock music"),
        ("electronic", "Electronic music"),
        ("hip-hop", "Hip hop music"),
    ]
    .into_iter()
    .map(|(c, l)| (c.to_string(), vec![l.to_string()]))
    .collect()
}

fn default_plugin() -> String {
    "onnx-judge".into()
}

/// The `judge:` block of a run config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Judge plugin: built-in name or path (default `onnx-judge`).
    #[serde(default = "default_plugin")]
    pub plugin: String,
    /// The plugin's own settings; for `onnx-judge`: `model` (.onnx), `labels` (CSV with a `name` or
    /// `display_name` column), `sample_rate`, optional `input`, `output`, `activation`
    /// (softmax | sigmoid | none).
    pub settings: serde_json::Value,
    /// Where the settings were written, so the plugin's complaint names the file's line and column.
    #[serde(skip)]
    pub origin: Option<crate::config::Origin>,
    /// Classifier labels per concept (default: the AudioSet names of the ten concepts).
    #[serde(default = "default_concept_labels")]
    pub concepts: BTreeMap<String, Vec<String>>,
}

impl JudgeConfig {
    /// The place of a config file's `judge.settings` block.
    pub fn origin_in(file: &std::path::Path) -> crate::config::Origin {
        use crate::config::Seg;
        crate::config::Origin::new(file, &[Seg::Key("judge".into()), Seg::Key("settings".into())])
    }

    /// The built-in ONNX judge over `model` with its label map.
    pub fn onnx(model: PathBuf, labels: PathBuf, sample_rate: u32) -> JudgeConfig {
        JudgeConfig {
            plugin: default_plugin(),
            settings: serde_json::json!({"model": model, "labels": labels, "sample_rate": sample_rate}),
            origin: None,
            concepts: default_concept_labels(),
        }
    }
}

/// A loaded judge with its concept map resolved to label indices.
pub struct Judge {
    plugin: JudgePlugin,
    concepts: BTreeMap<String, Vec<usize>>,
}

impl Judge {
    /// Loads the plugin and checks that every concept in `needed` maps to labels the classifier has.
    pub fn load(config: &JudgeConfig, ort_library: &std::path::Path, needed: &[&str]) -> Result<Judge> {
        let mut settings = config.settings.clone();
        if config.plugin == "onnx-judge" {
            if let Some(map) = settings.as_object_mut() {
                map.entry("ort_library").or_insert_with(|| serde_json::json!(ort_library));
            }
        }
        let json = crate::config::SettingsJson::new(&settings);
        let plugin = JudgePlugin::load(&config.plugin, &json.text).map_err(|e| json.explain(e, config.origin.as_ref()))?;
        let mut resolved = BTreeMap::new();
        for &c in needed {
            let c = concepts::concept(c)?;
            let names = config.concepts.get(c).ok_or_else(|| {
                Error::Input(format!("judge: no classifier labels for concept {c}; add `concepts: {{{c}: [LABEL, ...]}}` to the judge settings"))
            })?;
            let mut idx = Vec::new();
            for name in names {
                let i = plugin.labels().iter().position(|l| l.eq_ignore_ascii_case(name)).ok_or_else(|| {
                    Error::Input(format!(
                        "judge: concept {c} maps to the label {name:?}, which the classifier's label map ({} labels) does not name",
                        plugin.labels().len()
                    ))
                })?;
                idx.push(i);
            }
            if idx.is_empty() {
                return Err(Error::Input(format!("judge: concept {c} maps to no label")));
            }
            resolved.insert(c.to_string(), idx);
        }
        Ok(Judge { plugin, concepts: resolved })
    }

    pub fn labels(&self) -> &[String] {
        self.plugin.labels()
    }

    /// `[clips, labels]` probabilities of mono clips `[clips, samples]` at `rate` (resampled to the
    /// judge's rate first). Clips are judged one at a time, so a clip's scores never depend on which
    /// clips shared its call: batched, one-by-one and sharded runs write the same numbers.
    pub fn probabilities(&mut self, clips: ArrayView2<'_, f32>, rate: u32) -> Result<Array2<f32>> {
        let want = self.plugin.sample_rate();
        let mut out = Array2::<f32>::zeros((clips.nrows(), self.labels().len()));
        for (row, clip) in clips.rows().into_iter().enumerate() {
            let clip = if rate == want { clip.to_vec() } else { crate::audio::resample(&clip.to_vec(), rate, want)? };
            let n = clip.len();
            let probs = self.plugin.judge(ndarray::ArrayView2::from_shape((1, n), &clip).expect("one row"))?;
            out.row_mut(row).assign(&probs.row(0));
        }
        Ok(out)
    }

    /// The probability of `concept`: the sum over its labels.
    pub fn concept_probability(&self, probs: ArrayView1<'_, f32>, concept: &str) -> f64 {
        self.concepts[concept].iter().map(|&i| probs[i] as f64).sum()
    }

    /// Label indices of `concept`.
    pub fn concept_labels(&self, concept: &str) -> &[usize] {
        &self.concepts[concept]
    }
}

/// log(p0[o] / p0[d]) - log(p1[o] / p1[d]): how far the intervention moved the odds from the
/// original concept towards the desired one (positive = towards the desired concept).
pub fn effectiveness(p0_orig: f64, p0_des: f64, p1_orig: f64, p1_des: f64) -> f64 {
    let l = |x: f64| x.max(EPS).ln();
    (l(p0_orig) - l(p0_des)) - (l(p1_orig) - l(p1_des))
}

/// -KL(p1 || p0) over the classifier's labels (both renormalised in f64 first): 0 when the
/// intervention changed nothing, negative otherwise.
pub fn precision(p1: ArrayView1<'_, f32>, p0: ArrayView1<'_, f32>) -> f64 {
    let norm = |p: ArrayView1<'_, f32>| {
        let total: f64 = p.iter().map(|&x| x as f64).sum();
        p.iter().map(|&x| x as f64 / total).collect::<Vec<f64>>()
    };
    let (a, b) = (norm(p1), norm(p0));
    -a.iter().zip(&b).map(|(&a, &b)| if a <= 0.0 { 0.0 } else { a * (a.ln() - b.max(EPS).ln()) }).sum::<f64>()
}

/// NDCG of a clip for a concept: labels ranked by probability, relevance 1 for the concept's labels.
pub fn ndcg(probs: ArrayView1<'_, f32>, relevant: &[usize]) -> f64 {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let gain = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
    let dcg: f64 = order.iter().enumerate().filter(|(_, l)| relevant.contains(l)).map(|(r, _)| gain(r)).sum();
    let ideal: f64 = (0..relevant.len()).map(gain).sum();
    dcg / ideal
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn scores_follow_their_formulas() {
        // No change: zero effectiveness, zero precision loss.
        let p = arr1(&[0.5f32, 0.3, 0.2]);
        assert_eq!(effectiveness(0.5, 0.3, 0.5, 0.3), 0.0);
        assert!(precision(p.view(), p.view()).abs() < 1e-12);
        // Odds moved towards the desired concept: positive.
        let e = effectiveness(0.5, 0.3, 0.2, 0.6);
        assert!((e - ((0.5f64 / 0.3).ln() - (0.2f64 / 0.6).ln())).abs() < 1e-12);
        let q = arr1(&[0.2f32, 0.6, 0.2]);
        let kl = 0.2 * (0.2f64 / 0.5).ln() + 0.6 * (0.6f64 / 0.3).ln();
        assert!((precision(q.view(), p.view()) + kl).abs() < 1e-6);
        // NDCG: relevant label first -> 1; last of three -> 1/log2(4) = 0.5.
        assert!((ndcg(p.view(), &[0]) - 1.0).abs() < 1e-12);
        assert!((ndcg(p.view(), &[2]) - 0.5).abs() < 1e-12);
        assert!((ndcg(p.view(), &[1, 0]) - 1.0).abs() < 1e-12);
    }
}
