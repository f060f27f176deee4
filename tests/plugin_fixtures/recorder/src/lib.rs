//! A third-party method plugin, built by tests/plugins.rs outside the workspace against the SDK
//! alone. It counts its hook calls and writes them to `calls.json` in the run's output folder at
//! the end of the run; `panic_at` / `fail_at` settings make it panic or fail at a named event.

use std::collections::BTreeMap;

use musicgen_interp_sdk::ndarray::{ArrayView3, ArrayViewMut3};
use musicgen_interp_sdk::{export_method, Component, Edits, HookContext, Method};

#[derive(Default)]
pub struct Recorder {
    calls: BTreeMap<String, u64>,
    output: Option<String>,
    panic_at: String,
    fail_at: String,
    add_to_mlp: f32,
}

impl Recorder {
    fn event(&mut self, name: &str) -> Result<(), String> {
        *self.calls.entry(name.to_string()).or_default() += 1;
        if self.panic_at == name {
            panic!("recorder was told to panic at {name}");
        }
        if self.fail_at == name {
            return Err(format!("recorder was told to fail at {name}"));
        }
        Ok(())
    }
}

impl Method for Recorder {
    const NAME: &'static str = "recorder";
    const VERSION: &'static str = "0.0.1";

    fn create(config: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        if get("panic_at") == "create" {
            panic!("recorder was told to panic at create");
        }
        Ok(Recorder {
            panic_at: get("panic_at"),
            fail_at: get("fail_at"),
            add_to_mlp: v.get("add_to_mlp").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
            ..Default::default()
        })
    }

    fn hook_points(&self) -> Vec<String> {
        vec!["blocks.0.hook_resid_post".into(), "blocks.0.mlp.hook_out".into()]
    }

    fn on_residual(&mut self, _ctx: &HookContext, point: &str, _h: ArrayViewMut3<'_, f32>) -> Result<(), String> {
        self.event(&format!("on_residual {point}"))?;
        self.event("on_residual")
    }

    fn on_component(&mut self, _ctx: &HookContext, point: &str, _out: ArrayView3<'_, f32>) -> Result<(), String> {
        self.event(&format!("on_component {point}"))?;
        self.event("on_component")
    }

    fn edit_components(&mut self, ctx: &HookContext, layer: usize, edits: &mut Edits<'_>) -> Result<(), String> {
        self.event(&format!("edit_components {layer}"))?;
        if self.add_to_mlp != 0.0 {
            let mut add = edits.add(Component::Mlp);
            // Alternating signs: a constant shift would be removed by the next LayerNorm.
            for row in ctx.cond_start as usize..ctx.cond_end as usize {
                for mut token in add.index_axis_mut(musicgen_interp_sdk::ndarray::Axis(0), row).rows_mut() {
                    for (d, x) in token.iter_mut().enumerate() {
                        *x = if d % 2 == 0 { self.add_to_mlp } else { -self.add_to_mlp };
                    }
                }
            }
        }
        Ok(())
    }

    fn run_start(&mut self, info: &str) -> Result<(), String> {
        let v: serde_json::Value = serde_json::from_str(info).map_err(|e| e.to_string())?;
        self.output = v["output"].as_str().map(String::from);
        self.event("run_start")
    }

    fn step_end(&mut self, _step: u64) -> Result<(), String> {
        self.event("step_end")
    }

    fn run_end(&mut self) -> Result<(), String> {
        self.event("run_end")?;
        let dir = self.output.clone().ok_or("run_start gave no output folder")?;
        let text = serde_json::to_string_pretty(&self.calls).map_err(|e| e.to_string())?;
        std::fs::write(format!("{dir}/calls.json"), text).map_err(|e| e.to_string())
    }
}

export_method!(Recorder);
