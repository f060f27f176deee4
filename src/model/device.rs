//! Where the decoder's state lives, and what crosses between it and the host.
//!
//! A [`Placement`] is the memory the decoder's graphs run in: the CUDA device's memory under the
//! CUDA provider, host memory under the CPU provider. The decoder keeps its whole per-generation
//! state there ([`DeviceTensor`]s: KV cache, cross-attention keys and values, encoder mask, the zero
//! edit buffers, the residual stream between layers) and moves data to or from the host only where
//! someone asked for it; every such move goes through this module and is counted in [`Traffic`].
//! Under the CPU provider the same calls run and count the same bytes, as plain copies within host
//! memory, so CPU tests exercise (and pin) the code path a GPU host runs.

use std::fmt::Debug;
use std::ops::{Add, AddAssign};

use ndarray::{ArrayD, ArrayView, ArrayViewD, Dimension, IxDyn};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynTensor, PrimitiveTensorElementType, Shape, Tensor, TensorElementType, TensorRef, TensorRefMut};

use crate::error::{Error, Result};
use crate::runtime::Provider;

/// Bytes moved between host memory and the decoder's device memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Host to device.
    pub to_device: u64,
    /// Device to host.
    pub to_host: u64,
}

impl Add for Traffic {
    type Output = Traffic;
    fn add(self, o: Traffic) -> Traffic {
        Traffic { to_device: self.to_device + o.to_device, to_host: self.to_host + o.to_host }
    }
}

impl AddAssign for Traffic {
    fn add_assign(&mut self, o: Traffic) {
        *self = *self + o;
    }
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to the device, {} to the host", bytes(self.to_device), bytes(self.to_host))
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn host_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CUDA device `id`'s free memory, through the CUDA runtime library already in the process
/// (onnxruntime's CUDA provider loads it; `runtime::cuda_libs` preloads the wheels' copy).
fn cuda_free(id: i32) -> Option<u64> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    for name in ["libcudart.so.12", "libcudart.so.13", "libcudart.so"] {
        // SAFETY: the CUDA runtime is loaded already (the provider runs on it), so opening it by
        // name returns that copy without running initialisers again; the two functions have these
        // C signatures in every CUDA 12 / 13 runtime and return 0 on success.
        unsafe {
            let Ok(lib) = libloading::Library::new(name) else { continue };
            let (Ok(set), Ok(info)) = (lib.get::<SetDevice>(b"cudaSetDevice\0"), lib.get::<MemGetInfo>(b"cudaMemGetInfo\0")) else { continue };
            let (mut free, mut total) = (0usize, 0usize);
            if set(id) == 0 && info(&mut free, &mut total) == 0 {
                return Some(free as u64);
            }
        }
    }
    None
}

/// `1234` -> "1234 B", `56789` -> "55.5 KiB".
pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The memory the decoder's graphs run in, with its allocator.
pub struct Placement {
    allocator: Allocator,
    /// The CUDA device's ordinal; none for host memory (the CPU provider: transfers are copies
    /// within it).
    device_id: Option<i32>,
}

impl Placement {
    /// Host memory (the CPU provider).
    pub fn host() -> Placement {
        Placement { allocator: Allocator::default(), device_id: None }
    }

    /// The memory of `provider`'s device, allocated through `session` (a session on that provider).
    pub fn for_provider(provider: &Provider, session: &Session) -> Result<Placement> {
        match provider {
            Provider::Cpu => Ok(Placement::host()),
            Provider::Cuda { device_id } => {
                let info = MemoryInfo::new(AllocationDevice::CUDA, *device_id, AllocatorType::Device, MemoryType::Default)
                    .map_err(Error::ort("describing the CUDA device's memory"))?;
                let allocator = Allocator::new(session, info).map_err(Error::ort("creating the CUDA device's allocator"))?;
                Ok(Placement { allocator, device_id: Some(*device_id) })
            }
        }
    }

    /// Whether this is host memory.
    pub fn is_host(&self) -> bool {
        self.device_id.is_none()
    }

    /// Bytes free in this memory now: the host's available memory (`MemAvailable` of
    /// `/proc/meminfo`), or the CUDA device's free memory (`cudaMemGetInfo` of the CUDA runtime
    /// onnxruntime's provider loaded). `None` where it cannot be read.
    pub fn free_bytes(&self) -> Option<u64> {
        match self.device_id {
            None => host_available(&std::fs::read_to_string("/proc/meminfo").ok()?),
            Some(id) => cuda_free(id),
        }
    }

