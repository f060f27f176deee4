//! `musicgen-interp bench`: decoder speed against transformers in PyTorch on the same weights, in the
//! same run, plus the per-step time against the bytes-moved floor, peak memory and EnCodec speed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ndarray::{Array3, Axis};

use crate::error::{Error, Result};
use crate::generate::{generate, GenerationRequest, SamplingConfig};
use crate::hooks::NoHooks;
use crate::model::MusicGen;
use crate::plugin::builtin;

/// Blocks of single steps timed at each cached length, between measurements of the floor's
/// bandwidth (the median block is reported).
const BLOCKS: usize = 8;

/// Consecutive steps per block: a step right after the 512 MB of a copy and a read ran slower than
/// a step after a step (50 cached positions: 63.3 against 59.0 ms, medians of 30 interleaved steps
/// each), while in generation steps follow steps; a block's first step still pays that.
const BLOCK_STEPS: usize = 4;

pub const PROMPT: &str = "80s pop track with bassy drums and synth";

/// Options of a benchmark run.
pub struct BenchOptions {
    /// Clip lengths in seconds.
    pub durations: Vec<f64>,
    /// Cached positions at which the single-step time is measured.
    pub positions: Vec<usize>,
    /// Run transformers in PyTorch too (needs the bundle's `hf/` and the project's .venv).
    pub torch: bool,
    pub threads: usize,
}

/// Bandwidth of a large memory copy on this machine now, bytes moved (read + write) per second, best
/// of `rounds`. The buffers are 256 MB each, far beyond any cache.
pub fn copy_bandwidth(rounds: usize) -> f64 {
    let n = 64 << 20;
    let (src, mut dst) = (vec![1.0f32; n], vec![0.5f32; n]);
    let best = best_of(rounds, || {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
    });
    drop((src, dst));
    crate::runtime::release_free_memory();
    2.0 * (n * 4) as f64 / best
}

