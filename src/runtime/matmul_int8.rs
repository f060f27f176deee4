//! `musicgen_interp.StreamMatMulInt8`: the weight matmuls of an int8 bundle's CPU copies
//! (`onnx/quantize.py --bits 8`).
//!
//! Why: a decoding step is bound by the weight bytes it streams, so int8 weights (a quarter of
//! fp32's) are where more speed is. onnxruntime's `MatMulNBits` either rounds the activations to
//! int8 (its fast path, `accuracy_level` 4, which costs fidelity) or dequantizes slowly (fp32
//! activations). This kernel rounds each block of a row of activations to int16 on its own scale
//! (each value within 2^-16 of its block's largest, far below the weights' own rounding), widens the
//! weights to int16 in registers and sums the products exactly in int32 (`vpmaddwd`); each block's
//! sum is scaled once. Plain fp32 per row of weights was tried first: compute-bound at about half
//! the speed (converting and multiplying every weight in f32).
//!
//! The weights are `MatMulNBits`' own initializers, shared with the plain graphs: `B` (uint8
//! `[N, blocks, bs]`, zero point 128) and `scales` (`[N * blocks]`), so
//! `y[.., n] = Σ_k x[.., k] · (B[n, k / bs, k % bs] - 128) · scales[n · blocks + k / bs]`. Each output
//! column reads its own contiguous bytes, so the pool's threads split the columns (no partial sums:
//! the result does not depend on the split) and each reads one long run of memory. Many rows (a
//! prefill) dequantize 16 columns at a time and run a GEMM on them in f32.

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

/// The operator's name in the graphs (domain [`super::ops::DOMAIN`]).
pub const OP_NAME: &str = "StreamMatMulInt8";

// Streaming (a decode step, `super::matmul::streams`): the weights are read once, all rows at a
// time; blocked (a prefill): dequantized 16-column panels go to a GEMM.

/// A part's columns are a multiple of this (a cache line of `scales` for the common 1024-byte column).
const COLS: usize = 16;

/// The operator, with the number of threads the kernel splits its work over (the pool's size).
pub struct StreamMatMulInt8 {
    pub threads: usize,
}

/// One int8 weight in `MatMulNBits`' layout.
#[derive(Clone, Copy)]
pub struct QWeight<'a> {
    /// `[n, blocks, bs]`, zero point 128.
    pub b: &'a [u8],
    /// `[n * blocks]`.
    pub scales: &'a [f32],
    pub n: usize,
    pub blocks: usize,
    pub bs: usize,
}

