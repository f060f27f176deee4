//! Audio in and out: decode WAV, MP3, FLAC or Ogg/Vorbis (symphonia), mix to mono, resample to the
//! model's rate (rubato's FFT resampler), cut a window, and write 32-bit float WAV (hound) atomically.

use std::fs::File;
use std::path::Path;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{Error, Result};

/// Decoded audio: `channels` planar channels at `sample_rate`.
#[derive(Clone, Debug)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / self.sample_rate as f64
    }

    /// The mean of the channels.
    pub fn to_mono(&self) -> Vec<f32> {
        let n = self.channels.len().max(1) as f32;
        (0..self.frames()).map(|i| self.channels.iter().map(|c| c[i]).sum::<f32>() / n).collect()
    }
}

fn unreadable(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("cannot read audio file {}: {why}", path.display()))
}

/// Decodes an audio file (WAV, MP3, FLAC, Ogg/Vorbis).
pub fn read(path: &Path) -> Result<Audio> {
    let mut file = File::open(path).map_err(|e| unreadable(path, e))?;
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, 4096), &mut head).map_err(|e| unreadable(path, e))?;
    check_wav_header(&head, path)?;
    std::io::Seek::rewind(&mut file).map_err(|e| unreadable(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode(MediaSourceStream::new(Box::new(file), Default::default()), ext, path)
}

/// Decodes audio held in memory (e.g. a dataset's encoded bytes); `ext` hints the format and
/// `name` is what errors call it.
pub fn read_bytes(bytes: Vec<u8>, ext: Option<&str>, name: &Path) -> Result<Audio> {
    check_wav_header(&bytes[..bytes.len().min(4096)], name)?;
    decode(MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default()), ext, name)
}

/// A WAV whose `fmt ` chunk declares 0 Hz makes symphonia's reader panic (a zero time base):
/// refused here first, from the file's first bytes.
fn check_wav_header(head: &[u8], path: &Path) -> Result<()> {
    if head.len() < 12 || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Ok(());
    }
    let mut at = 12;
    while at + 8 <= head.len() {
        let size = u32::from_le_bytes([head[at + 4], head[at + 5], head[at + 6], head[at + 7]]) as usize;
        if &head[at..at + 4] == b"fmt " {
            if let Some(rate) = head.get(at + 12..at + 16) {
                let rate = u32::from_le_bytes([rate[0], rate[1], rate[2], rate[3]]);
                if !RATES.contains(&rate) {
                    return Err(unreadable(
                        path,
                        format!("its header gives a sample rate of {rate} Hz, outside {} to {} Hz (a damaged header?)", RATES.start(), RATES.end()),
                    ));
                }
            }
            return Ok(());
        }
        at = at.saturating_add(8).saturating_add(size).saturating_add(size & 1);
    }
    Ok(())
}

fn decode(mss: MediaSourceStream, ext: Option<&str>, path: &Path) -> Result<Audio> {
    // The container readers and codecs come from symphonia; a panic of theirs on damaged data
    // becomes this file's error rather than the end of the process.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_inner(mss, ext, path))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(unreadable(path, format!("the decoder failed on damaged data ({what})")))
        }
    }
}

fn decode_inner(mss: MediaSourceStream, ext: Option<&str>, path: &Path) -> Result<Audio> {
    let mut hint = Hint::new();
    if let Some(ext) = ext {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| unreadable(path, format!("not a supported audio format ({e})")))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| unreadable(path, "no audio track"))?;
    let track_id = track.id;
    let promised = track.codec_params.n_frames;
    let sample_rate = track.codec_params.sample_rate.ok_or_else(|| unreadable(path, "no sample rate"))?;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| unreadable(path, format!("unsupported codec ({e})")))?;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(unreadable(path, e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged frame in a long file is skipped, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(unreadable(path, e)),
        };
        let spec = *decoded.spec();
        let n = spec.channels.count();
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buf.copy_interleaved_ref(decoded);
        if channels.is_empty() {
            channels = vec![Vec::new(); n];
        }
        for frame in buf.samples().chunks(n) {
            for (c, &s) in frame.iter().enumerate() {
                channels[c].push(s);
            }
        }
    }
    if channels.is_empty() || channels[0].is_empty() {
        return Err(unreadable(path, "no audio samples decoded (empty or truncated file)"));
    }
    if !RATES.contains(&sample_rate) {
        return Err(unreadable(
            path,
            format!("its header gives a sample rate of {sample_rate} Hz, outside {} to {} Hz (a damaged header?)", RATES.start(), RATES.end()),
        ));
    }
    check_finite(&channels, path)?;
    let read = channels[0].len() as u64;
    if let Some(promised) = promised.filter(|&n| n > read) {
        eprintln!(
            "warning: {} is truncated: its header promises {promised} samples per channel, {read} were read; using the {read}",
            path.display()
        );
    }
    Ok(Audio { sample_rate, channels })
}

