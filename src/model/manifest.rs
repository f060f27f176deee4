//! `manifest.json`: the bundle's sizes, special ids, graphs and checksums (docs/BUNDLE.md).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const FORMAT: &str = "musicgen-interp-bundle";
/// The bundle format this runtime reads; a different one is refused.
pub const FORMAT_VERSION: u32 = 6;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub exporter_version: String,
    pub source: Source,
    pub text_encoder: TextEncoderConfig,
    pub decoder: DecoderConfig,
    pub audio: AudioConfig,
    pub generation: GenerationDefaults,
    pub graphs: Graphs,
    pub tokenizer: String,
    pub hook_points: Vec<String>,
    pub files: BTreeMap<String, FileEntry>,
    /// Present on reduced-precision copies written by `onnx/quantize.py`; absent means fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// What the graphs compute in (`export.py --precision`); the KV cache and the cross-attention
    /// keys and values cross the graph edges in it, every other input and output is float32.
    #[serde(default, skip_serializing_if = "Dtype::is_float32")]
    pub dtype: Dtype,
}

/// The element type of a bundle's compute and of its KV cache and cross-attention keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Float32,
    Float16,
}

impl Dtype {
    fn is_float32(&self) -> bool {
        *self == Dtype::Float32
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::Float32 => 4,
            Dtype::Float16 => 2,
        }
    }

    /// onnxruntime's name for it.
    pub fn tensor_type(self) -> ort::value::TensorElementType {
        match self {
            Dtype::Float32 => ort::value::TensorElementType::Float32,
            Dtype::Float16 => ort::value::TensorElementType::Float16,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::Float32 => "float32",
            Dtype::Float16 => "float16",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Precision {
    /// `int8` or `int4` (block-wise weight-only matmuls).
    pub weights: String,
    pub block_size: usize,
    /// `MatMulNBits`' compute type in the plain graphs (4: int8 activations); the CPU copies round
    /// the activations to int16 per block.
    #[serde(default)]
    pub accuracy_level: Option<u32>,
    /// The graphs whose matmul weights were quantized.
    pub graphs: Vec<String>,
    /// Whether the bundle has CPU copies of those graphs (int8: `StreamMatMulInt8` on the plain
    /// graphs' own int8 weights).
    #[serde(default)]
    pub cpu_copies: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Source {
    pub kind: String,
    pub model_id: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// For a bundle exported by `--model` from a checkpoint folder or hub id: what it was made from
    /// ([`crate::model::hub::SourceKey`]), compared before every reuse.
    #[serde(default)]
    pub key: Option<String>,
    /// The checkpoint folder it was exported from (absolute), for a local checkpoint.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    pub num_layers: usize,
    pub d_model: usize,
    pub num_heads: usize,
    pub vocab_size: usize,
    pub pad_token_id: i64,
    pub eos_token_id: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub num_layers: usize,
    pub d_model: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub num_codebooks: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub pad_token_id: i64,
    pub bos_token_id: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
    pub frame_rate: f64,
    pub channels: usize,
    pub num_codebooks: usize,
    pub codebook_size: usize,
    /// Audio samples per frame (EnCodec's hop).
    pub hop_length: usize,
    /// Latent frames either side that reach an output frame of `encodec_decode_upsample`: the overlap
    /// that makes chunked decoding equal to decoding the whole clip.
    pub decode_context_frames: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationDefaults {
    pub guidance_scale: f32,
    pub top_k: usize,
    pub temperature: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Graphs {
    pub text_encoder: String,
    pub cross_kv: String,
    pub decoder_embed: String,
    pub decoder_layers: Vec<String>,
    pub decoder_head: String,
    /// Copies of the layer and head graphs for the CPU provider, built from the runtime's own
    /// operators (`runtime::ops`); absent in quantized bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_layers_cpu: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_head_cpu: Option<String>,
    pub encodec_encode: String,
    pub encodec_decode_latent: String,
    pub encodec_decode_upsample: String,
}

impl Graphs {
    /// Every graph file, in a fixed order.
    pub fn all(&self) -> Vec<&str> {
        let mut v = vec![self.text_encoder.as_str(), self.cross_kv.as_str(), self.decoder_embed.as_str()];
        v.extend(self.decoder_layers.iter().map(String::as_str));
        v.extend([self.decoder_head.as_str(), self.encodec_encode.as_str(), self.encodec_decode_latent.as_str(), self.encodec_decode_upsample.as_str()]);
        v.extend(self.decoder_layers_cpu.iter().flatten().map(String::as_str));
        v.extend(self.decoder_head_cpu.as_deref());
        v
    }

    /// The CPU copies of the decoder layer and head graphs, if the bundle has them.
    pub fn decoder_cpu(&self) -> Option<(&[String], &str)> {
        Some((self.decoder_layers_cpu.as_deref()?, self.decoder_head_cpu.as_deref()?))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

impl Manifest {
    /// Bytes of one graph: its file plus its external weights file, if it has one: `GRAPH.data`, or
    /// for a CPU copy without one (an int8 bundle's, which reads the plain graph's tensors) the plain
    /// graph's `STEM.onnx.data`.
    pub fn graph_bytes(&self, graph: &str) -> u64 {
        let own = format!("{graph}.data");
        let data = match graph.strip_suffix(".cpu.onnx") {
            Some(stem) if !self.files.contains_key(&own) => format!("{stem}.onnx.data"),
            _ => own,
        };
        [graph, data.as_str()].iter().filter_map(|f| self.files.get(*f)).map(|f| f.bytes).sum()
    }

    /// Reads and checks `manifest.json` (format, version, internal consistency). Files are checked by
    /// [`crate::model::Bundle::open`].
    pub fn load(path: &Path) -> Result<Manifest> {
        let bad = |reason: String| Error::BadManifest { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        // Check the format before the schema, so an old or foreign manifest gets the useful message.
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(bad(format!("format is {format:?}, expected {FORMAT:?}")));
        }
        let version = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            let exporter = value.get("exporter_version").and_then(|v| v.as_str()).unwrap_or("unknown");
            return Err(bad(format!(
                "bundle format {version} (exporter {exporter}), but this musicgen-interp reads format {FORMAT_VERSION}"
            )));
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(format!("does not match the bundle schema ({e})")))?;
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let d = &self.decoder;
        if d.num_layers == 0 || d.d_model == 0 || d.num_heads == 0 || d.num_codebooks == 0 || d.vocab_size == 0 {
            return Err("decoder sizes must be positive".into());
        }
        if d.num_heads * d.head_dim != d.d_model {
            return Err(format!("decoder num_heads {} x head_dim {} != d_model {}", d.num_heads, d.head_dim, d.d_model));
        }
        if self.graphs.decoder_layers.len() != d.num_layers {
            return Err(format!(
                "decoder.num_layers is {} but graphs.decoder_layers lists {} graphs",
                d.num_layers,
                self.graphs.decoder_layers.len()
            ));
        }
        if self.graphs.decoder_layers_cpu.is_some() != self.graphs.decoder_head_cpu.is_some()
            || self.graphs.decoder_layers_cpu.as_ref().is_some_and(|l| l.len() != d.num_layers)
        {
            return Err(format!(
                "graphs.decoder_layers_cpu and graphs.decoder_head_cpu must both be present, with {} layers, or both absent",
                d.num_layers
            ));
        }
        if self.audio.num_codebooks != d.num_codebooks {
            return Err(format!("audio.num_codebooks {} != decoder.num_codebooks {}", self.audio.num_codebooks, d.num_codebooks));
        }
        for file in self.graphs.all().into_iter().chain([self.tokenizer.as_str()]) {
            if !self.files.contains_key(file) {
                return Err(format!("{file} has no checksum entry in files"));
            }
        }
        Ok(())
    }
}
