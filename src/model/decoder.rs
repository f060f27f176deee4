//! The MusicGen decoder as a chain of graphs (embedding, one graph per layer, head), with the host
//! between every two of them: hooks read and change the residual stream there, and the KV cache is
//! host-owned, so a change at layer `l` of a step flows into layers `> l` and into later steps.
//!
//! KV cache: one `[rows, heads, capacity, head_dim]` buffer per layer for keys and one for values.
//! Each layer call binds the buffer as both the graph's `past_*` input and its `present_*` output
//! (IO binding), so the graph's attention (onnxruntime's GroupQueryAttention) reads positions
//! `< past_len` where they lie and writes this call's keys and values into them: no per-step copy of
//! the cache in either direction. Capacity grows in chunks of [`CACHE_CHUNK`] positions, so the
//! graphs never read much more than the live cache and a growth copy happens once per chunk. A
//! generation on the CPU copies of the graphs, whose attention reads the live positions only,
//! reserves its whole length at the start instead ([`Decoder::reserve`]): each growth copies the
//! whole cache into new pages (a 30 s clip of musicgen-small on 2 cores: 13.3-13.9 steps/s growing,
//! 15.0-15.3 reserved, the same WAV).
//!
//! The cache and the cross-attention keys and values are kept in the bundle's `dtype` ([`Kv`]):
//! float16 in a half-precision bundle, whose attention reads them as they are; every other graph
//! input and output (residual, components, edits, logits) is float32 in either.

use std::ops::{Deref, Range};

use half::f16;
use ndarray::{Array0, Array3, Array4, ArrayView2, ArrayView3, Ix3, Ix4};
use ort::session::IoBinding;
use ort::value::{DynValue, TensorRef};
use ort::AsPointer;

use super::device::{Element, DeviceTensor, Placement, Traffic};
use super::graph::Graph;
use super::manifest::{DecoderConfig, Dtype};
use crate::error::{Error, Result};
use crate::hooks::{Component, ForwardContext, HookPoint, Hooks, LayerEdits};

/// Cache capacity grows in multiples of this many positions.
pub const CACHE_CHUNK: usize = 64;

pub struct Decoder {
    pub config: DecoderConfig,
    dtype: Dtype,
    cross_kv: Graph,
    embed: Graph,
    layers: Vec<Graph>,
    head: Graph,
    placement: Placement,
}

/// Per-generation state, all of it in the decoder's [`Placement`] (device memory under CUDA): the
/// cache, the cross-attention keys and values of the prompt, the encoder mask, the zero edit
/// inputs; plus the rows and what has crossed to and from the host so far.
pub struct DecoderState {
    rows: usize,
    conditional_rows: Range<usize>,
    past_len: usize,
    calls: usize,
    capacity: usize,
    /// Per layer, `[rows, heads, capacity, head_dim]` in the bundle's dtype (empty before the first
    /// forward).
    keys: Vec<DeviceTensor>,
    values: Vec<DeviceTensor>,
    /// `[layers, rows, heads, S, head_dim]` in the bundle's dtype.
    cross_keys: DeviceTensor,
    cross_values: DeviceTensor,
    /// `[rows, S]` int64.
    encoder_mask: DeviceTensor,
    /// Zero edit inputs `[rows, positions, d_model]`, by positions (the steps' 1 made at the start).
    zeros: Vec<(usize, DeviceTensor)>,
    traffic: Traffic,
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
    /// Bytes moved between the host and the state's memory since [`Decoder::start`], the start's
    /// own uploads included.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The zero edit input for `t` positions (made on first use, kept for the steps' `t = 1` and
    /// the latest other length).
    fn zeros_for(&mut self, placement: &Placement, t: usize, d_model: usize) -> Result<usize> {
        if let Some(i) = self.zeros.iter().position(|(n, _)| *n == t) {
            return Ok(i);
        }
        self.zeros.retain(|(n, _)| *n == 1);
        let z = placement.zeros(ort::value::TensorElementType::Float32, &[self.rows, t, d_model], &mut self.traffic)?;
        self.zeros.push((t, z));
        Ok(self.zeros.len() - 1)
    }
}

