//! DecoderLens (ISMIR 2024, seed B 1): generation with the decoder exited after layer `k` at every
//! step. The host then applies the model's final LayerNorm and codebook heads to layer `k`'s
//! residual, samples, and feeds the tokens back, so the truncated stack runs the whole
//! autoregressive generation. Settings: `{"exit_after": k}` with `1 <= k <= layers` (the host
//! refuses a `k` past the model's last layer).

use musicgen_interp_sdk::{export_method, Method};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    exit_after: usize,
}

pub struct DecoderLens {
    exit_after: usize,
}

impl Method for DecoderLens {
    const NAME: &'static str = "decoder-lens";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn create(config: &str) -> Result<Self, String> {
        let s: Settings = serde_json::from_str(config).map_err(|e| format!("decoder-lens settings: {e}"))?;
        if s.exit_after == 0 {
            return Err("decoder-lens: exit_after counts layers from 1".into());
        }
        Ok(DecoderLens { exit_after: s.exit_after })
    }

    fn hook_points(&self) -> Vec<String> {
        Vec::new()
    }

    fn exit_after(&self) -> Option<usize> {
        Some(self.exit_after)
    }
}

export_method!(DecoderLens);
