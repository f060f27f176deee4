//! The YAML run config: what runs (model, device, seed, generation settings, prompts, plugins with
//! their own settings, output folder). Unknown keys and wrong types are errors with line and column;
//! every default is written out in the resolved config saved next to the outputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::Device;

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
    #[serde(default)]
    pub generation: GenerationSettings,
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSettings {
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
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings { steps: None, duration: None, top_k: None, temperature: None, guidance_scale: None }
    }
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

/// Parses YAML into `T`; errors name `origin`, the problem, and its line and column.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    serde_yaml::from_str(text).map_err(|e| {
        let at = e.location().map_or(String::new(), |l| format!(" (line {}, column {})", l.line(), l.column()));
        Error::Input(format!("{}{at}: {e}", origin.display()))
    })
}

impl PluginConfig {
    /// The settings as the JSON string a plugin receives.
    pub fn settings_json(&self) -> Result<String> {
        serde_json::to_string(&self.settings).map_err(|e| Error::Input(format!("settings of plugin {}: {e}", self.plugin)))
    }
}

impl RunConfig {
    /// Parses YAML; errors name the file, the problem, and its line and column.
    pub fn parse(text: &str, origin: &Path) -> Result<RunConfig> {
        let config: RunConfig = parse_yaml(text, origin)?;
        if config.prompts.is_empty() || config.prompts.iter().any(|p| p.trim().is_empty()) {
            return Err(Error::Input(format!("{}: `prompts` needs at least one non-empty text prompt", origin.display())));
        }
        let g = &config.generation;
        let audio = config.audio.as_ref();
        let numbers = [
            ("generation.duration", g.duration),
            ("generation.temperature", g.temperature.map(f64::from)),
            ("generation.guidance_scale", g.guidance_scale.map(f64::from)),
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

    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        RunConfig::parse(&text, path)
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
    fn unknown_keys_and_wrong_types_name_line_and_column() {
        let e = RunConfig::parse("model: m\nprompts: [a]\ngeneration:\n  stpes: 10\n", Path::new("r.yaml")).unwrap_err().to_string();
        assert!(e.contains("r.yaml (line 4, column 3)") && e.contains("unknown field `stpes`"), "{e}");
        let e = RunConfig::parse("model: m\nprompts: [a]\nseed: many\n", Path::new("r.yaml")).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("seed"), "{e}");
        let e = RunConfig::parse("model: m\nprompts: []\n", Path::new("r.yaml")).unwrap_err().to_string();
        assert!(e.contains("at least one"), "{e}");
        for bad in ["generation: {duration: .nan}", "generation: {temperature: .inf}", "audio: {path: a.wav, start: .nan}", "audio: {path: a.wav, duration: -.inf}"] {
            let e = RunConfig::parse(&format!("model: m\nprompts: [a]\n{bad}\n"), Path::new("r.yaml")).unwrap_err().to_string();
            assert!(e.contains("r.yaml") && e.contains("give a finite number"), "{bad}: {e}");
        }
    }
}
