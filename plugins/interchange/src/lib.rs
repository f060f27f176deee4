//! Interchange interventions (ISMIR 2024, seed B 2). A site is one component of one decoder layer:
//! the output of its self-attention (`attn`), cross-attention (`cross_attn`) or MLP (`mlp`) block
//! before it is added to the residual stream. Two modes:
//!
//! - `means`: reads every site at every forward and accumulates, per absolute decoder position,
//!   the sum over conditional rows and over unconditional rows; `run_end` writes the mean
//!   (sum / rows seen, so batches of any size weigh each generation equally) as `.npy`
//!   `[layers, 3, positions, 2, d_model]` (component order attn, cross_attn, mlp; 0 conditional,
//!   1 unconditional).
//! - `intervene`: each conditional row `r` of the batch gets its own intervention (or none, for the
//!   baseline) at its site, at every position `p` of every forward: `adjust` adds
//!   `desired[p] - original[p]`, `replace` sets the output to `desired[p]` (conditional means of the
//!   two concepts' mean files). Unconditional rows are left alone.
//!
//! Settings: `{"mode": "means", "layers": L, "positions": P, "output": "means.npy"}` or
//! `{"mode": "intervene", "original": "a.npy", "desired": "b.npy",
//!   "rows": [null, {"layer": 3, "component": "mlp", "kind": "adjust"}, ...]}`.

use std::collections::BTreeMap;
use std::io::Write;

use musicgen_interp_sdk::ndarray::{s, Array2, Array5, ArrayView3, Axis};
use musicgen_interp_sdk::{export_method, Component, Edits, HookContext, HookPoint, Method};

#[derive(serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum Settings {
    Means { layers: usize, positions: usize, output: String },
    Intervene { original: String, desired: String, rows: Vec<Option<RowIntervention>> },
}

#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Adjust,
    Replace,
}

#[derive(serde::Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct RowIntervention {
    layer: usize,
    component: String,
    kind: Kind,
}

fn component_index(name: &str) -> Result<usize, String> {
    name.parse::<Component>().map(Component::index).map_err(|e| format!("interchange: {e}"))
}

/// Running sums of every site's output per position, conditional and unconditional rows apart.
pub struct Means {
    layers: usize,
    positions: usize,
    output: String,
    width: usize,
    /// `[layers * 3, positions, 2, width]`, allocated at the first call.
    sums: Vec<f64>,
    /// Rows seen per `[layers * 3, positions, 2]`.
    counts: Vec<u64>,
}

impl Means {
    fn add(&mut self, ctx: &HookContext, site: usize, out: ArrayView3<'_, f32>) -> Result<(), String> {
        let (rows, new_len, width) = out.dim();
        if self.sums.is_empty() {
            self.width = width;
            self.sums = vec![0.0; self.layers * 3 * self.positions * 2 * width];
            self.counts = vec![0; self.layers * 3 * self.positions * 2];
        }
        for r in 0..rows {
            let group = if (ctx.cond_start..ctx.cond_end).contains(&(r as u64)) { 0 } else { 1 };
            for i in 0..new_len {
                let p = ctx.past_len as usize + i;
                if p >= self.positions {
                    return Err(format!("interchange: position {p} is past the {} positions asked for", self.positions));
                }
                let cell = (site * self.positions + p) * 2 + group;
                self.counts[cell] += 1;
                let sum = &mut self.sums[cell * width..(cell + 1) * width];
                for (acc, &x) in sum.iter_mut().zip(out.slice(s![r, i, ..])) {
                    *acc += x as f64;
                }
            }
        }
        Ok(())
    }

    fn write(&self) -> Result<(), String> {
        if let Some(cell) = self.counts.iter().position(|&c| c == 0) {
            let p = (cell / 2) % self.positions;
            return Err(format!("interchange: no generation reached position {p} ({} asked for)", self.positions));
        }
        let mean: Vec<f32> = self.sums.chunks(self.width).zip(&self.counts).flat_map(|(s, &n)| s.iter().map(move |x| (x / n as f64) as f32)).collect();
        let a = Array5::from_shape_vec((self.layers, 3, self.positions, 2, self.width), mean).map_err(|e| e.to_string())?;
        // Atomic: a temporary file beside the target, renamed into place.
        let tmp = format!("{}.tmp-{}", self.output, std::process::id());
        let written = (|| -> Result<(), String> {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| e.to_string())?);
            ndarray_npy::WriteNpyExt::write_npy(&a, &mut w).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &self.output).map_err(|e| e.to_string())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("interchange: writing {}: {e}", self.output));
        }
        Ok(())
    }
}

/// Per-row interventions with the per-site vectors they add or set, `[positions, width]`.
pub struct Intervene {
    rows: Vec<Option<(usize, usize, Kind)>>,
    vectors: BTreeMap<(usize, usize, Kind), Array2<f32>>,
}