/// What one forward returns.
pub struct ForwardOutput {
    /// `[rows, codebooks, positions, vocab]`.
    pub logits: Array4<f32>,
    /// Bytes this forward moved between the host and the decoder's memory.
    pub traffic: Traffic,
}

impl Decoder {
    pub(crate) fn new(
        config: DecoderConfig,
        dtype: Dtype,
        graphs: (Graph, Graph, Vec<Graph>, Graph),
        placement: Placement,
    ) -> Result<Decoder> {
        let (cross_kv, embed, layers, head) = graphs;
        let d = &config;
        for name in ["cross_key", "cross_value"] {
            cross_kv.expect_type(name, dtype.tensor_type())?;
        }
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
        inputs.extend(Component::ALL.iter().flat_map(|c| c.edit_input_names()));
        for layer in &layers {
            layer.expect_inputs(&inputs)?;
            layer.expect_outputs(&["resid_post", "attn_out", "cross_attn_out", "mlp_out", "present_key", "present_value"])?;
            layer.expect_dim("hidden", 2, d.d_model, "width")?;
            layer.expect_dim("past_key", 1, d.num_heads, "head count")?;
            layer.expect_dim("past_key", 3, d.head_dim, "head_dim")?;
            for name in ["past_key", "past_value", "cross_key", "cross_value", "present_key", "present_value"] {
                layer.expect_type(name, dtype.tensor_type())?;
            }
        }
        head.expect_inputs(&["hidden"])?;
        head.expect_outputs(&["normed", "logits"])?;
        head.expect_dim("hidden", 2, d.d_model, "width")?;
        head.expect_dim("logits", 1, d.num_codebooks, "codebook count")?;
        head.expect_dim("logits", 3, d.vocab_size, "vocabulary")?;
        if layers.first().is_some_and(|l| l.kernels) && !placement.is_host() {
            return Err(Error::Internal("the CPU copies of the layers run in host memory only".into()));
        }
        Ok(Decoder { config, dtype, cross_kv, embed, layers, head, placement })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether the decoder's state lives in host memory (the CPU provider) rather than on a device.
    pub fn state_on_host(&self) -> bool {
        self.placement.is_host()
    }

    /// Bytes free now in the memory the decoder's state lives in ([`Placement::free_bytes`]).
    pub fn free_memory(&self) -> Option<u64> {
        self.placement.free_bytes()
    }

    /// The dtype of the cache and the cross-attention keys and values.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Ends the profiles of the decoder's sessions (cross K/V, embedding, layers, head), as (graph
    /// file, profile file), for [`super::placement`].
    pub fn end_profiling(&mut self) -> Result<Vec<(String, std::path::PathBuf)>> {
        let graphs = [&mut self.cross_kv, &mut self.embed].into_iter().chain(self.layers.iter_mut()).chain([&mut self.head]);
        graphs.map(|g| Ok((g.file.clone(), g.end_profiling()?))).collect()
    }

    /// The graph files of the layers, then the head, as loaded (plain or CPU copies).
    pub fn graph_files(&self) -> Vec<&str> {
        self.layers.iter().chain([&self.head]).map(|g| g.file.as_str()).collect()
    }

    /// Starts a generation: computes every layer's cross-attention keys and values once, into the
    /// decoder's memory, with the encoder mask beside them.
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
        let mut traffic = Traffic::default();
        let states = encoder_states.as_standard_layout();
        let mut mask = self.placement.upload(encoder_mask, &mut traffic)?;
        let mut binding = self.cross_kv.session.create_binding().map_err(Error::ort("cross_kv"))?;
        let states = host_input(states.view(), &mut traffic)?;
        bind_input(&mut binding, "encoder_hidden_states", &states).map_err(Error::ort("cross_kv"))?;
        let mask_view = mask.whole::<i64>()?;
        bind_input(&mut binding, "encoder_attention_mask", mask_view.view().into_dyn().deref()).map_err(Error::ort("cross_kv"))?;
        for name in ["cross_key", "cross_value"] {
            binding.bind_output_to_device(name, self.placement.memory_info()).map_err(Error::ort("cross_kv"))?;
        }
        let mut outputs = self.cross_kv.session.run_binding(&binding).map_err(Error::ort("cross_kv"))?;
        let host = self.placement.is_host();
        let mut output = |name: &str| -> Result<DeviceTensor> {
            let v = outputs.remove(name).ok_or_else(|| Error::Internal(format!("cross_kv returned no {name}")))?;
            DeviceTensor::from_output(v, host)
        };
        let (cross_keys, cross_values) = (output("cross_key")?, output("cross_value")?);
        drop(outputs);
        drop(binding);
        drop(mask_view);
        let mut state = DecoderState {
            rows,
            conditional_rows,
            past_len: 0,
            calls: 0,
            capacity: 0,
            keys: Vec::new(),
            values: Vec::new(),
            cross_keys,
            cross_values,
            encoder_mask: mask,
            zeros: Vec::new(),
            traffic,
        };
        state.zeros_for(&self.placement, 1, self.config.d_model)?;
        Ok(state)
    }

