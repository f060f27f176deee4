//! The MusicGen decoder as a chain of graphs (embedding, one graph per layer, head), with the host
//! between every two of them: hooks read and change the residual stream there, and the KV cache is
//! host-owned, so a change at layer `l` of a step flows into layers `> l` and into later steps.
//!
//! KV cache: one `[rows, heads, capacity, head_dim]` buffer per layer for keys and one for values.
//! A layer graph reads the whole buffer (masking positions `>= past_len`) and returns only this
//! call's keys and values, which the host writes in place: no per-step copy of the cache. Capacity
//! grows in chunks of [`CACHE_CHUNK`] positions, so the graphs never read much more than the live
//! cache and a growth copy happens once per chunk.

use std::ops::Range;

use ndarray::{s, Array2, Array3, Array4, Array5, ArrayView2, ArrayView3, Axis};
use ort::value::TensorRef;

use super::graph::{take, Graph};
use super::manifest::DecoderConfig;
use crate::error::{Error, Result};
use crate::hooks::{Component, ForwardContext, HookPoint, Hooks, LayerEdits};

/// Cache capacity grows in multiples of this many positions.
pub const CACHE_CHUNK: usize = 64;

pub struct Decoder {
    pub config: DecoderConfig,
    cross_kv: Graph,
    embed: Graph,
    layers: Vec<Graph>,
    head: Graph,
}

/// Per-generation state: the cache, the cross-attention keys and values of the prompt, the rows.
pub struct DecoderState {
    rows: usize,
    conditional_rows: Range<usize>,
    past_len: usize,
    calls: usize,
    capacity: usize,
    keys: Vec<Array4<f32>>,
    values: Vec<Array4<f32>>,
    cross_keys: Vec<Array4<f32>>,
    cross_values: Vec<Array4<f32>>,
    encoder_mask: Array2<i64>,
}

