//! A third-party probe-model plugin (nearest class centroid), built by tests/plugins.rs outside the
//! workspace against the SDK alone.

use musicgen_interp_sdk::ndarray::{Array2, ArrayView2, Axis};
use musicgen_interp_sdk::{export_probe, ProbeModel};

pub struct Centroid {
    centroids: Option<Array2<f32>>,
}

impl ProbeModel for Centroid {
    const NAME: &'static str = "centroid";
    const VERSION: &'static str = "0.0.1";

    fn create(_config: &str) -> Result<Self, String> {
        Ok(Centroid { centroids: None })
    }

    fn fit(&mut self, x: ArrayView2<'_, f32>, labels: &[i64], classes: usize) -> Result<(), String> {
        let mut c = Array2::<f32>::zeros((classes, x.ncols()));
        let mut n = vec![0f32; classes];
        for (row, &y) in x.rows().into_iter().zip(labels) {
            let y = usize::try_from(y).ok().filter(|&y| y < classes).ok_or(format!("label {y} outside 0..{classes}"))?;
            c.row_mut(y).zip_mut_with(&row, |a, b| *a += b);
            n[y] += 1.0;
        }
        for (mut row, count) in c.rows_mut().into_iter().zip(n) {
            if count == 0.0 {
                return Err("a class has no samples".into());
            }
            row /= count;
        }
        self.centroids = Some(c);
        Ok(())
    }

    fn predict(&mut self, x: ArrayView2<'_, f32>) -> Result<Vec<i64>, String> {
        let s = self.scores(x)?;
        Ok(s.rows().into_iter().map(|r| r.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as i64).collect())
    }

    fn scores(&mut self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>, String> {
        let c = self.centroids.as_ref().ok_or("not fitted")?;
        let mut s = Array2::<f32>::zeros((x.nrows(), c.nrows()));
        for (i, row) in x.rows().into_iter().enumerate() {
            for (j, cen) in c.rows().into_iter().enumerate() {
                s[[i, j]] = -row.iter().zip(cen.iter()).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
            }
        }
        Ok(s)
    }

    fn save(&mut self, path: &str) -> Result<(), String> {
        let c = self.centroids.as_ref().ok_or("not fitted")?;
        let rows: Vec<Vec<f32>> = c.axis_iter(Axis(0)).map(|r| r.to_vec()).collect();
        std::fs::write(path, serde_json::to_string(&rows).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    }

    fn load(&mut self, path: &str) -> Result<(), String> {
        let rows: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
        self.centroids = Some(Array2::from_shape_vec((n, d), rows.concat()).map_err(|e| e.to_string())?);
        Ok(())
    }
}

export_probe!(Centroid);
