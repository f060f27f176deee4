//! Hook points on the decoder, named as TransformerLens names them, and the host-side API that reads
//! and changes activations during any forward (prefill or cached step).
//!
//! Two ways to act, matching what the layer graphs expose (docs/BUNDLE.md):
//! - **Residual stream** (`embed.hook_out`, `blocks.{l}.hook_resid_pre`, `blocks.{l}.hook_resid_post`):
//!   [`Hooks::on_residual`] gets the tensor mutably between graphs, so any Rust code can change it;
//!   later layers, and the keys/values they write to the cache, see the change.
//! - **Component outputs** (`blocks.{l}.attn.hook_out`, `.cross_attn.hook_out`, `.mlp.hook_out`):
//!   computed inside a layer graph, so they are changed by the graph's own inputs: before layer `l`
//!   runs, [`Hooks::edit_components`] fills [`LayerEdits`] (add, or replace under a mask); after it
//!   ran, [`Hooks::on_component`] sees each output as the model computed it (before the edit).
//!
//! Tensors are `[rows, positions, d_model]`; rows follow the batch layout of the forward (with
//! classifier-free guidance: the conditional rows first, then the unconditional ones).

pub mod capture;

use ndarray::{Array3, ArrayView3, ArrayViewMut3};

pub use capture::{Reduction, ResidualCapture};

use crate::error::{Error, Result};

pub use musicgen_interp_sdk::names::{Component, HookPoint, NameError, Site};

/// Checks the hook points `owner` asked for against a decoder of `layers` layers: a point the model
/// does not have is an error naming the valid range (a hook on a layer past the last would
/// otherwise never be called, and the run would succeed without doing what was asked).
pub fn check_points(owner: &str, points: &[HookPoint], layers: usize) -> Result<()> {
    match points.iter().find(|p| p.layer().is_some_and(|l| l >= layers)) {
        None => Ok(()),
        Some(p) => Err(Error::Input(format!(
            "{owner} asks for hook point {p}, but the model has {layers} decoder layer(s): layer points are blocks.0 to blocks.{}, plus embed.hook_out and ln_final.hook_normalized",
            layers.saturating_sub(1)
        ))),
    }
}

/// Where a forward is: which call, which absolute positions, which rows are conditional.
#[derive(Clone, Debug)]
pub struct ForwardContext {
    /// 0 for the first forward of a [`crate::model::DecoderState`] (the prefill), then 1, 2, ...
    pub call: usize,
    /// Positions already in the cache; this call covers positions `past_len .. past_len + new_len`.
    pub past_len: usize,
    pub new_len: usize,
    /// Rows of the batch.
    pub rows: usize,
    /// Rows that carry the text condition (all rows without guidance; the first half with it).
    pub conditional_rows: std::ops::Range<usize>,
}

/// Edits to one layer's component outputs for one forward: `out * (1 - mask) + replace * mask + add`.
/// Buffers are allocated on first use; untouched components cost nothing beyond the graph's zeros.
#[derive(Debug)]
pub struct LayerEdits {
    shape: (usize, usize, usize),
    add: [Option<Array3<f32>>; 3],
    replace: [Option<(Array3<f32>, Array3<f32>)>; 3],
}

impl LayerEdits {
    pub(crate) fn new(rows: usize, positions: usize, d_model: usize) -> Self {
        LayerEdits { shape: (rows, positions, d_model), add: Default::default(), replace: Default::default() }
    }

    /// The term added to `component`'s output, `[rows, positions, d_model]`, zero until changed.
    /// Several hooks adding to the same component add up.
    pub fn add(&mut self, component: Component) -> ArrayViewMut3<'_, f32> {
        let shape = self.shape;
        self.add[component.index()].get_or_insert_with(|| Array3::zeros(shape)).view_mut()
    }

    /// The replacement values and the mask (1 = replace, 0 = keep; fractions blend) for
    /// `component`'s output, both zero until changed.
    pub fn replace(&mut self, component: Component) -> (ArrayViewMut3<'_, f32>, ArrayViewMut3<'_, f32>) {
        let shape = self.shape;
        let (values, mask) = self.replace[component.index()].get_or_insert_with(|| (Array3::zeros(shape), Array3::zeros(shape)));
        (values.view_mut(), mask.view_mut())
    }

    /// Sets row `row`, position `pos` (relative to this forward) of `component` to `value`.
    pub fn replace_at(&mut self, component: Component, row: usize, pos: usize, value: &[f32]) -> Result<()> {
        if value.len() != self.shape.2 {
            return Err(Error::Input(format!("replacement has {} values, d_model is {}", value.len(), self.shape.2)));
        }
        let (mut values, mut mask) = self.replace(component);
        for (d, v) in value.iter().enumerate() {
            values[[row, pos, d]] = *v;
            mask[[row, pos, d]] = 1.0;
        }
        Ok(())
    }

    pub(crate) fn take_add(&mut self, component: Component) -> Option<Array3<f32>> {
        self.add[component.index()].take()
    }

    pub(crate) fn take_replace(&mut self, component: Component) -> Option<(Array3<f32>, Array3<f32>)> {
        self.replace[component.index()].take()
    }
}

