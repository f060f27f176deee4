//! CUDA and cuDNN from the Python environment, found without `LD_LIBRARY_PATH`.
//!
//! `scripts/setup.sh --gpu` installs onnxruntime-gpu with NVIDIA's CUDA and cuDNN wheels, which put
//! their shared libraries under `site-packages/nvidia/*/lib/`, a folder the dynamic loader does not
//! search. onnxruntime's CUDA provider asks for them by name (`libcublasLt.so.12`, `libcudnn.so.9`,
//! ...); once a library of that name is loaded into the process with `RTLD_GLOBAL`, the loader hands
//! out the loaded one. So before the CUDA provider is first registered, every library in those
//! folders is loaded, in whatever order their own dependencies allow (each pass loads what it can,
//! until a pass loads nothing new).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The NVIDIA wheels' library files of the `site-packages` that holds `ort_library`, sorted; empty
/// when there is none (a system CUDA then comes from the loader's usual paths).
pub fn nvidia_libraries(ort_library: &Path) -> Vec<PathBuf> {
    let Some(site) = ort_library.ancestors().find(|a| a.join("nvidia").is_dir()) else { return Vec::new() };
    let mut found = Vec::new();
    let Ok(packages) = std::fs::read_dir(site.join("nvidia")) else { return found };
    for package in packages.flatten() {
        let Ok(files) = std::fs::read_dir(package.path().join("lib")) else { continue };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with("lib") && name.contains(".so") && file.path().is_file() {
                found.push(file.path());
            }
        }
    }
    found.sort();
    found
}

/// What [`preload`] did: libraries loaded, and those that would not load (with the loader's reason).
#[derive(Debug, Default)]
pub struct Preloaded {
    pub loaded: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
}

/// Loads the NVIDIA wheels' libraries beside `ort_library` into the process (once; later calls
/// return the first call's result). They stay loaded for the life of the process.
pub fn preload(ort_library: &Path) -> &'static Preloaded {
    static DONE: OnceLock<Preloaded> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut pending = nvidia_libraries(ort_library);
        let mut done = Preloaded::default();
        loop {
            let before = done.loaded.len();
            let mut failed = Vec::new();
            for path in pending {
                match load_global(&path) {
                    Ok(()) => done.loaded.push(path),
                    Err(reason) => failed.push((path, reason)),
                }
            }
            // Stop when everything loaded, or when a pass loaded nothing new (what is left needs a
            // library that is not there: the provider's own registration will say which).
            if failed.is_empty() || done.loaded.len() == before {
                done.failed = failed;
                return done;
            }
            pending = failed.into_iter().map(|(p, _)| p).collect();
        }
    })
}

#[cfg(unix)]
fn load_global(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA and cuDNN
    // runtime libraries from the environment's own wheels, whose initialisers only register their
    // symbols. The handle is leaked on purpose: the libraries must stay loaded for onnxruntime.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    std::mem::forget(library);
    Ok(())
}

#[cfg(not(unix))]
fn load_global(_path: &Path) -> Result<(), String> {
    Err("preloading CUDA libraries is implemented for Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nvidia_wheels_beside_the_onnxruntime_library() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib/python3.11/site-packages");
        let capi = site.join("onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        let ort = capi.join("libonnxruntime.so.1.31.1");
        std::fs::write(&ort, b"").unwrap();
        assert!(nvidia_libraries(&ort).is_empty(), "no nvidia folder: nothing to load");
        for (package, file) in [("cublas", "libcublasLt.so.12"), ("cublas", "libcublas.so.12"), ("cudnn", "libcudnn.so.9"), ("cudnn", "include.h")] {
            let lib = site.join("nvidia").join(package).join("lib");
            std::fs::create_dir_all(&lib).unwrap();
            std::fs::write(lib.join(file), b"not a library").unwrap();
        }
        let found: Vec<String> = nvidia_libraries(&ort).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(found, ["libcublas.so.12", "libcublasLt.so.12", "libcudnn.so.9"]);
        // Files that are not libraries fail to load with the loader's reason; none is counted loaded.
        for path in nvidia_libraries(&ort) {
            let err = load_global(&path).unwrap_err();
            assert!(!err.is_empty(), "{}", path.display());
        }
    }
}