impl Operator for StreamMatMulInt8 {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP_NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32), OperatorInput::variadic(2)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::variadic(1).homogenous(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let parts = self.threads.max(1);
        Ok(Box::new(move |ctx: &ComputeContext| {
            let missing = || ort::Error::new("StreamMatMulInt8: missing input or output");
            let a = ctx.input(0)?.ok_or_else(missing)?;
            let (a_shape, a) = a.try_extract_tensor::<f32>()?;
            let inputs = (1..ctx.num_inputs()?).map(|i| ctx.input(i)?.ok_or_else(missing)).collect::<ort::Result<Vec<_>>>()?;
            if inputs.len() % 2 != 0 || inputs.len() / 2 != ctx.num_outputs()? {
                return Err(ort::Error::new("StreamMatMulInt8: inputs x, then B and scales per output"));
            }
            let k = match a_shape.last() {
                Some(&k) if k >= 0 => k as usize,
                _ => return Err(ort::Error::new(format!("StreamMatMulInt8: input of shape {:?}", &a_shape[..]))),
            };
            let mut weights = Vec::with_capacity(inputs.len() / 2);
            let mut outputs = Vec::with_capacity(inputs.len() / 2);
            for (i, pair) in inputs.chunks(2).enumerate() {
                let (b_shape, b) = pair[0].try_extract_tensor::<u8>()?;
                let (_, scales) = pair[1].try_extract_tensor::<f32>()?;
                let w = match b_shape[..] {
                    [n, blocks, bs] if n >= 0 && blocks > 0 && bs > 0 => {
                        QWeight { b, scales, n: n as usize, blocks: blocks as usize, bs: bs as usize }
                    }
                    _ => return Err(ort::Error::new(format!("StreamMatMulInt8: B of shape {:?}, want [N, blocks, block_size]", &b_shape[..]))),
                };
                if w.bs % 16 != 0 || w.bs > 2048 || k > w.blocks * w.bs || k + w.bs <= w.blocks * w.bs || scales.len() != w.n * w.blocks {
                    return Err(ort::Error::new(format!(
                        "StreamMatMulInt8: input [.., {k}] does not fit B {:?} with {} scales (want blocks = ceil(K / block_size), block_size a multiple of 16, at most 2048)",
                        &b_shape[..],
                        scales.len()
                    )));
                }
                let mut out_shape = a_shape.to_vec();
                *out_shape.last_mut().expect("rank checked") = w.n as i64;
                outputs.push(ctx.output(i, out_shape)?.ok_or_else(missing)?);
                weights.push(w);
            }
            let mut ys = Vec::with_capacity(outputs.len());
            for y in outputs.iter_mut() {
                ys.push(y.try_extract_tensor_mut::<f32>()?.1);
            }
            let m = a_shape[..a_shape.len() - 1].iter().product::<i64>() as usize;
            let run = |f: &(dyn Fn(usize) + Sync), total: usize| super::ops::parallel(parts, total, f);
            matmul_int8(a, m, k, super::matmul::streams(&a_shape), &weights, &mut ys, parts, run)
        }))
    }
}

/// An output's buffer as an address, for the worker closures; each part writes its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: an `Out` is made only in `matmul_int8` from its mutably borrowed `ys` and used only by
// the parts of its one parallel section, which `run` returns from after every part has ended, while
// the borrow is still held: the pointer outlives every thread that uses it. The parts write
// disjoint column ranges of each output and never read it.
unsafe impl Send for Out {}
// SAFETY: as for `Send` above.
unsafe impl Sync for Out {}

