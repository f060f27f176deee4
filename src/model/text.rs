//! The T5 text encoder and its tokenizer.

use std::path::Path;

use ndarray::{Array2, Array3, Array4};
use ort::value::TensorRef;

use super::graph::{take, Graph};
use super::manifest::TextEncoderConfig;
use crate::error::{Error, Result};

pub struct TextEncoder {
    pub config: TextEncoderConfig,
    tokenizer: tokenizers::Tokenizer,
    graph: Graph,
}

/// The encoder's view of a batch of prompts.
#[derive(Clone, Debug)]
pub struct TextEncoding {
    /// `[batch, S]`, padded with the pad id to the longest prompt.
    pub input_ids: Array2<i64>,
    /// `[batch, S]`, 1 for tokens, 0 for padding.
    pub attention_mask: Array2<i64>,
    /// `[batch, S, width]`: after the final LayerNorm; what MusicGen conditions on.
    pub last_hidden_state: Array3<f32>,
    /// `[layers + 1, batch, S, width]`: the embedding output, then each block's raw output.
    pub hidden_states: Array4<f32>,
    /// `[layers + 1, batch, S, width]`: the final LayerNorm applied to each entry of `hidden_states`.
    pub normed_hidden_states: Array4<f32>,
}

impl TextEncoder {
    pub(crate) fn new(config: TextEncoderConfig, tokenizer_path: &Path, graph: Graph) -> Result<TextEncoder> {
        let mut tokenizer = tokenizers::Tokenizer::from_file(tokenizer_path)
            .map_err(|e| Error::Tokenizer { path: tokenizer_path.to_path_buf(), reason: e.to_string() })?;
        // Padding is done here (right, to the longest, as transformers pads); a padding rule saved in
        // tokenizer.json would otherwise count pad tokens as text.
        tokenizer.with_padding(None);
        graph.expect_inputs(&["input_ids", "attention_mask"])?;
        graph.expect_outputs(&["last_hidden_state", "hidden_states", "normed_hidden_states"])?;
        graph.expect_dim("last_hidden_state", 2, config.d_model, "width")?;
        graph.expect_dim("hidden_states", 0, config.num_layers + 1, "layer count + 1")?;
        Ok(TextEncoder { config, tokenizer, graph })
    }

    /// Token ids and mask for `prompts`, padded on the right to the longest (as transformers pads).
    pub fn tokenize(&self, prompts: &[&str]) -> Result<(Array2<i64>, Array2<i64>)> {
        if prompts.is_empty() {
            return Err(Error::Input("no text prompt given".into()));
        }
        let encodings = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| Error::Input(format!("tokenizing the prompts failed: {e}")))?;
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = Array2::from_elem((prompts.len(), len), self.config.pad_token_id);
        let mut mask = Array2::<i64>::zeros((prompts.len(), len));
        for (row, enc) in encodings.iter().enumerate() {
            for (i, &id) in enc.get_ids().iter().enumerate() {
                if id as usize >= self.config.vocab_size {
                    return Err(Error::Input(format!(
                        "token id {id} is outside the text encoder's vocabulary of {}: tokenizer.json does not belong to this model",
                        self.config.vocab_size
                    )));
                }
                ids[[row, i]] = id as i64;
                mask[[row, i]] = 1;
            }
        }
        Ok((ids, mask))
    }

    /// Tokenizes and encodes `prompts`.
    pub fn encode(&mut self, prompts: &[&str]) -> Result<TextEncoding> {
        let (ids, mask) = self.tokenize(prompts)?;
        self.encode_ids(ids, mask)
    }

    /// Encodes already tokenized ids.
    pub fn encode_ids(&mut self, input_ids: Array2<i64>, attention_mask: Array2<i64>) -> Result<TextEncoding> {
        if input_ids.shape() != attention_mask.shape() {
            return Err(Error::Input("input ids and attention mask differ in shape".into()));
        }
        let outputs = self
            .graph
            .session
            .run(ort::inputs![
                "input_ids" => TensorRef::from_array_view(&input_ids)?,
                "attention_mask" => TensorRef::from_array_view(&attention_mask)?,
            ])
            .map_err(Error::ort("text encoder"))?;
        let last_hidden_state = take(&outputs, "last_hidden_state")?;
        let hidden_states = take(&outputs, "hidden_states")?;
        let normed_hidden_states = take(&outputs, "normed_hidden_states")?;
        drop(outputs);
        Ok(TextEncoding { input_ids, attention_mask, last_hidden_state, hidden_states, normed_hidden_states })
    }
}