impl DecoderState {
    /// Positions already in the cache.
    pub fn past_len(&self) -> usize {
        self.past_len
    }
    /// Rows of every forward on this state.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Rows that carry the text condition.
    pub fn conditional_rows(&self) -> Range<usize> {
        self.conditional_rows.clone()
    }
    /// Forwards run so far (0 before the prefill).
    pub fn calls(&self) -> usize {
        self.calls
    }
    /// The cache's current capacity in positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What one forward returns.
pub struct ForwardOutput {
    /// `[rows, codebooks, positions, vocab]`.
    pub logits: Array4<f32>,
    /// `ln_final.hook_normalized`, `[rows, positions, d_model]`.
    pub normed: Array3<f32>,
}

impl Decoder {
    pub(crate) fn new(config: DecoderConfig, cross_kv: Graph, embed: Graph, layers: Vec<Graph>, head: Graph) -> Result<Decoder> {
        let d = &config;
        cross_kv.expect_inputs(&["encoder_hidden_states", "encoder_attention_mask"])?;
        cross_kv.expect_outputs(&["cross_key", "cross_value"])?;
        cross_kv.expect_dim("cross_key", 0, d.num_layers, "layer count")?;
        cross_kv.expect_dim("cross_key", 2, d.num_heads, "head count")?;
        cross_kv.expect_dim("cross_key", 4, d.head_dim, "head_dim")?;
        embed.expect_inputs(&["input_ids", "past_len"])?;
        embed.expect_outputs(&["hidden"])?;
        embed.expect_dim("input_ids", 1, d.num_codebooks, "codebook count")?;
        embed.expect_dim("hidden", 2, d.d_model, "width")?;
        let mut inputs = vec!["hidden", "past_key", "past_value", "past_len", "cross_key", "cross_value", "encoder_attention_mask"];
        let edit_names: Vec<String> = Component::ALL
            .iter()
            .flat_map(|c| ["add", "replace", "mask"].map(|k| format!("{}_{k}", c.name())))
            .collect();
        inputs.extend(edit_names.iter().map(String::as_str));
        for layer in &layers {
            layer.expect_inputs(&inputs)?;
            layer.expect_outputs(&["resid_post", "attn_out", "cross_attn_out", "mlp_out", "new_key", "new_value"])?;
            layer.expect_dim("hidden", 2, d.d_model, "width")?;
            layer.expect_dim("past_key", 1, d.num_heads, "head count")?;
            layer.expect_dim("past_key", 3, d.head_dim, "head_dim")?;
        }
        head.expect_inputs(&["hidden"])?;
        head.expect_outputs(&["normed", "logits"])?;
        head.expect_dim("hidden", 2, d.d_model, "width")?;
        head.expect_dim("logits", 1, d.num_codebooks, "codebook count")?;
        head.expect_dim("logits", 3, d.vocab_size, "vocabulary")?;
        Ok(Decoder { config, cross_kv, embed, layers, head })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Starts a generation: computes every layer's cross-attention keys and values once.
    /// `encoder_states` `[rows, S, text_width]` and `encoder_mask` `[rows, S]`; `conditional_rows`
    /// says which rows carry the condition (for hooks that act on those only).
    pub fn start(
        &mut self,
        encoder_states: ArrayView3<'_, f32>,
        encoder_mask: ArrayView2<'_, i64>,
        conditional_rows: Range<usize>,
    ) -> Result<DecoderState> {
        let rows = encoder_states.shape()[0];
        if encoder_mask.shape() != &encoder_states.shape()[..2] {
            return Err(Error::Input(format!(
                "encoder mask {:?} does not match encoder states {:?}",
                encoder_mask.shape(),
                encoder_states.shape()
            )));
        }
        if conditional_rows.end > rows {
            return Err(Error::Input(format!("conditional rows {conditional_rows:?} exceed the {rows} rows")));
        }
        let states = encoder_states.as_standard_layout();
        let mask = encoder_mask.as_standard_layout();
        let outputs = self
            .cross_kv
            .session
            .run(ort::inputs![
                "encoder_hidden_states" => TensorRef::from_array_view(&states)?,
                "encoder_attention_mask" => TensorRef::from_array_view(&mask)?,
            ])
            .map_err(Error::ort("cross_kv"))?;
        let cross_key: Array5<f32> = take(&outputs, "cross_key")?;
        let cross_value: Array5<f32> = take(&outputs, "cross_value")?;
        drop(outputs);
        let split = |a: Array5<f32>| a.axis_iter(Axis(0)).map(|v| v.to_owned()).collect::<Vec<Array4<f32>>>();
        let c = &self.config;
        let empty = || Array4::<f32>::zeros((rows, c.num_heads, 0, c.head_dim));
        Ok(DecoderState {
            rows,
            conditional_rows,
            past_len: 0,
            calls: 0,
            capacity: 0,
            keys: (0..c.num_layers).map(|_| empty()).collect(),
            values: (0..c.num_layers).map(|_| empty()).collect(),
            cross_keys: split(cross_key),
            cross_values: split(cross_value),
            encoder_mask: mask.into_owned(),
        })
    }

    /// Starts a classifier-free-guidance generation: rows = the conditional rows given, then as many
    /// unconditional rows with all-zero encoder states and an all-zero mask (as MusicGen does).
    pub fn start_guided(&mut self, encoder_states: ArrayView3<'_, f32>, encoder_mask: ArrayView2<'_, i64>) -> Result<DecoderState> {
        let (b, s, w) = encoder_states.dim();
        let mut states = Array3::<f32>::zeros((2 * b, s, w));
        states.slice_mut(s![..b, .., ..]).assign(&encoder_states);
        let mut mask = Array2::<i64>::zeros((2 * b, s));
        mask.slice_mut(s![..b, ..]).assign(&encoder_mask);
        self.start(states.view(), mask.view(), 0..b)
    }

    /// One forward over `input_ids` `[rows, codebooks, positions]` at the state's next positions
    /// (the first call is the prefill), running `hooks` at every hook point.
    pub fn forward(&mut self, state: &mut DecoderState, input_ids: ArrayView3<'_, i64>, hooks: &mut dyn Hooks) -> Result<ForwardOutput> {
        let layers = self.layers.len();
        self.forward_to(state, input_ids, hooks, layers)
    }

    /// A forward through the first `layers` layers only, then the head on that residual: the early
    /// exit of DecoderLens. Layers past the exit are not run and their cache is not written, so a
    /// state must keep one exit depth for all its forwards.
    pub fn forward_to(&mut self, state: &mut DecoderState, input_ids: ArrayView3<'_, i64>, hooks: &mut dyn Hooks, layers: usize) -> Result<ForwardOutput> {
        if layers == 0 || layers > self.layers.len() {
            return Err(Error::Input(format!("exit after {layers} layers: the decoder has 1..={}", self.layers.len())));
        }
        let (rows, codebooks, t) = input_ids.dim();
        let c = self.config.clone();
        if rows != state.rows || codebooks != c.num_codebooks || t == 0 {
            return Err(Error::Input(format!(
                "decoder input is {:?}, expected [{}, {}, >=1]",
                input_ids.shape(),
                state.rows,
                c.num_codebooks
            )));
        }
        let vocab_rows = c.vocab_size as i64 + 1;
        if let Some(bad) = input_ids.iter().find(|&&id| id < 0 || id >= vocab_rows) {
            return Err(Error::Input(format!("token id {bad} outside 0..={}", c.vocab_size)));
        }
        if state.past_len + t > c.max_position_embeddings {
            return Err(Error::Input(format!(
                "{} positions exceed the model's position table of {}",
                state.past_len + t,
                c.max_position_embeddings
            )));
        }
        let ctx = ForwardContext {
            call: state.calls,
            past_len: state.past_len,
            new_len: t,
            rows,
            conditional_rows: state.conditional_rows.clone(),
        };
        ensure_capacity(state, &c, state.past_len + t);
        let past_len = ndarray::arr0(state.past_len as i64);

        let ids = input_ids.as_standard_layout();
        let outputs = self
            .embed
            .session
            .run(ort::inputs![
                "input_ids" => TensorRef::from_array_view(&ids)?,
                "past_len" => TensorRef::from_array_view(&past_len)?,
            ])
            .map_err(Error::ort("decoder_embed"))?;
        let mut hidden: Array3<f32> = take(&outputs, "hidden")?;
        drop(outputs);
        hooks.on_residual(&ctx, HookPoint::Embed, hidden.view_mut()).map_err(hook_error(HookPoint::Embed))?;
        hooks.on_residual(&ctx, HookPoint::ResidPre(0), hidden.view_mut()).map_err(hook_error(HookPoint::ResidPre(0)))?;

        let zeros = Array3::<f32>::zeros((rows, t, c.d_model));
        for (l, layer) in self.layers.iter_mut().enumerate().take(layers) {
            let mut edits = LayerEdits::new(rows, t, c.d_model);
            hooks.edit_components(&ctx, l, &mut edits).map_err(|e| Error::Hook {
                hook: format!("edit_components(layer {l})"),
                reason: e.to_string(),
            })?;
            let mut edit_arrays = Vec::with_capacity(3);
            for comp in Component::ALL {
                let add = edits.take_add(comp);
                let replace = edits.take_replace(comp);
                edit_arrays.push((comp, add, replace));
            }
            let mut inputs = ort::inputs![
                "hidden" => TensorRef::from_array_view(&hidden)?,
                "past_key" => TensorRef::from_array_view(&state.keys[l])?,
                "past_value" => TensorRef::from_array_view(&state.values[l])?,
                "past_len" => TensorRef::from_array_view(&past_len)?,
                "cross_key" => TensorRef::from_array_view(&state.cross_keys[l])?,
                "cross_value" => TensorRef::from_array_view(&state.cross_values[l])?,
                "encoder_attention_mask" => TensorRef::from_array_view(&state.encoder_mask)?,
            ];
            for (comp, add, replace) in &edit_arrays {
                let name = comp.name();
                inputs.push((format!("{name}_add").into(), TensorRef::from_array_view(add.as_ref().unwrap_or(&zeros))?.into()));
                let (values, mask) = match replace {
                    Some((v, m)) => (v, m),
                    None => (&zeros, &zeros),
                };
                inputs.push((format!("{name}_replace").into(), TensorRef::from_array_view(values)?.into()));
                inputs.push((format!("{name}_mask").into(), TensorRef::from_array_view(mask)?.into()));
            }
            let outputs = layer.session.run(inputs).map_err(Error::ort(format!("decoder layer {l}")))?;
            let resid_post: Array3<f32> = take(&outputs, "resid_post")?;
            {
                let new_key = outputs["new_key"].try_extract_array::<f32>()?;
                let new_value = outputs["new_value"].try_extract_array::<f32>()?;
                let range = state.past_len..state.past_len + t;
                state.keys[l].slice_mut(s![.., .., range.clone(), ..]).assign(&new_key.into_dimensionality::<ndarray::Ix4>().map_err(shape_err)?);
                state.values[l].slice_mut(s![.., .., range, ..]).assign(&new_value.into_dimensionality::<ndarray::Ix4>().map_err(shape_err)?);
            }
            for comp in Component::ALL {
                let point = HookPoint::Component(l, comp);
                if hooks.wants(&point) {
                    let out = outputs[format!("{}_out", comp.name()).as_str()].try_extract_array::<f32>()?;
                    let out = out.into_dimensionality::<ndarray::Ix3>().map_err(shape_err)?;
                    hooks.on_component(&ctx, point, out).map_err(hook_error(point))?;
                }
            }
            drop(outputs);
            hidden = resid_post;
            hooks.on_residual(&ctx, HookPoint::ResidPost(l), hidden.view_mut()).map_err(hook_error(HookPoint::ResidPost(l)))?;
            if l + 1 < layers {
                let point = HookPoint::ResidPre(l + 1);
                hooks.on_residual(&ctx, point, hidden.view_mut()).map_err(hook_error(point))?;
            }
        }
        let (normed, logits) = self.head(hidden.view())?;
        hooks.on_component(&ctx, HookPoint::LnFinal, normed.view()).map_err(hook_error(HookPoint::LnFinal))?;
        state.past_len += t;
        state.calls += 1;
        Ok(ForwardOutput { logits, normed })
    }

    /// The head graph on any residual `[rows, positions, d_model]`: (final LayerNorm, logits
    /// `[rows, codebooks, positions, vocab]`). Applied to layer `k`'s output, this is DecoderLens's
    /// early exit.
    pub fn head(&mut self, hidden: ArrayView3<'_, f32>) -> Result<(Array3<f32>, Array4<f32>)> {
        if hidden.shape()[2] != self.config.d_model {
            return Err(Error::Input(format!("head input width {} != d_model {}", hidden.shape()[2], self.config.d_model)));
        }
        let hidden = hidden.as_standard_layout();
        let outputs = self
            .head
            .session
            .run(ort::inputs!["hidden" => TensorRef::from_array_view(&hidden)?])
            .map_err(Error::ort("decoder_head"))?;
        Ok((take(&outputs, "normed")?, take(&outputs, "logits")?))
    }
}

fn ensure_capacity(state: &mut DecoderState, c: &DecoderConfig, needed: usize) {
    if needed <= state.capacity {
        return;
    }
    let capacity = needed.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
    let (rows, past) = (state.rows, state.past_len);
    // One buffer at a time, so growing holds one extra layer's cache, not a second whole cache.
    for buffer in state.keys.iter_mut().chain(state.values.iter_mut()) {
        let mut new = Array4::<f32>::zeros((rows, c.num_heads, capacity, c.head_dim));
        new.slice_mut(s![.., .., ..past, ..]).assign(&buffer.slice(s![.., .., ..past, ..]));
        *buffer = new;
    }
    state.capacity = capacity;
}

fn hook_error(point: HookPoint) -> impl FnOnce(Error) -> Error {
    move |e| match e {
        Error::Hook { .. } => e,
        other => Error::Hook { hook: point.to_string(), reason: other.to_string() },
    }
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::Input(format!("graph output has an unexpected rank: {e}"))
}
