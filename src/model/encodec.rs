//! EnCodec: waveform <-> codes.

use ndarray::{Array3, ArrayView3};
use ort::value::TensorRef;

use super::graph::{take, Graph};
use super::manifest::AudioConfig;
use crate::error::{Error, Result};

pub struct Encodec {
    pub config: AudioConfig,
    encode: Graph,
    decode: Graph,
}

impl Encodec {
    pub(crate) fn new(config: AudioConfig, encode: Graph, decode: Graph) -> Result<Encodec> {
        encode.expect_inputs(&["audio"])?;
        encode.expect_outputs(&["codes"])?;
        encode.expect_dim("codes", 1, config.num_codebooks, "codebook count")?;
        decode.expect_inputs(&["codes"])?;
        decode.expect_outputs(&["audio"])?;
        decode.expect_dim("codes", 1, config.num_codebooks, "codebook count")?;
        Ok(Encodec { config, encode, decode })
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
            .decode
            .session
            .run(ort::inputs!["codes" => TensorRef::from_array_view(&codes)?])
            .map_err(Error::ort("EnCodec decode"))?;
        take(&outputs, "audio")
    }
}
