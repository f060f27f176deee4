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
    let file = File::open(path).map_err(|e| unreadable(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode(MediaSourceStream::new(Box::new(file), Default::default()), ext, path)
}

/// Decodes audio held in memory (e.g. a dataset's encoded bytes); `ext` hints the format and
/// `name` is what errors call it.
pub fn read_bytes(bytes: Vec<u8>, ext: Option<&str>, name: &Path) -> Result<Audio> {
    decode(MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default()), ext, name)
}

fn decode(mss: MediaSourceStream, ext: Option<&str>, path: &Path) -> Result<Audio> {
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
    if sample_rate == 0 {
        return Err(unreadable(path, "its header gives a sample rate of 0 Hz"));
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

/// Refuses NaN or infinite samples (a float WAV can hold them): they would turn into silent codes
/// or poison every residual downstream. Names the first one.
fn check_finite(channels: &[Vec<f32>], path: &Path) -> Result<()> {
    for (c, samples) in channels.iter().enumerate() {
        if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
            let which = if channels.len() > 1 { format!("sample {i} of channel {c}") } else { format!("sample {i}") };
            return Err(unreadable(path, format!("{which} is {}; only finite samples can be used", samples[i])));
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
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1)
        .map_err(|e| Error::Input(format!("resampler {from} -> {to} Hz: {e}")))?;
    let delay = r.output_delay();
    let want = ((signal.len() as u64 * to as u64 + from as u64 / 2) / from as u64) as usize;
    let mut out = Vec::with_capacity(want + delay + chunk);
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
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    crate::store::write_atomic_with(path, |file| {
        let mut w = hound::WavWriter::new(std::io::BufWriter::new(file), spec).map_err(std::io::Error::other)?;
        for &s in samples {
            w.write_sample(s).map_err(std::io::Error::other)?;
        }
        w.finalize().map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize).map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5).collect()
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
        let out = dir.path().join("missing-folder/x.wav");
        assert!(write_wav(&out, &[0.0; 10], 32000).is_err());
        assert!(!out.exists());
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
