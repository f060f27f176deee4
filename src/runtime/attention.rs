//! The CPU copies' attention operators, registered with onnxruntime beside
//! [`StreamMatMul`](super::matmul::StreamMatMul):
//!
//! - `musicgen_interp.CachedAttention(q, k, v, past_key, past_value, past_len) -> (out,
//!   present_key, present_value)`: causal self-attention of a call's new positions over the KV
//!   cache. It writes the new keys and values into the cache at `past_len` (in place when the host
//!   binds each `present_*` output to its `past_*` buffer, as the decoder does) and then reads the
//!   cache once, front to back. Any number of rows and new positions (a chunked prefill of every row
//!   at once).
//! - `musicgen_interp.CrossAttention(q, cross_key, cross_value, encoder_attention_mask) -> out`:
//!   attention over the prompt's precomputed keys and values; masked positions are skipped and a
//!   row whose mask is all zeros gets zeros (as torch's scaled_dot_product_attention does).
//!
//! Why: in the plain graphs onnxruntime's GroupQueryAttention and the cross-attention's dozen small
//! nodes (and the shape arithmetic feeding them) each pay a node's fixed cost, and a decoding step
//! runs them between weight matmuls that have just pushed everything else out of the caches: on the
//! small model those nodes cost more than the attention's arithmetic. Here each is one node.
//!
//! Layouts: `q`, `k`, `v`, `out` are `[rows, new, heads * head_dim]` (heads side by side); the
//! caches and the cross keys/values `[rows, heads, positions, head_dim]`. Attributes: `num_heads`
//! (int) and `scale` (float, multiplies `q · k`). Arithmetic in f32, softmax with its maximum
//! subtracted, as the plain graphs. The (row, head) units are split into one contiguous range per
//! pool thread; each unit writes only its own cache rows and output columns.

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

/// Causal self-attention over the KV cache (see the module docs).
pub struct CachedAttention {
    pub threads: usize,
}

/// Attention over the prompt's keys and values (see the module docs).
pub struct CrossAttention {
    pub threads: usize,
}

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub rows: usize,
    /// Query positions of the call.
    pub new: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Positions the key/value buffers hold room for.
    pub capacity: usize,
    /// Cached positions before the call (self-attention), or key positions (cross-attention).
    pub past: usize,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

fn attributes(ctx: &KernelContext<'_>, op: &str) -> ort::Result<(usize, f32)> {
    let heads = ctx.get::<i64>("num_heads").filter(|&h| h > 0);
    let scale = ctx.get::<f32>("scale");
    match (heads, scale) {
        (Some(h), Some(s)) => Ok((h as usize, s)),
        _ => Err(ort::Error::new(format!("{op}: needs the attributes num_heads (> 0) and scale"))),
    }
}

fn missing(op: &str) -> ort::Error {
    ort::Error::new(format!("{op}: missing input or output"))
}

/// `[rows, new, width]` of `q` against the cache shape `[rows, heads, capacity, head_dim]`.
fn dims_of(op: &str, q: &[i64], cache: &[i64], heads: usize, past: i64) -> ort::Result<Dims> {
    let bad = || ort::Error::new(format!("{op}: query {q:?} does not fit keys {cache:?} with {heads} heads and {past} past positions"));
    let (&[rows, new, width], &[c_rows, c_heads, capacity, head_dim]) = (q, cache) else {
        return Err(bad());
    };
    let d = Dims {
        rows: rows as usize,
        new: new as usize,
        heads,
        head_dim: head_dim as usize,
        capacity: capacity as usize,
        past: usize::try_from(past).map_err(|_| bad())?,
    };
    if c_rows != rows || c_heads as usize != heads || width as usize != d.width() {
        return Err(bad());
    }
    Ok(d)
}

/// Raw pointers for the worker closures; each (row, head) unit touches its own part only.
#[derive(Clone, Copy)]
struct Ptr<T>(T);
// SAFETY: a `Ptr` is only made in the kernels below, from the tensors of one `compute` call, and
// only used inside that call's parallel section, which `for_units` returns from after every part
// has ended: the pointers outlive every thread that reads them. Through them the parts write
// disjoint regions (unit u: its own `[capacity, head_dim]` cache block and its output columns) and
// otherwise only read inputs nothing writes during the section.
unsafe impl<T> Send for Ptr<T> {}
// SAFETY: as for `Send` above.
unsafe impl<T> Sync for Ptr<T> {}

