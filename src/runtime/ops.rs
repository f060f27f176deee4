//! The runtime's own onnxruntime operators, in the `musicgen_interp` domain, which the CPU copies of
//! the decoder graphs (`*.cpu.onnx`) use: [`StreamMatMul`] (the weight matmuls; [`StreamMatMulInt8`] in an int8 bundle's copies),
//! [`CachedAttention`] and [`CrossAttention`] (the layer's two attentions), and [`Intervene`] (a
//! component's edit and the residual add, one node where the plain graph has six).

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

pub use super::attention::{CachedAttention, CrossAttention};
pub use super::matmul::StreamMatMul;
pub use super::matmul_int8::StreamMatMulInt8;
use super::pool::Pool;

/// The operators' domain in the graphs.
pub const DOMAIN: &str = "musicgen_interp";

/// The domain with every operator, their parallel work split over `threads` (the size of the
/// operators' own pool, [`Pool::global`], started here).
pub fn domain(threads: usize) -> ort::Result<OperatorDomain> {
    Pool::global(threads);
    OperatorDomain::new(DOMAIN)?
        .add(StreamMatMul { threads })?
        .add(StreamMatMulInt8 { threads })?
        .add(CachedAttention { threads })?
        .add(CrossAttention { threads })?
        .add(Intervene)
}

/// Runs `f(0)`, ..., `f(total - 1)` on the operators' own pool of `threads` threads ([`Pool`]) and
/// returns when all are done. The runtime's kernels split their work into as many parts as the pool
/// has threads.
pub fn parallel(threads: usize, total: usize, f: &(dyn Fn(usize) + Sync)) -> ort::Result<()> {
    Pool::global(threads).run(total, f).map_err(ort::Error::new)
}

/// `Intervene(residual, out, add, replace, mask) = residual + (out * (1 - mask) + replace * mask +
/// add)`, elementwise over five tensors of one shape: the layer graph's component edit followed by
/// the residual add, in the plain graph's order of operations (so the same f32 result).
pub struct Intervene;

impl Operator for Intervene {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "Intervene"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        (0..5).map(|_| OperatorInput::required(TensorElementType::Float32))
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let missing = || ort::Error::new("Intervene: missing input or output");
            let inputs = (0..5).map(|i| ctx.input(i)?.ok_or_else(missing)).collect::<ort::Result<Vec<_>>>()?;
            let tensors = inputs.iter().map(|v| v.try_extract_tensor::<f32>()).collect::<ort::Result<Vec<_>>>()?;
            let shape = tensors[0].0;
            if let Some((other, _)) = tensors.iter().find(|(s, _)| *s != shape) {
                return Err(ort::Error::new(format!("Intervene: inputs of shapes {shape:?} and {other:?}; all five must match")));
            }
            let mut y = ctx.output(0, shape.to_vec())?.ok_or_else(missing)?;
            let (_, y) = y.try_extract_tensor_mut::<f32>()?;
            let [r, o, a, v, m] = [0, 1, 2, 3, 4].map(|i| tensors[i].1);
            intervene(r, o, a, v, m, y);
            Ok(())
        }))
    }
}

/// The arithmetic of [`Intervene`].
pub fn intervene(residual: &[f32], out: &[f32], add: &[f32], replace: &[f32], mask: &[f32], y: &mut [f32]) {
    for (i, y) in y.iter_mut().enumerate() {
        *y = residual[i] + (out[i] * (1.0 - mask[i]) + replace[i] * mask[i] + add[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervene_keeps_adds_and_replaces() {
        let (r, o) = ([1.0f32, 2.0, 3.0], [10.0f32, 20.0, 30.0]);
        let mut y = [0.0f32; 3];
        intervene(&r, &o, &[0.0; 3], &[0.0; 3], &[0.0; 3], &mut y);
        assert_eq!(y, [11.0, 22.0, 33.0]);
        intervene(&r, &o, &[0.5, 0.0, 0.0], &[0.0, -7.0, 0.0], &[0.0, 1.0, 0.25], &mut y);
        assert_eq!(y, [11.5, -5.0, 3.0 + 30.0 * 0.75]);
    }
}
