//! `generate` (with the seed's steering flags) and `run CONFIG.yaml`, which takes the same path with
//! the config's plugins.

use std::path::PathBuf;

use clap::Args;
use ndarray::s;

use musicgen_interp::config::RunConfig;
use musicgen_interp::generate::GenerationRequest;
use musicgen_interp::hooks::{Hooks, Reduction, ResidualCapture};
use musicgen_interp::model::Verify;
use musicgen_interp::plugin::MethodPlugin;
use musicgen_interp::runtime::Runtime;
use musicgen_interp::{Error, Result};

use super::{finite_f32, load, non_negative, positive};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Bundle folder, transformers checkpoint folder, or hub id (exported once into ./models).
    #[arg(long)]
    pub model: PathBuf,
    /// Text prompt; repeat for a batch (one clip per prompt).
    #[arg(long, required = true)]
    pub text: Vec<String>,
    /// An audio file (WAV, MP3, FLAC, Ogg; any rate, mono or stereo) to continue.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Start of the audio-prompt window, seconds.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub audio_start: f64,
    /// Length of the audio-prompt window, seconds (default: to the end).
    #[arg(long, value_parser = positive)]
    pub audio_duration: Option<f64>,
    /// Seconds of new audio (default 8; converted to decoder steps: seconds x frame rate + codebooks - 1).
    #[arg(long, conflicts_with = "steps", value_parser = positive)]
    pub duration: Option<f64>,
    /// Decoder steps. With K codebooks, the delay pattern staggers codebook k by k positions, so N
    /// steps give N - K + 1 new frames; a sequence too short for the pattern (prompt + N below
    /// 2K - 1 positions, e.g. N < 2K - 2 from text alone) is kept undelayed, as transformers does,
    /// and gives N frames. The seed's `--max-tokens` (new tokens) is this.
    #[arg(long, visible_alias = "max-tokens")]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub sampling: musicgen_interp::generate::SamplingOverrides,
    /// The WAV to write (with several prompts: NAME_0.wav, NAME_1.wav, ...).
    #[arg(long)]
    pub output: PathBuf,
    /// How the WAV stores samples: float32 (exact) or pcm16 (plain 16-bit PCM that any reader opens).
    #[arg(long, value_enum, default_value_t = musicgen_interp::audio::WavFormat::Float32)]
    pub wav_format: musicgen_interp::audio::WavFormat,
    /// Write the generated codes [batch, codebooks, frames] as int64 .npy.
    #[arg(long)]
    pub save_codes: Option<PathBuf>,
    /// Print the bytes each decoder forward moved between the host and the decoder's memory (the
    /// GPU's under CUDA): the set-up, the prefill, then every step.
    #[arg(long)]
    pub verbose: bool,
    /// Write every layer's residual stream (conditional and unconditional rows apart) into this folder.
    #[arg(long)]
    pub save_residuals: Option<PathBuf>,
    /// Reduction of the saved residuals over decoder positions: last, mean or all.
    #[arg(long, default_value = "last")]
    pub residual_reduction: Reduction,
    /// Steering (the built-in `steering` plugin): probe weights [layers, classes, d_model] as .npy.
    #[arg(long, requires_all = ["target_class", "target_layers", "layer_strengths"])]
    pub steering_weights: Option<PathBuf>,
    /// The class whose probe direction is added.
    #[arg(long)]
    pub target_class: Option<usize>,
    /// Layers whose output is steered (0-based; the probe of layer L steers layer L's output).
    #[arg(long, num_args = 1..)]
    pub target_layers: Vec<usize>,
    /// One strength per target layer (or one for all).
    #[arg(long, num_args = 1.., allow_negative_numbers = true, value_parser = finite_f32)]
    pub layer_strengths: Vec<f32>,
    /// Steer every N-th decoder step, starting with the prefill.
    #[arg(long, default_value_t = 1)]
    pub steering_period: u64,
    /// Shift of the steering phase, in steps.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

impl GenerateArgs {
    /// The steering plugin's settings from the seed-style flags, if any were given.
    fn steering_settings(&self) -> Option<serde_json::Value> {
        let weights = self.steering_weights.as_ref()?;
        Some(serde_json::json!({
            "weights": weights,
            "target_class": self.target_class,
            "layers": self.target_layers,
            "strengths": self.layer_strengths,
            "period": self.steering_period,
            "offset": self.offset,
        }))
    }
}