/// Host code that reads and changes the decoder's activations. Every method has a default that does
/// nothing, so a hook implements only what it needs.
pub trait Hooks {
    /// Whether this hook wants [`Hooks::on_component`] calls for `point` (skipping saves copies).
    fn wants(&self, _point: &HookPoint) -> bool {
        true
    }

    /// Whether this hook reads or edits the residual-stream point `point` ([`Hooks::on_residual`]).
    /// A point no hook wants stays where the graphs run (on a GPU, in device memory): no copy to the
    /// host and back. The default, `true`, suits a hook that may act anywhere.
    fn wants_residual(&self, _point: &HookPoint) -> bool {
        true
    }

    /// Called before layer `layer` runs in this forward.
    fn edit_components(&mut self, _ctx: &ForwardContext, _layer: usize, _edits: &mut LayerEdits) -> Result<()> {
        Ok(())
    }

    /// A residual-stream point, in forward order; changes flow into everything downstream.
    fn on_residual(&mut self, _ctx: &ForwardContext, _point: HookPoint, _h: ArrayViewMut3<'_, f32>) -> Result<()> {
        Ok(())
    }

    /// A value computed inside a graph (component outputs, `ln_final.hook_normalized`), read-only.
    fn on_component(&mut self, _ctx: &ForwardContext, _point: HookPoint, _out: ArrayView3<'_, f32>) -> Result<()> {
        Ok(())
    }

    /// Called by the generation loop after decoding step `step` (1-based) has chosen its tokens.
    fn step_end(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }

    /// Asks the generation loop to exit the decoder after this many layers (DecoderLens): the final
    /// LayerNorm and heads read that layer's residual. `None` (the default) runs every layer.
    fn exit_after(&self) -> Option<usize> {
        None
    }

    /// Checks that every hook point this hook asked for exists in a decoder of `layers` layers
    /// (with [`check_points`]); the generation loop calls it before the first forward.
    fn check_points(&self, _layers: usize) -> Result<()> {
        Ok(())
    }
}

/// No hooks: the plain forward.
pub struct NoHooks;
impl Hooks for NoHooks {
    fn wants(&self, _point: &HookPoint) -> bool {
        false
    }
    fn wants_residual(&self, _point: &HookPoint) -> bool {
        false
    }
}

/// Several hooks run in order (each sees the previous one's changes to the residual stream).
impl<H: Hooks> Hooks for Vec<H> {
    fn wants(&self, point: &HookPoint) -> bool {
        self.iter().any(|h| h.wants(point))
    }
    fn wants_residual(&self, point: &HookPoint) -> bool {
        self.iter().any(|h| h.wants_residual(point))
    }
    fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> Result<()> {
        self.iter_mut().try_for_each(|h| h.edit_components(ctx, layer, edits))
    }
    fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, mut h: ArrayViewMut3<'_, f32>) -> Result<()> {
        self.iter_mut().filter(|hook| hook.wants_residual(&point)).try_for_each(|hook| hook.on_residual(ctx, point, h.view_mut()))
    }
    fn on_component(&mut self, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> Result<()> {
        self.iter_mut().filter(|h| h.wants(&point)).try_for_each(|h| h.on_component(ctx, point, out))
    }
    fn step_end(&mut self, step: usize) -> Result<()> {
        self.iter_mut().try_for_each(|h| h.step_end(step))
    }
    fn exit_after(&self) -> Option<usize> {
        self.iter().filter_map(|h| h.exit_after()).min()
    }
    fn check_points(&self, layers: usize) -> Result<()> {
        self.iter().try_for_each(|h| h.check_points(layers))
    }
}

