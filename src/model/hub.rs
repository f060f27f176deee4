//! `--model` accepts a bundle folder, a transformers checkpoint folder, or a Hugging Face hub id. A
//! checkpoint or hub id is exported (by `onnx/export.py`) into a bundle under the models folder and
//! reused from then on, but only while it still matches what it was made from: the export is keyed by
//! its source ([`SourceKey`]: the checkpoint's absolute path and a fingerprint of its files, or the hub
//! id and the cached revision), the key is recorded in the bundle's manifest (`source.key`), and a
//! bundle whose key differs is exported again. A hub id found in the Hugging Face cache (looked up
//! with `hf-hub`) is exported offline; one that is not cached is fetched through the same cache, and
//! refused at once when the hub cannot be reached.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where exported bundles go: `$MUSICGEN_INTERP_MODELS`, else `models` in the working directory.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MUSICGEN_INTERP_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"))
}

/// `owner/name`, as the hub spells repository ids.
pub fn is_hub_id(spec: &str) -> bool {
    let ok = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    matches!(spec.split_once('/'), Some((owner, name)) if ok(owner) && ok(name) && !owner.starts_with('.'))
}

/// What an exported bundle was made from, as a short hex string: for a checkpoint folder, its
/// absolute path and every file's name, size and modification time (so re-saved weights or another
/// folder of the same name give another key); for a hub id, the id and the revision the cache's
/// `refs/main` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceKey(pub String);

impl SourceKey {
    /// The key of checkpoint folder `dir` (which holds `config.json`).
    pub fn of_checkpoint(dir: &Path) -> Result<SourceKey> {
        let abs = dir.canonicalize().map_err(Error::io(dir))?;
        let mut entries: Vec<(String, u64, u128)> = Vec::new();
        for entry in std::fs::read_dir(&abs).map_err(Error::io(&abs))?.flatten() {
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            entries.push((entry.file_name().to_string_lossy().into_owned(), meta.len(), mtime));
        }
        entries.sort();
        let mut h = Sha256::new();
        h.update(b"checkpoint\0");
        h.update(abs.to_string_lossy().as_bytes());
        for (name, len, mtime) in &entries {
            h.update(format!("\0{name}\0{len}\0{mtime}").as_bytes());
        }
        // The config's own bytes too: a config edited within the same second and size is another model.
        let config = abs.join("config.json");
        h.update(&std::fs::read(&config).map_err(Error::io(&config))?);
        Ok(SourceKey(hex16(&h.finalize())))
    }

    /// The key of hub id `id` at `revision` (a commit; `None` when the cache has no `refs/main`).
    pub fn of_hub(id: &str, revision: Option<&str>) -> SourceKey {
        let mut h = Sha256::new();
        h.update(format!("hub\0{id}\0{}", revision.unwrap_or("")).as_bytes());
        SourceKey(hex16(&h.finalize()))
    }
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The bundle folder for `spec`, exporting it first when it is a checkpoint folder or a hub id that
/// has no matching bundle in `models` yet.
pub fn resolve(spec: &str, models: &Path) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.join("manifest.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("config.json").is_file() {
        let key = SourceKey::of_checkpoint(path)?;
        let abs = path.canonicalize().map_err(Error::io(path))?;
        let name = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
        // The folder names the checkpoint's folder and its path's hash, so two checkpoints in
        // folders of the same name (`tiny/hf`, `small/hf`) never share a bundle.
        let place = hex16(&Sha256::digest(abs.to_string_lossy().as_bytes()))[..8].to_string();
        let out = models.join(format!("{name}-{place}"));
        return export_keyed(spec, &out, &key, Origin::Checkpoint);
    }
    if path.is_file() {
        return Err(Error::Input(format!(
            "--model {spec} is a file; give a bundle folder (with manifest.json), a checkpoint folder (with config.json) or a hub id"
        )));
    }
    if path.is_dir() {
        return Err(Error::NotABundle { path: path.to_path_buf() });
    }
    if !is_hub_id(spec) {
        return Err(Error::Input(format!("--model {spec}: no such bundle or checkpoint folder")));
    }
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(spec.to_string());
    let cached = repo.get("config.json").is_some();
    let revision = read_ref(&cache, spec);
    let out = models.join(spec.replace('/', "--"));
    // An export of this id is reused while it is of the revision the cache holds now (the exporter
    // records the commit it loaded), or of any revision when the cache holds none.
    if let Some(existing) = existing_key(&out) {
        if existing.kind == "hub" && existing.model_id == spec && (revision.is_none() || existing.revision == revision) {
            return Ok(out);
        }
    }
    if !cached {
        if let Some(why) = offline_reason() {
            return Err(Error::Input(format!(
                "--model {spec}: no such bundle or checkpoint folder, and not in the Hugging Face cache ({why}); \
                 check the path, or download the model into the cache on a machine with access"
            )));
        }
    }
    let origin = if cached { Origin::HubCached } else { Origin::HubOnline };
    export_keyed(spec, &out, &SourceKey::of_hub(spec, revision.as_deref()), origin)
}

