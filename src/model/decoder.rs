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
use ndarray::{s, Array0, Array2, Array3, Array4, Array5, ArrayView2, ArrayView3, Axis};
use ort::memory::MemoryInfo;
use ort::session::IoBinding;
use ort::value::{DynValueRef, PrimitiveTensorElementType, TensorRef, TensorRefMut};
use ort::AsPointer;

use super::graph::{take, Graph};
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
}

/// Per-generation state: the cache, the cross-attention keys and values of the prompt, the rows.
pub struct DecoderState {
    rows: usize,
    conditional_rows: Range<usize>,
    past_len: usize,
    calls: usize,
    capacity: usize,
    keys: Vec<Kv>,
    values: Vec<Kv>,
    cross_keys: Vec<Kv>,
    cross_values: Vec<Kv>,
    encoder_mask: Array2<i64>,
}

/// One layer's cache (keys or values, `[rows, heads, capacity, head_dim]`) or cross-attention keys
/// or values (`[rows, heads, S, head_dim]`), in the bundle's `dtype`.
enum Kv {
    F32(Array4<f32>),
    F16(Array4<f16>),
}

/// Runs `$body` with `$a` bound to the array inside a [`Kv`], whichever its element type.
macro_rules! each_kv {
    ($kv:expr, $a:ident => $body:expr) => {
        match $kv {
            Kv::F32($a) => $body,
            Kv::F16($a) => $body,
        }
    };
}

impl Kv {
    fn zeros(dtype: Dtype, shape: (usize, usize, usize, usize)) -> Kv {
        match dtype {
            Dtype::Float32 => Kv::F32(Array4::zeros(shape)),
            Dtype::Float16 => Kv::F16(Array4::from_elem(shape, f16::ZERO)),
        }
    }

    fn dim(&self) -> (usize, usize, usize, usize) {
        each_kv!(self, a => a.dim())
    }

    /// The same tensor with room for `capacity` positions, the first `past` copied.
    fn grow(&mut self, capacity: usize, past: usize) {
        fn grown<T: Clone + Default>(a: &Array4<T>, capacity: usize, past: usize) -> Array4<T> {
            let (rows, heads, _, head_dim) = a.dim();
            let mut new = Array4::from_elem((rows, heads, capacity, head_dim), T::default());
            new.slice_mut(s![.., .., ..past, ..]).assign(&a.slice(s![.., .., ..past, ..]));
            new
        }
        each_kv!(self, a => *a = grown(a, capacity, past))
    }

