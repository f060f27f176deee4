//! `musicgen_interp.StreamMatMul`: the CPU kernel for the decoder's weight matmuls, registered as an
//! onnxruntime custom operator. The exporter writes a copy of each decoder graph (`*.cpu.onnx`, same
//! weights file) whose `MatMul(x, W)` nodes with a 2-D fp32 weight use it; the CPU provider runs
//! those, the CUDA provider the plain graphs.
//!
//! Why: a decoding step multiplies 2-4 rows by every weight matrix once, so it is a matrix-vector
//! product bound by how fast the weights stream from memory. onnxruntime's MLAS kernels reach about
//! 80% of a bare read on these shapes (all 192 matmuls of the small model, 2 rows, 2 threads: 55-63
//! ms against 46-51 ms here, same host). This kernel splits the rows of `W` (`[K, N]`, row-major)
//! into one contiguous block per thread, so each thread reads its block once, front to back; each
//! thread sums into its own partial result, and the partials are added in a fixed order, so the
//! result does not depend on scheduling. Many rows (a prefill) go to `matrixmultiply`'s GEMM with
//! the columns split between threads.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

/// The operator's name in the graphs (domain [`super::ops::DOMAIN`]).
pub const OP_NAME: &str = "StreamMatMul";

/// Up to this many rows the weights are streamed once per pair of rows; above it, a GEMM in
/// 16-column panels.
const STREAM_MAX_ROWS: usize = 8;

/// The operator, with the number of threads the kernel splits its work over (the pool's size).
pub struct StreamMatMul {
    pub threads: usize,
}

