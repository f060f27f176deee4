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
pub fn default_concept_labels() -> BTreeMap<String, Vec<ClassRef>> {
    AUDIOSET.iter().map(|&(c, l, _)| (c.to_string(), vec![ClassRef::Name(l.to_string())])).collect()
}

/// The paper's ten concepts: (concept, AudioSet label name, AudioSet class index as the seed's PaSST
/// numbers its 527 outputs).
pub const AUDIOSET: [(&str, &str, usize); 10] = [
    ("guitar", "Guitar", 140),
    ("piano", "Piano", 153),
    ("trumpet", "Trumpet", 187),
    ("violin", "Violin, fiddle", 191),
    ("classical", "Classical music", 237),
    ("pop", "Pop music", 216),
    ("jazz", "Jazz", 235),
    ("rock", "Rock music", 219),
    ("electronic", "Electronic music", 245),
    ("hip-hop", "Hip hop music", 217),
];

/// AudioSet's class count (PaSST's outputs).
pub const AUDIOSET_CLASSES: usize = 527;

/// One classifier output a concept stands for: by index (a YAML integer) or by label name (a string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a class index (integer) or a label name (string)")]
pub enum ClassRef {
    Index(usize),
    Name(String),
}

impl std::fmt::Display for ClassRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassRef::Index(i) => write!(f, "class index {i}"),
            ClassRef::Name(n) => write!(f, "the label {n:?}"),
        }
    }
}

/// Resolves each concept in `needed` to label indices of a classifier whose label map is `labels`
/// (in output order). An index must be below the class count; a name must be in the label map
/// (case-insensitive). A label map without names (each class named by its index, as an index-only
/// map or no map gives them) on a 527-class classifier is AudioSet's order: the ten concepts'
/// AudioSet names then resolve to the seed's PaSST class ids ([`AUDIOSET`]), so the default mapping
/// reproduces the paper without a label file. Keys of `map` are concept names (`hiphop` as well as
/// `hip-hop`); an unknown one is refused.
pub fn resolve_concepts(map: &BTreeMap<String, Vec<ClassRef>>, labels: &[String], needed: &[&str]) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut canonical: BTreeMap<&str, &Vec<ClassRef>> = BTreeMap::new();
    for (key, refs) in map {
        let c = concepts::concept(key).map_err(|e| Error::Input(format!("judge concepts: {e}")))?;
        if canonical.insert(c, refs).is_some() {
            return Err(Error::Input(format!("judge concepts: {c} is mapped twice (hip-hop and hiphop are one concept)")));
        }
    }
    let unnamed = labels.iter().enumerate().all(|(i, l)| *l == i.to_string());
    let audioset_ids = unnamed && labels.len() == AUDIOSET_CLASSES;
    let mut resolved = BTreeMap::new();
    for &c in needed {
        let c = concepts::concept(c)?;
        let refs = canonical.get(c).ok_or_else(|| {
            Error::Input(format!("judge: no classifier labels for concept {c}; add `concepts: {{{c}: [LABEL or INDEX, ...]}}` to the judge settings"))
        })?;
        let mut idx = Vec::new();
        for r in refs.iter() {
            let i = match r {
                ClassRef::Index(i) if *i < labels.len() => *i,
                ClassRef::Index(i) => {
                    return Err(Error::Input(format!("judge: concept {c} maps to class index {i}, but the classifier has {} classes (0..{})", labels.len(), labels.len())))
                }
                ClassRef::Name(name) => match labels.iter().position(|l| l.eq_ignore_ascii_case(name)) {
                    Some(i) => i,
                    None => match AUDIOSET.iter().find(|a| audioset_ids && a.1.eq_ignore_ascii_case(name)) {
                        Some(a) => a.2,
                        None => {
                            let hint = if unnamed { "; its classes have no names: map the concept by class index" } else { "" };
                            return Err(Error::Input(format!(
                                "judge: concept {c} maps to the label {name:?}, which the classifier's label map ({} labels) does not name{hint}",
                                labels.len()
                            )));
                        }
                    },
                },
            };
            idx.push(i);
        }
        if idx.is_empty() {
            return Err(Error::Input(format!("judge: concept {c} maps to no label")));
        }
        resolved.insert(c.to_string(), idx);
    }
    Ok(resolved)
}