    /// Starts a classifier-free-guidance generation: rows = the conditional rows given, then as many
    /// unconditional rows with all-zero encoder states and an all-zero mask (as MusicGen does).
    pub fn start_guided(&mut self, encoder_states: ArrayView3<'_, f32>, encoder_mask: ArrayView2<'_, i64>) -> Result<DecoderState> {
        let (b, s, w) = encoder_states.dim();
        let mut states = Array3::<f32>::zeros((2 * b, s, w));
        states.slice_mut(ndarray::s![..b, .., ..]).assign(&encoder_states);
        let mut mask = ndarray::Array2::<i64>::zeros((2 * b, s));
        mask.slice_mut(ndarray::s![..b, ..]).assign(&encoder_mask);
        self.start(states.view(), mask.view(), 0..b)
    }

    /// One forward over `input_ids` `[rows, codebooks, positions]` at the state's next positions
    /// (the first call is the prefill), running `hooks` at every hook point.
    pub fn forward(&mut self, state: &mut DecoderState, input_ids: ArrayView3<'_, i64>, hooks: &mut dyn Hooks) -> Result<ForwardOutput> {
        let layers = self.layers.len();
        self.forward_to(state, input_ids, hooks, layers)
    }

    /// Room for `positions` cached positions at once (at most the position table). The CPU copies'
    /// attention reads only the live positions, and a device cannot grow a buffer without a trip
    /// through the host, so both reserve a whole generation; the plain graphs on the CPU keep
    /// growing by chunks (their attention reads the whole buffer). Returns whether it reserved.
    pub fn reserve(&self, state: &mut DecoderState, positions: usize) -> Result<bool> {
        let kernels = self.layers.first().is_some_and(|l| l.kernels);
        if !kernels && self.placement.is_host() {
            return Ok(false);
        }
        ensure_capacity(state, &self.config, self.dtype, &self.placement, positions.min(self.config.max_position_embeddings))?;
        Ok(true)
    }

    /// A forward through the first `layers` layers only, then the head on that residual: the early
    /// exit of DecoderLens. Layers past the exit are not run and their cache is not written, so a
    /// state must keep one exit depth for all its forwards.
    ///
    /// The residual stream stays in the decoder's memory from layer to layer; it is copied to the
    /// host at a point only when a hook wants that point, and back only if the hook changed it.
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
        let before = state.traffic;
        ensure_capacity(state, &c, self.dtype, &self.placement, state.past_len + t)?;
        let zeros = state.zeros_for(&self.placement, t, c.d_model)?;
        let past_len = ndarray::arr0(state.past_len as i64);
        let host = self.placement.is_host();
        let mem = self.placement.memory_info().to_owned();

        let mut hidden = {
            let mut binding = self.embed.session.create_binding().map_err(Error::ort("decoder_embed"))?;
            let ids = host_input(input_ids, &mut state.traffic)?;
            let past = host_input(past_len.view(), &mut state.traffic)?;
            bind_input(&mut binding, "input_ids", &ids).map_err(Error::ort("decoder_embed"))?;
            bind_input(&mut binding, "past_len", &past).map_err(Error::ort("decoder_embed"))?;
            binding.bind_output_to_device("hidden", &mem).map_err(Error::ort("decoder_embed"))?;
            let mut outputs = self.embed.session.run_binding(&binding).map_err(Error::ort("decoder_embed"))?;
            let v = outputs.remove("hidden").ok_or_else(|| Error::Internal("decoder_embed returned no hidden".into()))?;
            DeviceTensor::from_output(v, host)?
        };
        for point in [HookPoint::Embed, HookPoint::ResidPre(0)] {
            residual_hook(hooks, &ctx, point, &mut hidden, &mut state.traffic)?;
        }