/// Sample rates a file may declare: beyond them a header is damaged (a rate of 3 GHz would make the
/// resampler build an enormous filter).
pub const RATES: std::ops::RangeInclusive<u32> = 1000..=768_000;

/// The largest sample magnitude accepted (full scale is 1): 80 dB above full scale, far beyond any
/// recording; a float WAV with a larger sample is damaged, and such values overflow the resampler.
pub const MAX_SAMPLE: f32 = 1e4;

/// Refuses NaN or infinite samples (a float WAV can hold them) and absurdly large ones: they would
/// turn into silent codes or poison every residual downstream. Names the first one.
fn check_finite(channels: &[Vec<f32>], path: &Path) -> Result<()> {
    for (c, samples) in channels.iter().enumerate() {
        if let Some(i) = samples.iter().position(|s| !s.is_finite() || s.abs() > MAX_SAMPLE) {
            let which = if channels.len() > 1 { format!("sample {i} of channel {c}") } else { format!("sample {i}") };
            let why = if samples[i].is_finite() {
                format!("{which} is {:e}, beyond any recording's range (|x| <= {MAX_SAMPLE:e}; full scale is 1)", samples[i])
            } else {
                format!("{which} is {}; only finite samples can be used", samples[i])
            };
            return Err(unreadable(path, why));
        }
    }
    Ok(())
}

/// Resamples one channel from `from` Hz to `to` Hz (FFT resampler, anti-aliased), keeping the
/// duration: the output has `round(len * to / from)` samples, aligned with the input.
pub fn resample(signal: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == to {
        return Ok(signal.to_vec());
    }
    if from == 0 || to == 0 {
        return Err(Error::Input(format!("cannot resample from {from} Hz to {to} Hz")));
    }
    let chunk = 1024;
    let want = ((signal.len() as u64 * to as u64 + from as u64 / 2) / from as u64) as usize;
    let setup = |e: rubato::ResamplerConstructionError| Error::Input(format!("resampler {from} -> {to} Hz: {e}"));
    // rubato's FFT resampler unwraps an inverse-FFT error that some rate pairs hit (e.g. 44288 Hz
    // -> 32000 Hz on some inputs); those take its sinc resampler instead.
    let fft = std::panic::catch_unwind(|| -> Result<Vec<f32>> {
        let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1).map_err(setup)?;
        run_resampler(&mut r, signal, want)
    });
    match fft {
        Ok(result) => result,
        Err(_) => {
            use rubato::{SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction};
            let params = SincInterpolationParameters {
                sinc_len: 256,
                f_cutoff: 0.95,
                interpolation: SincInterpolationType::Linear,
                oversampling_factor: 256,
                window: WindowFunction::BlackmanHarris2,
            };
            let mut r = SincFixedIn::<f32>::new(to as f64 / from as f64, 1.0, params, chunk, 1).map_err(setup)?;
            run_resampler(&mut r, signal, want)
        }
    }
}

