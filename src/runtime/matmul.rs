//! `musicgen_interp.StreamMatMul`: the CPU kernel for the decoder's weight matmuls, registered as an
//! onnxruntime custom operator. The exporter writes a copy of each decoder graph (`*.cpu.onnx`, with
//! its own weights file) whose `MatMul(x, W)` nodes with a 2-D fp32 weight use it, with `W` stored
//! in panels (below); the CPU provider runs those, the CUDA provider the plain graphs.
//!
//! Why: a decoding step multiplies 2-4 rows by every weight matrix once, so it is a matrix-vector
//! product bound by how fast the weights stream from memory. The weights are stored as panels of
//! [`PANEL`] columns, `[ceil(N / 16), K, 16]` (the last panel zero-padded): one panel is one run of
//! `K` cache lines, and each thread takes a contiguous range of panels, so it reads one long run of
//! memory front to back with the 2 x 16 block of outputs in registers, and no thread's result
//! depends on another's (no partial sums). Row-major weights, read four rows at a time with the
//! partial sums in L1, took 56.4 / 60.6 ms (medians) for the small model's 145 weight sections (2
//! rows, 2 threads) against 45 ms for a bare read of as many bytes; panels take 52.9-54.5 ms against
//! 45.6-47.1 (same host, interleaved rounds). Many rows (a prefill) take the same panels in blocks
//! of rows of `W` that stay in L1 while every six rows of `x` pass over them. The order of each
//! output's sum is fixed by `K` and the row count alone, so the result does not depend on the split.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

/// The operator's name in the graphs (domain [`super::ops::DOMAIN`]).
pub const OP_NAME: &str = "StreamMatMul";

/// Columns per panel of a stored weight: one cache line of fp32.
pub const PANEL: usize = 16;

/// A 2-D input of up to this many rows streams (see [`streams`]).
pub const STREAM_MAX_ROWS: usize = 8;

/// Which kernel a product with input shape `a_shape` takes. Streaming (each thread reads each of
/// its panels whole for each pair of rows, from memory for the first pair, front to back) for a
/// decode step: one position per row, `[rows, 1, k]`, however many rows. Blocked (blocks of [`KB`]
/// rows of `W` taken across the panels, each reused from L1 by every row of `x`) for a prefill:
/// several positions per row. The two sum in different orders, so choosing by positions and not by
/// the row count keeps each row's arithmetic the same in any batch: a sweep batched N rows at a
/// time gives the same bits as one by one. A 2-D input `[m, k]` streams up to
/// [`STREAM_MAX_ROWS`] rows.
pub fn streams(a_shape: &[i64]) -> bool {
    match a_shape {
        [.., positions, _] if a_shape.len() >= 3 => *positions == 1,
        [m, _] => (*m as usize) <= STREAM_MAX_ROWS,
        _ => true,
    }
}

/// Rows of `W` per block: 256 x 16 fp32 = 16 KB of a panel.
const KB: usize = 256;