        // onnxruntime's GroupQueryAttention (the plain graphs) takes several new positions over a
        // non-empty cache for one row at a time only: such calls (a chunked prefill) run every layer
        // row by row. The CPU copies' CachedAttention takes any rows at once.
        let by_row = t > 1 && state.past_len > 0 && !self.layers[0].kernels;
        let groups: Vec<Range<usize>> = if by_row { (0..rows).map(|r| r..r + 1).collect() } else { vec![0..rows] };
        // The layers write their residual into `next` (every row group its rows), then it becomes
        // `hidden`: two buffers in the decoder's memory, passed from layer to layer.
        let mut next = self.placement.empty(ort::value::TensorElementType::Float32, &[rows, t, c.d_model])?;
        for l in 0..layers {
            let mut edits = LayerEdits::new(rows, t, c.d_model);
            hooks.edit_components(&ctx, l, &mut edits).map_err(|e| Error::Hook {
                hook: format!("edit_components(layer {l})"),
                reason: e.to_string(),
            })?;
            // Only the edits a hook made go to the device; the others read the state's zeros.
            let mut uploaded: Vec<(Component, Option<DeviceTensor>, Option<(DeviceTensor, DeviceTensor)>)> = Vec::with_capacity(3);
            for comp in Component::ALL {
                let add = edits.take_add(comp).map(|a| self.placement.upload(a.view(), &mut state.traffic)).transpose()?;
                let replace = match edits.take_replace(comp) {
                    Some((v, m)) => Some((self.placement.upload(v.view(), &mut state.traffic)?, self.placement.upload(m.view(), &mut state.traffic)?)),
                    None => None,
                };
                uploaded.push((comp, add, replace));
            }
            let want = Component::ALL.map(|comp| hooks.wants(&HookPoint::Component(l, comp)));
            let mut components: [Vec<Array3<f32>>; 3] = Default::default();
            for group in groups.iter().cloned() {
                let layer = LayerCall { l, rows: group, t, d_model: c.d_model, past_len: &past_len, want };
                let outs = run_layer(&mut self.layers[l], state, &layer, &mut hidden, &mut next, &mut uploaded, zeros, &mem)?;
                for (i, out) in outs.into_iter().enumerate() {
                    components[i].extend(out);
                }
            }
            for (comp, parts) in Component::ALL.into_iter().zip(&components) {
                if !parts.is_empty() {
                    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
                    let out = ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Internal(e.to_string()))?;
                    let point = HookPoint::Component(l, comp);
                    hooks.on_component(&ctx, point, out.view()).map_err(hook_error(point))?;
                }
            }
            std::mem::swap(&mut hidden, &mut next);
            residual_hook(hooks, &ctx, HookPoint::ResidPost(l), &mut hidden, &mut state.traffic)?;
            if l + 1 < layers {
                residual_hook(hooks, &ctx, HookPoint::ResidPre(l + 1), &mut hidden, &mut state.traffic)?;
            }
        }
        let logits = self.run_head(&ctx, &mut hidden, hooks, &mut state.traffic)?;
        state.past_len += t;
        state.calls += 1;
        let traffic = Traffic {
            to_device: state.traffic.to_device - before.to_device,
            to_host: state.traffic.to_host - before.to_host,
        };
        Ok(ForwardOutput { logits, traffic })
    }

    /// The head graph on the residual in the decoder's memory: the logits come to the host, the
    /// final LayerNorm's output only when a hook wants `ln_final.hook_normalized`.
    fn run_head(&mut self, ctx: &ForwardContext, hidden: &mut DeviceTensor, hooks: &mut dyn Hooks, traffic: &mut Traffic) -> Result<Array4<f32>> {
        let context = || "decoder_head".to_string();
        let host = self.placement.is_host();
        let mut binding = self.head.session.create_binding().map_err(Error::ort(context()))?;
        let input = hidden.whole::<f32>()?;
        bind_input(&mut binding, "hidden", input.view().into_dyn().deref()).map_err(Error::ort(context()))?;
        for name in ["normed", "logits"] {
            binding.bind_output_to_device(name, self.placement.memory_info()).map_err(Error::ort(context()))?;
        }
        let mut outputs = self.head.session.run_binding(&binding).map_err(Error::ort(context()))?;
        let mut output = |name: &str| -> Result<DeviceTensor> {
            let v = outputs.remove(name).ok_or_else(|| Error::Internal(format!("decoder_head returned no {name}")))?;
            DeviceTensor::from_output(v, host)
        };
        let (mut normed, mut logits) = (output("normed")?, output("logits")?);
        drop(outputs);
        drop(binding);
        if hooks.wants(&HookPoint::LnFinal) {
            let normed = normed.read_all::<f32>(traffic)?.into_dimensionality::<Ix3>().map_err(shape_err)?;
            hooks.on_component(ctx, HookPoint::LnFinal, normed.view()).map_err(hook_error(HookPoint::LnFinal))?;
        }
        logits.read_all::<f32>(traffic)?.into_dimensionality::<Ix4>().map_err(shape_err)
    }

    /// The head graph on any residual `[rows, positions, d_model]` from the host: (final LayerNorm,
    /// logits `[rows, codebooks, positions, vocab]`). Applied to layer `k`'s output, this is
    /// DecoderLens's early exit.
    pub fn head(&mut self, hidden: ArrayView3<'_, f32>) -> Result<(Array3<f32>, Array4<f32>)> {
        if hidden.shape()[2] != self.config.d_model {
            return Err(Error::Internal(format!("head input width {} != d_model {}", hidden.shape()[2], self.config.d_model)));
        }
        let hidden = hidden.as_standard_layout();
        let outputs = self
            .head
            .session
            .run(ort::inputs!["hidden" => TensorRef::from_array_view(hidden.view())?])
            .map_err(Error::ort("decoder_head"))?;
        Ok((super::graph::take(&outputs, "normed")?, super::graph::take(&outputs, "logits")?))
    }
}