/// `generate`: checks every output location, loads the plugins and the model and checks the
/// plugins' hook points against it, calls `ready` with the resolved steps and sampling (`run`
/// writes its resolved config there), generates, and commits every output file together.
pub fn generate(
    runtime: &Runtime,
    verify: Verify,
    args: GenerateArgs,
    mut plugins: Vec<MethodPlugin>,
    ready: &dyn Fn(usize, &musicgen_interp::generate::SamplingConfig) -> Result<()>,
) -> Result<()> {
    // Check every output location before the long work, so no run ends without its files.
    for path in [Some(&args.output), args.save_codes.as_ref()].into_iter().flatten() {
        musicgen_interp::store::check_writable(path, false)?;
    }
    if let Some(dir) = &args.save_residuals {
        musicgen_interp::store::check_writable(dir, true)?;
    }
    if let Some(settings) = args.steering_settings() {
        plugins.push(MethodPlugin::load("steering", &settings.to_string())?);
    }
    // The audio prompt is decoded (and refused if unusable) before the model loads.
    let prompt_audio = args.audio.as_ref().map(|path| musicgen_interp::audio::read(path)).transpose()?;
    let mut m = load(runtime, args.model.clone(), verify)?;
    for p in &plugins {
        p.check_points(m.decoder.num_layers())?;
    }
    let man = m.manifest().clone();
    let sampling = args.sampling.resolve(&man.generation);
    let steps = musicgen_interp::api::steps_for(&man, args.steps, args.duration)?;
    let b = args.text.len();
    if args.text.iter().any(|t| t.trim().is_empty()) {
        return Err(Error::Input("empty text prompt: describe the music to generate".into()));
    }
    let audio_codes = match (&args.audio, &prompt_audio) {
        (Some(path), Some(audio)) => {
            let codes = musicgen_interp::api::encode_audio_prompt(&mut m, audio, path, args.audio_start, args.audio_duration, b)?;
            eprintln!("audio prompt: {} frames from {}", codes.shape()[2], path.display());
            Some(codes)
        }
        _ => None,
    };
    let prompt_frames = audio_codes.as_ref().map_or(0, |c| c.shape()[2]);
    let request = GenerationRequest { prompts: args.text.clone(), audio_codes, max_new_tokens: steps, sampling, ..Default::default() };
    ready(steps, &request.sampling)?;
    let mut capture = args.save_residuals.as_ref().map(|_| ResidualCapture::new(m.decoder.num_layers(), args.residual_reduction));
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} decoding {pos}/{len} steps [{elapsed_precise}] {per_sec} eta {eta}")
            .expect("template"),
    );
    let info = serde_json::json!({
        "output": args.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")),
        "prompts": args.text,
        "steps": steps,
        "seed": args.sampling.seed,
    })
    .to_string();
    for p in plugins.iter_mut() {
        p.run_start(&info)?;
    }
    let mut hooks: Vec<&mut dyn Hooks> = plugins.iter_mut().map(|p| p as &mut dyn Hooks).collect();
    if let Some(c) = capture.as_mut() {
        hooks.push(c);
    }
    let out = musicgen_interp::generate::generate(&mut m, &request, &mut hooks, |_, _| bar.inc(1));
    drop(hooks);
    bar.finish_and_clear();
    let out = out?;
    let decode_start = std::time::Instant::now();
    let wave = m.encodec.decode(out.codes.view())?;
    let codec_s = decode_start.elapsed().as_secs_f64();
    let rate = man.audio.sample_rate;
    // Every output is written to a temporary first and renamed into place together at the end.
    let mut staged = musicgen_interp::store::Staged::new();
    let mut written = Vec::new();
    for i in 0..b {
        let path = if b == 1 { args.output.clone() } else { musicgen_interp::api::numbered_output(&args.output, i) };
        let samples: Vec<f32> = wave.slice(s![i, 0, ..]).to_vec();
        staged.stage_with(&path, musicgen_interp::audio::wav_writer(&samples, rate, args.wav_format))?;
        written.push(format!("wrote {} ({:.2} s)", path.display(), samples.len() as f64 / rate as f64));
    }
    if let Some(path) = &args.save_codes {
        staged.stage_with(path, musicgen_interp::store::npy_writer(&out.codes))?;
    }
    if let (Some(dir), Some(capture)) = (&args.save_residuals, &capture) {
        musicgen_interp::api::stage_residuals(&mut staged, dir, capture, b, request.sampling.guided())?;
    }
    staged.commit()?;
    written.iter().for_each(|line| eprintln!("{line}"));
    for p in plugins.iter_mut() {
        p.run_end()?;
    }
    let secs = out.decode_time.as_secs_f64();
    let audio_s = wave.shape()[2] as f64 / rate as f64;
    // The clip starts with the audio prompt's own seconds: they were encoded, not generated.
    let generated_s = audio_s - prompt_frames as f64 / man.audio.frame_rate;
    println!(
        "{} steps in {:.2} s ({:.2} steps/s), EnCodec decode {:.2} s; {:.2} s of audio per clip ({:.2} s generated), real-time factor {:.3} (compute seconds per generated second of audio; {})",
        out.steps,
        secs,
        out.steps as f64 / secs,
        codec_s,
        audio_s,
        generated_s,
        (secs + codec_s) / (generated_s * b as f64),
        runtime.provider()
    );
    if args.verbose {
        println!("host <-> decoder memory: set-up {}", out.setup_traffic);
        for (i, t) in out.traffic.iter().enumerate() {
            println!("  {} {t}", if i == 0 { "prefill:".to_string() } else { format!("step {i}:") });
        }
    }
    Ok(())
}