/// Parts of a parallel section per pool thread: parts are claimed, so a thread the host slows down
/// holds back a smaller share. (1, 2 and 4 gave 250-step generations within the host's noise of
/// each other: 15.2-19.9, 18.0-18.9 and 17.7-20.4 steps/s in three rounds.)
const PARTS_PER_THREAD: usize = 2;

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

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let threads = self.threads.max(1);
        // The weights' column counts N, one per weight (a panel-stored weight does not say it).
        let widths: Vec<i64> = info.get("widths").ok_or_else(|| ort::Error::new("StreamMatMul: no `widths` attribute"))?;
        if widths.iter().any(|&n| n < 0) {
            return Err(ort::Error::new(format!("StreamMatMul: negative width in {widths:?}")));
        }
        Ok(Box::new(move |ctx: &ComputeContext| {
            let missing = || ort::Error::new("StreamMatMul: missing input or output");
            let a = ctx.input(0)?.ok_or_else(missing)?;
            let (a_shape, a) = a.try_extract_tensor::<f32>()?;
            let weights = (1..ctx.num_inputs()?).map(|i| ctx.input(i)?.ok_or_else(missing)).collect::<ort::Result<Vec<_>>>()?;
            if weights.len() != ctx.num_outputs()? || weights.len() != widths.len() {
                return Err(ort::Error::new(format!(
                    "StreamMatMul: {} weights, {} outputs, {} widths: want one of each per weight",
                    weights.len(),
                    ctx.num_outputs()?,
                    widths.len()
                )));
            }
            let k = match a_shape.last() {
                Some(&k) if k >= 0 => k as usize,
                _ => return Err(ort::Error::new(format!("StreamMatMul: input of shape {:?}", &a_shape[..]))),
            };
            let mut outputs = Vec::with_capacity(weights.len());
            let mut ws = Vec::with_capacity(weights.len());
            for (i, (weight, &n)) in weights.iter().zip(&widths).enumerate() {
                let n = n as usize;
                let (b_shape, w) = weight.try_extract_tensor::<f32>()?;
                if b_shape[..] != [n.div_ceil(PANEL) as i64, k as i64, PANEL as i64] {
                    return Err(ort::Error::new(format!(
                        "StreamMatMul: input {:?} does not fit weight {:?} of width {n} (want [..., K] x [ceil(N / {PANEL}), K, {PANEL}])",
                        &a_shape[..],
                        &b_shape[..]
                    )));
                }
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
            let run = |f: &(dyn Fn(usize) + Sync), total: usize| super::ops::parallel(threads, total, f);
            matmul_group(a, m, k, streams(&a_shape), &mut products, threads * PARTS_PER_THREAD, run)
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

/// One product of [`matmul_group`]: `y[m, n] = a[m, k] · w`, `w` a `[k, n]` weight in panels
/// (`[ceil(n / 16), k, 16]`, module docs).
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
// SAFETY: `Ptrs` are made only in `matmul_group` from its borrowed `w` and `y` slices and used only
// by the parts of its one parallel section, which `run` returns from after every part has ended,
// while those borrows are still held: the pointers outlive every thread that uses them. Through
// them the parts only read `w` and write disjoint columns of `y` (each part its own panels).
unsafe impl Send for Ptrs {}
// SAFETY: as for `Send` above.
unsafe impl Sync for Ptrs {}

/// Every product `y_i = a · w_i` of one input `a` (`[m, k]`, row-major) by several weights (the q,
/// k and v projections, or the codebook heads), in one parallel section; `run(f, total)` calls
/// `f(0..total)`, possibly at once, and returns when all are done.
///
/// The panels of all the weights, in order, are split into `parts` contiguous ranges; a part
/// computes its panels' columns of `y` for every row, so parts share nothing. Streaming
/// ([`streams`]), each output is its even terms' sum plus its odd terms' sum ([`pair`]); blocked,
/// one fp32 sum over `k` in order (blocks of [`KB`] terms carried through `y`). Either way a row's
/// result depends neither on the split nor on the other rows.
pub fn matmul_group<E>(
    a: &[f32],
    m: usize,
    k: usize,
    stream: bool,
    products: &mut [Product<'_>],
    parts: usize,
    run: impl Fn(&(dyn Fn(usize) + Sync), usize) -> Result<(), E>,
) -> Result<(), E> {
    for p in products.iter() {
        // Checked products: a wrapped one would pass and let the kernels read or write past a buffer.
        let holds = |len: usize, dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_some_and(|n| len >= n);
        assert!(
            holds(a.len(), &[m, k]) && holds(p.w.len(), &[p.n.div_ceil(PANEL), k, PANEL]) && holds(p.y.len(), &[m, p.n]),
            "StreamMatMul: buffers smaller than [{m}, {k}] x [{k}, {}] in panels",
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
    let panels: usize = ptrs.iter().map(|p| p.n.div_ceil(PANEL)).sum();
    if panels == 0 {
        return Ok(());
    }
    let per = panels.div_ceil(parts.max(1));
    let a_addr = a.as_ptr() as usize;
    let ptrs = &ptrs;
    let part = move |i: usize| {
        let (g0, g1) = (i * per, ((i + 1) * per).min(panels));
        let mut first = 0; // the first panel of the current product, in the global numbering
        for p in ptrs {
            let count = p.n.div_ceil(PANEL);
            let (lo, hi) = (g0.max(first), g1.min(first + count));
            if lo < hi {
                // SAFETY: `panels_of`'s contract: the asserts above (with non-wrapping products)
                // give `a` its `m * k` values, `w` its `ceil(n / PANEL)` panels of `k` rows and
                // `y` its `m * n`; `a` is borrowed shared and `y` mutably by `matmul_group` until
                // `run` returns, and panels lo..hi (within this product's `count`) belong to part
                // `i` alone, so no other part writes those columns of `y`.
                unsafe { panels_of(a_addr as *const f32, m, k, stream, *p, lo - first, hi - first) };
            }
            first += count;
        }
    };
    run(&part, panels.div_ceil(per))
}

/// Columns of panels `p0..p1` of `y = a · w` for every row.
///
/// # Safety
/// `a` holds `m * k` values, `w` the product's panels, `y` `m * n`; nothing else writes those
/// columns of `y`.
unsafe fn panels_of(a: *const f32, m: usize, k: usize, stream: bool, p: Ptrs, p0: usize, p1: usize) {
    if stream {
        // Panel by panel, each read whole for a pair of rows: one run of memory front to back.
        for panel in p0..p1 {
            let c0 = panel * PANEL;
            let cols = PANEL.min(p.n - c0);
            for r in (0..m).step_by(2) {
                let x0 = a.add(r * k);
                let x1 = if r + 1 < m { x0.add(k) } else { x0 };
                let mut tile = [[0f32; PANEL]; 2];
                pair(x0, x1, p.w.add(panel * k * PANEL), k, &mut tile);
                for (i, t) in tile.iter().enumerate().take(m - r) {
                    std::ptr::copy_nonoverlapping(t.as_ptr(), p.y.add((r + i) * p.n + c0), cols);
                }
            }
        }
    } else {
        // Block by block: a block of a's columns stays in cache across the panels.
        for k0 in (0..k).step_by(KB) {
            for panel in p0..p1 {
                rows(a, m, k, p, panel, k0, (k0 + KB).min(k));
            }
        }
    }
}

/// `y[:, cols] (+)= a[:, k0..k1] · w[k0..k1, cols]` for one panel's columns `cols`, all rows; the
/// sum starts from zero at `k0 == 0` and from `y` after.
///
/// # Safety
/// As [`panels_of`].
unsafe fn rows(a: *const f32, m: usize, k: usize, p: Ptrs, panel: usize, k0: usize, k1: usize) {
    let w = p.w.add(panel * k * PANEL);
    let c0 = panel * PANEL;
    let cols = PANEL.min(p.n - c0);
    let mut r = 0;
    while r < m {
        let rows = (m - r).min(6);
        // The block of y in a full panel's width (a partial last panel through a copy).
        let mut tile = [[0f32; PANEL]; 6];
        if k0 > 0 {
            for (i, t) in tile.iter_mut().enumerate().take(rows) {
                std::ptr::copy_nonoverlapping(p.y.add((r + i) * p.n + c0), t.as_mut_ptr(), cols);
            }
        }
        block(a.add(r * k), k, w, &mut tile[..rows], k0, k1);
        for (i, t) in tile.iter().enumerate().take(rows) {
            std::ptr::copy_nonoverlapping(t.as_ptr(), p.y.add((r + i) * p.n + c0), cols);
        }
        r += rows;
    }
}

/// `tile[i] += Σ_{k0 <= j < k1} a[i, j] · w[j, :]` for up to six rows `a[i]` (stride `k`) and one
/// panel `w` (`[k, 16]`).
///
/// # Safety
/// `a` holds `tile.len()` rows of `k` values, `w` at least `k1` rows of a panel.
unsafe fn block(a: *const f32, k: usize, w: *const f32, tile: &mut [[f32; PANEL]], k0: usize, k1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            return match tile.len() {
                1 => avx2::block::<1>(a, k, w, tile, k0, k1),
                2 => avx2::block::<2>(a, k, w, tile, k0, k1),
                3 => avx2::block::<3>(a, k, w, tile, k0, k1),
                4 => avx2::block::<4>(a, k, w, tile, k0, k1),
                5 => avx2::block::<5>(a, k, w, tile, k0, k1),
                _ => avx2::block::<6>(a, k, w, tile, k0, k1),
            };
        }
    }
    portable_block(a, k, w, tile, k0, k1)
}

/// `tile[i] = x_i · w` for two rows `x0`, `x1` (`k` values each) and one panel `w` (`[k, 16]`): the
/// terms of even and of odd `j` summed apart (two chains per output, so the FMAs do not wait on
/// each other), then added.
///
/// # Safety
/// `x0` and `x1` hold `k` values, `w` a panel of `k` rows.
unsafe fn pair(x0: *const f32, x1: *const f32, w: *const f32, k: usize, tile: &mut [[f32; PANEL]; 2]) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            return avx2::pair(x0, x1, w, k, tile);
        }
    }
    portable_pair(x0, x1, w, k, tile)
}

/// [`pair`] in plain Rust, in the same order of operations.
unsafe fn portable_pair(x0: *const f32, x1: *const f32, w: *const f32, k: usize, tile: &mut [[f32; PANEL]; 2]) {
    let mut even = [[0f32; PANEL]; 2];
    let mut odd = [[0f32; PANEL]; 2];
    for j in 0..k {
        let row = std::slice::from_raw_parts(w.add(j * PANEL), PANEL);
        let sums = if j % 2 == 0 { &mut even } else { &mut odd };
        for (s, x) in sums.iter_mut().zip([*x0.add(j), *x1.add(j)]) {
            s.iter_mut().zip(row).for_each(|(y, w)| *y = x.mul_add(*w, *y));
        }
    }
    for i in 0..2 {
        for c in 0..PANEL {
            tile[i][c] = even[i][c] + odd[i][c];
        }
    }
}

/// The same sums in plain Rust (one FMA per term, as the vector path; the compiler vectorises the
/// sixteen columns).
unsafe fn portable_block(a: *const f32, k: usize, w: *const f32, tile: &mut [[f32; PANEL]], k0: usize, k1: usize) {
    for (i, t) in tile.iter_mut().enumerate() {
        for j in k0..k1 {
            let x = *a.add(i * k + j);
            let row = std::slice::from_raw_parts(w.add(j * PANEL), PANEL);
            t.iter_mut().zip(row).for_each(|(y, w)| *y = x.mul_add(*w, *y));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// Whether this CPU has the instructions the kernels below are compiled for.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// [`super::pair`]: eight accumulators, two cache lines of the panel per step.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pair(x0: *const f32, x1: *const f32, w: *const f32, k: usize, tile: &mut [[f32; PANEL]; 2]) {
        let mut even = [_mm256_setzero_ps(); 4];
        let mut odd = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j + 2 <= k {
            let wp = w.add(j * PANEL);
            let (w0, w1, w2, w3) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)), _mm256_loadu_ps(wp.add(16)), _mm256_loadu_ps(wp.add(24)));
            let (u0, u1) = (_mm256_broadcast_ss(&*x0.add(j)), _mm256_broadcast_ss(&*x1.add(j)));
            let (v0, v1) = (_mm256_broadcast_ss(&*x0.add(j + 1)), _mm256_broadcast_ss(&*x1.add(j + 1)));
            even[0] = _mm256_fmadd_ps(u0, w0, even[0]);
            even[1] = _mm256_fmadd_ps(u0, w1, even[1]);
            even[2] = _mm256_fmadd_ps(u1, w0, even[2]);
            even[3] = _mm256_fmadd_ps(u1, w1, even[3]);
            odd[0] = _mm256_fmadd_ps(v0, w2, odd[0]);
            odd[1] = _mm256_fmadd_ps(v0, w3, odd[1]);
            odd[2] = _mm256_fmadd_ps(v1, w2, odd[2]);
            odd[3] = _mm256_fmadd_ps(v1, w3, odd[3]);
            j += 2;
        }
        if j < k {
            let wp = w.add(j * PANEL);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            let (u0, u1) = (_mm256_broadcast_ss(&*x0.add(j)), _mm256_broadcast_ss(&*x1.add(j)));
            even[0] = _mm256_fmadd_ps(u0, w0, even[0]);
            even[1] = _mm256_fmadd_ps(u0, w1, even[1]);
            even[2] = _mm256_fmadd_ps(u1, w0, even[2]);
            even[3] = _mm256_fmadd_ps(u1, w1, even[3]);
        }
        for i in 0..2 {
            _mm256_storeu_ps(tile[i].as_mut_ptr(), _mm256_add_ps(even[2 * i], odd[2 * i]));
            _mm256_storeu_ps(tile[i].as_mut_ptr().add(8), _mm256_add_ps(even[2 * i + 1], odd[2 * i + 1]));
        }
    }

    /// [`super::block`] for `R` rows: the `R x 16` block in `2R` registers (R = 6: twelve
    /// accumulators, enough to keep both FMA pipes busy), one cache line of the panel per term.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block<const R: usize>(a: *const f32, k: usize, w: *const f32, tile: &mut [[f32; PANEL]], k0: usize, k1: usize) {
        let mut acc = [_mm256_setzero_ps(); 12];
        for i in 0..R {
            acc[2 * i] = _mm256_loadu_ps(tile[i].as_ptr());
            acc[2 * i + 1] = _mm256_loadu_ps(tile[i].as_ptr().add(8));
        }
        for j in k0..k1 {
            let wp = w.add(j * PANEL);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for i in 0..R {
                let x = _mm256_broadcast_ss(&*a.add(i * k + j));
                acc[2 * i] = _mm256_fmadd_ps(x, w0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(x, w1, acc[2 * i + 1]);
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(tile[i].as_mut_ptr(), acc[2 * i]);
            _mm256_storeu_ps(tile[i].as_mut_ptr().add(8), acc[2 * i + 1]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `y[m, n] = a[m, k] · w[k, n]`, all row-major.
    #[derive(Clone, Copy, Debug)]
    struct Shape {
        m: usize,
        k: usize,
        n: usize,
    }

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

    /// A row-major `[k, n]` weight in the operator's layout: `[ceil(n / 16), k, 16]`, panel `p` holding
    /// columns `16p..16p + 16` of every row, the last panel's missing columns zero. (The exporter
    /// stores the weights so: `onnx/export.py` `pack_panels`.)
    fn pack(w: &[f32], k: usize, n: usize) -> Vec<f32> {
        assert_eq!(w.len(), k * n, "a [{k}, {n}] weight");
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0f32; panels * k * PANEL];
        for p in 0..panels {
            let cols = PANEL.min(n - p * PANEL);
            for j in 0..k {
                packed[(p * k + j) * PANEL..][..cols].copy_from_slice(&w[j * n + p * PANEL..][..cols]);
            }
        }
        packed
    }

    /// `y = a · w` for a row-major `w`, through the panels.
    fn matmul(a: &[f32], w: &[f32], s: Shape, parts: usize, run: impl Fn(&(dyn Fn(usize) + Sync), usize) -> Result<(), ()>) -> Vec<f32> {
        let packed = pack(w, s.k, s.n);
        let mut y = vec![f32::NAN; s.m * s.n];
        matmul_group(a, s.m, s.k, s.m <= STREAM_MAX_ROWS, &mut [Product { w: &packed, y: &mut y, n: s.n }], parts, run).unwrap();
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
    fn panels_hold_the_columns_of_every_row() {
        let (k, n) = (3, 20);
        let w: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let p = pack(&w, k, n);
        assert_eq!(p.len(), 2 * k * PANEL);
        // panel 1, row 2: columns 16..20 of row 2, then zeros
        assert_eq!(&p[(k + 2) * PANEL..][..PANEL], &[56., 57., 58., 59., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.]);
        assert_eq!(&p[PANEL..2 * PANEL], &w[n..n + PANEL]);
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
            (2, 600, 48),
            (2, 3, 5),
        ] {
            let s = Shape { m, k, n };
            let (a, w) = (values(m * k, 1), values(k * n, 2));
            let want = reference(&a, &w, s);
            for parts in [1, 2, 3, 7] {
                for threads in [false, true] {
                    let y = matmul(&a, &w, s, parts, if threads { threaded } else { serial });
                    let err = crate::runtime::testing::max_error(&y, &want);
                    // fp32 sums of k terms of size <= 1
                    assert!(err <= 1e-5 * k as f64, "{s:?} parts {parts}: max error {err}");
                }
            }
        }
    }

    #[test]
    fn same_result_for_any_split_and_order() {
        for m in [2, 12] {
            let s = Shape { m, k: 4096, n: 64 };
            let (a, w) = (values(s.m * s.k, 3), values(s.k * s.n, 4));
            let first = matmul(&a, &w, s, 1, serial);
            let reversed = |f: &(dyn Fn(usize) + Sync), total: usize| -> Result<(), ()> {
                (0..total).rev().for_each(f);
                Ok(())
            };
            for parts in [2, 3, 4] {
                assert_eq!(first, matmul(&a, &w, s, parts, reversed), "m {m} parts {parts}");
                assert_eq!(first, matmul(&a, &w, s, parts, threaded), "m {m} parts {parts}");
            }
        }
    }

    #[test]
    fn a_group_gives_each_product_as_alone() {
        // q, k, v-like products of one input, then a GEMM-sized one; widths differ, one is empty.
        for (m, k) in [(2, 96), (3, 50), (12, 40)] {
            let a = values(m * k, 8);
            let widths = [24, 40, 0, 17];
            let ws: Vec<Vec<f32>> = widths.iter().enumerate().map(|(i, &n)| values(k * n, 9 + i as u32)).collect();
            let packed: Vec<Vec<f32>> = ws.iter().zip(widths).map(|(w, n)| pack(w, k, n)).collect();
            let mut ys: Vec<Vec<f32>> = widths.iter().map(|&n| vec![f32::NAN; m * n]).collect();
            let mut products: Vec<Product<'_>> =
                packed.iter().zip(ys.iter_mut()).zip(widths).map(|((w, y), n)| Product { w, y, n }).collect();
            matmul_group(&a, m, k, m <= STREAM_MAX_ROWS, &mut products, 3, threaded).unwrap();
            for ((w, y), n) in ws.iter().zip(&ys).zip(widths) {
                assert_eq!(y, &matmul(&a, w, Shape { m, k, n }, 2, serial), "m {m} k {k} n {n}");
            }
        }
    }

    #[test]
    fn portable_block_matches_the_vector_one() {
        let (k, rows) = (300, 5);
        let (a, w) = (values(rows * k, 5), values(k * PANEL, 6));
        let start: Vec<[f32; PANEL]> = (0..rows).map(|i| std::array::from_fn(|c| (i * PANEL + c) as f32 * 0.01)).collect();
        let (mut portable, mut vector) = (start.clone(), start);
        // SAFETY: `a` holds `rows` rows of `k` values, one for each tile row, and `w` a whole
        // panel of `k` rows, so rows 10..290 are in bounds; `block` checks AVX2 itself.
        unsafe {
            portable_block(a.as_ptr(), k, w.as_ptr(), &mut portable, 10, 290);
            block(a.as_ptr(), k, w.as_ptr(), &mut vector, 10, 290);
        }
        if avx2_available() {
            // one FMA per term in the same order: the same rounding
            assert_eq!(portable, vector);
        }
        let want: Vec<f64> = (0..rows * PANEL)
            .map(|i| (i as f64 * 0.01) as f32 as f64 + (10..290).map(|j| a[(i / PANEL) * k + j] as f64 * w[j * PANEL + i % PANEL] as f64).sum::<f64>())
            .collect();
        for (g, w) in portable.iter().flatten().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-4, "{g} vs {w}");
        }
    }
}