    /// The memory graph outputs are bound to.
    pub fn memory_info(&self) -> &MemoryInfo<'_> {
        self.allocator.memory_info()
    }

    /// A new tensor of zeros. On a device the zeros are uploaded once (counted in `traffic`).
    pub fn zeros(&self, ty: TensorElementType, shape: &[usize], traffic: &mut Traffic) -> Result<DeviceTensor> {
        let mut t = DeviceTensor::alloc(self, ty, shape)?;
        let n = shape.iter().product::<usize>();
        match ty {
            TensorElementType::Float32 => t.write(0, ArrayD::<f32>::zeros(IxDyn(&[n])).view(), traffic)?,
            TensorElementType::Float16 => t.write(0, ArrayD::from_elem(IxDyn(&[n]), half::f16::ZERO).view(), traffic)?,
            TensorElementType::Int64 => t.write(0, ArrayD::<i64>::zeros(IxDyn(&[n])).view(), traffic)?,
            other => return Err(Error::Internal(format!("no zeros of {other:?} on the device"))),
        }
        Ok(t)
    }

    /// A new tensor whose contents are undefined until written (a graph output's destination).
    pub fn empty(&self, ty: TensorElementType, shape: &[usize]) -> Result<DeviceTensor> {
        DeviceTensor::alloc(self, ty, shape)
    }

    /// `host`'s contents as a new device tensor (counted in `traffic`).
    pub fn upload<T: Element, D: Dimension>(&self, host: ArrayView<'_, T, D>, traffic: &mut Traffic) -> Result<DeviceTensor> {
        let mut t = DeviceTensor::alloc(self, T::into_tensor_element_type(), host.shape())?;
        t.write(0, host.into_dyn(), traffic)?;
        Ok(t)
    }
}

/// The element types the decoder moves: f32, f16, i64.
pub trait Element: PrimitiveTensorElementType + Debug + Clone + Copy + 'static {}
impl Element for f32 {}
impl Element for half::f16 {}
impl Element for i64 {}

/// A tensor in a [`Placement`]'s memory, standard layout, with sub-ranges handed to graphs as views
/// where they lie.
pub struct DeviceTensor {
    value: DynTensor,
    shape: Vec<usize>,
    ty: TensorElementType,
    host: bool,
}

impl DeviceTensor {
    fn alloc(placement: &Placement, ty: TensorElementType, shape: &[usize]) -> Result<DeviceTensor> {
        let value = DynTensor::new(&placement.allocator, ty, Shape::new(shape.iter().map(|&d| d as i64)))
            .map_err(Error::ort("allocating decoder state"))?;
        Ok(DeviceTensor { value, shape: shape.to_vec(), ty, host: placement.is_host() })
    }

    /// Takes a graph output that was bound to the placement's memory.
    pub fn from_output(value: ort::value::DynValue, host: bool) -> Result<DeviceTensor> {
        let value: DynTensor = value.downcast().map_err(Error::ort("a decoder graph output"))?;
        let shape = value.shape().iter().map(|&d| d as usize).collect();
        let ty = *value.data_type();
        Ok(DeviceTensor { value, shape, ty, host })
    }

    /// Whether it lies in host memory.
    pub fn is_host(&self) -> bool {
        self.host
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn element_type(&self) -> TensorElementType {
        self.ty
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    fn check<T: Element>(&self, offset: usize, len: usize) {
        assert_eq!(T::into_tensor_element_type(), self.ty, "element type of a device tensor");
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len()), "range within the device tensor");
    }

