//! The model bundle and its graphs: text encoder, decoder (with hook points), head, EnCodec.

pub mod bundle;
pub mod decoder;
pub mod device;
pub mod encodec;
pub mod graph;
pub mod hub;
pub mod manifest;
pub mod placement;
pub mod text;

use std::path::Path;

pub use bundle::{Bundle, Verify};
pub use decoder::{Decoder, DecoderState, ForwardOutput};
pub use encodec::Encodec;
pub use manifest::Manifest;
pub use text::{TextEncoder, TextEncoding};

use crate::error::Result;
use crate::runtime::Runtime;
use graph::Graph;

/// A loaded MusicGen: every graph of a bundle as a session on one runtime. Load once, reuse across
/// calls.
pub struct MusicGen {
    pub bundle: Bundle,
    pub text: TextEncoder,
    pub decoder: Decoder,
    pub encodec: Encodec,
}

impl MusicGen {
    /// The graph files this model's sessions loaded (the decoder's plain graphs or CPU copies).
    pub fn loaded_graphs(&self) -> Vec<&str> {
        let g = &self.bundle.manifest.graphs;
        let mut v = vec![g.text_encoder.as_str(), g.cross_kv.as_str(), g.decoder_embed.as_str()];
        v.extend(self.decoder.graph_files());
        v.extend([g.encodec_encode.as_str(), g.encodec_decode_latent.as_str(), g.encodec_decode_upsample.as_str()]);
        v
    }

    /// Bytes of the graphs this model loaded, weights files included ([`Manifest::graph_bytes`]):
    /// what the runtime reads.
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded_graphs().iter().map(|g| self.bundle.manifest.graph_bytes(g)).sum()
    }

    /// Opens and checks the bundle at `dir`, then loads its graphs.
    pub fn load(runtime: &Runtime, dir: impl AsRef<Path>, verify: Verify) -> Result<MusicGen> {
        let bundle = Bundle::open(dir, verify)?;
        let m = &bundle.manifest;
        check_profile(runtime.provider(), m.dtype, &bundle.dir)?;
        let dir = bundle.dir.clone();
        let load = |file: &str| Graph::load(runtime, &dir, file, false);
        let text = TextEncoder::new(m.text_encoder.clone(), &bundle.path(&m.tokenizer), load(&m.graphs.text_encoder)?)?;
        let cpu_copies = if runtime.cpu_kernels() { m.graphs.decoder_cpu() } else { None };
        let kernels = cpu_copies.is_some();
        let (layer_files, head_file) = cpu_copies.unwrap_or((&m.graphs.decoder_layers, &m.graphs.decoder_head));
        let load_decoder = |file: &str| Graph::load(runtime, &dir, file, kernels);
        let layers = layer_files.iter().map(|f| load_decoder(f)).collect::<Result<Vec<_>>>()?;
        // The decoder's state lives where its graphs run: host memory for the CPU copies, else the
        // provider's device.
        let placement = match layers.first() {
            Some(first) if !kernels => device::Placement::for_provider(runtime.provider(), &first.session)?,
            _ => device::Placement::host(),
        };
        let graphs = (load(&m.graphs.cross_kv)?, load(&m.graphs.decoder_embed)?, layers, load_decoder(head_file)?);
        let decoder = Decoder::new(m.decoder.clone(), m.dtype, graphs, placement)?;
        let encodec = Encodec::new(
            m.audio.clone(),
            load(&m.graphs.encodec_encode)?,
            load(&m.graphs.encodec_decode_latent)?,
            load(&m.graphs.encodec_decode_upsample)?,
        )?;
        Ok(MusicGen { bundle, text, decoder, encodec })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }
}

/// Refuses a bundle whose decoder would not run on `provider`'s device. Under CUDA, onnxruntime's
/// `GroupQueryAttention` (the plain graphs' self-attention) has float16 and bfloat16 kernels only,
/// so a float32 decoder's attention would silently fall back to the CPU provider, with the cache
/// crossing PCIe at every layer of every step.
pub fn check_profile(provider: &crate::runtime::Provider, dtype: manifest::Dtype, bundle: &Path) -> Result<()> {
    if matches!(provider, crate::runtime::Provider::Cuda { .. }) && dtype == manifest::Dtype::Float32 {
        return Err(crate::Error::BundleMismatch {
            bundle: bundle.to_path_buf(),
            reason: "its decoder is float32, and onnxruntime's CUDA GroupQueryAttention runs float16 or bfloat16 only, so attention would fall back to the CPU; export the GPU profile (onnx/export.py --precision fp16 --targets gpu) or use --device cpu".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Provider;
    use manifest::Dtype;

    #[test]
    fn a_float32_decoder_is_refused_on_cuda_with_the_profile_to_export() {
        let dir = Path::new("models/x");
        let err = check_profile(&Provider::Cuda { device_id: 0 }, Dtype::Float32, dir).unwrap_err().to_string();
        assert!(err.contains("float32") && err.contains("--precision fp16") && err.contains("--device cpu") && !err.contains('\n'), "{err}");
        check_profile(&Provider::Cuda { device_id: 0 }, Dtype::Float16, dir).unwrap();
        check_profile(&Provider::Cpu, Dtype::Float32, dir).unwrap();
        check_profile(&Provider::Cpu, Dtype::Float16, dir).unwrap();
    }
}