macro_rules! forward_hooks {
    ($($t:ty),*) => {$(
        impl<H: Hooks + ?Sized> Hooks for $t {
            fn wants(&self, point: &HookPoint) -> bool {
                (**self).wants(point)
            }
            fn wants_residual(&self, point: &HookPoint) -> bool {
                (**self).wants_residual(point)
            }
            fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> Result<()> {
                (**self).edit_components(ctx, layer, edits)
            }
            fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
                (**self).on_residual(ctx, point, h)
            }
            fn on_component(&mut self, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> Result<()> {
                (**self).on_component(ctx, point, out)
            }
            fn step_end(&mut self, step: usize) -> Result<()> {
                (**self).step_end(step)
            }
            fn exit_after(&self) -> Option<usize> {
                (**self).exit_after()
            }
            fn check_points(&self, layers: usize) -> Result<()> {
                (**self).check_points(layers)
            }
        }
    )*};
}
forward_hooks!(Box<H>, &mut H);

/// Records the activations at chosen hook points, one array per forward call.
#[derive(Default)]
pub struct Recorder {
    /// `None` records every point.
    points: Option<Vec<HookPoint>>,
    /// (point, call) -> activation, in the order they were seen.
    pub records: Vec<(HookPoint, usize, Array3<f32>)>,
}

impl Recorder {
    /// Records every hook point.
    pub fn all() -> Self {
        Recorder::default()
    }

    /// Records only `points`.
    pub fn points(points: impl IntoIterator<Item = HookPoint>) -> Self {
        Recorder { points: Some(points.into_iter().collect()), records: Vec::new() }
    }

    /// The activation at `point` in forward call `call`.
    pub fn get(&self, point: HookPoint, call: usize) -> Option<&Array3<f32>> {
        self.records.iter().find(|(p, c, _)| *p == point && *c == call).map(|(_, _, a)| a)
    }

    fn record(&mut self, ctx: &ForwardContext, point: HookPoint, a: ArrayView3<'_, f32>) {
        if self.wants(&point) {
            self.records.push((point, ctx.call, a.to_owned()));
        }
    }
}

impl Hooks for Recorder {
    fn wants(&self, point: &HookPoint) -> bool {
        self.points.as_ref().is_none_or(|p| p.contains(point))
    }
    fn wants_residual(&self, point: &HookPoint) -> bool {
        self.wants(point)
    }
    fn check_points(&self, layers: usize) -> Result<()> {
        check_points("the recorder", self.points.as_deref().unwrap_or(&[]), layers)
    }
    fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
        self.record(ctx, point, h.view());
        Ok(())
    }
    fn on_component(&mut self, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> Result<()> {
        self.record(ctx, point, out);
        Ok(())
    }
}

/// A hook made of closures, for quick experiments and tests.
pub struct FnHooks<E, R>
where
    E: FnMut(&ForwardContext, usize, &mut LayerEdits) -> Result<()>,
    R: FnMut(&ForwardContext, HookPoint, ArrayViewMut3<'_, f32>) -> Result<()>,
{
    pub edit: E,
    pub residual: R,
}

impl<E, R> Hooks for FnHooks<E, R>
where
    E: FnMut(&ForwardContext, usize, &mut LayerEdits) -> Result<()>,
    R: FnMut(&ForwardContext, HookPoint, ArrayViewMut3<'_, f32>) -> Result<()>,
{
    fn wants(&self, _point: &HookPoint) -> bool {
        false
    }
    fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> Result<()> {
        (self.edit)(ctx, layer, edits)
    }
    fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
        (self.residual)(ctx, point, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_past_the_last_layer_are_refused_with_the_range() {
        let ok = [HookPoint::Embed, HookPoint::ResidPost(3), HookPoint::LnFinal];
        check_points("p", &ok, 4).unwrap();
        let err = check_points("plugin steering", &[HookPoint::ResidPost(4)], 4).unwrap_err().to_string();
        assert!(err.contains("plugin steering") && err.contains("blocks.4.hook_resid_post") && err.contains("blocks.0 to blocks.3"), "{err}");
        assert!(Recorder::points([HookPoint::Component(9, Component::Mlp)]).check_points(2).is_err());
    }

    #[test]
    fn edits_accumulate_and_replace_at_checks_width() {
        let mut e = LayerEdits::new(2, 3, 4);
        e.add(Component::Mlp)[[0, 1, 2]] += 1.0;
        e.add(Component::Mlp)[[0, 1, 2]] += 2.0;
        assert_eq!(e.take_add(Component::Mlp).unwrap()[[0, 1, 2]], 3.0);
        assert!(e.take_add(Component::Attn).is_none());
        assert!(e.replace_at(Component::Attn, 1, 2, &[1.0; 3]).is_err());
        e.replace_at(Component::Attn, 1, 2, &[5.0; 4]).unwrap();
        let (v, m) = e.take_replace(Component::Attn).unwrap();
        assert_eq!((v[[1, 2, 3]], m[[1, 2, 3]], m[[0, 2, 3]]), (5.0, 1.0, 0.0));
    }
}