impl Operator for StreamMatMul {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP_NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::variadic(1).homogenous(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::variadic(1).homogenous(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let parts = self.threads.max(1);
        let mut scratch: Vec<f32> = Vec::new();
        Ok(Box::new(move |ctx: &ComputeContext| {
            let missing = || ort::Error::new("StreamMatMul: missing input or output");
            let a = ctx.input(0)?.ok_or_else(missing)?;
            let (a_shape, a) = a.try_extract_tensor::<f32>()?;
            let weights = (1..ctx.num_inputs()?).map(|i| ctx.input(i)?.ok_or_else(missing)).collect::<ort::Result<Vec<_>>>()?;
            if weights.len() != ctx.num_outputs()? {
                return Err(ort::Error::new("StreamMatMul: one output per weight"));
            }
            let mut outputs = Vec::with_capacity(weights.len());
            let mut ws = Vec::with_capacity(weights.len());
            let mut k = 0;
            for (i, weight) in weights.iter().enumerate() {
                let (b_shape, w) = weight.try_extract_tensor::<f32>()?;
                let (wk, n) = match (&b_shape[..], a_shape.last()) {
                    ([wk, n], Some(&ak)) if ak == *wk && *wk >= 0 && *n >= 0 => (*wk as usize, *n as usize),
                    _ => return Err(ort::Error::new(format!(
                        "StreamMatMul: input {:?} does not fit weight {:?} (want [..., K] x [K, N])",
                        &a_shape[..],
                        &b_shape[..]
                    ))),
                };
                k = wk;
                let mut out_shape = a_shape.to_vec();
                *out_shape.last_mut().expect("rank checked") = n as i64;
                outputs.push(ctx.output(i, out_shape)?.ok_or_else(missing)?);
                ws.push((w, n));
            }
            let mut products = Vec::with_capacity(ws.len());
            for ((w, n), y) in ws.into_iter().zip(outputs.iter_mut()) {
                products.push(Product { w, y: y.try_extract_tensor_mut::<f32>()?.1, n });
            }
            let m = a_shape[..a_shape.len() - 1].iter().product::<i64>() as usize;
            let run = |f: &(dyn Fn(usize) + Sync), total: usize| super::ops::parallel(parts, total, f);
            matmul_group(a, m, k, &mut products, parts, &mut scratch, run)
        }))
    }
}

/// Whether this CPU has AVX2 and FMA (the runtime's kernels then use their vector paths).
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y[m, n] = a[m, k] · w[k, n]`, all row-major.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// One product of [`matmul_group`]: `y[m, n] = a[m, k] · w[k, n]`.
pub struct Product<'a> {
    pub w: &'a [f32],
    pub y: &'a mut [f32],
    pub n: usize,
}

/// A product's buffers as addresses, for the worker closures; each closure writes a disjoint part.
#[derive(Clone, Copy)]
struct Ptrs {
    w: *const f32,
    y: *mut f32,
    n: usize,
}
// SAFETY: the pointers outlive the parallel section (`run` returns after every part is done) and
// each part writes only its own region of `y` or of the scratch.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

/// `y = a · w` (one product), see [`matmul_group`].
pub fn matmul<E>(
    a: &[f32],
    w: &[f32],
    y: &mut [f32],
    s: Shape,
    parts: usize,
    scratch: &mut Vec<f32>,
    run: impl Fn(&(dyn Fn(usize) + Sync), usize) -> Result<(), E>,
) -> Result<(), E> {
    matmul_group(a, s.m, s.k, &mut [Product { w, y, n: s.n }], parts, scratch, run)
}

/// Every product `y_i = a · w_i` of one input `a` (`[m, k]`, row-major) by several weights (the q,
/// k and v projections, or the codebook heads), in one parallel section; `run(f, total)` calls
/// `f(0..total)`, possibly at once, and returns when all are done.
///
/// Up to [`STREAM_MAX_ROWS`] rows, the rows of every `w_i` are split into `parts` contiguous blocks
/// (the same split for each), and part `p` streams its block of each weight in turn; the partial
/// sums are added in a fixed order, so the result does not depend on scheduling. More rows (a
/// prefill) take a GEMM per weight, columns split between the parts.
pub fn matmul_group<E>(
    a: &[f32],
    m: usize,
    k: usize,
    products: &mut [Product<'_>],
    parts: usize,
    scratch: &mut Vec<f32>,
    run: impl Fn(&(dyn Fn(usize) + Sync), usize) -> Result<(), E>,
) -> Result<(), E> {
    for p in products.iter() {
        assert!(
            a.len() >= m * k && p.w.len() >= k * p.n && p.y.len() >= m * p.n,
            "StreamMatMul: buffers smaller than [{m}, {k}] x [{k}, {}]",
            p.n
        );
    }
    if m == 0 {
        return Ok(());
    }
    if k == 0 {
        products.iter_mut().for_each(|p| p.y[..m * p.n].fill(0.0));
        return Ok(());
    }
    let ptrs: Vec<Ptrs> = products.iter_mut().map(|p| Ptrs { w: p.w.as_ptr(), y: p.y.as_mut_ptr(), n: p.n }).collect();
    let a_addr = a.as_ptr() as usize;
    if m > STREAM_MAX_ROWS {
        for &p in ptrs.iter().filter(|p| p.n > 0) {
            let n = p.n;
            // Columns split between the threads, in multiples of 16 (whole vector registers).
            let cols = n.div_ceil(parts).next_multiple_of(16).min(n);
            let total = n.div_ceil(cols);
            let part = move |i: usize| {
                let p = p;
                let n0 = i * cols;
                let nb = cols.min(n - n0);
                // SAFETY: in-bounds by the asserts above; part i writes columns n0..n0+nb of y only.
                unsafe { gemm_columns(a_addr as *const f32, p.w, p.y, Shape { m, k, n }, n0, nb) };
            };
            run(&part, total)?;
        }
        return Ok(());
    }
    // Rows of W split into `parts` contiguous blocks of whole 4-row groups.
    let per = k.div_ceil(parts).next_multiple_of(4);
    let total = k.div_ceil(per);
    let width: usize = ptrs.iter().map(|p| p.n).sum();
    scratch.resize((total - 1) * m * width, 0.0);
    let scratch_addr = scratch.as_mut_ptr() as usize;
    let ptrs = &ptrs;
    let part = move |i: usize| {
        let (k0, k1) = (i * per, ((i + 1) * per).min(k));
        // SAFETY: in-bounds by the asserts above.
        let a = unsafe { std::slice::from_raw_parts(a_addr as *const f32, m * k) };
        let mut offset = 0;
        for p in ptrs {
            let n = p.n;
            // SAFETY: part 0 writes y, part i > 0 its own block of the scratch; each m*n long.
            let acc = unsafe {
                let dst = if i == 0 { p.y } else { (scratch_addr as *mut f32).add(((i - 1) * width + offset) * m) };
                std::slice::from_raw_parts_mut(dst, m * n)
            };
            let w = unsafe { std::slice::from_raw_parts(p.w, k * n) };
            stream_rows(a, w, acc, Shape { m, k, n }, k0, k1);
            offset += n;
        }
    };
    run(&part, total)?;
    let mut offset = 0;
    for p in products.iter_mut() {
        let n = p.n;
        for i in 1..total {
            let block = &scratch[((i - 1) * width + offset) * m..][..m * n];
            p.y[..m * n].iter_mut().zip(block).for_each(|(y, b)| *y += b);
        }
        offset += n;
    }
    Ok(())
}

/// Columns `n0..n0 + nb` of `y = a · w` for all rows (many rows: a prefill).
///
/// # Safety
/// The pointers hold `m * k`, `k * n` and `m * n` values; nothing else writes those columns of `y`.
unsafe fn gemm_columns(a: *const f32, w: *const f32, y: *mut f32, s: Shape, n0: usize, nb: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            return avx2::gemm_columns(a, w, y, s, n0, nb);
        }
    }
    let Shape { m, k, n } = s;
    matrixmultiply::sgemm(m, k, nb, 1.0, a, k as isize, 1, w.add(n0), n as isize, 1, 0.0, y.add(n0), n as isize, 1);
}

/// `acc[r, :] = Σ_{k0 <= j < k1} a[r, j] · w[j, :]` for every row r, rows taken in pairs.
fn stream_rows(a: &[f32], w: &[f32], acc: &mut [f32], s: Shape, k0: usize, k1: usize) {
    let Shape { m, k, n } = s;
    acc.fill(0.0);
    let mut r = 0;
    while r < m {
        let rows = (m - r).min(2);
        let (x0, x1) = (
            &a[r * k..(r + 1) * k],
            &a[(r + rows - 1) * k..(r + rows) * k],
        );
        let (acc0, rest) = acc[r * n..].split_at_mut(n);
        let acc1 = if rows == 2 {
            Some(&mut rest[..n])
        } else {
            None
        };
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::available() {
                // SAFETY: the features were just detected.
                unsafe { avx2::pair(x0, x1, w, n, k0, k1, acc0, acc1) };
                r += rows;
                continue;
            }
        }
        portable_pair(x0, x1, w, n, k0, k1, acc0, acc1);
        r += rows;
    }
}

/// The same loop in plain Rust (the compiler vectorises it for the baseline target).
#[allow(clippy::too_many_arguments)]
fn portable_pair(
    x0: &[f32],
    x1: &[f32],
    w: &[f32],
    n: usize,
    k0: usize,
    k1: usize,
    acc0: &mut [f32],
    mut acc1: Option<&mut [f32]>,
) {
    for j in k0..k1 {
        let row = &w[j * n..(j + 1) * n];
        let (c0, c1) = (x0[j], x1[j]);
        acc0.iter_mut().zip(row).for_each(|(y, w)| *y += c0 * w);
        if let Some(acc1) = acc1.as_deref_mut() {
            acc1.iter_mut().zip(row).for_each(|(y, w)| *y += c1 * w);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Shape;

    /// Whether this CPU has the instructions the kernels below are compiled for.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Columns `n0..n0 + nb` of `y = a · w`, in panels of 16 columns (one cache line of each row of
    /// W) and blocks of `KB` rows of W: a panel's block (16 KB, as many pages) is read from memory
    /// once and then from L1 by every block of six rows of `a`, each 6 x 16 block of `y` in twelve
    /// registers. No packing, so no copy of W is made; edge columns and rows take plain loops.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_columns(a: *const f32, w: *const f32, y: *mut f32, s: Shape, n0: usize, nb: usize) {
        const KB: usize = 256;
        let Shape { m, k, n } = s;
        let full = nb - nb % 16;
        for r in 0..m {
            std::ptr::write_bytes(y.add(r * n + n0), 0, nb);
        }
        for k0 in (0..k).step_by(KB) {
            let k1 = (k0 + KB).min(k);
            for c in (n0..n0 + full).step_by(16) {
                let mut r = 0;
                while r < m {
                    match m - r {
                        1 => block::<1>(a, w, y, s, r, c, k0, k1),
                        2 => block::<2>(a, w, y, s, r, c, k0, k1),
                        3 => block::<3>(a, w, y, s, r, c, k0, k1),
                        4 => block::<4>(a, w, y, s, r, c, k0, k1),
                        5 => block::<5>(a, w, y, s, r, c, k0, k1),
                        _ => block::<6>(a, w, y, s, r, c, k0, k1),
                    }
                    r += 6;
                }
            }
            for c in n0 + full..n0 + nb {
                for r in 0..m {
                    let mut sum = *y.add(r * n + c);
                    for j in k0..k1 {
                        sum = (*a.add(r * k + j)).mul_add(*w.add(j * n + c), sum);
                    }
                    *y.add(r * n + c) = sum;
                }
            }
        }
    }

    /// `y[r..r + R, c..c + 16] += a[r..r + R, k0..k1] · w[k0..k1, c..c + 16]`, the block of `y` in
    /// 2R registers (R = 6: twelve accumulators, enough to keep both FMA pipes busy).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize>(a: *const f32, w: *const f32, y: *mut f32, s: Shape, r: usize, c: usize, k0: usize, k1: usize) {
        let Shape { k, n, .. } = s;
        let mut acc = [_mm256_setzero_ps(); 12];
        for i in 0..R {
            let o = y.add((r + i) * n + c);
            acc[2 * i] = _mm256_loadu_ps(o);
            acc[2 * i + 1] = _mm256_loadu_ps(o.add(8));
        }
        for j in k0..k1 {
            let wp = w.add(j * n + c);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for i in 0..R {
                let x = _mm256_broadcast_ss(&*a.add((r + i) * k + j));
                acc[2 * i] = _mm256_fmadd_ps(x, w0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(x, w1, acc[2 * i + 1]);
            }
        }
        for i in 0..R {
            let o = y.add((r + i) * n + c);
            _mm256_storeu_ps(o, acc[2 * i]);
            _mm256_storeu_ps(o.add(8), acc[2 * i + 1]);
        }
    }

    /// Four rows of W at a time, eight columns per register; the accumulators stay in L1.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pair(
        x0: &[f32],
        x1: &[f32],
        w: &[f32],
        n: usize,
        k0: usize,
        k1: usize,
        acc0: &mut [f32],
        mut acc1: Option<&mut [f32]>,
    ) {
        let two = acc1.is_some();
        let a0 = acc0.as_mut_ptr();
        let a1 = acc1.as_mut().map_or(a0, |a| a.as_mut_ptr());
        let n8 = n - n % 8;
        let mut j = k0;
        while j + 4 <= k1 {
            let wp = w.as_ptr().add(j * n);
            let b0 = [x0[j], x0[j + 1], x0[j + 2], x0[j + 3]].map(|v| _mm256_set1_ps(v));
            let b1 = [x1[j], x1[j + 1], x1[j + 2], x1[j + 3]].map(|v| _mm256_set1_ps(v));
            let mut c = 0;
            while c < n8 {
                let w0 = _mm256_loadu_ps(wp.add(c));
                let w1 = _mm256_loadu_ps(wp.add(n + c));
                let w2 = _mm256_loadu_ps(wp.add(2 * n + c));
                let w3 = _mm256_loadu_ps(wp.add(3 * n + c));
                let mut s0 = _mm256_loadu_ps(a0.add(c));
                s0 = _mm256_fmadd_ps(b0[0], w0, s0);
                s0 = _mm256_fmadd_ps(b0[1], w1, s0);
                s0 = _mm256_fmadd_ps(b0[2], w2, s0);
                s0 = _mm256_fmadd_ps(b0[3], w3, s0);
                _mm256_storeu_ps(a0.add(c), s0);
                if two {
                    let mut s1 = _mm256_loadu_ps(a1.add(c));
                    s1 = _mm256_fmadd_ps(b1[0], w0, s1);
                    s1 = _mm256_fmadd_ps(b1[1], w1, s1);
                    s1 = _mm256_fmadd_ps(b1[2], w2, s1);
                    s1 = _mm256_fmadd_ps(b1[3], w3, s1);
                    _mm256_storeu_ps(a1.add(c), s1);
                }
                c += 8;
            }
            for c in n8..n {
                for (t, wv) in (0..4).map(|t| (t, *wp.add(t * n + c))) {
                    *a0.add(c) = x0[j + t].mul_add(wv, *a0.add(c));
                    if two {
                        *a1.add(c) = x1[j + t].mul_add(wv, *a1.add(c));
                    }
                }
            }
            j += 4;
        }
        // Fewer than four rows left (K not a multiple of 4).
        while j < k1 {
            let wp = w.as_ptr().add(j * n);
            for c in 0..n {
                let wv = *wp.add(c);
                *a0.add(c) = x0[j].mul_add(wv, *a0.add(c));
                if two {
                    *a1.add(c) = x1[j].mul_add(wv, *a1.add(c));
                }
            }
            j += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn reference(a: &[f32], w: &[f32], s: Shape) -> Vec<f64> {
        let mut y = vec![0f64; s.m * s.n];
        for r in 0..s.m {
            for j in 0..s.k {
                for c in 0..s.n {
                    y[r * s.n + c] += a[r * s.k + j] as f64 * w[j * s.n + c] as f64;
                }
            }
        }
        y
    }

    /// A fixed pseudo-random sequence in [-1, 1) (the int8 kernel's tests use it too).
    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    pub(crate) fn serial(f: &(dyn Fn(usize) + Sync), total: usize) -> Result<(), ()> {
        (0..total).for_each(f);
        Ok(())
    }

    pub(crate) fn threaded(f: &(dyn Fn(usize) + Sync), total: usize) -> Result<(), ()> {
        std::thread::scope(|sc| {
            for i in 0..total {
                sc.spawn(move || f(i));
            }
        });
        Ok(())
    }

    #[test]
    fn matches_a_float64_reference_for_odd_shapes_rows_and_thread_counts() {
        for &(m, k, n) in &[
            (1, 4, 8),
            (2, 7, 13),
            (3, 64, 40),
            (4, 1024, 96),
            (5, 33, 17),
            (8, 130, 24),
            (9, 70, 50),
            (40, 300, 70),
            (2, 3, 5),
        ] {
            let s = Shape { m, k, n };
            let (a, w) = (values(m * k, 1), values(k * n, 2));
            let want = reference(&a, &w, s);
            for parts in [1, 2, 3] {
                for threads in [false, true] {
                    let mut y = vec![f32::NAN; m * n];
                    let mut scratch = Vec::new();
                    let run = if threads { threaded } else { serial };
                    matmul(&a, &w, &mut y, s, parts, &mut scratch, run).unwrap();
                    let err = y
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (*g as f64 - w).abs())
                        .fold(0.0, f64::max);
                    // fp32 sums of k terms of size <= 1
                    assert!(
                        err <= 1e-5 * k as f64,
                        "{s:?} parts {parts}: max error {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn same_result_whichever_thread_finishes_first() {
        let s = Shape {
            m: 2,
            k: 4096,
            n: 64,
        };
        let (a, w) = (values(s.m * s.k, 3), values(s.k * s.n, 4));
        let mut first = vec![0f32; s.m * s.n];
        matmul(&a, &w, &mut first, s, 2, &mut Vec::new(), serial).unwrap();
        let reversed = |f: &(dyn Fn(usize) + Sync), total: usize| -> Result<(), ()> {
            (0..total).rev().for_each(f);
            Ok(())
        };
        for _ in 0..3 {
            let mut again = vec![0f32; s.m * s.n];
            matmul(&a, &w, &mut again, s, 2, &mut Vec::new(), reversed).unwrap();
            assert_eq!(first, again);
        }
    }

    #[test]
    fn a_group_gives_each_product_as_alone() {
        // q, k, v-like products of one input, then a GEMM-sized one; widths differ, one is empty.
        for (m, k) in [(2, 96), (3, 50), (12, 40)] {
            let a = values(m * k, 8);
            let widths = [24, 40, 0, 17];
            let ws: Vec<Vec<f32>> = widths.iter().enumerate().map(|(i, &n)| values(k * n, 9 + i as u32)).collect();
            let mut ys: Vec<Vec<f32>> = widths.iter().map(|&n| vec![f32::NAN; m * n]).collect();
            let mut products: Vec<Product<'_>> =
                ws.iter().zip(ys.iter_mut()).zip(widths).map(|((w, y), n)| Product { w, y, n }).collect();
            matmul_group(&a, m, k, &mut products, 2, &mut Vec::new(), threaded).unwrap();
            for ((w, y), n) in ws.iter().zip(&ys).zip(widths) {
                let mut alone = vec![0f32; m * n];
                matmul(&a, w, &mut alone, Shape { m, k, n }, 2, &mut Vec::new(), serial).unwrap();
                assert_eq!(y, &alone, "m {m} k {k} n {n}");
            }
        }
    }

    #[test]
    fn portable_loop_matches_the_vector_one() {
        let (k, n) = (37, 29);
        let (x0, x1, w) = (values(k, 5), values(k, 6), values(k * n, 7));
        let (mut p0, mut p1) = (vec![0f32; n], vec![0f32; n]);
        portable_pair(&x0, &x1, &w, n, 0, k, &mut p0, Some(&mut p1));
        let a: Vec<f32> = x0.iter().chain(&x1).copied().collect();
        let want = reference(&a, &w, Shape { m: 2, k, n });
        for (g, w) in p0.iter().chain(&p1).zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-4, "{g} vs {w}");
        }
    }
}
