//! musicgen-interp: Meta's MusicGen as ONNX graphs on onnxruntime, with every decoder layer's
//! residual stream and component outputs open to host code (see ARCHITECTURE.md).

pub mod api;
pub mod audio;
pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod judge;
pub mod methods;
pub mod model;
pub mod plot;
pub mod plugin;
pub mod runtime;
pub mod store;

pub use error::{Error, Result};
pub use methods::{decoder_lens, extract, interchange, pipeline, probe};
pub use hooks::{Component, ForwardContext, HookPoint, Hooks, LayerEdits, NoHooks, Recorder};
pub use model::{MusicGen, Verify};
pub use runtime::{Device, Runtime, RuntimeOptions};
