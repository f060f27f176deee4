//! Results on disk: every write goes to a temporary file beside the target and is renamed into
//! place, so a killed job never leaves a half-written file under the final name.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Temporary files this process is writing (removed on Ctrl-C, see [`remove_temporaries_and_exit`]).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Folders whose stale temporaries were already cleaned by this process.
static CLEANED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The temporary name of `path` for this process: `.NAME.tmp-PID` beside it.
/// `.NAME.N.tmp-PID`: unique to the write (`N` counts this process's temporaries), so threads
/// writing one path at once do not share a temporary; the process id last, for the stale cleaner.
fn temporary(path: &Path) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    folder_of(path).join(format!(".{name}.{n}.tmp-{}", std::process::id()))
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Removes `.NAME.tmp-PID` files in `dir` whose process no longer runs (left by a killed run); once
/// per folder and process, before this process's first write there. Returns how many it removed.
pub fn clean_stale_temporaries(dir: &Path) -> usize {
    {
        let mut cleaned = CLEANED.lock().unwrap_or_else(|e| e.into_inner());
        if !cleaned.get_or_insert_with(HashSet::new).insert(dir.to_path_buf()) {
            return 0;
        }
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).and_then(|(_, pid)| pid.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && !process_alive(pid) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn process_alive(pid: i32) -> bool {
    // kill(pid, 0) delivers nothing; it fails with ESRCH when no such process exists.
    // SAFETY: `kill` with signal 0 only checks that `pid` exists and may be signalled; it takes
    // plain integers, touches no memory of ours and sends nothing. `pid > 0` is checked first, so
    // it never addresses a process group (0 or negative).
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
}

/// Removes every temporary file this process is writing and exits with status 130 (as a shell
/// reports a run ended by Ctrl-C). Holds the registry's lock to the end, so no new temporary is
/// created meanwhile; a write in progress loses its file and never renames it into place.
pub fn remove_temporaries_and_exit() -> ! {
    let guard = live();
    // Files first, then the folders a write created for them (deepest last in the list): a folder
    // is removed only when empty, so one that received other files stays.
    for tmp in guard.iter() {
        let _ = std::fs::remove_file(tmp);
    }
    for dir in guard.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    eprintln!("interrupted: no partial output was left (a resumable job goes on from its finished parts when run again)");
    // _exit: no static destructors while onnxruntime's threads may still run.
    // SAFETY: `_exit` ends the process at once, running no destructors or atexit handlers; nothing
    // is left half-done that memory safety depends on (the temporaries were removed above and the
    // registry's lock is held to the end), and it never returns.
    unsafe { libc::_exit(130) }
}

/// Checks, before any long work, that `path` can be written: the nearest existing folder at or
/// above its folder (or, with `create_folder`, at or above `path` itself) takes a new file, no file
/// stands where a folder must be created, and `path` is not a folder. Missing folders are created
/// when the output is written ([`Staged::stage_with`]). Leaves nothing behind.
pub fn check_writable(path: &Path, create_folder: bool) -> Result<()> {
    if path.is_dir() && !create_folder {
        return Err(Error::Input(format!("{} is a folder; give a file name", path.display())));
    }
    let mut dir = if create_folder { path } else { folder_of(path) };
    while !dir.is_dir() {
        if dir.exists() {
            return Err(Error::Input(format!("{} is a file, not a folder", dir.display())));
        }
        dir = folder_of(dir);
    }
    let probe = dir.join(format!(".write-check.tmp-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::Input(format!("cannot write {}: {e} (in {})", path.display(), dir.display()))),
    }
}

/// Output files written to temporaries first and renamed into place together by [`Staged::commit`],
/// so a command that fails part-way leaves none of its outputs (dropping uncommitted files removes
/// their temporaries).
#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    /// Folders created for the outputs, outermost first: removed again (when empty) if the outputs
    /// are dropped uncommitted or the run is interrupted.
    folders: Vec<PathBuf>,
}

impl Staged {
    pub fn new() -> Staged {
        Staged::default()
    }

    /// Creates `dir` and any missing folder above it, recording each one it created.
    fn create_folder(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_path_buf());
            d = folder_of(d);
        }
        for d in missing.into_iter().rev() {
            let mut live = live();
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                // Made meanwhile by another writer: theirs, not recorded as this write's.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => continue,
                Err(e) => return Err(e),
            }
            live.push(d.clone());
            self.folders.push(d);
        }
        Ok(())
    }

    /// Writes `path`'s content (by `fill`) to its temporary and fsyncs it.
    pub fn stage_with(&mut self, path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
        let dir = folder_of(path);
        self.create_folder(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        clean_stale_temporaries(dir);
        let tmp = temporary(path);
        let result = (|| {
            let mut file = {
                let mut live = live();
                let file = std::fs::File::create(&tmp)?;
                live.push(tmp.clone());
                file
            };
            fill(&mut file)?;
            file.sync_all()
        })();
        match result {
            Ok(()) => {
                self.files.push((tmp, path.to_path_buf()));
                Ok(())
            }
            Err(source) => {
                forget(&tmp);
                Err(Error::Io { path: path.to_path_buf(), source })
            }
        }
    }

    pub fn stage(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.stage_with(path, |w| w.write_all(bytes))
    }

    /// Renames every staged file into place.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in std::mem::take(&mut self.files) {
            let renamed = std::fs::rename(&tmp, &path);
            live().retain(|p| *p != tmp);
            renamed.map_err(|source| {
                let _ = std::fs::remove_file(&tmp);
                Error::Io { path: path.clone(), source }
            })?;
        }
        // The folders now hold outputs: they stay.
        let folders = std::mem::take(&mut self.folders);
        live().retain(|p| !folders.contains(p));
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in self.files.drain(..) {
            forget(&tmp);
        }
        for dir in self.folders.drain(..).rev() {
            let _ = std::fs::remove_dir(&dir);
            live().retain(|p| *p != dir);
        }
    }
}

/// Removes temporary `tmp` and its registration.
fn forget(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
    live().retain(|p| p != tmp);
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically unless it exists: of several processes writing it at once exactly one
/// wins (the finished file is hard-linked into place, which fails when the name is taken). Returns
/// whether this one wrote it.
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    let mut staged = Staged::new();
    staged.stage_with(path, |w| w.write_all(bytes))?;
    let (tmp, _) = staged.files.pop().expect("one staged file");
    let linked = std::fs::hard_link(&tmp, path);
    forget(&tmp);
    match linked {
        Ok(()) => {
            staged.commit()?; // nothing left to rename: keeps the folders it created
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

/// Like [`write_atomic`], with the content produced by `fill`.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let mut staged = Staged::new();
    staged.stage_with(path, fill)?;
    staged.commit()
}

/// The `.npy` bytes of an array, for [`Staged::stage_with`].
pub fn npy_writer<'a, A, S, D>(array: &'a ndarray::ArrayBase<S, D>) -> impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + 'a
where
    A: ndarray_npy::WritableElement,
    S: ndarray::Data<Elem = A>,
    D: ndarray::Dimension,
{
    use ndarray_npy::WriteNpyExt;
    move |file| {
        let mut w = std::io::BufWriter::new(file);
        array.write_npy(&mut w).map_err(std::io::Error::other)?;
        w.flush()
    }
}

/// Writes an array as `.npy` (readable by numpy) atomically.
pub fn write_npy<A, S, D>(path: &Path, array: &ndarray::ArrayBase<S, D>) -> Result<()>
where
    A: ndarray_npy::WritableElement,
    S: ndarray::Data<Elem = A>,
    D: ndarray::Dimension,
{
    write_atomic_with(path, npy_writer(array))
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
