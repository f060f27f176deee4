//! `--model` accepts a bundle folder, a transformers checkpoint folder, or a Hugging Face hub id. A
//! checkpoint or hub id is exported once (by `onnx/export.py`) into a bundle under the models folder
//! and reused from then on. A hub id found in the Hugging Face cache (looked up with `hf-hub`) is
//! exported offline; otherwise the exporter fetches it through the same cache.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The bundle folder for `spec`, exporting it first when it is a checkpoint folder or a hub id.
pub fn resolve(spec: &str, models: &Path) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.join("manifest.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("config.json").is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
        return export_once(spec, &models.join(name), false);
    }
    if path.exists() || !is_hub_id(spec) {
        return Err(Error::NotABundle { path: path.to_path_buf() });
    }
    let cached = hf_hub::Cache::from_env().model(spec.to_string()).get("config.json").is_some();
    export_once(spec, &models.join(spec.replace('/', "--")), cached)
}

fn export_once(source: &str, out: &Path, offline: bool) -> Result<PathBuf> {
    if out.join("manifest.json").is_file() {
        return Ok(out.to_path_buf());
    }
    let python = crate::runtime::find_venv_python()
        .ok_or_else(|| Error::Input(format!("exporting {source} needs the exporter's Python environment: run `bash scripts/setup.sh`")))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/export.py");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    eprintln!("exporting {source} into {} (once; {})", out.display(), if offline { "from the Hugging Face cache, offline" } else { "through the Hugging Face cache" });
    let mut cmd = Command::new(python);
    cmd.arg(script).args(["--model", source, "--out"]).arg(out).stdout(std::io::stderr());
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    let status = cmd.status().map_err(|e| Error::Input(format!("running the exporter: {e}")))?;
    if !status.success() || !out.join("manifest.json").is_file() {
        return Err(Error::Input(format!("exporting {source} failed (the exporter's message is above)")));
    }
    Ok(out.to_path_buf())
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
}