// Named as the sub-command: `--dry-run` prints it as `Run { .. }`.
#[derive(Args, Debug)]
pub struct Run {
    pub config: PathBuf,
}

/// `run CONFIG.yaml`: the same path as `generate`, with the config's plugins; the output folder
/// and the resolved config are written once the plugins have loaded and the model has resolved and
/// accepted their hook points.
pub fn run_config_file(runtime: &Runtime, verify: Verify, config: RunConfig) -> Result<()> {
    let out = &config.output;
    musicgen_interp::store::check_writable(out, true)?;
    let plugins = config
        .plugins
        .iter()
        .map(|p| {
            let json = p.settings_json()?;
            MethodPlugin::load(&p.plugin, &json.text).map_err(|e| json.explain(e, p.origin.as_ref()))
        })
        .collect::<Result<Vec<_>>>()?;
    for p in &plugins {
        eprintln!("plugin {} {} at {}", p.name(), p.version(), p.points().iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
    }
    let args = GenerateArgs {
        model: PathBuf::from(&config.model),
        text: config.prompts.clone(),
        audio: config.audio.as_ref().map(|a| a.path.clone()),
        audio_start: config.audio.as_ref().map_or(0.0, |a| a.start),
        audio_duration: config.audio.as_ref().and_then(|a| a.duration),
        duration: config.duration,
        steps: config.steps,
        sampling: config.sampling(),
        output: out.join("clip.wav"),
        wav_format: config.wav_format,
        save_codes: config.save_codes.then(|| out.join("codes.npy")),
        verbose: false,
        save_residuals: None,
        residual_reduction: Reduction::Last,
        steering_weights: None,
        target_class: None,
        target_layers: Vec::new(),
        layer_strengths: Vec::new(),
        steering_period: 1,
        offset: 0,
    };
    // Every setting as the run used it, the bundle's defaults filled in, so it can be repeated exactly.
    let ready = |steps: usize, sampling: &musicgen_interp::generate::SamplingConfig| {
        let mut resolved = config.clone();
        let r = &mut resolved;
        (r.steps, r.top_k, r.temperature, r.guidance_scale) = (Some(steps), Some(sampling.top_k), Some(sampling.temperature), Some(sampling.guidance_scale));
        // The write makes the run's folder (store::Staged creates missing folders).
        musicgen_interp::store::write_atomic(&out.join("config.resolved.yaml"), resolved.to_yaml().as_bytes())
    };
    generate(runtime, verify, args, plugins, &ready)
}
