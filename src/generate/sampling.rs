//! Next-token choice: classifier-free guidance on the logits, then temperature and top-k (in
//! transformers' order), then a draw from a seeded ChaCha generator (or argmax for top-k 1).

use ndarray::{ArrayView1, ArrayView3, Array3, Axis, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingConfig {
    /// Classifier-free guidance scale; 1.0 (or less) turns guidance off.
    pub guidance_scale: f32,
    /// Keep the `top_k` most likely codes; 1 is greedy decoding.
    pub top_k: usize,
    pub temperature: f32,
    pub seed: u64,
}

/// The sampling settings a run may give (the generating commands' flags, a config's keys); the
/// ones left unset take the bundle's defaults when [resolved](SamplingOverrides::resolve).
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub seed: u64,
    /// Top-k sampling (1 = greedy).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[arg(long, value_parser = crate::config::flags::finite_f32)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Classifier-free guidance scale (1 = off).
    #[arg(long, value_parser = crate::config::flags::finite_f32)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
}

impl SamplingOverrides {
    /// The sampling a run uses: these settings, the bundle's generation defaults for the unset ones.
    /// The one place overrides meet the defaults (the CLI, the run configs, `api::sampling`).
    pub fn resolve(&self, defaults: &crate::model::manifest::GenerationDefaults) -> SamplingConfig {
        SamplingConfig {
            guidance_scale: self.guidance_scale.unwrap_or(defaults.guidance_scale),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            seed: self.seed,
        }
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { guidance_scale: 3.0, top_k: 250, temperature: 1.0, seed: 0 }
    }
}

impl SamplingConfig {
    pub fn check(&self) -> Result<()> {
        if self.top_k == 0 {
            return Err(Error::Input("top-k must be at least 1".into()));
        }
        if !(self.temperature > 0.0) || !self.temperature.is_finite() {
            return Err(Error::Input(format!("temperature must be positive, got {}", self.temperature)));
        }
        if !self.guidance_scale.is_finite() {
            return Err(Error::Input("guidance scale must be finite".into()));
        }
        Ok(())
    }

    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// Guidance: `uncond + scale * (cond - uncond)` over `[2B, K, V]` logits (conditional rows first).
pub fn guide(logits: ArrayView3<'_, f32>, scale: f32) -> Array3<f32> {
    let b = logits.shape()[0] / 2;
    let cond = logits.slice(s![..b, .., ..]);
    let uncond = logits.slice(s![b.., .., ..]);
    let mut out = uncond.to_owned();
    ndarray::Zip::from(&mut out).and(&cond).for_each(|u, &c| *u += scale * (c - *u));
    out
}

/// A seeded sampler; the same seed and logits give the same tokens on every machine. Each batch row
/// draws from its own ChaCha stream of the seed, so a row's draws do not depend on the other rows.
pub struct Sampler {
    config: SamplingConfig,
    rngs: Vec<ChaCha20Rng>,
    scratch: Vec<(f32, usize)>,
    kept: Vec<(usize, f64)>,
}

impl Sampler {
    /// Row `i` draws from stream `i`.
    pub fn new(config: SamplingConfig) -> Result<Sampler> {
        Sampler::with_streams(config, &[])
    }

    /// Row `i` draws from stream `streams[i]` (rows past the list: stream = row index).
    pub fn with_streams(config: SamplingConfig, streams: &[u64]) -> Result<Sampler> {
        Sampler::with_rows(config, &[], streams)
    }

    /// Row `i` draws from stream `streams[i]` of seed `seeds[i]` (rows past `seeds`: the config's
    /// seed; past `streams`: stream = row index).
    pub fn with_rows(config: SamplingConfig, seeds: &[u64], streams: &[u64]) -> Result<Sampler> {
        config.check()?;
        let rngs = streams.iter().enumerate().map(|(i, &s)| Self::stream(seeds.get(i).copied().unwrap_or(config.seed), s)).collect();
        Ok(Sampler { config, rngs, scratch: Vec::new(), kept: Vec::new() })
    }

    fn stream(seed: u64, stream: u64) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        rng
    }

    /// One token per row and codebook from `[B, K, V]` (already guided) logits.
    pub fn sample(&mut self, logits: ArrayView3<'_, f32>) -> ndarray::Array2<i64> {
        let (b, k, _) = logits.dim();
        while self.rngs.len() < b {
            self.rngs.push(Self::stream(self.config.seed, self.rngs.len() as u64));
        }
        let mut out = ndarray::Array2::<i64>::zeros((b, k));
        for bi in 0..b {
            for cb in 0..k {
                out[[bi, cb]] = self.one(bi, logits.index_axis(Axis(0), bi).index_axis(Axis(0), cb)) as i64;
            }
        }
        out
    }

    fn one(&mut self, row: usize, logits: ArrayView1<'_, f32>) -> usize {
        let c = &self.config;
        let total = weights_into(logits, c.temperature, c.top_k, &mut self.scratch, &mut self.kept);
        if c.top_k == 1 {
            // Greedy: no draw, so the row's stream is not advanced.
            return self.kept[0].0;
        }
        // Inverse CDF over the kept codes in code order.
        let mut u = self.rngs[row].random::<f64>() * total;
        for &(i, w) in &self.kept {
            if u < w {
                return i;
            }
            u -= w;
        }
        self.kept.last().map(|p| p.0).unwrap_or(0)
    }
}