/// Bandwidth of a bare read by `threads` threads (each sums its contiguous half, or third..., of a
/// 256 MB buffer), bytes per second, best of `rounds`: what the decoder's weight streaming could
/// reach at most, shown beside the copy rate that defines the floor.
pub fn read_bandwidth(threads: usize, rounds: usize) -> f64 {
    let n = 64 << 20;
    let buffer = vec![1.0f32; n];
    let per = n.div_ceil(threads.max(1));
    let sum = |part: &[f32]| {
        // 32 independent sums, so the loop is bound by loads, not by add chains.
        let mut acc = [0.0f32; 32];
        for c in part.chunks_exact(32) {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        std::hint::black_box(acc);
    };
    let best = best_of(rounds, || {
        std::thread::scope(|scope| {
            let mut parts = buffer.chunks(per);
            let own = parts.next().expect("the buffer is not empty");
            for part in parts {
                scope.spawn(move || sum(part));
            }
            sum(own);
        })
    });
    drop(buffer);
    crate::runtime::release_free_memory();
    (n * 4) as f64 / best
}

/// The shortest of `rounds` timed runs of `f`, seconds.
fn best_of(rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// The peak resident memory of the model's own work, with the buffers of [`copy_bandwidth`] and
/// [`read_bandwidth`] left out: the kernel's mark is reset after each measurement and the highest
/// mark kept here.
struct PeakRss {
    before: u64,
}

impl PeakRss {
    fn new() -> PeakRss {
        PeakRss { before: 0 }
    }

    /// The peak so far.
    fn now(&self) -> u64 {
        self.before.max(peak_rss().unwrap_or(0))
    }

    /// Runs a bandwidth measurement without counting its buffers in the peak.
    fn measure(&mut self, f: impl FnOnce() -> f64) -> f64 {
        self.before = self.now();
        let bandwidth = f();
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        bandwidth
    }
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Steps set against the bandwidths measured between them: `copies[i]` and `reads[i]` were
/// measured just before step `i` (`times[i]`, seconds; the mean step of a block of consecutive
/// steps) and `copies[i + 1]`, `reads[i + 1]` just after it. Each step is compared with the faster
/// of its two neighbouring measurements, so a host whose bandwidth drifts from minute to minute
/// moves the step and its floor together.
#[derive(Clone, Copy, Debug)]
struct Paired {
    /// Median step, seconds.
    step: f64,
    /// The bytes at the median of the steps' copy rates, seconds.
    floor: f64,
    /// Medians of the per-step copy and read rates, bytes per second.
    copy: f64,
    read: f64,
    /// Medians of the per-step ratios of the step to the bytes at its copy and read rates.
    step_per_floor: f64,
    step_per_read: f64,
}

impl Paired {
    fn new(times: &[f64], copies: &[f64], reads: &[f64], bytes: f64) -> Paired {
        assert!(!times.is_empty() && copies.len() == times.len() + 1 && reads.len() == copies.len());
        let near = |rates: &[f64]| rates.windows(2).map(|w| w[0].max(w[1])).collect::<Vec<f64>>();
        let (copy, read) = (near(copies), near(reads));
        let ratios = |rates: &[f64]| times.iter().zip(rates).map(|(t, r)| t * r / bytes).collect();
        Paired {
            step: median(times.to_vec()),
            floor: bytes / median(copy.clone()),
            step_per_floor: median(ratios(&copy)),
            step_per_read: median(ratios(&read)),
            copy: median(copy),
            read: median(read),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark and prints a report; returns the report as text too.
pub fn run(model: &mut MusicGen, bundle: &Path, options: &BenchOptions) -> Result<String> {
    let mut report = String::new();
    let mut say = |line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    let man = model.manifest().clone();
    let d = &man.decoder;
    let (k, frame_rate) = (d.num_codebooks, man.audio.frame_rate);
    let steps_of: Vec<usize> = options.durations.iter().map(|&s| crate::api::steps_for(&man, None, Some(s))).collect::<Result<_>>()?;
    // What the loaded sessions read: the decoder's plain graphs or their CPU copies, not both.
    let decoder_bytes: u64 = model.decoder.graph_files().iter().map(|g| man.graph_bytes(g)).sum();
    let weight_bytes = model.loaded_bytes();
    let mut peak = PeakRss::new();
    let bandwidth = peak.measure(|| copy_bandwidth(5));
    say(format!(
        "model {} ({} layers, d_model {}), decoder weights {:.2} GB, graphs loaded {:.2} GB; memory copy bandwidth {:.1} GB/s",
        man.source.model_id,
        d.num_layers,
        d.d_model,
        decoder_bytes as f64 / 1e9,
        weight_bytes as f64 / 1e9,
        bandwidth / 1e9
    ));

    // PyTorch first, so both sides see the same machine state; its numbers come back as JSON.
    let torch: Option<serde_json::Value> = if options.torch {
        let steps: Vec<String> = steps_of.iter().map(usize::to_string).collect();
        let python = crate::runtime::find_venv_python().ok_or_else(|| Error::Input("no .venv with Python found: run scripts/setup.sh".into()))?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/bench_torch.py");
        let out = Command::new(python)
            .arg(script)
            .args(["--bundle", &bundle.display().to_string(), "--steps", &steps.join(","), "--threads", &options.threads.to_string()])
            // The same device and precision as the graphs: on a GPU, transformers in the bundle's dtype.
            .args(if model.decoder.state_on_host() { vec![] } else { vec!["--device".to_string(), "cuda".to_string(), "--dtype".to_string(), man.dtype.to_string()] })
            .output()
            .map_err(|e| Error::Input(format!("running the PyTorch benchmark: {e}")))?;
        if !out.status.success() {
            return Err(Error::Input(format!("the PyTorch benchmark failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(serde_json::from_str(text.lines().last().unwrap_or("")).map_err(|e| Error::Input(format!("PyTorch benchmark output: {e}")))?)
    } else {
        None
    };

    // Which phase set the peak: (phase, peak RSS when it ended).
    let mut peaks: Vec<(String, u64)> = vec![("loading".into(), peak.now())];
    say(format!("{:<10} {:>8} {:>12} {:>12} {:>8}", "clip", "steps", "rust st/s", "torch st/s", "ratio"));
    let request = |steps: usize| GenerationRequest {
        prompts: vec![PROMPT.into()],
        audio_codes: None,
        max_new_tokens: steps,
        sampling: SamplingConfig { seed: 0, ..SamplingConfig::default() },
        ..Default::default()
    };
    // A 4-step warm-up, as the PyTorch side has: the first pass touches every weight page (the CPU
    // graph copies read their weights from the mapped file).
    generate(model, &request(4), &mut NoHooks, |_, _| {})?;
    let mut step_traffic = None;
    for (i, &secs) in options.durations.iter().enumerate() {
        let steps = steps_of[i];
        let request = request(steps);
        let out = generate(model, &request, &mut NoHooks, |_, _| {})?;
        step_traffic = step_traffic.or(Some((out.setup_traffic, out.traffic.get(1).copied(), out.traffic.last().copied())));
        let rust = steps as f64 / out.decode_time.as_secs_f64();
        let torch_rate = torch.as_ref().and_then(|t| t["generate"][i]["steps_per_s"].as_f64());
        say(format!(
            "{:<10} {:>8} {:>12.2} {:>12} {:>8}",
            format!("{secs} s"),
            steps,
            rust,
            torch_rate.map_or("-".into(), |r| format!("{r:.2}")),
            torch_rate.map_or("-".into(), |r| format!("{:.2}x", rust / r))
        ));
        peaks.push((format!("the {secs} s clip"), peak.now()));
    }

    if let Some((setup, Some(first), Some(last))) = step_traffic {
        say(format!(
            "host <-> decoder memory without hooks ({}): set-up {setup}; first step {first}; last step {last}",
            if model.decoder.state_on_host() { "host memory: the transfers a device would make" } else { "device memory" }
        ));
    }
    if let Some(&secs) = options.durations.first() {
        let (plain, hooked, layers) = hook_overhead(model, steps_of[0])?;
        say(format!(
            "steering plugin at {layers} layers, {secs} s clip: {:.3} s hooked vs {:.3} s plain (median of 3 each, interleaved) = {:.3}x",
            hooked,
            plain,
            hooked / plain
        ));
        peaks.push(("the hook-overhead runs".into(), peak.now()));
    }

    say(format!(
        "{:<10} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10}",
        "positions", "step ms", "floor ms", "step/floor", "copy GB/s", "read GB/s", "step/read"
    ));
    for &p in &options.positions {
        let text = model.text.encode(&[PROMPT])?;
        let mut state = model.decoder.start_guided(text.last_hidden_state.view(), text.attention_mask.view())?;
        let rows = state.rows();
        // Fill the cache with p positions in chunks (of the cache's growth step, so the prefill's
        // attention scratch stays small beside the cache), then time single steps.
        let mut filled = 0;
        while filled < p {
            let n = (p - filled).min(crate::model::decoder::CACHE_CHUNK);
            let ids = Array3::from_shape_fn((rows, k, n), |(r, c, t)| ((r * 31 + c * 7 + t * 13 + filled) % d.vocab_size) as i64);
            model.decoder.forward(&mut state, ids.view(), &mut NoHooks)?;
            filled += n;
        }
        // The floor's bandwidth is measured between blocks of consecutive steps (a copy and a bare
        // read, best of two rounds each, before each block and after the last): other tenants of a
        // shared host move it by 10-20% within a minute, so each block's mean step is set against
        // the faster of the copies just before and just after it, and the ratios' median is
        // reported. The bare read by as many threads as the decoder uses shows how close the step
        // comes to reading alone.
        let step = Array3::from_elem((rows, k, 1), 5i64);
        let cache_bytes = 2 * d.num_layers * rows * (p + BLOCKS * BLOCK_STEPS / 2) * d.d_model * 4;
        let bytes = decoder_bytes as f64 + cache_bytes as f64;
        let (mut copies, mut reads, mut times) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..=BLOCKS {
            copies.push(peak.measure(|| copy_bandwidth(2)));
            reads.push(peak.measure(|| read_bandwidth(options.threads, 2)));
            if i == BLOCKS {
                break;
            }
            let t = Instant::now();
            for _ in 0..BLOCK_STEPS {
                model.decoder.forward(&mut state, step.view(), &mut NoHooks)?;
            }
            times.push(t.elapsed().as_secs_f64() / BLOCK_STEPS as f64);
        }
        peaks.push((format!("the step at {p} positions"), peak.now()));
        let paired = Paired::new(&times, &copies, &reads, bytes);
        say(format!(
            "{:<10} {:>9.1} {:>9.1} {:>11.2} {:>10.1} {:>10.1} {:>10.2}",
            p,
            paired.step * 1e3,
            paired.floor * 1e3,
            paired.step_per_floor,
            paired.copy / 1e9,
            paired.read / 1e9,
            paired.step_per_read
        ));
    }

    let frames = (5.0 * frame_rate) as usize;
    let codes = Array3::from_shape_fn((1, k, frames), |(_, c, t)| ((c * 131 + t * 17) % man.audio.codebook_size) as i64);
    let t = Instant::now();
    let wave = model.encodec.decode(codes.view())?;
    let per_s = t.elapsed().as_secs_f64() / (wave.len_of(Axis(2)) as f64 / man.audio.sample_rate as f64);
    let torch_codec = torch.as_ref().and_then(|t| t["encodec_decode_s_per_audio_s"].as_f64());
    say(format!(
        "EnCodec decode: {:.3} s per second of audio (torch {})",
        per_s,
        torch_codec.map_or("-".into(), |v| format!("{v:.3}"))
    ));
    peaks.push(("EnCodec decode".into(), peak.now()));
    let rss = peak.now();
    if rss > 0 {
        // The first phase after which the peak stood at its final value.
        let when = peaks.iter().find(|(_, p)| *p == rss).map_or("-", |(w, _)| w.as_str());
        say(format!(
            "peak RSS {:.2} GB = {:.2}x the weight bytes of the graphs loaded ({:.2} GB), reached during {when}",
            rss as f64 / 1e9,
            rss as f64 / weight_bytes as f64,
            weight_bytes as f64 / 1e9
        ));
    }
    Ok(report)
}

/// How closely one bundle (say, a reduced-precision copy) follows another on the same input.
///
/// The residual stream's cosine is dominated by what every layer carries forward (the position
/// embedding above all), so it stays near 1 even when a layer's own contribution is off; the
/// per-layer deltas (`hook_resid_post - hook_resid_pre`, what each layer adds) and the logits are
/// where reduced precision shows.
#[derive(Clone, Debug)]
pub struct Fidelity {
    /// Per `blocks.{l}.hook_resid_post`: mean cosine similarity over rows (conditional and
    /// unconditional) and positions.
    pub residual_cosine: Vec<f64>,
    /// Per layer, what it adds (`hook_resid_post - hook_resid_pre`): mean cosine over rows and positions.
    pub delta_cosine: Vec<f64>,
    /// Per layer, the relative error of what it adds: `||d_c - d_r|| / ||d_r||` (Frobenius norm over
    /// rows, positions and width; `c` the candidate, `r` the reference).
    pub delta_error: Vec<f64>,
    /// The logits' relative error `||l_c - l_r|| / ||l_r||` over rows, codebooks, positions and vocabulary.
    pub logits_error: f64,
    /// Share of positions and codebooks where the argmax of the guided next-token logits agrees.
    pub token_agreement: f64,
    pub positions: usize,
}

/// Mean over rows of the cosine between matching rows of `x` and `y` ([.., D] each, flattened to rows).
fn mean_row_cosine(x: ndarray::ArrayView2<'_, f32>, y: ndarray::ArrayView2<'_, f32>) -> f64 {
    let mut total = 0.0;
    for (u, v) in x.rows().into_iter().zip(y.rows()) {
        let dot: f64 = u.iter().zip(v.iter()).map(|(a, b)| *a as f64 * *b as f64).sum();
        let nu: f64 = u.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let nv: f64 = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        total += dot / (nu * nv).max(1e-30);
    }
    total / x.nrows().max(1) as f64
}

/// `||c - r|| / ||r||` over every element, in f64.
fn relative_error<'a>(c: impl IntoIterator<Item = &'a f32>, r: impl IntoIterator<Item = &'a f32>) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in c.into_iter().zip(r) {
        diff += (*a as f64 - *b as f64).powi(2);
        norm += (*b as f64).powi(2);
    }
    (diff / norm.max(1e-300)).sqrt()
}

/// Teacher-forced comparison: `reference` generates `steps` greedy steps for `prompt` (guidance 3);
/// both models then run that same sequence in one forward, and their residuals, per-layer deltas,
/// logits and next-token choices are compared.
pub fn fidelity(candidate: &mut MusicGen, reference: &mut MusicGen, prompt: &str, steps: usize) -> Result<Fidelity> {
    use crate::hooks::HookPoint;
    let (a, b) = (&candidate.manifest().decoder, &reference.manifest().decoder);
    if (a.num_layers, a.d_model, a.num_codebooks, a.vocab_size) != (b.num_layers, b.d_model, b.num_codebooks, b.vocab_size) {
        return Err(Error::Input("the two bundles are different model sizes".into()));
    }
    let sampling = SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 };
    let request = GenerationRequest { prompts: vec![prompt.into()], audio_codes: None, max_new_tokens: steps, sampling, ..Default::default() };
    let generated = generate(reference, &request, &mut NoHooks, |_, _| {})?;
    let len = generated.sequence.shape()[2] - 1;
    let input = generated.sequence.slice(ndarray::s![.., .., ..len]).to_owned();
    let input = ndarray::concatenate(Axis(0), &[input.view(), input.view()]).expect("rows");
    let layers = a.num_layers;
    let run = |m: &mut MusicGen| -> Result<(crate::hooks::Recorder, ndarray::Array4<f32>, ndarray::Array2<i64>)> {
        let text = m.text.encode(&[prompt])?;
        let mut state = m.decoder.start_guided(text.last_hidden_state.view(), text.attention_mask.view())?;
        let mut rec = crate::hooks::Recorder::points((0..layers).flat_map(|l| [HookPoint::ResidPre(l), HookPoint::ResidPost(l)]));
        let out = m.decoder.forward(&mut state, input.view(), &mut rec)?;
        // [2, K, T, V] -> guided [1, K, T, V] -> argmax per codebook and position
        let t = out.logits.shape()[2];
        let k = out.logits.shape()[1];
        let mut choice = ndarray::Array2::<i64>::zeros((k, t));
        for pos in 0..t {
            let g = crate::generate::sampling::guide(out.logits.index_axis(Axis(2), pos), 3.0);
            for cb in 0..k {
                choice[[cb, pos]] = crate::generate::sampling::argmax(g.slice(ndarray::s![0, cb, ..])) as i64;
            }
        }
        Ok((rec, out.logits, choice))
    };
    let (rec_c, logits_c, choice_c) = run(candidate)?;
    let (rec_r, logits_r, choice_r) = run(reference)?;
    fn rows(a: &ndarray::Array3<f32>) -> ndarray::ArrayView2<'_, f32> {
        a.view().into_shape_with_order((a.len() / a.shape()[2], a.shape()[2])).expect("contiguous")
    }
    fn get(rec: &crate::hooks::Recorder, p: HookPoint) -> &ndarray::Array3<f32> {
        rec.get(p, 0).expect("recorded")
    }
    let delta = |rec: &crate::hooks::Recorder, l: usize| get(rec, HookPoint::ResidPost(l)) - get(rec, HookPoint::ResidPre(l));
    let residual_cosine = (0..layers).map(|l| mean_row_cosine(rows(get(&rec_c, HookPoint::ResidPost(l))), rows(get(&rec_r, HookPoint::ResidPost(l))))).collect();
    let (mut delta_cosine, mut delta_error) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
    for l in 0..layers {
        let (dc, dr) = (delta(&rec_c, l), delta(&rec_r, l));
        delta_cosine.push(mean_row_cosine(rows(&dc), rows(&dr)));
        delta_error.push(relative_error(dc.iter(), dr.iter()));
    }
    let agree = choice_c.iter().zip(choice_r.iter()).filter(|(a, b)| a == b).count();
    Ok(Fidelity {
        residual_cosine,
        delta_cosine,
        delta_error,
        logits_error: relative_error(logits_c.iter(), logits_r.iter()),
        token_agreement: agree as f64 / choice_c.len() as f64,
        positions: len,
    })
}

/// Generation time with the built-in steering plugin at three layers on every step, against the
/// same generation without hooks: (plain s, hooked s, steered layers), medians of interleaved runs.
pub fn hook_overhead(model: &mut MusicGen, steps: usize) -> Result<(f64, f64, usize)> {
    let d = model.manifest().decoder.clone();
    let dir = std::env::temp_dir().join(format!("musicgen-interp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let weights = dir.join("directions.npy");
    let w = ndarray::Array3::from_shape_fn((d.num_layers, 4, d.d_model), |(l, c, i)| (((l * 7 + c * 3 + i) % 13) as f32 - 6.0) / 6.0);
    crate::store::write_npy(&weights, &w)?;
    let layers: Vec<usize> = (0..d.num_layers).rev().take(3).collect();
    let strengths = &[0.5, 0.3, 0.2][..layers.len()];
    let settings = builtin::Steering { weights: &weights, target_class: 1, layers: &layers, strengths, period: 1, offset: 0 };
    let mut plugin = builtin::method(builtin::STEERING, &settings)?;
    let request = GenerationRequest {
        prompts: vec![PROMPT.into()],
        audio_codes: None,
        max_new_tokens: steps,
        sampling: SamplingConfig { seed: 0, ..SamplingConfig::default() },
        ..Default::default()
    };
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        plain.push(generate(model, &request, &mut NoHooks, |_, _| {})?.decode_time.as_secs_f64());
        hooked.push(generate(model, &request, &mut plugin, |_, _| {})?.decode_time.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((median(plain), median(hooked), layers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_set_against_the_bandwidth_measured_beside_it() {
        // The host's bandwidth halves after the second step and every step takes exactly its own
        // floor: each ratio is 1, where the fastest copy of the series against the median step
        // would read 2.
        let bytes = 1e9;
        let copies = [40e9, 40e9, 20e9, 20e9, 20e9, 20e9];
        let reads = copies.map(|c| c / 2.0);
        let times = [0.025, 0.025, 0.05, 0.05, 0.05];
        let p = Paired::new(&times, &copies, &reads, bytes);
        assert!((p.step_per_floor - 1.0).abs() < 1e-12, "{p:?}");
        assert!((p.step_per_read - 0.5).abs() < 1e-12, "{p:?}");
        assert_eq!((p.step, p.copy, p.read), (0.05, 20e9, 10e9));
        assert!((p.floor - 0.05).abs() < 1e-12, "{p:?}");
        // Steps slower than their floor show as such: the same host, every step 30% slower.
        let slow = times.map(|t| t * 1.3);
        assert!((Paired::new(&slow, &copies, &reads, bytes).step_per_floor - 1.3).abs() < 1e-12);
    }

    #[test]
    fn bandwidths_are_measured_for_any_thread_count() {
        for threads in [1, 3] {
            let read = read_bandwidth(threads, 1);
            assert!(read.is_finite() && read > 1e8, "{threads} threads read at {read} B/s");
        }
        let copy = copy_bandwidth(1);
        assert!(copy.is_finite() && copy > 1e8, "copy at {copy} B/s");
    }
}
