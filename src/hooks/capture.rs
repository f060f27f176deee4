//! Capturing the residual stream over a whole generation, reduced over time.

use ndarray::{s, Array2, Array3, Array4, ArrayViewMut3, Axis};

use super::{ForwardContext, HookPoint, Hooks};
use crate::error::{Error, Result};

/// How a captured activation is reduced over decoder positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// The last position seen.
    #[default]
    Last,
    /// The mean over every position seen (prompt and generated).
    Mean,
    /// Every position.
    All,
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Reduction::Last),
            "mean" => Ok(Reduction::Mean),
            "all" => Ok(Reduction::All),
            other => Err(Error::Input(format!("unknown reduction {other:?}: use last, mean or all"))),
        }
    }
}

/// Captures `embed.hook_out` and every `blocks.{l}.hook_resid_post` (pre-LayerNorm states, as the
/// model computed them after any earlier hook) across all forwards of a generation.
pub struct ResidualCapture {
    reduction: Reduction,
    points: Vec<HookPoint>,
    /// Per point: running sum (mean), last position (last), or every position (all).
    sums: Vec<Option<Array2<f64>>>,
    last: Vec<Option<Array2<f32>>>,
    all: Vec<Vec<Array3<f32>>>,
    /// Positions seen (counted at the first point).
    positions: usize,
}

impl ResidualCapture {
    pub fn new(layers: usize, reduction: Reduction) -> Self {
        let points: Vec<HookPoint> = std::iter::once(HookPoint::Embed).chain((0..layers).map(HookPoint::ResidPost)).collect();
        let n = points.len();
        ResidualCapture { reduction, points, sums: vec![None; n], last: vec![None; n], all: vec![Vec::new(); n], positions: 0 }
    }

    /// The hook points captured, in the order of the result's first axis.
    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    /// `[points, rows, d_model]` for last/mean; `[points, rows, positions, d_model]` for all.
    pub fn result(&self) -> Result<ndarray::ArrayD<f32>> {
        let empty = || Error::Input("no forward was captured".into());
        match self.reduction {
            Reduction::Last => {
                let v: Vec<_> = self.last.iter().map(|a| a.as_ref().map(|a| a.view())).collect::<Option<_>>().ok_or_else(empty)?;
                Ok(ndarray::stack(Axis(0), &v).expect("same shapes").into_dyn())
            }
            Reduction::Mean => {
                let n = self.positions as f64;
                let v: Vec<Array2<f32>> = self
                    .sums
                    .iter()
                    .map(|a| a.as_ref().map(|a| a.mapv(|x| (x / n) as f32)))
                    .collect::<Option<_>>()
                    .ok_or_else(empty)?;
                let views: Vec<_> = v.iter().map(|a| a.view()).collect();
                Ok(ndarray::stack(Axis(0), &views).expect("same shapes").into_dyn())
            }
            Reduction::All => {
                let per_point: Vec<Array3<f32>> = self
                    .all
                    .iter()
                    .map(|chunks| {
                        let views: Vec<_> = chunks.iter().map(|c| c.view()).collect();
                        ndarray::concatenate(Axis(1), &views).map_err(|_| empty())
                    })
                    .collect::<Result<_>>()?;
                let views: Vec<_> = per_point.iter().map(|a| a.view()).collect();
                let out: Array4<f32> = ndarray::stack(Axis(0), &views).expect("same shapes");
                Ok(out.into_dyn())
            }
        }
    }
}

impl Hooks for ResidualCapture {
    fn wants(&self, _point: &HookPoint) -> bool {
        false
    }
    fn wants_residual(&self, point: &HookPoint) -> bool {
        self.points.contains(point)
    }

    fn on_residual(&mut self, _ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
        let Some(i) = self.points.iter().position(|p| *p == point) else { return Ok(()) };
        let t = h.shape()[1];
        if i == 0 {
            self.positions += t;
        }
        match self.reduction {
            Reduction::Last => self.last[i] = Some(h.slice(s![.., t - 1, ..]).to_owned()),
            Reduction::Mean => {
                let sum = h.mapv(f64::from).sum_axis(Axis(1));
                match &mut self.sums[i] {
                    Some(acc) => *acc += &sum,
                    slot => *slot = Some(sum),
                }
            }
            Reduction::All => self.all[i].push(h.to_owned()),
        }
        Ok(())
    }
}