fn default_plugin() -> String {
    crate::plugin::builtin::ONNX_JUDGE.into()
}

/// The `judge:` block of a run config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Judge plugin: built-in name or path (default `onnx-judge`).
    #[serde(default = "default_plugin")]
    pub plugin: String,
    /// The plugin's own settings; for `onnx-judge`: `model` (.onnx, or a judge folder whose
    /// `classifier.json` gives the defaults, as `onnx/export_passt.py` writes), `labels` (CSV with a
    /// `name` or `display_name` column, or only `index`), `sample_rate`, optional `input`, `output`,
    /// `activation` (softmax | sigmoid | none).
    pub settings: serde_json::Value,
    /// Where the settings were written, so the plugin's complaint names the file's line and column.
    #[serde(skip)]
    pub origin: Option<crate::config::Origin>,
    /// Classifier outputs per concept, each a label name or a class index (default: the AudioSet
    /// names of the ten concepts, which on a 527-class judge without label names are the seed's
    /// PaSST class ids).
    #[serde(default = "default_concept_labels")]
    pub concepts: BTreeMap<String, Vec<ClassRef>>,
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

    /// The built-in ONNX judge over `model` (a graph, or a judge folder such as `export_passt.py`
    /// writes), with only the settings given: a judge folder's metadata supplies the label map and
    /// the sample rate it leaves out, and a bare graph without them is refused by the plugin, saying
    /// which is missing.
    pub fn onnx_given(model: PathBuf, labels: Option<PathBuf>, sample_rate: Option<u32>) -> JudgeConfig {
        let mut settings = serde_json::json!({"model": model});
        if let Some(labels) = labels {
            settings["labels"] = serde_json::json!(labels);
        }
        if let Some(rate) = sample_rate {
            settings["sample_rate"] = serde_json::json!(rate);
        }
        JudgeConfig { settings, ..JudgeConfig::onnx(PathBuf::new(), PathBuf::new(), 0) }
    }
}

/// A loaded judge with its concept map resolved to label indices.
pub struct Judge {
    plugin: JudgePlugin,
    concepts: BTreeMap<String, Vec<usize>>,
}