/// A residual-stream hook point: copied to the host only if a hook wants it, and back only if the
/// hooks changed it (bit for bit).
fn residual_hook(hooks: &mut dyn Hooks, ctx: &ForwardContext, point: HookPoint, hidden: &mut DeviceTensor, traffic: &mut Traffic) -> Result<()> {
    if !hooks.wants_residual(&point) {
        return Ok(());
    }
    let mut host = hidden.read_all::<f32>(traffic)?.into_dimensionality::<Ix3>().map_err(shape_err)?;
    let before = host.clone();
    hooks.on_residual(ctx, point, host.view_mut()).map_err(hook_error(point))?;
    let changed = host.iter().zip(&before).any(|(a, b)| a.to_bits() != b.to_bits());
    if changed {
        hidden.write(0, host.view().into_dyn(), traffic)?;
    }
    Ok(())
}

/// A host array handed to a graph as an input (counted: on a device, onnxruntime copies it over).
fn host_input<T: Element, D: ndarray::Dimension>(a: ndarray::ArrayView<'_, T, D>, traffic: &mut Traffic) -> Result<DynValue> {
    traffic.to_device += (a.len() * std::mem::size_of::<T>()) as u64;
    Ok(super::device::host_value(a)?.into_dyn())
}

/// One layer call: which layer, which rows, and what every row group shares.
struct LayerCall<'a> {
    l: usize,
    rows: Range<usize>,
    t: usize,
    d_model: usize,
    past_len: &'a Array0<i64>,
    want: [bool; 3],
}

