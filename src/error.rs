//! One error type for the library. Every message says what is wrong and, where there is one, how to fix it.

use std::path::PathBuf;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("onnxruntime library not found ({searched}); run `bash scripts/setup.sh` or set MUSICGEN_INTERP_ORT_LIB to a libonnxruntime.so")]
    RuntimeLibraryMissing { searched: String },

    #[error("could not load onnxruntime from {path}: {reason}; run `bash scripts/setup.sh` or point MUSICGEN_INTERP_ORT_LIB at a working libonnxruntime.so")]
    RuntimeLibraryLoad { path: PathBuf, reason: String },

    /// A runtime failure already described (kept as text so it can be reported again).
    #[error("{0}")]
    Runtime(String),

    #[error("the CUDA execution provider could not be used: {reason}; install the onnxruntime-gpu runtime (`bash scripts/setup.sh --gpu`) or use --device cpu")]
    CudaUnavailable { reason: String },

    #[error("{} is not a model bundle (no manifest.json); export one with `.venv/bin/python onnx/export.py --preset tiny --random-weights --out DIR` or `--model facebook/musicgen-small --out DIR`", path.display())]
    NotABundle { path: PathBuf },

    #[error("{path}: {reason}; re-export the bundle with onnx/export.py", path = path.display())]
    BadManifest { path: PathBuf, reason: String },

    #[error("bundle {bundle}: {reason}", bundle = bundle.display())]
    BundleMismatch { bundle: PathBuf, reason: String },

    #[error("bundle file {} is missing (listed in manifest.json); re-export the bundle with onnx/export.py", path.display())]
    MissingFile { path: PathBuf },

    #[error("bundle file {} is corrupt: sha256 {actual} but manifest.json says {expected}; re-export the bundle or restore the file", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },

    #[error("{context}: {source}")]
    Ort { context: String, source: ort::Error },

    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    #[error("invalid input: {0}")]
    Input(String),

    /// A run config that does not parse or holds a wrong value, with the place in the file where
    /// the YAML parser knows it.
    #[error("config {}{}: {reason}", path.display(), at.map_or(String::new(), |(line, column)| format!(" (line {line}, column {column})")))]
    Config { path: PathBuf, at: Option<(usize, usize)>, reason: String },

    #[error("plugin {plugin}: {reason}")]
    Plugin { plugin: String, reason: String },

    #[error("hook {hook} failed: {reason}")]
    Hook { hook: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A file this tool wrote (a run's plan, a part's record, cached means' metadata) that no longer
    /// reads back.
    #[error("{} is damaged ({reason}); delete it and run again to make it anew", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// Exporting a checkpoint into a bundle could not run or failed (`onnx/export.py`).
    #[error("exporter: {0}")]
    Exporter(String),

    /// A broken invariant of the toolkit itself, not of the user's input: a bug to report.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

impl From<musicgen_interp_sdk::NameError> for Error {
    /// A hook point, site or component name that does not parse: the user's input.
    fn from(e: musicgen_interp_sdk::NameError) -> Error {
        Error::Input(e.0)
    }
}

impl Error {
    pub(crate) fn ort(context: impl Into<String>) -> impl FnOnce(ort::Error) -> Error {
        let context = context.into();
        move |source| Error::Ort { context, source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

impl From<ort::Error> for Error {
    fn from(source: ort::Error) -> Self {
        Error::Ort { context: "onnxruntime".into(), source }
    }
}

impl From<ort::Error<ort::session::builder::SessionBuilder>> for Error {
    fn from(e: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        Error::from(ort::Error::<()>::from(e))
    }
}

/// `value` if it is a finite number, else an error naming the setting `what`. NaN and infinities
/// pass range checks such as `x < 0.0` unnoticed, so every numeric setting goes through here (the
/// CLI's value parsers and the YAML configs alike).
pub fn finite(what: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::Input(format!("{what} is {value}: give a finite number")))
    }
}

/// An error's message followed by each of its sources' (`dlopen failed: libfoo.so: invalid ELF
/// header`), skipping a source whose text the message already holds.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
