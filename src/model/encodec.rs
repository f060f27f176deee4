//! EnCodec: waveform <-> codes. Decoding runs in two graphs: `encodec_decode_latent` (quantizer,
//! first convolution, LSTM; frame rate, the whole clip at once) and `encodec_decode_upsample` (the
//! convolutional upsampling stack). Long clips go through the second in chunks of
//! [`DEFAULT_DECODE_CHUNK`] frames with `decode_context_frames` of overlap either side, cut away
//! afterwards: the same waveform as one pass, in the memory of a short clip (a 30 s clip in one pass
//! held about 1 GB of activations on musicgen-small).

use ndarray::{concatenate, s, Array3, ArrayView3, Axis};
use ort::value::TensorRef;

use super::graph::{take, Graph};
use super::manifest::AudioConfig;
use crate::error::{Error, Result};

/// Frames per chunk of the upsampling graph (5 s at 50 frames/s).
pub const DEFAULT_DECODE_CHUNK: usize = 250;

pub struct Encodec {
    pub config: AudioConfig,
    encode: Graph,
    latent: Graph,
    upsample: Graph,
    chunk: usize,
}

impl Encodec {
    pub(crate) fn new(config: AudioConfig, encode: Graph, latent: Graph, upsample: Graph) -> Result<Encodec> {
        encode.expect_inputs(&["audio"])?;
        encode.expect_outputs(&["codes"])?;
        encode.expect_dim("codes", 1, config.num_codebooks, "codebook count")?;
        latent.expect_inputs(&["codes"])?;
        latent.expect_outputs(&["latent"])?;
        latent.expect_dim("codes", 1, config.num_codebooks, "codebook count")?;
        upsample.expect_inputs(&["latent"])?;
        upsample.expect_outputs(&["audio"])?;
        Ok(Encodec { config, encode, latent, upsample, chunk: DEFAULT_DECODE_CHUNK })
    }

    /// Frames per upsampling chunk (at least 1); any value gives the same waveform.
    pub fn set_decode_chunk(&mut self, frames: usize) {
        self.chunk = frames.max(1);
    }

    /// `audio` `[batch, channels, samples]` at the model's sample rate -> codes `[batch, codebooks, frames]`.
    pub fn encode(&mut self, audio: ArrayView3<'_, f32>) -> Result<Array3<i64>> {
        if audio.shape()[1] != self.config.channels || audio.shape()[2] == 0 {
            return Err(Error::Input(format!(
                "EnCodec input is {:?}, expected [batch, {}, samples > 0] at {} Hz",
                audio.shape(),
                self.config.channels,
                self.config.sample_rate
            )));
        }
        let audio = audio.as_standard_layout();
        let outputs = self
            .encode
            .session
            .run(ort::inputs!["audio" => TensorRef::from_array_view(&audio)?])
            .map_err(Error::ort("EnCodec encode"))?;
        take(&outputs, "codes")
    }

    /// Codes `[batch, codebooks, frames]` -> waveform `[batch, channels, samples]`.
    pub fn decode(&mut self, codes: ArrayView3<'_, i64>) -> Result<Array3<f32>> {
        let size = self.config.codebook_size as i64;
        if codes.shape()[1] != self.config.num_codebooks || codes.shape()[2] == 0 {
            return Err(Error::Input(format!("codes are {:?}, expected [batch, {}, frames > 0]", codes.shape(), self.config.num_codebooks)));
        }
        if let Some(bad) = codes.iter().find(|&&c| c < 0 || c >= size) {
            return Err(Error::Input(format!("code {bad} outside 0..{size}")));
        }
        let codes = codes.as_standard_layout();
        let outputs = self
            .latent
            .session
            .run(ort::inputs!["codes" => TensorRef::from_array_view(&codes)?])
            .map_err(Error::ort("EnCodec decode (latent)"))?;
        let latent: Array3<f32> = take(&outputs, "latent")?;
        drop(outputs);
        let frames = latent.shape()[2];
        let (hop, ctx) = (self.config.hop_length, self.config.decode_context_frames);
        let mut pieces = Vec::new();
        for a in (0..frames).step_by(self.chunk) {
            let b = (a + self.chunk).min(frames);
            let (lo, hi) = (a.saturating_sub(ctx), (b + ctx).min(frames));
            let part = latent.slice(s![.., .., lo..hi]).as_standard_layout().into_owned();
            let outputs = self
                .upsample
                .session
                .run(ort::inputs!["latent" => TensorRef::from_array_view(&part)?])
                .map_err(Error::ort("EnCodec decode (upsample)"))?;
            let audio: Array3<f32> = take(&outputs, "audio")?;
            if audio.shape()[2] != (hi - lo) * hop {
                return Err(Error::Internal(format!("EnCodec upsampling gave {} samples for {} frames of hop {hop}", audio.shape()[2], hi - lo)));
            }
            pieces.push(audio.slice(s![.., .., (a - lo) * hop..(b - lo) * hop]).to_owned());
        }
        let views: Vec<_> = pieces.iter().map(|p| p.view()).collect();
        let audio = concatenate(Axis(2), &views).expect("same batch and channels");
        drop(pieces);
        crate::runtime::release_free_memory();
        Ok(audio)
    }
}