    /// Rows `rows` as a graph input.
    fn rows(&self, rows: Range<usize>) -> Result<DynValueRef<'_>> {
        Ok(each_kv!(self, a => TensorRef::from_array_view(a.slice(s![rows, .., .., ..]))?.into_dyn()))
    }

    /// Every layer's tensor of a `[layers, rows, heads, S, head_dim]` graph output.
    fn split(outputs: &ort::session::SessionOutputs<'_>, name: &str, dtype: Dtype) -> Result<Vec<Kv>> {
        fn layers<T: Clone>(a: Array5<T>) -> Vec<Array4<T>> {
            a.axis_iter(Axis(0)).map(|v| v.to_owned()).collect()
        }
        Ok(match dtype {
            Dtype::Float32 => layers(take::<f32, _>(outputs, name)?).into_iter().map(Kv::F32).collect(),
            Dtype::Float16 => layers(take::<f16, _>(outputs, name)?).into_iter().map(Kv::F16).collect(),
        })
    }
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
    pub(crate) fn new(config: DecoderConfig, dtype: Dtype, cross_kv: Graph, embed: Graph, layers: Vec<Graph>, head: Graph) -> Result<Decoder> {
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
        Ok(Decoder { config, dtype, cross_kv, embed, layers, head })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The graph files of the layers, then the head, as loaded (plain or CPU copies).
    pub fn graph_files(&self) -> Vec<&str> {
        self.layers.iter().chain([&self.head]).map(|g| g.file.as_str()).collect()
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
        let cross_keys = Kv::split(&outputs, "cross_key", self.dtype)?;
        let cross_values = Kv::split(&outputs, "cross_value", self.dtype)?;
        drop(outputs);
        let c = &self.config;
        let empty = || Kv::zeros(self.dtype, (rows, c.num_heads, 0, c.head_dim));
        Ok(DecoderState {
            rows,
            conditional_rows,
            past_len: 0,
            calls: 0,
            capacity: 0,
            keys: (0..c.num_layers).map(|_| empty()).collect(),
            values: (0..c.num_layers).map(|_| empty()).collect(),
            cross_keys,
            cross_values,
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

    /// Room for `positions` cached positions at once (at most the position table), where the
    /// layers' attention reads only the live positions (the CPU copies' `CachedAttention`); with the
    /// plain graphs the capacity keeps growing by chunks, since a graph on another device gets the
    /// whole buffer each call. Returns whether it reserved.
    pub fn reserve(&self, state: &mut DecoderState, positions: usize) -> bool {
        if !self.layers.first().is_some_and(|l| l.kernels) {
            return false;
        }
        ensure_capacity(state, &self.config, positions.min(self.config.max_position_embeddings));
        true
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
        // onnxruntime's GroupQueryAttention (the plain graphs) takes several new positions over a
        // non-empty cache for one row at a time only: such calls (a chunked prefill) run every layer
        // row by row. The CPU copies' CachedAttention takes any rows at once.
        let by_row = t > 1 && state.past_len > 0 && !self.layers[0].kernels;
        let groups: Vec<Range<usize>> = if by_row { (0..rows).map(|r| r..r + 1).collect() } else { vec![0..rows] };
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
            let want = Component::ALL.map(|comp| hooks.wants(&HookPoint::Component(l, comp)));
            let mut parts = Vec::with_capacity(groups.len());
            for group in groups.iter().cloned() {
                let inputs = LayerInputs { hidden: hidden.view(), past_len: &past_len, edits: &edit_arrays, zeros: &zeros };
                parts.push(run_layer(layer, state, l, group, &inputs, want)?);
            }
            let LayerOutput { resid_post, components } =
                if parts.len() == 1 { parts.pop().expect("one part") } else { LayerOutput::concat(parts)? };
            for (comp, out) in Component::ALL.into_iter().zip(&components) {
                if let Some(out) = out {
                    let point = HookPoint::Component(l, comp);
                    hooks.on_component(&ctx, point, out.view()).map_err(hook_error(point))?;
                }
            }
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
            .run(ort::inputs!["hidden" => TensorRef::from_array_view(hidden.view())?])
            .map_err(Error::ort("decoder_head"))?;
        Ok((take(&outputs, "normed")?, take(&outputs, "logits")?))
    }
}

/// One component's edits as the host hands them to a layer graph: (component, add, (replace, mask)).
type ComponentEdits = (Component, Option<Array3<f32>>, Option<(Array3<f32>, Array3<f32>)>);

/// What a layer graph reads besides the cache, for all rows of the call.
struct LayerInputs<'a> {
    hidden: ArrayView3<'a, f32>,
    past_len: &'a Array0<i64>,
    edits: &'a [ComponentEdits],
    zeros: &'a Array3<f32>,
}

/// Rows `rows` of an edit array, or of the zeros when the edit is absent.
fn rows_of<'a>(a: Option<&'a Array3<f32>>, zeros: &'a Array3<f32>, rows: &Range<usize>) -> ArrayView3<'a, f32> {
    a.unwrap_or(zeros).slice(s![rows.clone(), .., ..])
}

/// A layer graph's outputs for some rows: the residual and the component outputs hooks asked for.
struct LayerOutput {
    resid_post: Array3<f32>,
    components: [Option<Array3<f32>>; 3],
}

impl LayerOutput {
    /// Joins the outputs of consecutive row groups.
    fn concat(parts: Vec<LayerOutput>) -> Result<LayerOutput> {
        let join = |arrays: Vec<ArrayView3<'_, f32>>| ndarray::concatenate(Axis(0), &arrays).map_err(shape_err);
        let resid_post = join(parts.iter().map(|p| p.resid_post.view()).collect())?;
        let mut components = [None, None, None];
        for (i, slot) in components.iter_mut().enumerate() {
            if parts[0].components[i].is_some() {
                *slot = Some(join(parts.iter().filter_map(|p| p.components[i].as_ref().map(|a| a.view())).collect())?);
            }
        }
        Ok(LayerOutput { resid_post, components })
    }
}

/// Runs layer `l`'s graph for `rows` of the state. The cache rows are bound in place as both the
/// graph's `past_*` inputs and its `present_*` outputs, so the graph reads the cache once and writes
/// this call's keys and values straight into it: no copy of the cache in either direction.
fn run_layer<'a>(
    graph: &mut Graph,
    state: &mut DecoderState,
    l: usize,
    rows: Range<usize>,
    inputs: &LayerInputs<'a>,
    want: [bool; 3],
) -> Result<LayerOutput> {
    let context = || format!("decoder layer {l}");
    let hidden = inputs.hidden.slice(s![rows.clone(), .., ..]);
    let encoder_mask = state.encoder_mask.slice(s![rows.clone(), ..]);
    let mut binding = graph.session.create_binding().map_err(Error::ort(context()))?;
    // The cache rows, bound in place as `past_*` and `present_*`.
    let (_, heads, capacity, head_dim) = state.keys[l].dim();
    let shape = ort::value::Shape::new([rows.len() as i64, heads as i64, capacity as i64, head_dim as i64]);
    let offset = rows.start * heads * capacity * head_dim;
    for (kv, past, present) in [(&mut state.keys[l], "past_key", "present_key"), (&mut state.values[l], "past_value", "present_value")] {
        each_kv!(kv, buffer => bind_cache(&mut binding, buffer, offset, &shape, past, present)).map_err(Error::ort(context()))?;
    }
    let mut values = Vec::new(); // views of the other inputs, alive until the run
    let bind = |binding: &mut IoBinding, name: &str, value: &ort::value::DynValue| bind_input(binding, name, value).map_err(Error::ort(context()));
    values.push(("hidden", TensorRef::from_array_view(hidden.view())?.into_dyn()));
    values.push(("past_len", TensorRef::from_array_view(inputs.past_len.view())?.into_dyn()));
    values.push(("cross_key", state.cross_keys[l].rows(rows.clone())?));
    values.push(("cross_value", state.cross_values[l].rows(rows.clone())?));
    values.push(("encoder_attention_mask", TensorRef::from_array_view(encoder_mask.view())?.into_dyn()));
    for (comp, add, replace) in inputs.edits {
        let [add_name, replace_name, mask_name] = comp.edit_input_names();
        let view = |a: Option<&'a Array3<f32>>| rows_of(a, inputs.zeros, &rows);
        values.push((add_name, TensorRef::from_array_view(view(add.as_ref()))?.into_dyn()));
        values.push((replace_name, TensorRef::from_array_view(view(replace.as_ref().map(|(v, _)| v)))?.into_dyn()));
        values.push((mask_name, TensorRef::from_array_view(view(replace.as_ref().map(|(_, m)| m)))?.into_dyn()));
    }
    for (name, input) in &values {
        bind(&mut binding, name, input)?;
    }
    let cpu = MemoryInfo::default();
    let wanted = || Component::ALL.into_iter().zip(want).filter(|(_, w)| *w).map(|(c, _)| c);
    binding.bind_output_to_device("resid_post", &cpu).map_err(Error::ort(context()))?;
    for comp in wanted() {
        binding.bind_output_to_device(comp.output_name(), &cpu).map_err(Error::ort(context()))?;
    }
    let outputs = graph.session.run_binding(&binding).map_err(Error::ort(context()))?;
    let resid_post = take(&outputs, "resid_post")?;
    let mut components = [None, None, None];
    for comp in wanted() {
        components[comp.index()] = Some(take(&outputs, comp.output_name())?);
    }
    Ok(LayerOutput { resid_post, components })
}

/// Binds rows of one cache buffer (from element `offset`, of `shape`) as the graph's `past` input
/// and its `present` output, where they lie.
fn bind_cache<T: PrimitiveTensorElementType + std::fmt::Debug>(
    binding: &mut IoBinding,
    buffer: &mut Array4<T>,
    offset: usize,
    shape: &ort::value::Shape,
    past: &str,
    present: &str,
) -> ort::Result<()> {
    assert!(buffer.is_standard_layout(), "KV cache buffers are allocated in standard layout");
    assert!(offset + shape.iter().product::<i64>() as usize <= buffer.len(), "cache rows within the buffer");
    // SAFETY: `buffer` is a standard-layout (asserted) host array in CPU memory, as `MemoryInfo::
    // default()` describes it, and the tensor covers `offset .. offset + product(shape)`, within
    // it (asserted), in `T`, the buffer's own element type. `run_layer`, the only caller, holds
    // `&mut DecoderState` (owner of the buffer) for its whole body, so nothing else reads, writes,
    // moves or frees the buffer while the graph may use the pointer; the binding and the run's
    // outputs that hold it are locals of `run_layer`, dropped before it returns.
    let tensor = unsafe { TensorRefMut::<T>::from_raw(MemoryInfo::default(), buffer.as_mut_ptr().add(offset).cast(), shape.clone())? };
    bind_input(binding, past, tensor.view().into_dyn().deref())?;
    binding.bind_output(present, tensor)
}

/// Binds `value` as an input without the copy `IoBinding::bind_input` makes of borrowed data, so
/// the cache is read where it lies. The caller keeps the data alive until the binding has run.
fn bind_input(binding: &mut IoBinding, name: &str, value: &ort::value::DynValue) -> ort::Result<()> {
    let name = std::ffi::CString::new(name).expect("input names have no NUL");
    // SAFETY: `binding` and `value` are live ort handles (`ptr_mut` / `ptr` of borrowed wrappers)
    // and `name` a NUL-terminated string, all valid for the call, which is what `BindInput`
    // reads. onnxruntime keeps its own reference to the value (not a copy of its data): the data
    // must outlive the run, which `run_layer` ensures by keeping every bound view (and the cache
    // buffer, see `bind_cache`) alive until after `run_binding`.
    unsafe {
        let status = (ort::api().BindInput)(binding.ptr_mut(), name.as_ptr(), value.ptr());
        ort::Error::result_from_status(status)
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
        debug_assert_eq!((buffer.dim().0, buffer.dim().1, buffer.dim().3), (rows, c.num_heads, c.head_dim));
        buffer.grow(capacity, past);
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
