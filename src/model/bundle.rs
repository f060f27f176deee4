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
    /// How its files were checked on this open.
    pub checked: Checked,
}

/// How the files of a bundle were checked when it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Files whose sha256 was computed now and matched the manifest.
    pub hashed: usize,
    /// Files trusted because an earlier open hashed them and their size and modification date
    /// are unchanged (a change that keeps both goes unseen: `--verify-all` hashes them again).
    pub trusted: usize,
    /// Files checked for size only ([`Verify::SizeOnly`]).
    pub size_only: usize,
}

impl Checked {
    /// For a summary line: `checksums verified now`, or how many were trusted from an earlier check.
    pub fn describe(&self) -> String {
        let total = self.hashed + self.trusted + self.size_only;
        if self.trusted == 0 && self.size_only == 0 {
            return "checksums verified now".into();
        }
        let mut parts = Vec::new();
        if self.hashed > 0 {
            parts.push(format!("{} hashed now", self.hashed));
        }
        if self.trusted > 0 {
            let which = if self.trusted == total { "checksums verified earlier".to_string() } else { format!("{} verified earlier", self.trusted) };
            parts.push(format!("{which} (size and date unchanged; --verify-all hashes them again)"));
        }
        if self.size_only > 0 {
            parts.push(format!("{} checked for size only", self.size_only));
        }
        parts.join(", ")
    }
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
        let mut bundle = Bundle { dir, manifest, checked: Checked::default() };
        bundle.checked = bundle.verify_files(verify)?;
        Ok(bundle)
    }

    /// The path of a file named in the manifest.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn verify_files(&self, verify: Verify) -> Result<Checked> {
        let mut checked = Checked::default();
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
                checked.size_only += 1;
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
                checked.trusted += 1;
                continue;
            }
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(Error::Checksum { path, expected: entry.sha256.clone(), actual });
            }
            new.files.insert(name.clone(), known);
            checked.hashed += 1;
        }
        if verify == Verify::Cached && new.files.len() == self.manifest.files.len() {
            // Best effort: a read-only bundle simply hashes again next time.
            let _ = crate::store::write_atomic(&stamp_path, &serde_json::to_vec_pretty(&new).unwrap_or_default());
        }
        Ok(checked)
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
