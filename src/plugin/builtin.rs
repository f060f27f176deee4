//! The built-in plugins the host's own drivers run, named here once, each with its settings as a
//! typed value. The values serialize to the JSON that the plugin's own `Settings` reads; every
//! built-in refuses unknown keys, so `tests/builtin_settings.rs`, which creates each plugin from
//! these types, catches the two drifting apart. Users' configs name plugins themselves (any path);
//! these are only the ones the drivers choose.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::{resolve, Library, MethodPlugin};
use crate::error::Result;

/// Activation steering along probe directions (`plugins/steering`).
pub const STEERING: &str = "steering";
/// DecoderLens' early exit (`plugins/decoder-lens`).
pub const DECODER_LENS: &str = "decoder-lens";
/// Concept means and interchange interventions (`plugins/interchange`).
pub const INTERCHANGE: &str = "interchange";
/// Any ONNX audio classifier as a judge (`plugins/onnx-judge`); the default of a `judge:` block.
pub const ONNX_JUDGE: &str = "onnx-judge";
/// Linear probes, closed-form least squares or logistic regression (`plugins/linear-probe`); the
/// default probe model.
pub const LINEAR_PROBE: &str = "linear-probe";

/// `steering`'s settings: add `strengths[i]` x the unit direction `weights[layers[i], target_class]`
/// to layer `layers[i]`'s output on the conditional rows, every `period` steps from `offset`.
#[derive(Serialize, Debug, Clone)]
pub struct Steering<'a> {
    pub weights: &'a Path,
    pub target_class: usize,
    pub layers: &'a [usize],
    pub strengths: &'a [f32],
    pub period: u64,
    pub offset: u64,
}

/// `decoder-lens`' settings: skip the layers after `exit_after` (all of them: the full model).
#[derive(Serialize, Debug, Clone, Copy)]
pub struct DecoderLens {
    pub exit_after: usize,
}

/// `interchange`'s settings: collect a concept's means, or intervene row by row with two concepts'.
#[derive(Serialize, Debug, Clone)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Interchange<'a> {
    /// Running means of every site's output per position into `output` (`.npy`).
    Means { layers: usize, positions: usize, output: &'a Path },
    /// Row `i` of the batch gets `rows[i]` (a `None` row runs unedited).
    Intervene { original: &'a Path, desired: &'a Path, rows: Vec<Option<InterchangeRow>> },
}

/// One row's intervention: `kind` (adjust or replace) at `component` (attn, cross_attn, mlp) of `layer`.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct InterchangeRow {
    pub layer: usize,
    pub component: &'static str,
    pub kind: &'static str,
}

/// A built-in method library, loaded once; [`Method::create`] makes instances of it, so a driver
/// that needs many instances (one per exit layer and batch) loads the library once per run.
pub struct Method(Arc<Library>);

impl Method {
    pub fn open(name: &str) -> Result<Method> {
        Ok(Method(Library::open(&resolve(name)?)?))
    }

    /// An instance with these settings.
    pub fn create(&self, settings: &impl Serialize) -> Result<MethodPlugin> {
        MethodPlugin::create(&self.0, &json(settings))
    }
}

/// Loads the built-in method `name` with typed settings.
pub fn method(name: &str, settings: &impl Serialize) -> Result<MethodPlugin> {
    Method::open(name)?.create(settings)
}

/// The settings as JSON (the types above serialize infallibly: plain fields, string keys).
pub fn json(settings: &impl Serialize) -> String {
    serde_json::to_string(settings).expect("built-in plugin settings serialize to JSON")
}