impl Judge {
    /// Loads the plugin and checks that every concept in `needed` maps to labels the classifier has.
    pub fn load(config: &JudgeConfig, needed: &[&str]) -> Result<Judge> {
        let json = crate::config::SettingsJson::new(&config.settings);
        let plugin = JudgePlugin::load(&config.plugin, &json.text).map_err(|e| json.explain(e, config.origin.as_ref()))?;
        let resolved = resolve_concepts(&config.concepts, plugin.labels(), needed)?;
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

    /// Refuses, before anything is generated, clips the judge cannot score: judges one silent clip
    /// of `samples` at `rate`, the length every clip of the run will have (`api::clip_samples`), so a
    /// duration outside the classifier's accepted lengths fails at once, not after the first batch.
    pub fn check_clip(&mut self, samples: usize, rate: u32) -> Result<()> {
        let silent = Array2::<f32>::zeros((1, samples));
        self.probabilities(silent.view(), rate).map(|_| ()).map_err(|e| {
            Error::Input(format!("the judge cannot score this run's clips ({:.2} s; nothing was generated): {e}", samples as f64 / rate as f64))
        })
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

    fn names(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn concepts_map_to_labels_by_name_or_index() {
        let unnamed: Vec<String> = (0..AUDIOSET_CLASSES).map(|i| i.to_string()).collect();
        let all: Vec<&str> = AUDIOSET.iter().map(|a| a.0).collect();
        // The default on a 527-class judge without names: the seed's PaSST ids, hip-hop as hiphop too.
        let r = resolve_concepts(&default_concept_labels(), &unnamed, &all).unwrap();
        let want = [("guitar", 140), ("piano", 153), ("trumpet", 187), ("violin", 191), ("classical", 237), ("pop", 216), ("jazz", 235), ("rock", 219), ("electronic", 245), ("hip-hop", 217)];
        for (c, i) in want {
            assert_eq!(r[c], [i], "{c}");
        }
        assert_eq!(resolve_concepts(&default_concept_labels(), &unnamed, &["hiphop"]).unwrap()["hip-hop"], [217]);
        // A 527-class judge with AudioSet's names: by name, wherever the names are.
        let mut named = unnamed.clone();
        named[3] = "Guitar".into();
        named[140] = "Acoustic guitar".into();
        assert_eq!(resolve_concepts(&default_concept_labels(), &named, &["guitar"]).unwrap()["guitar"], [3]);
        // ... and a named map without the label is refused, not silently mapped by id.
        let err = resolve_concepts(&default_concept_labels(), &named, &["piano"]).unwrap_err().to_string();
        assert!(err.contains("concept piano") && err.contains("\"Piano\""), "{err}");
        // Another class count without names: the names mean nothing, indices do.
        let twelve: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        let err = resolve_concepts(&default_concept_labels(), &twelve, &["jazz"]).unwrap_err().to_string();
        assert!(err.contains("map the concept by class index"), "{err}");
        // Indices and names from a config, keys as users write them.
        let map: BTreeMap<String, Vec<ClassRef>> =
            serde_yaml::from_str("jazz: [6, Speech]\nhiphop: [9]\nrock: [\"Rock music\"]\n").unwrap();
        let labels = names(&["Guitar", "Piano", "Trumpet", "Violin, fiddle", "Classical music", "Pop music", "Jazz", "Rock music", "Electronic music", "Hip hop music", "Speech", "Drum"]);
        let r = resolve_concepts(&map, &labels, &["jazz", "hip-hop", "rock"]).unwrap();
        assert_eq!((r["jazz"].clone(), r["hip-hop"].clone(), r["rock"].clone()), (vec![6, 10], vec![9], vec![7]));
        assert_eq!(serde_yaml::to_string(&map["jazz"]).unwrap(), "- 6\n- Speech\n", "the resolved config writes them back as given");
        // Refusals: an index past the classes, an unknown concept key, one concept twice, an unmapped concept.
        let map: BTreeMap<String, Vec<ClassRef>> = serde_yaml::from_str("jazz: [12]").unwrap();
        let err = resolve_concepts(&map, &labels, &["jazz"]).unwrap_err().to_string();
        assert!(err.contains("class index 12, but the classifier has 12 classes"), "{err}");
        let map: BTreeMap<String, Vec<ClassRef>> = serde_yaml::from_str("polka: [1]").unwrap();
        assert!(resolve_concepts(&map, &labels, &[]).unwrap_err().to_string().contains("unknown concept \"polka\""));
        let map: BTreeMap<String, Vec<ClassRef>> = serde_yaml::from_str("hiphop: [1]\nhip-hop: [2]").unwrap();
        assert!(resolve_concepts(&map, &labels, &[]).unwrap_err().to_string().contains("mapped twice"));
        let map: BTreeMap<String, Vec<ClassRef>> = serde_yaml::from_str("jazz: [1]").unwrap();
        assert!(resolve_concepts(&map, &labels, &["rock"]).unwrap_err().to_string().contains("no classifier labels for concept rock"));
        let err = serde_yaml::from_str::<BTreeMap<String, Vec<ClassRef>>>("jazz: [[1]]").unwrap_err().to_string();
        assert!(err.contains("a class index (integer) or a label name (string)"), "{err}");
    }
}