fn read_means(path: &str) -> Result<Array5<f32>, String> {
    musicgen_interp_sdk::npy::read(std::path::Path::new(path), "interchange concept means (5 axes)")
}

impl Intervene {
    fn new(original: &str, desired: &str, rows: Vec<Option<RowIntervention>>) -> Result<Self, String> {
        let (a, b) = (read_means(original)?, read_means(desired)?);
        if a.shape() != b.shape() {
            return Err(format!("interchange: means of different shapes, {:?} ({original}) and {:?} ({desired})", a.shape(), b.shape()));
        }
        let layers = a.shape()[0];
        let mut parsed = Vec::new();
        let mut vectors = BTreeMap::new();
        for row in rows {
            let Some(iv) = row else {
                parsed.push(None);
                continue;
            };
            let c = component_index(&iv.component)?;
            if iv.layer >= layers {
                return Err(format!("interchange: layer {} but the means cover layers 0..{layers}", iv.layer));
            }
            let key = (iv.layer, c, iv.kind);
            vectors.entry(key).or_insert_with(|| {
                let want = b.slice(s![iv.layer, c, .., 0, ..]).to_owned();
                match iv.kind {
                    Kind::Replace => want,
                    Kind::Adjust => want - a.slice(s![iv.layer, c, .., 0, ..]),
                }
            });
            parsed.push(Some(key));
        }
        Ok(Intervene { rows: parsed, vectors })
    }

    fn edit(&self, ctx: &HookContext, layer: usize, edits: &mut Edits<'_>) -> Result<(), String> {
        let cond = ctx.cond_start as usize..ctx.cond_end as usize;
        if cond.len() != self.rows.len() {
            return Err(format!("interchange: {} interventions for {} conditional rows", self.rows.len(), cond.len()));
        }
        for (r, row) in cond.zip(&self.rows) {
            let Some(key @ (l, c, kind)) = *row else { continue };
            if l != layer {
                continue;
            }
            let v = &self.vectors[&key];
            let comp = Component::ALL[c];
            for i in 0..ctx.new_len as usize {
                let p = ctx.past_len as usize + i;
                if p >= v.nrows() {
                    return Err(format!("interchange: position {p} is past the {} positions of the concept means", v.nrows()));
                }
                let value = v.index_axis(Axis(0), p);
                match kind {
                    Kind::Adjust => edits.add(comp).slice_mut(s![r, i, ..]).zip_mut_with(&value, |x, &d| *x += d),
                    Kind::Replace => {
                        edits.replace(comp).slice_mut(s![r, i, ..]).assign(&value);
                        edits.mask(comp).slice_mut(s![r, i, ..]).fill(1.0);
                    }
                }
            }
        }
        Ok(())
    }
}

pub enum Interchange {
    Means(Means),
    Intervene(Intervene),
}

impl Method for Interchange {
    const NAME: &'static str = "interchange";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn create(config: &str) -> Result<Self, String> {
        let settings: Settings = serde_json::from_str(config).map_err(|e| format!("interchange settings: {e}"))?;
        Ok(match settings {
            Settings::Means { layers, positions, output } => {
                if layers == 0 || positions == 0 {
                    return Err("interchange: `layers` and `positions` must be positive".into());
                }
                Interchange::Means(Means { layers, positions, output, width: 0, sums: Vec::new(), counts: Vec::new() })
            }
            Settings::Intervene { original, desired, rows } => Interchange::Intervene(Intervene::new(&original, &desired, rows)?),
        })
    }

    fn hook_points(&self) -> Vec<String> {
        let sites: Vec<(usize, usize)> = match self {
            Interchange::Means(m) => (0..m.layers).flat_map(|l| (0..3).map(move |c| (l, c))).collect(),
            Interchange::Intervene(iv) => {
                let mut s: Vec<(usize, usize)> = iv.vectors.keys().map(|&(l, c, _)| (l, c)).collect();
                s.dedup();
                s
            }
        };
        sites.into_iter().map(|(l, c)| HookPoint::Component(l, Component::ALL[c]).to_string()).collect()
    }

    fn on_component(&mut self, ctx: &HookContext, point: &str, out: ArrayView3<'_, f32>) -> Result<(), String> {
        let Interchange::Means(m) = self else { return Ok(()) };
        let site = match point.parse::<HookPoint>() {
            Ok(HookPoint::Component(l, c)) => l * 3 + c.index(),
            _ => return Err(format!("interchange: unexpected hook point {point}")),
        };
        m.add(ctx, site, out)
    }

    fn edit_components(&mut self, ctx: &HookContext, layer: usize, edits: &mut Edits<'_>) -> Result<(), String> {
        match self {
            Interchange::Intervene(iv) => iv.edit(ctx, layer, edits),
            Interchange::Means(_) => Ok(()),
        }
    }

    fn run_end(&mut self) -> Result<(), String> {
        match self {
            Interchange::Means(m) => m.write(),
            Interchange::Intervene(_) => Ok(()),
        }
    }
}

export_method!(Interchange);
