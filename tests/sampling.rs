//! The sampling distribution itself, not only greedy decoding: for fixed logits, the probabilities
//! the sampler draws from (`sampling::distribution`, the very function its draw uses) against
//! transformers' MusicGen sampling (`onnx/reference_sampling.py`: the logits processors MusicGen's
//! `generate()` builds, `TemperatureLogitsWarper` then `TopKLogitsWarper`, then `torch.softmax`), and
//! a seeded sampler's empirical frequencies against those probabilities (chi-square goodness of fit).

use std::path::{Path, PathBuf};

use musicgen_interp::generate::sampling::{self, Sampler, SamplingConfig};
use ndarray::{Array1, Axis};

fn data() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sampling");
    assert!(
        dir.join("cases.json").is_file(),
        "sampling fixture {} is missing: run `bash scripts/test.sh` (it runs onnx/reference_sampling.py)",
        dir.display()
    );
    dir
}

fn npy(path: PathBuf) -> Array1<f32> {
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

struct Case {
    name: String,
    logits: Array1<f32>,
    /// The scores after transformers' processors: -inf where top-k removed the code.
    warped: Array1<f32>,
    /// `torch.softmax` of `warped`, float32.
    probs: Array1<f32>,
    temperature: f32,
    top_k: usize,
}

fn cases() -> Vec<Case> {
    let dir = data();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let cases: Vec<Case> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            logits: npy(dir.join(c["logits"].as_str().unwrap())),
            warped: npy(dir.join(c["warped"].as_str().unwrap())),
            probs: npy(dir.join(c["probs"].as_str().unwrap())),
            temperature: c["temperature"].as_f64().unwrap() as f32,
            top_k: c["top_k"].as_u64().unwrap() as usize,
        })
        .collect();
    assert!(cases.len() >= 60, "expected the full set of sampling cases, found {}", cases.len());
    cases
}

fn case<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no sampling case {name}"))
}

/// The codes transformers can draw (top-k kept them), in code order.
fn reference_support(c: &Case) -> Vec<usize> {
    (0..c.warped.len()).filter(|&i| c.warped[i] != f32::NEG_INFINITY).collect()
}

/// Tolerance of one probability: float32 softmax (PyTorch) against the sampler's float64 weights of
/// float32 scaled logits: `|p - q| <= ABS + REL * q`.
const ABS: f64 = 1e-6;
const REL: f64 = 1e-5;

#[test]
fn distribution_matches_transformers() {
    let cases = cases();
    let mut worst = (0.0f64, String::new());
    let mut greedy_ties = 0;
    for c in &cases {
        let dist = sampling::distribution(c.logits.view(), c.temperature, c.top_k);
        let codes: Vec<usize> = dist.iter().map(|p| p.0).collect();
        assert!(
            dist.iter().all(|p| p.1.is_finite() && p.1 >= 0.0),
            "{}: non-finite or negative probability in {dist:?}",
            c.name
        );
        assert!(c.probs.iter().all(|q| q.is_finite()), "{}: non-finite reference probability", c.name);
        let support = reference_support(c);
        if c.top_k == 1 && support.len() > 1 {
            // Top-k 1 is greedy decoding here (as transformers' `do_sample=False`: `torch.argmax`, the
            // first of tied maxima); transformers' sampling with top_k 1 would split between the ties.
            assert_eq!(dist, vec![(support[0], 1.0)], "{}: greedy takes the first tied maximum", c.name);
            greedy_ties += 1;
            continue;
        }
        assert_eq!(codes, support, "{}: the sampler keeps other codes than transformers' top-k", c.name);
        let sum: f64 = dist.iter().map(|p| p.1).sum();
        assert!((sum - 1.0).abs() < 1e-12, "{}: probabilities sum to {sum}", c.name);
        let mut p = vec![0.0f64; c.probs.len()];
        for &(i, pi) in &dist {
            p[i] = pi;
        }
        for (i, (&pi, &q)) in p.iter().zip(c.probs.iter()).enumerate() {
            let q = q as f64;
            let err = (pi - q).abs();
            assert!(
                err <= ABS + REL * q,
                "{}: code {i}: sampler {pi:.9e}, transformers {q:.9e} (|diff| {err:.2e} > {ABS:e} + {REL:e} * q)",
                c.name
            );
            let scaled = err / (ABS + REL * q);
            if scaled > worst.0 {
                worst = (scaled, format!("{} code {i}: |diff| {err:.2e} at q {q:.3e}", c.name));
            }
        }
    }
    assert!(greedy_ties >= 1, "the fixture should hold a tied maximum under top-k 1");
    eprintln!(
        "{} cases; worst difference {:.3} of the tolerance ({}); {greedy_ties} greedy cases with a tied maximum",
        cases.len(),
        worst.0,
        worst.1
    );
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-13).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, &g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Q(a, x) = Γ(a, x) / Γ(a), the regularised upper incomplete gamma function (series below a + 1,
/// Lentz's continued fraction above).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        while term.abs() > sum.abs() * 1e-16 {
            n += 1.0;
            term *= x / n;
            sum += term;
        }
        1.0 - front * sum
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let step = d * c;
            h *= step;
            if (step - 1.0).abs() < 1e-16 {
                break;
            }
        }
        front * h
    }
}