    /// Elements `offset .. offset + product(shape)` as a tensor of `shape`, where they lie: a graph
    /// input or output bound to it reads or writes this memory.
    pub fn view_mut<T: Element>(&mut self, offset: usize, shape: &[usize]) -> Result<TensorRefMut<'_, T>> {
        self.check::<T>(offset, shape.iter().product());
        let info = self.value.memory_info().to_owned();
        let base = self.value.data_ptr_mut().cast::<T>();
        // SAFETY: the tensor is standard layout with `len()` elements of `T` (checked: element type
        // and range), allocated by onnxruntime in the memory `info` describes; `offset` elements on
        // stays within that allocation, and pointer arithmetic on a device address is only address
        // arithmetic (never dereferenced here). The view borrows `self` mutably for its lifetime,
        // so the allocation outlives it and nothing else touches the range meanwhile.
        let ptr = unsafe { base.add(offset) };
        let shape = Shape::new(shape.iter().map(|&d| d as i64));
        // SAFETY: `ptr` points at `product(shape)` elements of `T` inside this tensor's allocation
        // in `info`'s memory (above), valid while `self` is borrowed.
        unsafe { TensorRefMut::<T>::from_raw(info, ptr.cast(), shape) }.map_err(Error::ort("viewing decoder state"))
    }

    /// Like [`DeviceTensor::view_mut`] from a shared borrow, for binding as a graph input only
    /// (onnxruntime reads inputs, never writes them), so one buffer can be bound as several inputs.
    pub fn input_view<T: Element>(&self, offset: usize, shape: &[usize]) -> Result<TensorRefMut<'_, T>> {
        self.check::<T>(offset, shape.iter().product());
        let info = self.value.memory_info().to_owned();
        let base = self.value.data_ptr().cast::<T>().cast_mut();
        // SAFETY: as in `view_mut` for the range; the view is only ever bound as a graph input,
        // which onnxruntime reads and does not write, so no write goes through this pointer while
        // the shared borrow of `self` keeps the allocation alive.
        let ptr = unsafe { base.add(offset) };
        let shape = Shape::new(shape.iter().map(|&d| d as i64));
        // SAFETY: `ptr` points at `product(shape)` elements of `T` within this tensor's allocation.
        unsafe { TensorRefMut::<T>::from_raw(info, ptr.cast(), shape) }.map_err(Error::ort("viewing decoder state"))
    }

    /// The whole tensor as a `T` view (for binding as an input).
    pub fn whole<T: Element>(&mut self) -> Result<TensorRefMut<'_, T>> {
        let shape = self.shape.clone();
        self.view_mut(0, &shape)
    }

    /// Copies elements `offset ..` (of `shape`) to the host, counted in `traffic`.
    pub fn read<T: Element>(&mut self, offset: usize, shape: &[usize], traffic: &mut Traffic) -> Result<ArrayD<T>> {
        let n: usize = shape.iter().product();
        self.check::<T>(offset, n);
        traffic.to_host += (n * std::mem::size_of::<T>()) as u64;
        let host = self.host;
        let view = self.view_mut::<T>(offset, shape)?;
        let out = if host {
            view.try_extract_array::<T>().map_err(Error::ort("reading decoder state"))?.to_owned()
        } else {
            let copied = view.to(AllocationDevice::CPU, 0).map_err(Error::ort("copying decoder state to the host"))?;
            copied.try_extract_array::<T>().map_err(Error::ort("reading decoder state"))?.to_owned()
        };
        Ok(out.into_shape_with_order(IxDyn(shape)).map_err(|e| Error::Internal(e.to_string()))?)
    }

    /// The whole tensor on the host.
    pub fn read_all<T: Element>(&mut self, traffic: &mut Traffic) -> Result<ArrayD<T>> {
        let shape = self.shape.clone();
        self.read(0, &shape, traffic)
    }

    /// Copies `host` into elements `offset .. offset + host.len()`, counted in `traffic`.
    pub fn write<T: Element>(&mut self, offset: usize, host: ArrayViewD<'_, T>, traffic: &mut Traffic) -> Result<()> {
        self.check::<T>(offset, host.len());
        traffic.to_device += (host.len() * std::mem::size_of::<T>()) as u64;
        let shape = host.shape().to_vec();
        let is_host = self.host;
        let mut target = self.view_mut::<T>(offset, &shape)?;
        if is_host {
            let mut dst = target.try_extract_array_mut::<T>().map_err(Error::ort("writing decoder state"))?;
            dst.assign(&host);
        } else {
            let src = host.as_standard_layout();
            let src = TensorRef::from_array_view(src.view()).map_err(Error::ort("staging a host tensor"))?;
            src.copy_into(target).map_err(Error::ort("copying to the device"))?;
        }
        Ok(())
    }

    /// A new tensor with room for `capacity` along axis 2 of a rank-4 tensor (the KV cache's
    /// positions), the first `keep` positions copied. On a device the copy goes through the host
    /// (counted): growth is for a generation that outgrew its reservation.
    pub fn grow_axis2<T: Element + Default>(&mut self, placement: &Placement, capacity: usize, keep: usize, traffic: &mut Traffic) -> Result<DeviceTensor> {
        let [rows, heads, _, dim]: [usize; 4] = self.shape.clone().try_into().map_err(|_| Error::Internal("grow_axis2 of a tensor not of rank 4".into()))?;
        // In host memory this is a copy within the host: nothing crosses.
        let mut within = Traffic::default();
        let traffic = if self.host { &mut within } else { traffic };
        let old = self.read_all::<T>(traffic)?;
        let mut new = ndarray::Array4::<T>::from_elem((rows, heads, capacity, dim), T::default());
        let old = old.into_dimensionality::<ndarray::Ix4>().map_err(|e| Error::Internal(e.to_string()))?;
        new.slice_mut(ndarray::s![.., .., ..keep, ..]).assign(&old.slice(ndarray::s![.., .., ..keep, ..]));
        placement.upload(new.view(), traffic)
    }
}

/// Uploads a host array as a plain tensor value in host memory (graph inputs the host supplies).
pub fn host_value<T: Element, D: Dimension>(a: ArrayView<'_, T, D>) -> Result<Tensor<T>> {
    Tensor::from_array(a.as_standard_layout().into_owned().into_dyn()).map_err(Error::ort("a host input"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_hosts_available_memory() {
        let meminfo = "MemTotal:       16303460 kB\nMemFree:         1220348 kB\nMemAvailable:    9876543 kB\nBuffers:  12 kB\n";
        assert_eq!(super::host_available(meminfo), Some(9_876_543 * 1024));
        assert_eq!(super::host_available("MemTotal: 5 kB\n"), None);
        // This host's own, when it is Linux: some memory is available.
        if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
            assert!(super::host_available(&text).is_some_and(|b| b > 0));
        }
    }
}
