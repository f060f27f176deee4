//! Which execution provider ran each node of the decoder's graphs, read from onnxruntime's own
//! per-node profile (`info --placement`). On a GPU host every node of the decoder's graphs must run
//! on the CUDA provider, copies between host and device (`MemcpyToHost` / `MemcpyFromHost`) aside: a
//! node on the CPU provider means the graph falls back there each step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generate::{generate, GenerationRequest, SamplingConfig};
use crate::hooks::NoHooks;
use crate::model::{MusicGen, Verify};
use crate::runtime::{Runtime, RuntimeOptions};

/// One graph's nodes by provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPlacement {
    pub graph: String,
    /// Provider -> (operator type -> nodes), host<->device copies counted apart in `copies`.
    pub providers: BTreeMap<String, BTreeMap<String, usize>>,
    /// `MemcpyToHost` / `MemcpyFromHost` nodes.
    pub copies: usize,
}

impl GraphPlacement {
    /// Nodes on the CPU provider other than copies.
    pub fn on_cpu(&self) -> usize {
        self.providers.get("CPUExecutionProvider").map_or(0, |ops| ops.values().sum())
    }

    pub fn nodes(&self) -> usize {
        self.providers.values().flat_map(|ops| ops.values()).sum::<usize>() + self.copies
    }
}

/// Reads an onnxruntime profile (`[{"cat": "Node", "name": "..._kernel_time", "args": {"op_name",
/// "provider"}}, ...]`): each node once, by provider and operator type.
pub fn parse_profile(graph: &str, json: &str) -> Result<GraphPlacement> {
    let events: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| Error::Internal(format!("onnxruntime's profile of {graph} is not the JSON expected: {e}")))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut placement = GraphPlacement { graph: graph.to_string(), providers: BTreeMap::new(), copies: 0 };
    for e in &events {
        if e["cat"] != "Node" {
            continue;
        }
        let (Some(name), Some(provider), Some(op)) = (e["name"].as_str(), e["args"]["provider"].as_str(), e["args"]["op_name"].as_str()) else {
            continue;
        };
        let node = name.trim_end_matches("_kernel_time").trim_end_matches("_fence_before").trim_end_matches("_fence_after");
        if !seen.insert(node.to_string()) {
            continue;
        }
        if op.starts_with("Memcpy") {
            placement.copies += 1;
        } else {
            *placement.providers.entry(provider.to_string()).or_default().entry(op.to_string()).or_default() += 1;
        }
    }
    Ok(placement)
}

/// Loads `bundle` on `options`' provider with profiling on, runs a short generation (prefill and
/// steps, so every decoder graph runs as it does in real work) and returns where each decoder
/// graph's nodes ran. The profiles are written into a temporary folder, removed afterwards.
pub fn report(options: &RuntimeOptions, bundle: &Path) -> Result<(Runtime, Vec<GraphPlacement>)> {
    let dir = std::env::temp_dir().join(format!("musicgen-interp-placement-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let result = (|| {
        let runtime = Runtime::init(&RuntimeOptions { profile: Some(dir.clone()), ..options.clone() })?;
        let mut model = MusicGen::load(&runtime, bundle, Verify::Cached)?;
        let request = GenerationRequest {
            prompts: vec!["placement check".into()],
            max_new_tokens: model.decoder.config.num_codebooks + 2,
            sampling: SamplingConfig { top_k: 1, ..SamplingConfig::default() },
            ..Default::default()
        };
        generate(&mut model, &request, &mut NoHooks, |_, _| {})?;
        let mut placements = Vec::new();
        for (graph, file) in model.decoder.end_profiling()? {
            let file: PathBuf = if file.is_absolute() { file } else { std::env::current_dir().unwrap_or_default().join(file) };
            let json = std::fs::read_to_string(&file).map_err(|source| Error::Io { path: file.clone(), source })?;
            placements.push(parse_profile(&graph, &json)?);
        }
        Ok((runtime, placements))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_counts_each_node_once_by_provider_with_copies_apart() {
        let json = r#"[
            {"cat": "Session", "name": "model_run", "args": {}},
            {"cat": "Node", "name": "/attn/GQA_fence_before", "args": {"op_name": "GroupQueryAttention", "provider": "CPUExecutionProvider"}},
            {"cat": "Node", "name": "/attn/GQA_kernel_time", "args": {"op_name": "GroupQueryAttention", "provider": "CPUExecutionProvider"}},
            {"cat": "Node", "name": "/mlp/MatMul_kernel_time", "args": {"op_name": "MatMul", "provider": "CUDAExecutionProvider"}},
            {"cat": "Node", "name": "/mlp/MatMul_1_kernel_time", "args": {"op_name": "MatMul", "provider": "CUDAExecutionProvider"}},
            {"cat": "Node", "name": "Memcpy_token_0_kernel_time", "args": {"op_name": "MemcpyToHost", "provider": "CUDAExecutionProvider"}}
        ]"#;
        let p = parse_profile("decoder_layer_0.onnx", json).unwrap();
        assert_eq!(p.on_cpu(), 1);
        assert_eq!(p.copies, 1);
        assert_eq!(p.nodes(), 4);
        assert_eq!(p.providers["CUDAExecutionProvider"]["MatMul"], 2);
        assert!(parse_profile("x", "not json").is_err());
    }
}
