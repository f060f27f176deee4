//! The YAML run config: what runs (model, device, seed, generation settings, prompts, plugins with
//! their own settings, output folder). Unknown keys and wrong types are errors with line and column;
//! every default is written out in the resolved config saved next to the outputs.
//!
//! Relative paths in a config file are relative to the file's own folder, so a config works from any
//! working folder ([`PATH_KEYS`], at any depth, plugin and judge settings included); `model` too
//! when that path exists beside the config (otherwise it stays as written: a hub id, or a path the
//! CLI resolves).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::Device;

pub mod flags;
pub mod locate;
pub use locate::{Origin, Seg, SettingsJson};

/// A run, as written in YAML. Defaults in the field docs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Bundle folder, checkpoint folder, or hub id.
    pub model: String,
    /// cpu, cuda or auto (default auto).
    #[serde(default)]
    pub device: Device,
    /// Sampling seed (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Decoder steps; if absent, `duration` seconds are converted (default 8 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Default: the bundle's (MusicGen: 250; 1 = greedy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Default: the bundle's (1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Default: the bundle's (3.0; 1 turns guidance off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
    /// One clip per text prompt.
    pub prompts: Vec<String>,
    /// An audio prompt continued by every clip (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioPrompt>,
    /// Method plugins, run in this order at every hook point.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Folder for the outputs (created; default `runs/out`).
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// Write `codes.npy` too (default true).
    #[serde(default = "yes")]
    pub save_codes: bool,
    /// How `clip.wav` stores samples: `float32` (default, exact) or `pcm16`.
    #[serde(default)]
    pub wav_format: crate::audio::WavFormat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioPrompt {
    pub path: PathBuf,
    /// Seconds (default 0).
    #[serde(default)]
    pub start: f64,
    /// Seconds (default: to the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// A built-in plugin's name (e.g. `steering`) or a path to a plugin library.
    pub plugin: String,
    /// The plugin's own settings, handed to it as JSON.
    #[serde(default = "empty_map")]
    pub settings: serde_yaml::Value,
    /// Where the settings were written, so a plugin's complaint names the file's line and column.
    #[serde(skip)]
    pub origin: Option<Origin>,
}

fn default_output() -> PathBuf {
    PathBuf::from("runs/out")
}

fn yes() -> bool {
    true
}

fn empty_map() -> serde_yaml::Value {
    serde_yaml::Value::Mapping(Default::default())
}

/// Keys whose string values are paths, wherever they appear in a config file.
pub const PATH_KEYS: &[&str] = &["output", "data_dir", "path", "labels", "weights", "pre_computed_means"];

/// Parses YAML into `T`; errors name `origin`, the problem, and its line and column.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    serde_yaml::from_str(text).map_err(|e| Error::Config { path: origin.to_path_buf(), at: e.location().map(|l| (l.line(), l.column())), reason: e.to_string() })
}

/// Reads config file `path` into `T`, its relative paths taken relative to the file's folder.
pub fn load_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    // Parsed as written first, so a mistake is reported with its line and column.
    parse_yaml::<T>(&text, path)?;
    let mut value: serde_yaml::Value = parse_yaml(&text, path)?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    resolve_paths(&mut value, base);
    serde_yaml::from_value(value).map_err(|e| Error::Config { path: path.to_path_buf(), at: None, reason: e.to_string() })
}

/// Makes the relative paths under [`PATH_KEYS`] (and an existing `model` path) relative to `base`.
fn resolve_paths(value: &mut serde_yaml::Value, base: &Path) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, v) in map.iter_mut() {
                let key = key.as_str().unwrap_or_default();
                if let serde_yaml::Value::String(s) = v {
                    let p = Path::new(s.as_str());
                    let is_path = PATH_KEYS.contains(&key) || (key == "model" && base.join(p).exists());
                    if is_path && p.is_relative() && !s.is_empty() {
                        *s = base.join(p).to_string_lossy().into_owned();
                    }
                } else {
                    resolve_paths(v, base);
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(|v| resolve_paths(v, base)),
        _ => {}
    }
}

impl PluginConfig {
    /// The settings as the JSON line a plugin receives.
    pub fn settings_json(&self) -> Result<SettingsJson> {
        let value = serde_json::to_value(&self.settings).map_err(|e| Error::Input(format!("settings of plugin {}: {e}", self.plugin)))?;
        Ok(SettingsJson::new(&value))
    }
}