/// `ys[i] = a · dequant(weights[i])` for one input `a` (`[m, k]`, row-major) and several weights,
/// in one parallel section: each weight's columns are split into `parts` contiguous ranges, part
/// `p` computes range `p` of every weight. `run(f, total)` calls `f(0..total)`, possibly at once,
/// and returns when all are done.
pub fn matmul_int8<E>(
    a: &[f32],
    m: usize,
    k: usize,
    stream: bool,
    weights: &[QWeight<'_>],
    ys: &mut [&mut [f32]],
    parts: usize,
    run: impl Fn(&(dyn Fn(usize) + Sync), usize) -> Result<(), E>,
) -> Result<(), E> {
    assert_eq!(weights.len(), ys.len(), "StreamMatMulInt8: one output per weight");
    for (w, y) in weights.iter().zip(ys.iter()) {
        // Checked products: a wrapped one would pass and let the kernels read or write past a buffer.
        let holds = |len: usize, dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_some_and(|n| len >= n);
        assert!(
            holds(a.len(), &[m, k])
                && w.bs % 16 == 0
                && w.bs <= 2048
                && w.blocks == k.div_ceil(w.bs)
                && holds(w.b.len(), &[w.n, w.blocks, w.bs])
                && holds(w.scales.len(), &[w.n, w.blocks])
                && holds(y.len(), &[m, w.n]),
            "StreamMatMulInt8: buffers smaller than [{m}, {k}] x [{k}, {}]",
            w.n
        );
    }
    if m == 0 {
        return Ok(());
    }
    if k == 0 {
        for (w, y) in weights.iter().zip(ys.iter_mut()) {
            y[..m * w.n].fill(0.0);
        }
        return Ok(());
    }
    let outs: Vec<Out> = ys.iter_mut().map(|y| Out(y.as_mut_ptr())).collect();
    // The rows in int16, once per block size (the weights of a group share one).
    let mut rows: Vec<(usize, Rows16)> = Vec::new();
    if stream {
        for w in weights {
            if !rows.iter().any(|(bs, _)| *bs == w.bs) {
                rows.push((w.bs, Rows16::new(a, m, k, w.bs)));
            }
        }
    }
    let a_addr = a.as_ptr() as usize;
    let (outs, rows) = (&outs, &rows);
    let part = move |p: usize| {
        // SAFETY: `a_addr` is `a`'s start, borrowed shared by `matmul_int8` until `run` returns
        // (after this part), and the asserts above checked `a.len() >= m * k` without wrapping:
        // the first `m * k` values are initialized `f32`s nothing writes meanwhile.
        let a = unsafe { std::slice::from_raw_parts(a_addr as *const f32, m * k) };
        for (w, y) in weights.iter().zip(outs) {
            let per = w.n.div_ceil(parts).next_multiple_of(COLS);
            let (n0, n1) = ((p * per).min(w.n), ((p + 1) * per).min(w.n));
            if !stream {
                // SAFETY: `gemm_columns`' contract: `y.0` is this weight's output, which holds
                // `m * w.n` values (asserted), borrowed mutably until `run` returns; parts take the
                // disjoint ranges `p * per ..`, so only part `p` writes columns n0..n1.
                unsafe { gemm_columns(a, m, k, w, y.0, n0, n1) };
            } else {
                let x = &rows.iter().find(|(bs, _)| *bs == w.bs).expect("made above").1;
                // SAFETY: `stream_columns`' contract, as for `gemm_columns` above (`x` holds the
                // same `m` rows, `x.m == m`).
                unsafe { stream_columns(x, w, y.0, n0, n1) };
            }
        }
    };
    run(&part, parts)
}

/// The rows of `a` rounded to int16 for the streaming kernel, each block of `bs` values on its own
/// scale (its largest magnitude maps to 32767), so each value is off by at most 2^-16 of its block's
/// largest: far below the int8 weights' own rounding. Integer products then sum exactly.
struct Rows16 {
    /// `[m, blocks * bs]`, zero past `k`.
    q: Vec<i16>,
    /// `[m, blocks]`: the value of one step.
    scale: Vec<f32>,
    m: usize,
    blocks: usize,
    bs: usize,
}

impl Rows16 {
    fn new(a: &[f32], m: usize, k: usize, bs: usize) -> Self {
        let blocks = k.div_ceil(bs);
        let (mut q, mut scale) = (vec![0i16; m * blocks * bs], vec![0f32; m * blocks]);
        for r in 0..m {
            for (b, x) in a[r * k..(r + 1) * k].chunks(bs).enumerate() {
                let top = x.iter().fold(0f32, |t, v| t.max(v.abs()));
                if !top.is_finite() || x.iter().any(|v| v.is_nan()) {
                    // NaN or infinity in the block: the row's outputs come out NaN, as in f32
                    scale[r * blocks + b] = f32::NAN;
                } else if top > 0.0 {
                    let to_q = 32767.0 / top;
                    for (qv, v) in q[(r * blocks + b) * bs..].iter_mut().zip(x) {
                        // to nearest, halves away from zero (vectorises, unlike `f32::round`)
                        let t = v * to_q;
                        *qv = (t + 0.5f32.copysign(t)) as i16;
                    }
                    scale[r * blocks + b] = top / 32767.0;
                }
            }
        }
        Rows16 { q, scale, m, blocks, bs }
    }

    /// Row `r`'s values and block scales.
    fn row(&self, r: usize) -> (&[i16], &[f32]) {
        (&self.q[r * self.blocks * self.bs..][..self.blocks * self.bs], &self.scale[r * self.blocks..][..self.blocks])
    }
}

/// Columns `n0..n1` of `y = x · dequant(w)`, one column after another (each column's bytes follow
/// the previous column's, so a part reads one long run of memory), rows in pairs.
///
/// # Safety
/// `y` holds `x.m * w.n` values and nothing else writes these columns meanwhile.
unsafe fn stream_columns(x: &Rows16, w: &QWeight<'_>, y: *mut f32, n0: usize, n1: usize) {
    #[cfg(target_arch = "x86_64")]
    let vector = super::matmul::avx2_available();
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    for n in n0..n1 {
        let mut r = 0;
        while r < x.m {
            let pair = (x.m - r).min(2);
            let rows = [x.row(r), x.row(r + pair - 1)];
            let got = if vector {
                #[cfg(target_arch = "x86_64")]
                {
                    avx2::column(rows, w, n)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!()
            } else {
                portable_column(rows, w, n)
            };
            *y.add(r * w.n + n) = got[0];
            if pair == 2 {
                *y.add((r + 1) * w.n + n) = got[1];
            }
            r += pair;
        }
    }
}

/// Column `n` of two rows' `x · dequant(w)`: per block, the exact integer sum of `x · (B - 128)`
/// times the weight's scale and the row's scale.
fn portable_column(rows: [(&[i16], &[f32]); 2], w: &QWeight<'_>, n: usize) -> [f32; 2] {
    let col = &w.b[n * w.blocks * w.bs..][..w.blocks * w.bs];
    rows.map(|(q, xs)| {
        let mut acc = 0f32;
        for (blk, (qb, wb)) in q.chunks(w.bs).zip(col.chunks(w.bs)).enumerate() {
            let dot: i32 = qb.iter().zip(wb).map(|(&x, &b)| x as i32 * (b as i32 - 128)).sum();
            acc = (dot as f32).mul_add(w.scales[n * w.blocks + blk] * xs[blk], acc);
        }
        acc
    })
}

/// Columns `n0..n1` of `y = a · dequant(w)` for many rows: 16 columns at a time are dequantized
/// into `[k, 16]` and multiplied by `matrixmultiply`'s GEMM.
///
/// # Safety
/// `y` holds `m * w.n` values and nothing else writes these columns meanwhile.
unsafe fn gemm_columns(a: &[f32], m: usize, k: usize, w: &QWeight<'_>, y: *mut f32, n0: usize, n1: usize) {
    const PANEL: usize = 16;
    let mut panel = vec![0f32; k * PANEL];
    for c0 in (n0..n1).step_by(PANEL) {
        let nb = PANEL.min(n1 - c0);
        for j in 0..nb {
            let n = c0 + j;
            for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                let (blk, i) = (kk / w.bs, kk % w.bs);
                row[j] = (w.b[(n * w.blocks + blk) * w.bs + i] as i32 - 128) as f32 * w.scales[n * w.blocks + blk];
            }
        }
        matrixmultiply::sgemm(m, k, nb, 1.0, a.as_ptr(), k as isize, 1, panel.as_ptr(), PANEL as isize, 1, 0.0, y.add(c0), w.n as isize, 1);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::QWeight;


    /// Column `n` of two rows' `x · dequant(w)`: 32 weights at a time are made signed (top bit
    /// flipped) and widened to int16, and `vpmaddwd` multiplies them with the rows' int16 values,
    /// summing pairs into int32 lanes (exact: a block of up to 2048 values stays far below 2^31);
    /// per block the lanes go to f32 and add, times the weight's and the row's scale, into the
    /// row's accumulator.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn column(rows: [(&[i16], &[f32]); 2], w: &QWeight<'_>, n: usize) -> [f32; 2] {
        let col = w.b.as_ptr().add(n * w.blocks * w.bs);
        let (q0, q1) = (rows[0].0.as_ptr(), rows[1].0.as_ptr());
        let flip = _mm_set1_epi8(-128);
        let widen = |j: usize| _mm256_cvtepi8_epi16(_mm_xor_si128(_mm_loadu_si128(col.add(j) as *const __m128i), flip));
        let dot = |q: *const i16, j: usize, wv: __m256i| _mm256_madd_epi16(wv, _mm256_loadu_si256(q.add(j) as *const __m256i));
        let mut acc = [_mm256_setzero_ps(); 2];
        for blk in 0..w.blocks {
            let (mut j, end) = (blk * w.bs, (blk + 1) * w.bs);
            let mut part = [[_mm256_setzero_si256(); 2]; 2];
            while j + 32 <= end {
                let (w0, w1) = (widen(j), widen(j + 16));
                part[0][0] = _mm256_add_epi32(part[0][0], dot(q0, j, w0));
                part[0][1] = _mm256_add_epi32(part[0][1], dot(q0, j + 16, w1));
                part[1][0] = _mm256_add_epi32(part[1][0], dot(q1, j, w0));
                part[1][1] = _mm256_add_epi32(part[1][1], dot(q1, j + 16, w1));
                j += 32;
            }
            if j < end {
                // block sizes are multiples of 16
                let w0 = widen(j);
                part[0][0] = _mm256_add_epi32(part[0][0], dot(q0, j, w0));
                part[1][0] = _mm256_add_epi32(part[1][0], dot(q1, j, w0));
            }
            let s = w.scales[n * w.blocks + blk];
            for r in 0..2 {
                let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(part[r][0], part[r][1]));
                acc[r] = _mm256_fmadd_ps(sum, _mm256_set1_ps(s * rows[r].1[blk]), acc[r]);
            }
        }
        [hsum(acc[0]), hsum(acc[1])]
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::matmul::tests::{serial, threaded, values};
    use crate::runtime::matmul::STREAM_MAX_ROWS;

    /// A random int8 weight `[n, blocks, bs]` with scales, and its dequantized `[k, n]` in f64.
    fn weight(k: usize, n: usize, bs: usize, seed: u64) -> (Vec<u8>, Vec<f32>, usize, Vec<f64>) {
        let blocks = k.div_ceil(bs);
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let b: Vec<u8> = (0..n * blocks * bs).map(|_| next() as u8).collect();
        let scales: Vec<f32> = (0..n * blocks).map(|_| (next() % 1000) as f32 / 1e5 + 1e-4).collect();
        let mut deq = vec![0f64; k * n];
        for j in 0..k {
            for c in 0..n {
                deq[j * n + c] = (b[(c * blocks + j / bs) * bs + j % bs] as f64 - 128.0) * scales[c * blocks + j / bs] as f64;
            }
        }
        (b, scales, blocks, deq)
    }

    #[test]
    fn matches_a_float64_dequantized_reference() {
        // rows 1-3 and 5 (pairs and a single row), 12 (the GEMM path); K a multiple of the block, a
        // partial last block, K not a multiple of 8; N not a multiple of 4.
        for &(m, k, n, bs) in &[
            (1, 64, 8, 32),
            (2, 256, 12, 128),
            (2, 100, 7, 32),
            (3, 200, 13, 64),
            (5, 1024, 20, 128),
            (2, 37, 5, 16),
            (2, 100, 9, 48),
            (2, 0, 6, 16),
            (12, 300, 33, 64),
            (40, 96, 17, 32),
        ] {
            let (b, scales, blocks, deq) = weight(k, n, bs, (m * 1000 + k + n) as u64);
            let a = values(m * k, 7);
            let mut want = vec![0f64; m * n];
            // What fp32 sums may be off by (a few ulps of the terms' sizes), and, on the streaming
            // path (up to 8 rows), what rounding each row's block of x to int16 may be off by: half
            // a step (its largest |x| / 32767) times the weights' sizes.
            let (mut bound, mut rounding) = (vec![0f64; m * n], vec![0f64; m * n]);
            for r in 0..m {
                for j in 0..k {
                    let block = &a[r * k..(r + 1) * k][j / bs * bs..((j / bs + 1) * bs).min(k)];
                    let step = block.iter().fold(0f64, |t, v| t.max(v.abs() as f64)) / 32767.0;
                    for c in 0..n {
                        want[r * n + c] += a[r * k + j] as f64 * deq[j * n + c];
                        bound[r * n + c] += (a[r * k + j] as f64 * deq[j * n + c]).abs();
                        rounding[r * n + c] += 0.5 * step * deq[j * n + c].abs();
                    }
                }
            }
            if m > STREAM_MAX_ROWS {
                rounding.fill(0.0);
            }
            let w = QWeight { b: &b, scales: &scales, n, blocks, bs };
            for parts in [1, 2, 3] {
                for run in [serial, threaded] {
                    let mut y = vec![f32::NAN; m * n];
                    matmul_int8(&a, m, k, m <= STREAM_MAX_ROWS, &[w], &mut [&mut y[..]], parts, run).unwrap();
                    for i in 0..m * n {
                        let err = (y[i] as f64 - want[i]).abs();
                        // fp32 sums: a few ulps of the sum of the terms' sizes
                        let tol = rounding[i] + 8e-6 * bound[i].max(1e-3);
                        assert!(err <= tol, "m {m} k {k} n {n} bs {bs} parts {parts}: [{i}] {} vs {} (tolerance {tol})", y[i], want[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn same_result_for_any_split_and_as_alone_in_a_group() {
        let (m, k) = (2, 512);
        let a = values(m * k, 3);
        let specs = [(24, 128), (40, 128), (9, 64)];
        let ws: Vec<_> = specs.iter().enumerate().map(|(i, &(n, bs))| weight(k, n, bs, 11 + i as u64)).collect();
        let qs: Vec<QWeight<'_>> =
            ws.iter().zip(specs).map(|((b, s, blocks, _), (n, bs))| QWeight { b, scales: s, n, blocks: *blocks, bs }).collect();
        let alone: Vec<Vec<f32>> = qs
            .iter()
            .map(|q| {
                let mut y = vec![0f32; m * q.n];
                matmul_int8(&a, m, k, m <= STREAM_MAX_ROWS, &[*q], &mut [&mut y[..]], 1, serial).unwrap();
                y
            })
            .collect();
        for parts in [2, 3, 5] {
            let mut ys: Vec<Vec<f32>> = qs.iter().map(|q| vec![f32::NAN; m * q.n]).collect();
            let mut views: Vec<&mut [f32]> = ys.iter_mut().map(|y| &mut y[..]).collect();
            matmul_int8(&a, m, k, m <= STREAM_MAX_ROWS, &qs, &mut views, parts, threaded).unwrap();
            assert_eq!(ys, alone, "parts {parts}");
        }
    }

    #[test]
    fn a_nan_or_infinity_in_a_row_reaches_that_rows_outputs_only() {
        let (m, k, n, bs) = (3, 64, 8, 32);
        let (b, scales, blocks, _) = weight(k, n, bs, 9);
        let w = QWeight { b: &b, scales: &scales, n, blocks, bs };
        for bad in [f32::NAN, f32::INFINITY] {
            let mut a = values(m * k, 4);
            a[k + 40] = bad;
            let mut y = vec![0f32; m * n];
            matmul_int8(&a, m, k, m <= STREAM_MAX_ROWS, &[w], &mut [&mut y[..]], 2, threaded).unwrap();
            assert!(y[n..2 * n].iter().all(|v| v.is_nan()), "{bad}: row 1 {:?}", &y[n..2 * n]);
            assert!(y[..n].iter().chain(&y[2 * n..]).all(|v| v.is_finite()), "{bad}: {y:?}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn portable_column_matches_the_vector_one() {
        let (k, n, bs) = (304, 4, 64);
        let (b, scales, blocks, _) = weight(k, n, bs, 5);
        let a = values(2 * k, 1);
        let x = Rows16::new(&a, 2, k, bs);
        let w = QWeight { b: &b, scales: &scales, n, blocks, bs };
        assert!(crate::runtime::matmul::avx2_available(), "this test needs AVX2 and FMA");
        for c in 0..n {
            let rows = [x.row(0), x.row(1)];
            // SAFETY: AVX2/FMA were just checked; `rows` are two rows of `k` int16 values with
            // their block scales and `w` a whole weight of `n` columns, `c < n`.
            let v = unsafe { avx2::column(rows, &w, c) };
            let p = portable_column(rows, &w, c);
            for r in 0..2 {
                assert!((p[r] - v[r]).abs() <= 1e-5 * p[r].abs().max(1.0), "column {c} row {r}: {} vs {}", p[r], v[r]);
            }
        }
    }
}