/// Feeds `signal` through `r` and returns `want` samples aligned with the input.
fn run_resampler<R: Resampler<f32>>(r: &mut R, signal: &[f32], want: usize) -> Result<Vec<f32>> {
    let delay = r.output_delay();
    let mut out = Vec::with_capacity(want + delay + 1024);
    let mut pos = 0;
    let err = |e: rubato::ResampleError| Error::Input(format!("resampling failed: {e}"));
    while out.len() < want + delay {
        let need = r.input_frames_next();
        if pos + need <= signal.len() {
            let block = r.process(&[&signal[pos..pos + need]], None).map_err(err)?;
            out.extend_from_slice(&block[0]);
            pos += need;
        } else {
            let rest: &[f32] = &signal[pos.min(signal.len())..];
            let block = if rest.is_empty() { r.process_partial::<&[f32]>(None, None) } else { r.process_partial(Some(&[rest]), None) }
                .map_err(err)?;
            out.extend_from_slice(&block[0]);
            pos = signal.len();
        }
    }
    Ok(out[delay..delay + want].to_vec())
}

/// Reads `path`, mixes to mono, resamples to `rate`, and keeps `duration_s` seconds from `start_s`
/// (to the end when `None`).
pub fn load_mono(path: &Path, rate: u32, start_s: f64, duration_s: Option<f64>) -> Result<Vec<f32>> {
    window(&read(path)?, path, rate, start_s, duration_s)
}

/// Mixes `audio` to mono, resamples it to `rate`, and keeps `duration_s` seconds from `start_s`.
pub fn window(audio: &Audio, path: &Path, rate: u32, start_s: f64, duration_s: Option<f64>) -> Result<Vec<f32>> {
    // Written so that NaN fails too.
    if !(start_s >= 0.0 && start_s.is_finite()) || duration_s.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        return Err(Error::Input(format!(
            "the audio window of {} needs a finite start >= 0 and a finite duration > 0 (got start {start_s}, duration {})",
            path.display(),
            duration_s.map_or("to the end".into(), |d| d.to_string())
        )));
    }
    if start_s >= audio.duration_s() {
        return Err(Error::Input(format!(
            "{} lasts {:.2} s, shorter than the requested start {start_s} s",
            path.display(),
            audio.duration_s()
        )));
    }
    let mono = resample(&audio.to_mono(), audio.sample_rate, rate)?;
    let start = ((start_s * rate as f64).round() as usize).min(mono.len());
    let end = match duration_s {
        Some(d) => start.saturating_add((d * rate as f64).round() as usize).min(mono.len()),
        None => mono.len(),
    };
    Ok(mono[start..end].to_vec())
}

/// Writes mono float samples as a 32-bit float WAV, atomically.
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) -> Result<()> {
    crate::store::write_atomic_with(path, wav_writer(samples, rate, WavFormat::Float32))
}

/// How a WAV stores its samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WavFormat {
    /// 32-bit float, the model's samples exactly (WAVE_FORMAT_EXTENSIBLE header; soundfile, scipy,
    /// librosa and audio editors read it, Python's `wave` module does not).
    #[default]
    Float32,
    /// 16-bit PCM with a plain header (any reader, Python's `wave` included): samples clipped to
    /// [-1, 1] and rounded to 1/32767.
    Pcm16,
}

