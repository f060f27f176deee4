//! Results on disk: every write goes to a temporary file beside the target and is renamed into
//! place, so a killed job never leaves a half-written file under the final name.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by `fill`.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("folder {} does not exist", dir.display())),
        });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io { path: path.to_path_buf(), source });
    }
    Ok(())
}

/// Writes an array as `.npy` (readable by numpy) atomically.
pub fn write_npy<A, S, D>(path: &Path, array: &ndarray::ArrayBase<S, D>) -> Result<()>
where
    A: ndarray_npy::WritableElement,
    S: ndarray::Data<Elem = A>,
    D: ndarray::Dimension,
{
    use ndarray_npy::WriteNpyExt;
    write_atomic_with(path, |file| {
        let mut w = std::io::BufWriter::new(file);
        array.write_npy(&mut w).map_err(std::io::Error::other)?;
        w.flush()
    })
}

/// Reads a `.npy` file the user gave or an earlier step wrote, as `A` with `D`'s number of axes.
/// `what` names the content (`"probe weights [layers, classes, d_model]"`); errors name the file and
/// say what was expected and what was found, or "not a .npy file" / "truncated".
pub fn read_npy<A, D>(path: &Path, what: &str) -> Result<ndarray::Array<A, D>>
where
    A: musicgen_interp_sdk::npy::Element,
    D: ndarray::Dimension,
{
    musicgen_interp_sdk::npy::read(path, what).map_err(Error::Input)
}
