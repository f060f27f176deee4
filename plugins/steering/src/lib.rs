//! Activation steering (seed A): at the output of each target layer `L`, on the conditional rows
//! only, every token's residual `h` becomes `(h + s |h| v) / (1 + s)`, where
//! `v = W[L][C] / |W[L][C]|` is the probe's row for the target class from a weights array
//! `[layers, classes, d_model]` (the probe trained on layer L's output steers layer L's output), and
//! `s` is that layer's strength. Steering acts on forward calls `offset, offset + period, ...`
//! (call 0 is the prefill), so `period: 1, offset: 0` steers every step.
//!
//! Settings (YAML block of the run config, or the `generate --steering-*` flags):
//! `weights` (path to .npy), `target_class`, `layers` (list), `strengths` (one per layer, or one
//! for all), `period` (default 1), `offset` (default 0).

use musicgen_interp_sdk::ndarray::{Array1, Array3, ArrayViewMut3, Axis};
use musicgen_interp_sdk::{export_method, HookContext, HookPoint, Method};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    weights: String,
    target_class: usize,
    layers: Vec<usize>,
    strengths: Vec<f32>,
    #[serde(default = "one")]
    period: u64,
    #[serde(default)]
    offset: u64,
}

fn one() -> u64 {
    1
}

pub struct Steering {
    /// (hook point name, unit direction, strength) per target layer.
    targets: Vec<(String, Array1<f32>, f32)>,
    period: u64,
    offset: u64,
}

impl Steering {
    fn active(&self, call: u64) -> bool {
        call >= self.offset && (call - self.offset) % self.period == 0
    }
}

impl Method for Steering {
    const NAME: &'static str = "steering";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn create(config: &str) -> Result<Self, String> {
        let s: Settings = serde_json::from_str(config).map_err(|e| format!("steering settings: {e}"))?;
        if s.layers.is_empty() {
            return Err("steering: `layers` is empty".into());
        }
        let strengths = match s.strengths.len() {
            1 => vec![s.strengths[0]; s.layers.len()],
            n if n == s.layers.len() => s.strengths.clone(),
            n => return Err(format!("steering: {} layers but {n} strengths (give one, or one per layer)", s.layers.len())),
        };
        if s.period == 0 {
            return Err("steering: `period` must be at least 1".into());
        }
        let w: Array3<f32> = musicgen_interp_sdk::npy::read(std::path::Path::new(&s.weights), "steering weights [layers, classes, d_model]")?;
        let (layers, classes, _) = w.dim();
        if s.target_class >= classes {
            return Err(format!("steering: target class {} but the weights have {classes} classes", s.target_class));
        }
        let mut targets = Vec::new();
        for (&layer, &strength) in s.layers.iter().zip(&strengths) {
            if layer >= layers {
                return Err(format!("steering: layer {layer} but the weights cover layers 0..{layers}"));
            }
            if !strength.is_finite() {
                return Err(format!("steering: strength {strength} for layer {layer} is not a finite number"));
            }
            if !(strength > -1.0) {
                return Err(format!("steering: strength {strength} would divide by 1 + s <= 0"));
            }
            let row = w.index_axis(Axis(0), layer).index_axis(Axis(0), s.target_class).to_owned();
            if let Some(i) = row.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "steering: the weights hold a non-finite value ({}) at layer {layer}, class {}, index {i}: retrain or fix the weights file",
                    row[i], s.target_class
                ));
            }
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if !norm.is_finite() {
                return Err(format!("steering: the probe row for layer {layer}, class {} overflows (its norm is infinite)", s.target_class));
            }
            if !(norm > 0.0) {
                return Err(format!("steering: the probe row for layer {layer}, class {} is zero", s.target_class));
            }
            targets.push((HookPoint::ResidPost(layer).to_string(), row / norm, strength));
        }
        Ok(Steering { targets, period: s.period, offset: s.offset })
    }

    fn hook_points(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.0.clone()).collect()
    }

    fn on_residual(&mut self, ctx: &HookContext, point: &str, mut h: ArrayViewMut3<'_, f32>) -> Result<(), String> {
        if !self.active(ctx.call) {
            return Ok(());
        }
        for (name, v, s) in &self.targets {
            if name != point {
                continue;
            }
            if v.len() != h.shape()[2] {
                return Err(format!("steering: direction has {} dims, the residual {}", v.len(), h.shape()[2]));
            }
            for row in ctx.cond_start as usize..ctx.cond_end as usize {
                for mut token in h.index_axis_mut(Axis(0), row).rows_mut() {
                    let norm = token.iter().map(|x| x * x).sum::<f32>().sqrt();
                    token.zip_mut_with(v, |x, d| *x = (*x + s * norm * d) / (1.0 + s));
                }
            }
        }
        Ok(())
    }
}

export_method!(Steering);