/// P(χ²_df ≥ x).
fn chi2_sf(x: f64, df: usize) -> f64 {
    gamma_q(df as f64 / 2.0, x / 2.0)
}

/// The critical value c with P(χ²_df ≥ c) = alpha (bisection on the survival function).
fn chi2_critical(alpha: f64, df: usize) -> f64 {
    let (mut lo, mut hi) = (0.0, df as f64 + 100.0 * (df as f64).sqrt() + 100.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if chi2_sf(mid, df) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[test]
fn chi_square_helpers_match_tables() {
    // Standard table values of the chi-square upper quantiles.
    for (alpha, df, table) in [(0.05, 1, 3.841), (0.001, 1, 10.828), (0.001, 4, 18.467), (0.001, 10, 29.588), (0.001, 100, 149.449)] {
        let c = chi2_critical(alpha, df);
        assert!((c - table).abs() < 2e-3, "chi2 critical value alpha {alpha} df {df}: {c} vs table {table}");
    }
    assert!((chi2_sf(2.0, 2) - (-1.0f64).exp()).abs() < 1e-12);
}

/// Draws per case in the frequency test.
const DRAWS: usize = 200_000;
/// Significance level of each case's chi-square test (five cases: family-wise at most 0.5 %). The
/// seed is fixed, so the draws, the statistic and the verdict are the same on every run.
const ALPHA: f64 = 1e-3;
const SEED: u64 = 20_240_611;

/// A seeded sampler's empirical frequencies over `DRAWS` draws (through its public `sample`) against
/// transformers' probabilities.
///
/// Pearson's chi-square goodness of fit: the bins are the codes top-k keeps, with expected counts
/// `e_i = DRAWS * q_i` (q: the reference probabilities, renormalised in f64); bins sorted by expected
/// count and consecutive ones merged until each group expects at least 5, a last short group joining
/// the one before. Statistic `X² = Σ (o - e)² / e` over the groups, `df = groups - 1` (no parameter is
/// estimated); the test fails when `P(χ²_df ≥ X²) < ALPHA = 1e-3`, i.e. when `X²` exceeds the
/// upper 0.1 % quantile of χ²_df (printed per case). Separately, no code outside the reference's
/// top-k set may ever be drawn.
#[test]
fn seeded_frequencies_fit_transformers() {
    let cases = cases();
    // Sharp and flat, ties at the k-th value, all-negative logits over the whole vocabulary, a real
    // codebook size (with MusicGen's default top-k 250 too).
    let names = ["normal64_t0.5_k5", "ties96_t3_k50", "negative128_t1_k128", "codebook2048_t1_k50", "codebook2048_t3_k250"];
    const CODEBOOKS: usize = 50; // draws per `sample` call: one row, 50 codebooks of the same logits
    for name in names {
        let c = case(&cases, name);
        let v = c.logits.len();
        let config = SamplingConfig { guidance_scale: 1.0, top_k: c.top_k, temperature: c.temperature, seed: SEED };
        let mut sampler = Sampler::new(config).unwrap();
        let batch = c.logits.view().insert_axis(Axis(0)).insert_axis(Axis(0));
        let batch = batch.broadcast((1, CODEBOOKS, v)).unwrap();
        let mut counts = vec![0u64; v];
        for _ in 0..DRAWS / CODEBOOKS {
            for &t in sampler.sample(batch).iter() {
                assert!((0..v as i64).contains(&t), "{name}: drew code {t} outside 0..{v}");
                counts[t as usize] += 1;
            }
        }
        let support = reference_support(c);
        let outside: u64 = (0..v).filter(|i| !support.contains(i)).map(|i| counts[i]).sum();
        assert_eq!(outside, 0, "{name}: {outside} draws of codes that top-k {} removes", c.top_k);

        let n = DRAWS as f64;
        let qsum: f64 = support.iter().map(|&i| c.probs[i] as f64).sum();
        let mut bins: Vec<(f64, f64)> =
            support.iter().map(|&i| (n * c.probs[i] as f64 / qsum, counts[i] as f64)).collect();
        bins.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut groups: Vec<(f64, f64)> = Vec::new();
        let mut acc = (0.0, 0.0);
        for (e, o) in bins {
            acc = (acc.0 + e, acc.1 + o);
            if acc.0 >= 5.0 {
                groups.push(acc);
                acc = (0.0, 0.0);
            }
        }
        if acc.0 > 0.0 {
            match groups.last_mut() {
                Some(last) => *last = (last.0 + acc.0, last.1 + acc.1),
                None => groups.push(acc),
            }
        }
        assert!(groups.len() >= 2, "{name}: too few groups ({}) for a chi-square test", groups.len());
        let stat: f64 = groups.iter().map(|&(e, o)| (o - e) * (o - e) / e).sum();
        let df = groups.len() - 1;
        let p = chi2_sf(stat, df);
        let critical = chi2_critical(ALPHA, df);
        eprintln!(
            "{name}: {} kept codes in {} groups, X² = {stat:.2}, df = {df}, critical (alpha {ALPHA:e}) {critical:.2}, p = {p:.4}",
            support.len(),
            groups.len()
        );
        assert!(
            p >= ALPHA,
            "{name}: the seeded draws do not fit transformers' probabilities: X² = {stat:.2} > {critical:.2} (df {df}, p = {p:.3e})"
        );
    }
}