/// The distribution [`Sampler`] draws one code from, for one codebook's (already guided) logits:
/// `(code, probability)` for every code it can draw, in code order. Temperature first, then top-k
/// (the codes whose scaled logit is at least the k-th largest, so ties at the boundary are all kept),
/// then softmax, as transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper` and `softmax`; top-k 1
/// is greedy decoding: the first largest logit with probability 1.
///
/// `top_k` ≥ 1 and `temperature` > 0, as [`SamplingConfig::check`] requires.
pub fn distribution(logits: ArrayView1<'_, f32>, temperature: f32, top_k: usize) -> Vec<(usize, f64)> {
    assert!(top_k >= 1, "top-k must be at least 1");
    let (mut scratch, mut kept) = (Vec::new(), Vec::new());
    let total = weights_into(logits, temperature, top_k, &mut scratch, &mut kept);
    kept.iter().map(|&(i, w)| (i, w / total)).collect()
}

/// The computation behind both [`distribution`] and the sampler's draw: fills `kept` with `(code,
/// weight)` in code order, the weights `exp(logit / T - max)` unnormalised, and returns their sum.
/// `scratch` and `kept` are the caller's buffers (no allocation once they have grown to the vocabulary).
fn weights_into(
    logits: ArrayView1<'_, f32>,
    temperature: f32,
    top_k: usize,
    scratch: &mut Vec<(f32, usize)>,
    kept: &mut Vec<(usize, f64)>,
) -> f64 {
    kept.clear();
    if top_k == 1 {
        kept.push((argmax(logits), 1.0));
        return 1.0;
    }
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &v)| (v / temperature, i)));
    let k = top_k.min(scratch.len());
    // The k largest (ties at the boundary kept, as transformers' top-k keeps them).
    scratch.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    let kth = scratch[k - 1].0;
    scratch.retain(|&(v, _)| v >= kth);
    // Codes are distinct, so the unstable sort (no allocation) gives the one order.
    scratch.sort_unstable_by_key(|&(_, i)| i);
    let max = scratch.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
    kept.extend(scratch.iter().map(|&(v, i)| (i, ((v - max) as f64).exp())));
    kept.iter().map(|p| p.1).sum()
}

/// The first index of the largest value (as `torch.argmax`).
pub fn argmax(v: ArrayView1<'_, f32>) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array3};

    #[test]
    fn guidance_formula() {
        let logits = Array3::from_shape_vec((2, 1, 2), vec![1.0, 2.0, 0.5, 0.0]).unwrap();
        let g = guide(logits.view(), 3.0);
        assert_eq!(g.into_raw_vec_and_offset().0, vec![0.5 + 3.0 * 0.5, 0.0 + 3.0 * 2.0]);
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(arr1(&[1.0, 3.0, 3.0]).view()), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let logits = Array3::from_shape_fn((1, 4, 50), |(_, k, v)| ((v * 7 + k * 3) % 11) as f32);
        let draw = |seed| {
            let mut s = Sampler::new(SamplingConfig { guidance_scale: 1.0, top_k: 5, temperature: 1.0, seed }).unwrap();
            (0..20).map(|_| s.sample(logits.view())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // A row's draws depend on its stream, not on its place in the batch.
        let two = Array3::from_shape_fn((2, 4, 50), |(_, k, v)| ((v * 7 + k * 3) % 11) as f32);
        let config = SamplingConfig { guidance_scale: 1.0, top_k: 5, temperature: 1.0, seed: 3 };
        let mut pair = Sampler::with_streams(config.clone(), &[9, 9]).unwrap();
        let mut alone = Sampler::with_streams(config.clone(), &[9]).unwrap();
        for _ in 0..10 {
            let p = pair.sample(two.view());
            let a = alone.sample(logits.view());
            assert_eq!(p.row(0), a.row(0));
            assert_eq!(p.row(1), a.row(0));
        }
        // Rows with their own seeds draw what each draws alone with that seed (stream 0).
        let mut seeded = Sampler::with_rows(config.clone(), &[11, 12], &[0, 0]).unwrap();
        let alone = |seed| Sampler::new(SamplingConfig { seed, ..config.clone() }).unwrap();
        let (mut a11, mut a12) = (alone(11), alone(12));
        let mut differ = false;
        for _ in 0..10 {
            let p = seeded.sample(two.view());
            let (x, y) = (a11.sample(logits.view()), a12.sample(logits.view()));
            assert_eq!((p.row(0), p.row(1)), (x.row(0), y.row(0)));
            differ |= x != y;
        }
        assert!(differ, "two seeds draw differently");
        let mut other = Sampler::with_streams(config, &[9, 10]).unwrap();
        let draws: Vec<_> = (0..10).map(|_| other.sample(two.view())).collect();
        assert!(draws.iter().any(|d| d.row(0) != d.row(1)), "different streams draw differently");
        // Only codes whose logit is among the 5 largest (value 10 and ties at the 5th) are drawn.
        for tokens in draw(3) {
            for (cb, &t) in tokens.iter().enumerate() {
                let row = logits.slice(s![0, cb, ..]);
                let mut sorted: Vec<f32> = row.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                assert!(row[t as usize] >= sorted[4]);
            }
        }
    }
}