/// Runs layer `l`'s graph for some rows of the state, everything bound where it lies in the
/// decoder's memory: the residual `hidden` (its rows) in, `next` (the same rows) out; the cache rows
/// as both the graph's `past_*` inputs and its `present_*` outputs, so the graph reads the cache once
/// and writes this call's keys and values straight into it (no copy of the cache in either
/// direction); the edits a hook made, else the state's zeros. Component outputs a hook wants come to
/// the host.
#[allow(clippy::too_many_arguments)]
fn run_layer(
    graph: &mut Graph,
    state: &mut DecoderState,
    call: &LayerCall<'_>,
    hidden: &mut DeviceTensor,
    next: &mut DeviceTensor,
    edits: &mut [(Component, Option<DeviceTensor>, Option<(DeviceTensor, DeviceTensor)>)],
    zeros: usize,
    mem: &ort::memory::MemoryInfo<'_>,
) -> Result<[Option<Array3<f32>>; 3]> {
    let l = call.l;
    let rows = call.rows.clone();
    let host = hidden.is_host();
    let context = || format!("decoder layer {l}");
    let mut binding = graph.session.create_binding().map_err(Error::ort(context()))?;
    let n = rows.len();
    let act_shape = [n, call.t, call.d_model];
    let act_offset = rows.start * call.t * call.d_model;

    // Views of everything bound, alive until the run.
    let mut inputs: Vec<(&str, DynValue)> = Vec::new();
    let mut views: Vec<(&str, ort::value::DynValueRefMut<'_>)> = Vec::new();
    views.push(("hidden", hidden.view_mut::<f32>(act_offset, &act_shape)?.into_dyn()));
    inputs.push(("past_len", host_input(call.past_len.view(), &mut state.traffic)?));
    {
        let s = state.cross_keys.shape().to_vec(); // [layers, rows, heads, S, head_dim]
        let per_row = s[2] * s[3] * s[4];
        let offset = (l * s[1] + rows.start) * per_row;
        let shape = [n, s[2], s[3], s[4]];
        views.push(("cross_key", kv_view(&mut state.cross_keys, offset, &shape)?));
        views.push(("cross_value", kv_view(&mut state.cross_values, offset, &shape)?));
        let s_len = state.encoder_mask.shape()[1];
        views.push(("encoder_attention_mask", state.encoder_mask.view_mut::<i64>(rows.start * s_len, &[n, s_len])?.into_dyn()));
    }
    // The zeros are bound as several inputs at once: inputs are only read, so one buffer serves.
    let zeros = &state.zeros[zeros].1;
    for (comp, add, replace) in edits.iter_mut() {
        let [add_name, replace_name, mask_name] = comp.edit_input_names();
        let (replace, mask) = match replace {
            Some((v, m)) => (Some(v), Some(m)),
            None => (None, None),
        };
        views.push((add_name, edit_view(add.as_mut(), zeros, act_offset, &act_shape)?));
        views.push((replace_name, edit_view(replace, zeros, act_offset, &act_shape)?));
        views.push((mask_name, edit_view(mask, zeros, act_offset, &act_shape)?));
    }
    for (name, v) in &inputs {
        bind_input(&mut binding, name, v).map_err(Error::ort(context()))?;
    }
    for (name, v) in &views {
        bind_input(&mut binding, name, v).map_err(Error::ort(context()))?;
    }
    // The cache rows, bound in place as `past_*` and `present_*`.
    let (cap_heads, capacity, head_dim) = {
        let s = state.keys[l].shape();
        (s[1], s[2], s[3])
    };
    let cache_shape = [n, cap_heads, capacity, head_dim];
    let cache_offset = rows.start * cap_heads * capacity * head_dim;
    let mut cache_views = Vec::with_capacity(2);
    for (kv, past, present) in [(&mut state.keys[l], "past_key", "present_key"), (&mut state.values[l], "past_value", "present_value")] {
        let view = kv_view(kv, cache_offset, &cache_shape)?;
        bind_input(&mut binding, past, &view).map_err(Error::ort(context()))?;
        cache_views.push((present, view));
    }
    for (present, view) in cache_views {
        binding.bind_output(present, view).map_err(Error::ort(context()))?;
    }
    let out = next.view_mut::<f32>(act_offset, &act_shape)?;
    binding.bind_output("resid_post", out).map_err(Error::ort(context()))?;
    let wanted: Vec<Component> = Component::ALL.into_iter().zip(call.want).filter(|(_, w)| *w).map(|(c, _)| c).collect();
    for comp in &wanted {
        binding.bind_output_to_device(comp.output_name(), mem).map_err(Error::ort(context()))?;
    }
    let mut outputs = graph.session.run_binding(&binding).map_err(Error::ort(context()))?;
    let mut components = [None, None, None];
    for comp in wanted {
        let v = outputs.remove(comp.output_name()).ok_or_else(|| Error::Internal(format!("layer {l} returned no {}", comp.output_name())))?;
        let mut t = DeviceTensor::from_output(v, host)?;
        components[comp.index()] = Some(t.read_all::<f32>(&mut state.traffic)?.into_dimensionality::<Ix3>().map_err(shape_err)?);
    }
    Ok(components)
}

/// A graph input view of a cache or cross-attention tensor, in its element type.
fn kv_view<'a>(t: &'a mut DeviceTensor, offset: usize, shape: &[usize]) -> Result<ort::value::DynValueRefMut<'a>> {
    Ok(match t.element_type() {
        ort::value::TensorElementType::Float16 => t.view_mut::<f16>(offset, shape)?.into_dyn(),
        _ => t.view_mut::<f32>(offset, shape)?.into_dyn(),
    })
}