/// The bytes of a mono WAV, for [`crate::store::Staged::stage_with`].
pub fn wav_writer(samples: &[f32], rate: u32, format: WavFormat) -> impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + '_ {
    let (bits, sample_format) = match format {
        WavFormat::Float32 => (32, hound::SampleFormat::Float),
        WavFormat::Pcm16 => (16, hound::SampleFormat::Int),
    };
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: bits, sample_format };
    move |file| {
        let mut w = hound::WavWriter::new(std::io::BufWriter::new(file), spec).map_err(std::io::Error::other)?;
        for &s in samples {
            match format {
                WavFormat::Float32 => w.write_sample(s),
                WavFormat::Pcm16 => w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16),
            }
            .map_err(std::io::Error::other)?;
        }
        w.finalize().map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize).map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5).collect()
    }

    #[test]
    fn pcm16_wavs_have_a_plain_header_and_rounded_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let x = [0.0f32, 0.5, -0.25, 1.5, -2.0, 1e-5];
        crate::store::write_atomic_with(&path, wav_writer(&x, 16000, WavFormat::Pcm16)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // fmt chunk of 16 bytes, format tag 1 (PCM), 16 bits: what Python's `wave` reads.
        assert_eq!((&bytes[12..16], u32::from_le_bytes(bytes[16..20].try_into().unwrap())), (&b"fmt "[..], 16));
        assert_eq!((u16::from_le_bytes([bytes[20], bytes[21]]), u16::from_le_bytes([bytes[34], bytes[35]])), (1, 16));
        let got: Vec<i16> = hound::WavReader::open(&path).unwrap().samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(got, [0, 16384, -8192, 32767, -32767, 0]);
    }

    #[test]
    fn resampling_keeps_length_and_tone() {
        for from in [8000u32, 44100, 96000] {
            let x = sine(440.0, from, 1.0);
            let y = resample(&x, from, 32000).unwrap();
            assert_eq!(y.len(), 32000, "from {from}");
            let want = sine(440.0, 32000, 1.0);
            // Away from the edges the resampled tone matches the tone sampled at 32 kHz.
            let err: f32 = y[2000..30000].iter().zip(&want[2000..30000]).map(|(a, b)| (a - b).powi(2)).sum();
            let energy: f32 = want[2000..30000].iter().map(|b| b * b).sum();
            let rel = (err / energy).sqrt();
            assert!(rel < 0.03, "from {from}: relative rms error {rel}");
        }
    }

    #[test]
    fn wav_round_trip_and_stereo_mixdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let spec = hound::WavSpec { channels: 2, sample_rate: 16000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..16000 {
            w.write_sample(((i % 100) as i16) * 100).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let a = read(&path).unwrap();
        assert_eq!((a.sample_rate, a.channels.len(), a.frames()), (16000, 2, 16000));
        let mono = load_mono(&path, 32000, 0.25, Some(0.5)).unwrap();
        assert_eq!(mono.len(), 16000);
        let out = dir.path().join("b.wav");
        write_wav(&out, &mono, 32000).unwrap();
        let back = read(&out).unwrap();
        assert_eq!(back.channels[0], mono);
    }

    #[test]
    fn unreadable_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"RIFF....WAVEfmt garbage").unwrap();
        assert!(read(&junk).unwrap_err().to_string().contains("cannot read audio file"));
        assert!(read(&dir.path().join("missing.mp3")).is_err());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let out = dir.path().join("file/x.wav");
        assert!(write_wav(&out, &[0.0; 10], 32000).is_err());
        assert!(!out.exists());
    }

    #[test]
    fn a_sample_that_overflows_the_fft_resampler_is_refused_and_resampling_does_not_panic() {
        // Found by tests/fuzz.rs: rubato's FFT resampler panics on this input (600 float samples,
        // one of them with an exponent bit flipped, about 1e38, 44288 Hz -> 32000 Hz). Decoding
        // refuses such a sample; resampling on its own must still not panic.
        let mut x: Vec<f32> = (0..600).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        x[310] = f32::from_bits(x[310].to_bits() ^ (0x41 << 24));
        assert!(x[310].is_finite() && x[310].abs() > 1e30);
        let y = resample(&x, 44288, 32000).unwrap();
        assert_eq!(y.len(), (600.0f64 * 32000.0 / 44288.0).round() as usize);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loud.wav");
        write_wav(&path, &x, 44288).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("loud.wav") && e.contains("sample 310") && e.contains("beyond"), "{e}");
    }

    #[test]
    fn non_finite_samples_are_refused_with_file_and_index() {
        let dir = tempfile::tempdir().unwrap();
        for (bad, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
            let path = dir.path().join("bad.wav");
            let mut x = vec![0.25f32; 100];
            x[37] = bad;
            write_wav(&path, &x, 16000).unwrap();
            let e = read(&path).unwrap_err().to_string();
            assert!(e.contains("bad.wav") && e.contains("sample 37") && e.contains(word), "{e}");
        }
        let path = dir.path().join("ok.wav");
        write_wav(&path, &[0.1; 1000], 16000).unwrap();
        let audio = read(&path).unwrap();
        for (start, dur) in [(f64::NAN, None), (f64::INFINITY, None), (0.0, Some(f64::NAN)), (0.0, Some(f64::INFINITY)), (-1.0, None)] {
            let e = window(&audio, &path, 16000, start, dur).unwrap_err().to_string();
            assert!(e.contains("finite start >= 0"), "{e}");
        }
    }
}
