//! One ONNX graph of the bundle: its session plus checks of its declared inputs and outputs against
//! the contract in docs/BUNDLE.md and the sizes in the manifest.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Dimension};
use ort::session::{Session, SessionOutputs};
use ort::value::ValueType;

use crate::error::{Error, Result};
use crate::runtime::Runtime;

pub struct Graph {
    pub file: String,
    pub session: Session,
    /// Whether it runs the runtime's own operators (a `*.cpu.onnx` copy, see `runtime::ops`).
    pub kernels: bool,
    bundle: PathBuf,
}

impl Graph {
    /// Loads `file`; `kernels`: it uses the runtime's own operators (a `*.cpu.onnx` copy).
    pub fn load(runtime: &Runtime, bundle: &Path, file: &str, kernels: bool) -> Result<Graph> {
        let path = bundle.join(file);
        if !path.is_file() {
            return Err(Error::MissingFile { path });
        }
        let session = runtime.session_with(&path, kernels)?;
        Ok(Graph { file: file.to_string(), session, kernels, bundle: bundle.to_path_buf() })
    }

    fn mismatch(&self, reason: String) -> Error {
        Error::BundleMismatch { bundle: self.bundle.clone(), reason: format!("{}: {reason}", self.file) }
    }

    /// Checks that the graph has exactly these input names (any order).
    pub fn expect_inputs(&self, names: &[&str]) -> Result<()> {
        let have: Vec<&str> = self.session.inputs().iter().map(|o| o.name()).collect();
        for n in names {
            if !have.contains(n) {
                return Err(self.mismatch(format!(
                    "has no input {n:?} (inputs: {}); it was written by an exporter with another graph contract, re-export the bundle",
                    have.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Checks that the graph has these outputs.
    pub fn expect_outputs(&self, names: &[&str]) -> Result<()> {
        let have: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        for n in names {
            if !have.contains(n) {
                return Err(self.mismatch(format!(
                    "has no output {n:?} (outputs: {}); re-export the bundle",
                    have.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Ends this session's profile (a runtime with [`crate::runtime::RuntimeOptions::profile`]) and
    /// returns the file onnxruntime wrote.
    pub fn end_profiling(&mut self) -> Result<PathBuf> {
        let file = self.session.end_profiling().map_err(Error::ort(format!("ending the profile of {}", self.file)))?;
        Ok(PathBuf::from(file))
    }

    /// The declared type of an input or output.
    fn outlet(&self, tensor: &str) -> Result<&ValueType> {
        self.session
            .inputs()
            .iter()
            .chain(self.session.outputs().iter())
            .find(|o| o.name() == tensor)
            .map(|o| o.dtype())
            .ok_or_else(|| self.mismatch(format!("has no tensor {tensor:?}")))
    }

    /// Checks the element type of an input or output (the KV cache's against the manifest's `dtype`).
    pub fn expect_type(&self, tensor: &str, expected: ort::value::TensorElementType) -> Result<()> {
        match self.outlet(tensor)? {
            ValueType::Tensor { ty, .. } if *ty == expected => Ok(()),
            other => Err(self.mismatch(format!(
                "{tensor} is {other:?} but manifest.json's dtype wants {expected:?} tensors: the graphs and the manifest describe different precisions; re-export the bundle"
            ))),
        }
    }

    /// Checks a static dimension of an input or output against the manifest (`what` names the size).
    /// Dynamic dimensions (-1) pass.
    pub fn expect_dim(&self, tensor: &str, axis: usize, expected: usize, what: &str) -> Result<()> {
        if let ValueType::Tensor { shape, .. } = self.outlet(tensor)? {
            if let Some(&dim) = shape.get(axis) {
                if dim >= 0 && dim as usize != expected {
                    return Err(self.mismatch(format!(
                        "{tensor} has {what} {dim} but manifest.json says {expected}: the graphs and the manifest describe different model sizes; re-export the bundle"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Copies a named output into an owned array of the wanted rank.
pub fn take<T, D>(outputs: &SessionOutputs<'_>, name: &str) -> Result<ndarray::Array<T, D>>
where
    T: ort::value::PrimitiveTensorElementType + Clone,
    D: Dimension,
{
    let value = outputs.get(name).ok_or_else(|| Error::Internal(format!("a graph returned no output {name:?} (its outputs were checked at load)")))?;
    let view = value.try_extract_array::<T>().map_err(Error::ort(format!("reading output {name}")))?;
    let owned: ArrayD<T> = view.to_owned();
    owned
        .into_dimensionality::<D>()
        .map_err(|e| Error::Internal(format!("output {name} has an unexpected rank (its shape was checked at load): {e}")))
}