/// An edit input's view: the hook's edit where it made one, else the zeros (bound read-only).
fn edit_view<'a>(edit: Option<&'a mut DeviceTensor>, zeros: &'a DeviceTensor, offset: usize, shape: &[usize]) -> Result<ort::value::DynValueRefMut<'a>> {
    match edit {
        Some(t) => Ok(t.view_mut::<f32>(offset, shape)?.into_dyn()),
        None => Ok(zeros.input_view::<f32>(offset, shape)?.into_dyn()),
    }
}

/// Binds `value` as an input without the copy `IoBinding::bind_input` makes of borrowed data, so
/// the state is read where it lies. The caller keeps the data alive until the binding has run.
fn bind_input(binding: &mut IoBinding, name: &str, value: &DynValue) -> ort::Result<()> {
    let name = std::ffi::CString::new(name).expect("input names have no NUL");
    // SAFETY: `binding` and `value` are live ort handles (`ptr_mut` / `ptr` of borrowed wrappers)
    // and `name` a NUL-terminated string, all valid for the call, which is what `BindInput`
    // reads. onnxruntime keeps its own reference to the value (not a copy of its data): the data
    // must outlive the run, which every caller ensures by keeping the bound values and views (and
    // the state they view) alive until after `run_binding`.
    unsafe {
        let status = (ort::api().BindInput)(binding.ptr_mut(), name.as_ptr(), value.ptr());
        ort::Error::result_from_status(status)
    }
}

/// Grows every layer's cache to hold `needed` positions (rounded up to [`CACHE_CHUNK`]), keeping
/// the live positions; the first call allocates it.
fn ensure_capacity(state: &mut DecoderState, c: &DecoderConfig, dtype: Dtype, placement: &Placement, needed: usize) -> Result<()> {
    if needed <= state.capacity {
        return Ok(());
    }
    let capacity = needed.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
    let (rows, past) = (state.rows, state.past_len);
    let shape = [rows, c.num_heads, capacity, c.head_dim];
    if state.keys.is_empty() {
        // Fresh zeros: set-up, not a forward's traffic on a device (the buffers are made once).
        let mut setup = Traffic::default();
        for _ in 0..c.num_layers {
            state.keys.push(placement.zeros(dtype.tensor_type(), &shape, &mut setup)?);
            state.values.push(placement.zeros(dtype.tensor_type(), &shape, &mut setup)?);
        }
        state.traffic += setup;
    } else {
        // One buffer at a time, so growing holds one extra layer's cache, not a second whole cache.
        for buffer in state.keys.iter_mut().chain(state.values.iter_mut()) {
            *buffer = match dtype {
                Dtype::Float32 => buffer.grow_axis2::<f32>(placement, capacity, past, &mut state.traffic)?,
                Dtype::Float16 => buffer.grow_axis2::<f16>(placement, capacity, past, &mut state.traffic)?,
            };
        }
    }
    state.capacity = capacity;
    Ok(())
}

fn hook_error(point: HookPoint) -> impl FnOnce(Error) -> Error {
    move |e| match e {
        Error::Hook { .. } => e,
        other => Error::Hook { hook: point.to_string(), reason: other.to_string() },
    }
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::Internal(format!("graph output has an unexpected rank: {e}"))
}