impl RunConfig {
    /// Parses YAML; errors name the file, the problem, and its line and column.
    pub fn parse(text: &str, origin: &Path) -> Result<RunConfig> {
        let config: RunConfig = parse_yaml(text, origin).map_err(|e| match e {
            // The layout before every config kept its sampling keys at the top level.
            Error::Config { path, at, reason } if reason.starts_with("unknown field `generation`") => Error::Config {
                path,
                at,
                reason: "unknown field `generation`: `steps`, `duration`, `top_k`, `temperature` and `guidance_scale` sit at the top level of a run config, as in every config".into(),
            },
            e => e,
        })?;
        if config.prompts.is_empty() || config.prompts.iter().any(|p| p.trim().is_empty()) {
            return Err(Error::Input(format!("{}: `prompts` needs at least one non-empty text prompt", origin.display())));
        }
        let audio = config.audio.as_ref();
        let numbers = [
            ("duration", config.duration),
            ("temperature", config.temperature.map(f64::from)),
            ("guidance_scale", config.guidance_scale.map(f64::from)),
            ("audio.start", audio.map(|a| a.start)),
            ("audio.duration", audio.and_then(|a| a.duration)),
        ];
        for (what, value) in numbers {
            if let Some(v) = value {
                crate::error::finite(&format!("{}: {what}", origin.display()), v)?;
            }
        }
        Ok(config)
    }

    /// The sampling settings it gives: `seed`, `top_k`, `temperature` and `guidance_scale`
    /// (resolved against the bundle by [`crate::generate::SamplingOverrides::resolve`]).
    pub fn sampling(&self) -> crate::generate::SamplingOverrides {
        crate::generate::SamplingOverrides { seed: self.seed, top_k: self.top_k, temperature: self.temperature, guidance_scale: self.guidance_scale }
    }

    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        RunConfig::parse(&text, path)?;
        let mut config: RunConfig = load_yaml(path)?;
        for (i, p) in config.plugins.iter_mut().enumerate() {
            p.origin = Some(Origin::new(path, &[Seg::Key("plugins".into()), Seg::Index(i), Seg::Key("settings".into())]));
        }
        Ok(config)
    }

    /// The YAML written next to the outputs (every setting, defaults included), so the run can be
    /// repeated exactly.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a run config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_round_trip() {
        let c = RunConfig::parse("model: models/tiny\nprompts: [\"jazz\"]\n", Path::new("a.yaml")).unwrap();
        assert_eq!((c.device, c.seed, c.save_codes), (Device::Auto, 0, true));
        assert_eq!(c.output, PathBuf::from("runs/out"));
        let again = RunConfig::parse(&c.to_yaml(), Path::new("b.yaml")).unwrap();
        assert_eq!(again.to_yaml(), c.to_yaml());
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("models/tiny")).unwrap();
        std::fs::create_dir_all(tmp.path().join("configs")).unwrap();
        let file = tmp.path().join("configs/run.yaml");
        let yaml = "model: ../models/tiny\nprompts: [a]\noutput: ../runs/x\naudio:\n  path: clip.wav\nplugins:\n  - plugin: steering\n    settings:\n      weights: w.npy\n      layers: [0]\n";
        std::fs::write(&file, yaml).unwrap();
        let c = RunConfig::load(&file).unwrap();
        let dir = tmp.path().join("configs");
        assert_eq!(Path::new(&c.model), dir.join("../models/tiny"));
        assert_eq!(c.output, dir.join("../runs/x"));
        assert_eq!(c.audio.unwrap().path, dir.join("clip.wav"));
        assert_eq!(c.plugins[0].settings["weights"].as_str().map(PathBuf::from), Some(dir.join("w.npy")));
        assert_eq!(c.plugins[0].settings["layers"][0].as_u64(), Some(0));
        // A hub id (no such folder beside the config) and an absolute path stay as written.
        std::fs::write(&file, "model: facebook/musicgen-small\nprompts: [a]\noutput: /tmp/abs\n").unwrap();
        let c = RunConfig::load(&file).unwrap();
        assert_eq!((c.model.as_str(), c.output.as_path()), ("facebook/musicgen-small", Path::new("/tmp/abs")));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_line_and_column() {
        let err = RunConfig::parse("model: m\nprompts: [a]\nseed: 1\nstpes: 10\n", Path::new("r.yaml")).unwrap_err();
        assert!(matches!(&err, Error::Config { at: Some((4, 1)), .. }), "{err:?}");
        let e = err.to_string();
        assert!(e.starts_with("config r.yaml (line 4, column 1)") && e.contains("unknown field `stpes`"), "{e}");
        let e = RunConfig::parse("model: m\nprompts: [a]\ngeneration: {steps: 3}\n", Path::new("r.yaml")).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("sit at the top level"), "{e}");
        let e = RunConfig::parse("model: m\nprompts: [a]\nseed: many\n", Path::new("r.yaml")).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("seed"), "{e}");
        let e = RunConfig::parse("model: m\nprompts: []\n", Path::new("r.yaml")).unwrap_err().to_string();
        assert!(e.contains("at least one"), "{e}");
        for bad in ["duration: .nan", "temperature: .inf", "audio: {path: a.wav, start: .nan}", "audio: {path: a.wav, duration: -.inf}"] {
            let e = RunConfig::parse(&format!("model: m\nprompts: [a]\n{bad}\n"), Path::new("r.yaml")).unwrap_err().to_string();
            assert!(e.contains("r.yaml") && e.contains("give a finite number"), "{bad}: {e}");
        }
    }
}