/// The commit the cache's `refs/main` of hub id `id` names.
fn read_ref(cache: &hf_hub::Cache, id: &str) -> Option<String> {
    let refs = cache.path().join(format!("models--{}", id.replace('/', "--"))).join("refs/main");
    std::fs::read_to_string(refs).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Why the hub cannot be reached now, or `None` when it can: HF_HUB_OFFLINE, or no connection to
/// the hub's endpoint (HF_ENDPOINT, else the hub's default) within 3 s. The rule for every hub
/// download: `--model` hub ids and the lewtun datasets.
pub(crate) fn offline_reason() -> Option<String> {
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false") {
        return Some("HF_HUB_OFFLINE is set".into());
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint.as_str()));
    let authority = rest.split('/').next().unwrap_or(rest);
    let target = if authority.contains(':') { authority.to_string() } else { format!("{authority}:{}", if scheme == "http" { 80 } else { 443 }) };
    let reachable = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    (!reachable).then(|| format!("the hub at {endpoint} cannot be reached"))
}

enum Origin {
    Checkpoint,
    HubCached,
    HubOnline,
}

/// The `source` of the manifest in `out`, if there is a bundle there.
fn existing_key(out: &Path) -> Option<crate::model::manifest::Source> {
    let mut text = String::new();
    std::fs::File::open(out.join("manifest.json")).ok()?.read_to_string(&mut text).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(value.get("source")?.clone()).ok()
}

/// Reuses the bundle in `out` if it was made from `key`, else exports `source` into it (replacing a
/// bundle made from something else).
fn export_keyed(source: &str, out: &Path, key: &SourceKey, origin: Origin) -> Result<PathBuf> {
    let stale = match existing_key(out) {
        Some(existing) if existing.key.as_deref() == Some(key.0.as_str()) => return Ok(out.to_path_buf()),
        Some(existing) => Some(match existing.path.as_deref() {
            Some(p) => format!("it was exported from {p} as it was then"),
            None => format!("it was exported from {} {}", existing.kind, existing.model_id),
        }),
        None if out.exists() => Some("it holds no bundle".into()),
        None => None,
    };
    let python = crate::runtime::find_venv_python()
        .ok_or_else(|| Error::Exporter(format!("exporting {source} needs the exporter's Python environment: run `bash scripts/setup.sh`")))?;
    let script = exporter_script()?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    let from = match origin {
        Origin::Checkpoint => "from the checkpoint folder",
        Origin::HubCached => "from the Hugging Face cache, offline",
        Origin::HubOnline => "downloading through the Hugging Face cache",
    };
    match &stale {
        Some(why) => eprintln!("exporting {source} into {} again ({why}; {from})", out.display()),
        None => eprintln!("exporting {source} into {} (once; {from})", out.display()),
    }
    let mut cmd = Command::new(python);
    cmd.arg(&script).args(["--model", source, "--source-key", &key.0, "--out"]).arg(out).stdout(std::io::stderr());
    if stale.is_some() {
        cmd.arg("--force");
    }
    if matches!(origin, Origin::HubCached) {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    let status = cmd.status().map_err(|e| Error::Exporter(format!("could not start {}: {e}", script.display())))?;
    if !status.success() || !out.join("manifest.json").is_file() {
        return Err(Error::Exporter(format!("exporting {source} failed (its message is above)")));
    }
    Ok(out.to_path_buf())
}

/// `onnx/export.py`: `$MUSICGEN_INTERP_EXPORTER`, else `onnx/export.py` in the working folder or one
/// above it, beside the executable or above it (a build under `target/`), or in the source tree the
/// binary was built from.
pub fn exporter_script() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MUSICGEN_INTERP_EXPORTER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Exporter(format!("MUSICGEN_INTERP_EXPORTER={} is not a file; point it at onnx/export.py", p.display())))
        };
    }
    crate::runtime::project_roots().into_iter().map(|r| r.join("onnx/export.py")).find(|p| p.is_file()).ok_or_else(|| {
        Error::Exporter(
            "cannot find onnx/export.py near the working folder or the executable; \
             set MUSICGEN_INTERP_EXPORTER to its path"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(is_hub_id("facebook/musicgen-small"));
        assert!(is_hub_id("org/model.v2_x"));
        assert!(!is_hub_id("models/tiny/"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("./x"));
        assert!(!is_hub_id("tiny"));
    }

    #[test]
    fn a_checkpoint_key_follows_its_path_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a/hf"), tmp.path().join("b/hf"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
            std::fs::write(d.join("model.safetensors"), [0u8; 16]).unwrap();
        }
        let ka = SourceKey::of_checkpoint(&a).unwrap();
        assert_eq!(ka, SourceKey::of_checkpoint(&a).unwrap());
        assert_ne!(ka, SourceKey::of_checkpoint(&b).unwrap(), "same name, another folder");
        std::fs::write(a.join("model.safetensors"), [0u8; 17]).unwrap();
        assert_ne!(ka, SourceKey::of_checkpoint(&a).unwrap(), "weights re-saved");
        assert_ne!(SourceKey::of_hub("o/m", Some("1")), SourceKey::of_hub("o/m", Some("2")));
    }
}
