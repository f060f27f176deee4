//! The interpretation methods' drivers, each over the same path: prompts (text) -> the model's
//! graphs -> hooks (the built-in plugins, `plugin::builtin`) -> files in an output folder, written
//! atomically and resumable.
//!
//! - [`extract`]: every layer's residual stream for a labelled audio set (the probes' data);
//! - [`probe`]: linear probes trained and evaluated per layer (probe-model plugins);
//! - [`decoder_lens`]: DecoderLens, early exits per layer and text-encoder layers, judged;
//! - [`interchange`]: concept means and interchange interventions, judged, sharded sweeps;
//! - [`pipeline`]: extract -> train -> evaluate -> steer with the probe's directions (steering
//!   itself is the `steering` plugin on any generation).
//!
//! Each module is re-exported at the crate root (`musicgen_interp::interchange`, ...).

pub mod decoder_lens;
pub mod extract;
pub mod interchange;
pub mod pipeline;
pub mod probe;
