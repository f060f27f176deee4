//! A bundle on disk: the manifest plus its files, checked before any graph is loaded.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{FileEntry, Manifest};
use crate::error::{Error, Result};

/// How thoroughly [`Bundle::open`] checks file contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verify {
    /// Hash every file on every open.
    Full,
    /// Hash a file once; later opens trust it while its size and modification time are unchanged
    /// (recorded in `.verified.json` beside the manifest). A full-size bundle hashes in seconds.
    #[default]
    Cached,
    /// Check that files exist with the right size only.
    SizeOnly,
}

/// An opened, checked bundle folder.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

const STAMP: &str = ".verified.json";

#[derive(Serialize, Deserialize, Default)]
struct Stamp {
    files: BTreeMap<String, StampEntry>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone)]
struct StampEntry {
    bytes: u64,
    modified_ns: u128,
    sha256: String,
}

impl Bundle {
    /// Reads `DIR/manifest.json` and checks every listed file (presence, size, sha256).
    pub fn open(dir: impl AsRef<Path>, verify: Verify) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join("manifest.json");
        if !manifest_path.is_file() {
            return Err(Error::NotABundle { path: dir });
        }
        let manifest = Manifest::load(&manifest_path)?;
        let bundle = Bundle { dir, manifest };
        bundle.verify_files(verify)?;
        Ok(bundle)
    }

    /// The path of a file named in the manifest.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn verify_files(&self, verify: Verify) -> Result<()> {
        let stamp_path = self.dir.join(STAMP);
        let old: Stamp = std::fs::read(&stamp_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut new = Stamp::default();
        for (name, entry) in &self.manifest.files {
            let path = self.path(name);
            let meta = std::fs::metadata(&path).map_err(|_| Error::MissingFile { path: path.clone() })?;
            if meta.len() != entry.bytes {
                return Err(Error::Checksum {
                    path,
                    expected: format!("{} ({} bytes)", entry.sha256, entry.bytes),
                    actual: format!("a file of {} bytes", meta.len()),
                });
            }
            if verify == Verify::SizeOnly {
                continue;
            }
            let modified_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let known = StampEntry { bytes: meta.len(), modified_ns, sha256: entry.sha256.clone() };
            if verify == Verify::Cached && old.files.get(name) == Some(&known) {
                new.files.insert(name.clone(), known);
                continue;
            }
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(Error::Checksum { path, expected: entry.sha256.clone(), actual });
            }
            new.files.insert(name.clone(), known);
        }
        if verify == Verify::Cached && new.files.len() == self.manifest.files.len() {
            // Best effort: a read-only bundle simply hashes again next time.
            let _ = crate::store::write_atomic(&stamp_path, &serde_json::to_vec_pretty(&new).unwrap_or_default());
        }
        Ok(())
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The manifest entry a file would have.
pub fn file_entry(path: &Path) -> Result<FileEntry> {
    let bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
    Ok(FileEntry { sha256: sha256_file(path)?, bytes })
}