/// Runs `unit(0..units)` split into `parts` contiguous ranges, one pool part each.
fn for_units(units: usize, parts: usize, unit: &(dyn Fn(usize, &mut Scratch) + Sync)) -> ort::Result<()> {
    let per = units.div_ceil(parts.max(1)).max(1);
    let total = units.div_ceil(per);
    let part = |p: usize| {
        let mut scratch = Scratch::default();
        (p * per..((p + 1) * per).min(units)).for_each(|u| unit(u, &mut scratch));
    };
    super::ops::parallel(parts, total, &part)
}

/// Per-thread buffer: one query's scores.
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
}

impl Operator for CachedAttention {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "CachedAttention"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f = || OperatorInput::required(TensorElementType::Float32);
        [f(), f(), f(), f(), f(), OperatorInput::required(TensorElementType::Int64)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        let f = || OperatorOutput::required(TensorElementType::Float32);
        [f(), f(), f()]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        const OP: &str = "CachedAttention";
        let (heads, scale) = attributes(ctx, OP)?;
        let parts = self.threads.max(1);
        Ok(Box::new(move |ctx: &ComputeContext| {
            let input = |i| ctx.input(i).and_then(|v| v.ok_or_else(|| missing(OP)));
            let (q, k, v, past_key, past_value, past_len) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?, input(5)?);
            let (q_shape, q) = q.try_extract_tensor::<f32>()?;
            let (k_shape, k) = k.try_extract_tensor::<f32>()?;
            let (v_shape, v) = v.try_extract_tensor::<f32>()?;
            let (cache_shape, past_k) = past_key.try_extract_tensor::<f32>()?;
            let (value_shape, past_v) = past_value.try_extract_tensor::<f32>()?;
            let (_, past_len) = past_len.try_extract_tensor::<i64>()?;
            let past = *past_len.first().ok_or_else(|| missing(OP))?;
            let d = dims_of(OP, q_shape, cache_shape, heads, past)?;
            if k_shape != q_shape || v_shape != q_shape || value_shape != cache_shape || d.past + d.new > d.capacity {
                return Err(ort::Error::new(format!(
                    "{OP}: q {q_shape:?}, k {k_shape:?}, v {v_shape:?}, caches {cache_shape:?} / {value_shape:?} at {past} past positions do not fit"
                )));
            }
            let (cache_shape, past_k, past_v) = (cache_shape.to_vec(), Ptr(past_k.as_ptr()), Ptr(past_v.as_ptr()));
            let mut out = ctx.output(0, q_shape.to_vec())?.ok_or_else(|| missing(OP))?;
            let mut present_key = ctx.output(1, cache_shape.clone())?.ok_or_else(|| missing(OP))?;
            let mut present_value = ctx.output(2, cache_shape)?.ok_or_else(|| missing(OP))?;
            let out = Ptr(out.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
            let cache_len = d.rows * d.heads * d.capacity * d.head_dim;
            let key = Ptr(present_key.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
            let value = Ptr(present_value.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
            // Unless the host bound each present buffer to its past one (then the cache is updated
            // where it lies), the outputs start as copies of the caches.
            for (past, present) in [(past_k, key), (past_v, value)] {
                if past.0 != present.0.cast_const() {
                    // SAFETY: `past` is the past input's data and `present` the present output's,
                    // both of `cache_shape` (`value_shape == cache_shape` checked above, the
                    // outputs made with it), so both hold `cache_len` values. They differ, so the
                    // host did not bind one buffer as both, and onnxruntime never places an output
                    // it allocates over an input: the regions do not overlap.
                    unsafe { std::ptr::copy_nonoverlapping(past.0, present.0, cache_len) };
                }
            }
            let (q, k, v) = (Ptr(q.as_ptr()), Ptr(k.as_ptr()), Ptr(v.as_ptr()));
            let unit = move |u: usize, scratch: &mut Scratch| {
                let (q, k, v, out, key, value) = (q, k, v, out, key, value);
                // SAFETY: `cached_unit`'s contract: q, k, v and out hold `[rows, new, width]`
                // (their shapes equal `q_shape`, which `dims_of` matched against the cache with
                // `width = heads * head_dim`), key and value `[rows, heads, capacity, head_dim]`
                // (outputs of `cache_shape`), `past + new <= capacity` (checked); `for_units` gives
                // each u in 0..rows * heads to one part only, and unit u touches only its own
                // block of the caches and its own output columns.
                unsafe { cached_unit(q.0, k.0, v.0, key.0, value.0, out.0, d, scale, u, scratch) };
            };
            for_units(d.rows * d.heads, parts, &unit)
        }))
    }
}

impl Operator for CrossAttention {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "CrossAttention"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f = || OperatorInput::required(TensorElementType::Float32);
        [f(), f(), f(), OperatorInput::required(TensorElementType::Int64)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        const OP: &str = "CrossAttention";
        let (heads, scale) = attributes(ctx, OP)?;
        let parts = self.threads.max(1);
        Ok(Box::new(move |ctx: &ComputeContext| {
            let input = |i| ctx.input(i).and_then(|v| v.ok_or_else(|| missing(OP)));
            let (q, key, value, mask) = (input(0)?, input(1)?, input(2)?, input(3)?);
            let (q_shape, q) = q.try_extract_tensor::<f32>()?;
            let (key_shape, key) = key.try_extract_tensor::<f32>()?;
            let (value_shape, value) = value.try_extract_tensor::<f32>()?;
            let (mask_shape, mask) = mask.try_extract_tensor::<i64>()?;
            let positions = key_shape.get(2).copied().unwrap_or(-1);
            let d = dims_of(OP, q_shape, key_shape, heads, positions)?;
            if value_shape != key_shape || mask_shape[..] != [d.rows as i64, positions] {
                return Err(ort::Error::new(format!(
                    "{OP}: keys {key_shape:?}, values {value_shape:?} and mask {mask_shape:?} do not fit"
                )));
            }
            // The positions each row attends to.
            let kept: Vec<Vec<usize>> =
                mask.chunks(d.past.max(1)).take(d.rows).map(|m| (0..d.past).filter(|&j| m[j] > 0).collect()).collect();
            let mut out = ctx.output(0, q_shape.to_vec())?.ok_or_else(|| missing(OP))?;
            let out = Ptr(out.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
            let (q, key, value, kept) = (Ptr(q.as_ptr()), Ptr(key.as_ptr()), Ptr(value.as_ptr()), &kept);
            let unit = move |u: usize, scratch: &mut Scratch| {
                let (q, key, value, out) = (q, key, value, out);
                // SAFETY: `cross_unit`'s contract: q and out hold `[rows, new, width]` (out made
                // with `q_shape`), key and value `[rows, heads, past, head_dim]` (`dims_of` with
                // `past` = the key positions, `value_shape == key_shape` checked); `kept` has
                // `rows` entries of positions `< past` (the mask's shape is `[rows, past]`), and
                // `for_units` gives each unit to one part, which writes only its output columns.
                unsafe { cross_unit(q.0, key.0, value.0, out.0, d, scale, &kept[u / d.heads], u, scratch) };
            };
            for_units(d.rows * d.heads, parts, &unit)
        }))
    }
}

/// One (row, head) unit of [`CachedAttention`]: writes the call's keys and values into the cache at
/// `past`, then attends each new position to the cache up to itself.
///
/// # Safety
/// `q`, `k`, `v`, `out` hold `[rows, new, width]`, `key` and `value` `[rows, heads, capacity,
/// head_dim]`, with `past + new <= capacity`; no other thread touches unit `u`'s parts.
#[allow(clippy::too_many_arguments)]
pub unsafe fn cached_unit(
    q: *const f32,
    k: *const f32,
    v: *const f32,
    key: *mut f32,
    value: *mut f32,
    out: *mut f32,
    d: Dims,
    scale: f32,
    u: usize,
    scratch: &mut Scratch,
) {
    let (b, h) = (u / d.heads, u % d.heads);
    let hd = d.head_dim;
    let base = u * d.capacity * hd;
    for i in 0..d.new {
        let src = (b * d.new + i) * d.width() + h * hd;
        let dst = base + (d.past + i) * hd;
        std::ptr::copy_nonoverlapping(k.add(src), key.add(dst), hd);
        std::ptr::copy_nonoverlapping(v.add(src), value.add(dst), hd);
    }
    for i in 0..d.new {
        let total = d.past + i + 1;
        let row = (b * d.new + i) * d.width() + h * hd;
        let keys = std::slice::from_raw_parts(key.add(base), total * hd);
        let values = std::slice::from_raw_parts(value.add(base), total * hd);
        let q = std::slice::from_raw_parts(q.add(row), hd);
        let out = std::slice::from_raw_parts_mut(out.add(row), hd);
        attend(q, keys, values, None, scale, out, scratch);
    }
}

/// One (row, head) unit of [`CrossAttention`] over the positions `kept`.
///
/// # Safety
/// `q` and `out` hold `[rows, new, width]`, `key` and `value` `[rows, heads, past, head_dim]`; no
/// other thread writes unit `u`'s output columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn cross_unit(
    q: *const f32,
    key: *const f32,
    value: *const f32,
    out: *mut f32,
    d: Dims,
    scale: f32,
    kept: &[usize],
    u: usize,
    scratch: &mut Scratch,
) {
    let b = u / d.heads;
    let hd = d.head_dim;
    let keys = std::slice::from_raw_parts(key.add(u * d.past * hd), d.past * hd);
    let values = std::slice::from_raw_parts(value.add(u * d.past * hd), d.past * hd);
    for i in 0..d.new {
        let row = (b * d.new + i) * d.width() + (u % d.heads) * hd;
        let q = std::slice::from_raw_parts(q.add(row), hd);
        let out = std::slice::from_raw_parts_mut(out.add(row), hd);
        if kept.is_empty() {
            out.fill(0.0);
        } else {
            attend(q, keys, values, Some(kept), scale, out, scratch);
        }
    }
}

/// `out = softmax(scale * q · keys[j]) · values[j]` over the positions `j` of `keys` (`[positions,
/// head_dim]`), or over `kept` only.
fn attend(q: &[f32], keys: &[f32], values: &[f32], kept: Option<&[usize]>, scale: f32, out: &mut [f32], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    {
        let hd = q.len();
        let fits = hd > 0
            && out.len() == hd
            && keys.len() == values.len()
            && kept.is_none_or(|k| k.iter().all(|&p| p < keys.len() / hd));
        if super::matmul::avx2_available() && fits && hd.is_multiple_of(8) && hd <= 8 * avx2::MAX_REGS {
            // SAFETY: AVX2 and FMA were just detected. `avx2::attend` reads through raw pointers
            // with no bounds checks, so the slices were checked just above: `hd` values of `q`
            // and `out` (a non-zero multiple of 8 up to `8 * MAX_REGS`, the register count the
            // weighted sum unrolls to), and every attended position `p` (each of `kept`, or
            // `0..keys.len() / hd`) has `hd` values at `p * hd` in both `keys` and `values`.
            return unsafe { avx2::attend(q, keys, values, kept, scale, out, scratch) };
        }
    }
    attend_portable(q, keys, values, kept, scale, out, scratch)
}

/// The position of the `j`-th attended key.
#[inline(always)]
fn position(kept: Option<&[usize]>, j: usize) -> usize {
    match kept {
        Some(k) => k[j],
        None => j,
    }
}

/// [`attend`] in plain Rust (any CPU, any head size).
fn attend_portable(q: &[f32], keys: &[f32], values: &[f32], kept: Option<&[usize]>, scale: f32, out: &mut [f32], scratch: &mut Scratch) {
    let hd = q.len();
    let n = kept.map_or(keys.len() / hd, |k| k.len());
    let scores = &mut scratch.scores;
    scores.clear();
    scores.extend((0..n).map(|j| {
        let p = position(kept, j);
        q.iter().zip(&keys[p * hd..(p + 1) * hd]).map(|(a, b)| a * b).sum::<f32>() * scale
    }));
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scores.iter_mut().for_each(|s| *s = exp_nonpositive(*s - max));
    let sum: f32 = scores.iter().sum();
    out.fill(0.0);
    for (j, &e) in scores.iter().enumerate() {
        let p = position(kept, j);
        out.iter_mut().zip(&values[p * hd..(p + 1) * hd]).for_each(|(o, &v)| *o += e * v);
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{exp_nonpositive, position, Scratch};

    /// Head sizes up to `8 * MAX_REGS` keep the output accumulator in registers.
    pub const MAX_REGS: usize = 8;

    /// [`super::attend`] with AVX2/FMA; `q.len()` is a multiple of 8, at most `8 * MAX_REGS`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(q: &[f32], keys: &[f32], values: &[f32], kept: Option<&[usize]>, scale: f32, out: &mut [f32], scratch: &mut Scratch) {
        let hd = q.len();
        let n = kept.map_or(keys.len() / hd, |k| k.len());
        let scores = &mut scratch.scores;
        scores.clear();
        scores.resize(n, 0.0);
        let qp = q.as_ptr();
        let mut max = f32::NEG_INFINITY;
        for (j, score) in scores.iter_mut().enumerate() {
            let k = keys.as_ptr().add(position(kept, j) * hd);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c + 16 <= hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(k.add(c)), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c + 8)), _mm256_loadu_ps(k.add(c + 8)), a1);
                c += 16;
            }
            if c < hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(k.add(c)), a0);
            }
            *score = hsum(_mm256_add_ps(a0, a1)) * scale;
            max = max.max(*score);
        }
        let sp = scores.as_mut_ptr();
        let (vmax, mut vsum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        let mut j = 0;
        while j + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(j)), vmax));
            _mm256_storeu_ps(sp.add(j), e);
            vsum = _mm256_add_ps(vsum, e);
            j += 8;
        }
        let mut sum = hsum(vsum);
        while j < n {
            let e = exp_nonpositive(*sp.add(j) - max);
            *sp.add(j) = e;
            sum += e;
            j += 1;
        }
        let inv = 1.0 / sum;
        let (sp, vp, op) = (sp.cast_const(), values.as_ptr(), out.as_mut_ptr());
        match hd / 8 {
            1 => weighted_sum::<1>(sp, vp, kept, n, inv, op),
            2 => weighted_sum::<2>(sp, vp, kept, n, inv, op),
            3 => weighted_sum::<3>(sp, vp, kept, n, inv, op),
            4 => weighted_sum::<4>(sp, vp, kept, n, inv, op),
            5 => weighted_sum::<5>(sp, vp, kept, n, inv, op),
            6 => weighted_sum::<6>(sp, vp, kept, n, inv, op),
            7 => weighted_sum::<7>(sp, vp, kept, n, inv, op),
            _ => weighted_sum::<8>(sp, vp, kept, n, inv, op),
        }
    }

    /// `out = inv * Σ_j e[j] · values[position(j)]`, the `8 R` output values in `R` registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum<const R: usize>(e: *const f32, values: *const f32, kept: Option<&[usize]>, n: usize, inv: f32, out: *mut f32) {
        let mut acc = [_mm256_setzero_ps(); R];
        for j in 0..n {
            let v = values.add(position(kept, j) * 8 * R);
            let w = _mm256_set1_ps(*e.add(j));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(v.add(8 * r)), *a);
            }
        }
        let inv = _mm256_set1_ps(inv);
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * r), _mm256_mul_ps(*a, inv));
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Eight lanes of [`exp_nonpositive`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_setzero_ps());
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }

    #[cfg(test)]
    #[test]
    fn exp8_matches_std() {
        if !crate::runtime::matmul::avx2_available() {
            return;
        }
        let mut worst = 0f32;
        for i in 0..=25_000 {
            let x: [f32; 8] = std::array::from_fn(|l| -87.0 * (8 * i + l) as f32 / 200_007.0);
            let mut got = [0f32; 8];
            // SAFETY: AVX2/FMA were checked at the top of the test; `x` and `got` hold the 8
            // values each unaligned load and store reads or writes.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
            for l in 0..8 {
                worst = worst.max(((got[l] - x[l].exp()) / x[l].exp()).abs());
            }
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }
}

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` for `x <= 0` (a softmax's shifted scores), to about one unit in the last place: `x` is
/// `n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` comes from its degree-6 Taylor polynomial and `2^n`
/// from the exponent bits. Below -87 (where `e^x` leaves the normal floats) it gives about 1e-38
/// instead of a subnormal or 0.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention in f64, the plain way.
    fn reference(q: &[f32], keys: &[f32], values: &[f32], kept: &[usize], scale: f32) -> Vec<f64> {
        let hd = q.len();
        let scores: Vec<f64> = kept
            .iter()
            .map(|&j| (0..hd).map(|c| q[c] as f64 * keys[j * hd + c] as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd).map(|c| kept.iter().zip(&e).map(|(&j, p)| p * values[j * hd + c] as f64).sum::<f64>() / sum).collect()
    }

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn attend_matches_the_reference_with_and_without_a_mask() {
        for (hd, positions) in [(64, 1), (64, 37), (16, 300), (12, 5), (64, 1600)] {
            let q: Vec<f32> = data(hd, 1).iter().map(|x| 3.0 * x).collect();
            let (keys, values) = (data(positions * hd, 2), data(positions * hd, 3));
            let all: Vec<usize> = (0..positions).collect();
            let some: Vec<usize> = (0..positions).filter(|j| j % 3 != 1).collect();
            for (kept, mask) in [(&all, None), (&some, Some(some.as_slice()))] {
                let mut out = vec![0f32; hd];
                attend(&q, &keys, &values, mask, 0.125, &mut out, &mut Scratch::default());
                let want = reference(&q, &keys, &values, kept, 0.125);
                let err = crate::runtime::testing::max_error(&out, &want);
                assert!(err < 1e-5, "head_dim {hd}, {positions} positions, masked {}: error {err}", mask.is_some());
                let mut plain = vec![0f32; hd];
                attend_portable(&q, &keys, &values, mask, 0.125, &mut plain, &mut Scratch::default());
                let gap = crate::runtime::testing::max_error(&out, &plain);
                assert!(gap < 1e-5, "the AVX2 and portable paths differ by {gap}");
            }
        }
    }

    #[test]
    fn cached_unit_writes_the_new_positions_and_attends_causally() {
        let d = Dims { rows: 2, new: 3, heads: 2, head_dim: 8, capacity: 16, past: 5 };
        let (w, cache) = (d.rows * d.new * d.width(), d.rows * d.heads * d.capacity * d.head_dim);
        let (q, k, v) = (data(w, 4), data(w, 5), data(w, 6));
        let (mut key, mut value) = (data(cache, 7), data(cache, 8));
        let (key0, value0) = (key.clone(), value.clone());
        let mut out = vec![0f32; w];
        for u in 0..d.rows * d.heads {
            // SAFETY: q, k, v and out are `rows * new * width` long and key, value
            // `rows * heads * capacity * head_dim`, with past + new <= capacity; one thread.
            unsafe {
                cached_unit(q.as_ptr(), k.as_ptr(), v.as_ptr(), key.as_mut_ptr(), value.as_mut_ptr(), out.as_mut_ptr(), d, 0.3, u, &mut Scratch::default())
            };
        }
        let hd = d.head_dim;
        for b in 0..d.rows {
            for h in 0..d.heads {
                let base = (b * d.heads + h) * d.capacity * hd;
                // The new keys sit at past..past+new; every other position is untouched.
                for p in 0..d.capacity {
                    let at = base + p * hd;
                    let (want_k, want_v) = if (d.past..d.past + d.new).contains(&p) {
                        let src = (b * d.new + p - d.past) * d.width() + h * hd;
                        (&k[src..src + hd], &v[src..src + hd])
                    } else {
                        (&key0[at..at + hd], &value0[at..at + hd])
                    };
                    assert_eq!(&key[at..at + hd], want_k);
                    assert_eq!(&value[at..at + hd], want_v);
                }
                for i in 0..d.new {
                    let row = (b * d.new + i) * d.width() + h * hd;
                    let visible: Vec<usize> = (0..=d.past + i).collect();
                    let want = reference(&q[row..row + hd], &key[base..], &value[base..], &visible, 0.3);
                    let err = crate::runtime::testing::max_error(&out[row..row + hd], &want);
                    assert!(err < 1e-5, "row {b} head {h} query {i}: error {err}");
                }
            }
        }
    }
}
