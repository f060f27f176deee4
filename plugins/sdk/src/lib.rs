//! The crate a musicgen-interp plugin author depends on.
//!
//! A plugin is a `cdylib` exporting one C symbol, [`ENTRY_SYMBOL`], that returns a pointer to a
//! `#[repr(C)]` [`PluginDescriptor`]: the ABI version first (so a host can refuse a plugin of another
//! version before reading anything else), then the plugin's kind, name and version, and function
//! pointers over plain C types ([`TensorMut`], [`Tensor`], [`Matrix`], [`HookContext`]). Nothing
//! else crosses the boundary: no Rust trait objects, no allocator hand-offs.
//!
//! Authors do not write any of that: implement [`Method`] (hooks during generation),
//! [`ProbeModel`] (fit / predict / save / load on features) or [`Judge`] (class probabilities of
//! audio clips) and call [`export_method!`], [`export_probe!`] or [`export_judge!`]. Panics are caught at the boundary and reported as errors with the panic's
//! message; an `Err(String)` is reported the same way. See `plugins/README.md` for a guide.

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use ndarray;

pub mod npy;
use ndarray::{ArrayView2, ArrayView3, ArrayViewMut3};

/// The plugin ABI version this SDK speaks. A host refuses plugins whose descriptor says otherwise.
/// Version 2 added the judge kind (the descriptor's `judge` field) and the methods' `exit_after`.
pub const ABI_VERSION: u32 = 2;

/// The symbol every plugin exports: `extern "C" fn() -> *const PluginDescriptor`.
pub const ENTRY_SYMBOL: &[u8] = b"musicgen_interp_plugin\0";

/// Status codes of every call.
pub const OK: i32 = 0;
pub const ERROR: i32 = 1;

/// [`PluginDescriptor::kind`] values.
pub const KIND_METHOD: u32 = 1;
pub const KIND_PROBE: u32 = 2;
pub const KIND_JUDGE: u32 = 3;

/// An activation `[rows, positions, width]`, row-major, that the plugin may change in place.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TensorMut {
    pub data: *mut f32,
    pub rows: u64,
    pub positions: u64,
    pub width: u64,
}

/// A read-only activation `[rows, positions, width]`, row-major.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Tensor {
    pub data: *const f32,
    pub rows: u64,
    pub positions: u64,
    pub width: u64,
}

/// A read-only matrix `[rows, cols]`, row-major (probe features).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Matrix {
    pub data: *const f32,
    pub rows: u64,
    pub cols: u64,
}

/// Where a forward is (see the host's `ForwardContext`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HookContext {
    /// 0 for the prefill, then 1, 2, ... for each cached step.
    pub call: u64,
    pub past_len: u64,
    pub new_len: u64,
    pub rows: u64,
    /// Conditional rows are `cond_start .. cond_end` (the first half with guidance).
    pub cond_start: u64,
    pub cond_end: u64,
}

/// Component edit buffers of one layer for one forward, handed out by the host on request.
/// `component`: 0 self-attention, 1 cross-attention, 2 MLP. The result is
/// `out * (1 - mask) + replace * mask + add`.
#[repr(C)]
pub struct EditsHandle {
    pub host: *mut c_void,
    pub add: extern "C" fn(host: *mut c_void, component: u32) -> TensorMut,
    pub replace: extern "C" fn(host: *mut c_void, component: u32) -> TensorMut,
    pub mask: extern "C" fn(host: *mut c_void, component: u32) -> TensorMut,
}

/// Function pointers of a method plugin. `instance` is what `create` returned.
#[repr(C)]
pub struct MethodVTable {
    /// Hook point names this instance wants, one per line (valid until `destroy`).
    pub hook_points: extern "C" fn(instance: *mut c_void) -> *const c_char,
    pub on_residual: extern "C" fn(instance: *mut c_void, ctx: *const HookContext, point: *const c_char, h: TensorMut) -> i32,
    pub on_component: extern "C" fn(instance: *mut c_void, ctx: *const HookContext, point: *const c_char, out: Tensor) -> i32,
    pub edit_components: extern "C" fn(instance: *mut c_void, ctx: *const HookContext, layer: u64, edits: *const EditsHandle) -> i32,
    /// `info`: JSON with the run's settings and `output_dir`.
    pub run_start: extern "C" fn(instance: *mut c_void, info: *const c_char) -> i32,
    pub step_end: extern "C" fn(instance: *mut c_void, step: u64) -> i32,
    pub run_end: extern "C" fn(instance: *mut c_void) -> i32,
    /// Layers the decoder runs before the final LayerNorm and heads; 0 = all (DecoderLens's early
    /// exit is a plugin that answers k).
    pub exit_after: extern "C" fn(instance: *mut c_void) -> u64,
}

/// Function pointers of a probe-model plugin.
#[repr(C)]
pub struct ProbeVTable {
    /// `labels`: `features.rows` class ids in `0 .. classes`.
    pub fit: extern "C" fn(instance: *mut c_void, features: Matrix, labels: *const i64, classes: u64) -> i32,
    /// Writes `features.rows` class ids to `out`.
    pub predict: extern "C" fn(instance: *mut c_void, features: Matrix, out: *mut i64) -> i32,
    /// Writes `features.rows x classes` scores (probabilities or decision values) to `out`.
    pub scores: extern "C" fn(instance: *mut c_void, features: Matrix, out: *mut f32) -> i32,
    pub save: extern "C" fn(instance: *mut c_void, path: *const c_char) -> i32,
    pub load: extern "C" fn(instance: *mut c_void, path: *const c_char) -> i32,
}

/// Function pointers of a judge plugin: an audio classifier.
#[repr(C)]
pub struct JudgeVTable {
    /// The sample rate the judge wants its audio at (the host resamples).
    pub sample_rate: extern "C" fn(instance: *mut c_void) -> u32,
    /// Class names, one per line, in output order (valid until `destroy`).
    pub labels: extern "C" fn(instance: *mut c_void) -> *const c_char,
    /// `audio`: `[clips, samples]` mono at `sample_rate`; writes `clips x labels` probabilities
    /// (each row sums to 1) to `out`.
    pub judge: extern "C" fn(instance: *mut c_void, audio: Matrix, out: *mut f32) -> i32,
}

/// What [`ENTRY_SYMBOL`] returns. `abi_version` must stay the first field in every ABI version.
#[repr(C)]
pub struct PluginDescriptor {
    pub abi_version: u32,
    pub kind: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    /// Creates an instance from a JSON settings string. Never null: a failed creation returns an
    /// instance whose `last_error` says why (and which the host then destroys).
    pub create: extern "C" fn(config_json: *const c_char) -> *mut c_void,
    pub destroy: extern "C" fn(instance: *mut c_void),
    /// The message of the last failed call (or failed creation), or null.
    pub last_error: extern "C" fn(instance: *mut c_void) -> *const c_char,
    /// Non-null for `KIND_METHOD`.
    pub method: *const MethodVTable,
    /// Non-null for `KIND_PROBE`.
    pub probe: *const ProbeVTable,
    /// Non-null for `KIND_JUDGE`.
    pub judge: *const JudgeVTable,
}

// The descriptor holds only pointers to statics.
unsafe impl Sync for PluginDescriptor {}
unsafe impl Send for PluginDescriptor {}
unsafe impl Sync for MethodVTable {}
unsafe impl Sync for ProbeVTable {}
unsafe impl Sync for JudgeVTable {}

/// Which layer component an edit is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Attn = 0,
    CrossAttn = 1,
    Mlp = 2,
}

/// Edits a method plugin makes to one layer's components (see [`EditsHandle`]).
pub struct Edits<'a> {
    handle: &'a EditsHandle,
}

impl<'a> Edits<'a> {
    fn view(t: TensorMut) -> ArrayViewMut3<'a, f32> {
        // SAFETY: the host hands out a live, exclusive [rows, positions, width] buffer for this call.
        unsafe { ArrayViewMut3::from_shape_ptr((t.rows as usize, t.positions as usize, t.width as usize), t.data) }
    }
    /// The term added to `component`'s output (zero until changed).
    pub fn add(&mut self, component: Component) -> ArrayViewMut3<'a, f32> {
        Self::view((self.handle.add)(self.handle.host, component as u32))
    }
    /// The replacement values for `component`'s output (used where the mask is 1).
    pub fn replace(&mut self, component: Component) -> ArrayViewMut3<'a, f32> {
        Self::view((self.handle.replace)(self.handle.host, component as u32))
    }
    /// The replace mask for `component` (1 replace, 0 keep).
    pub fn mask(&mut self, component: Component) -> ArrayViewMut3<'a, f32> {
        Self::view((self.handle.mask)(self.handle.host, component as u32))
    }
}

/// A method plugin: hooks during generation, and run events. Every method but `create` and
/// `hook_points` has a default that does nothing.
pub trait Method: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    /// Builds the plugin from its settings (the YAML block of the run config, as JSON).
    fn create(config: &str) -> Result<Self, String>;
    /// The hook points to be called at, e.g. `blocks.3.hook_resid_post`.
    fn hook_points(&self) -> Vec<String>;
    fn on_residual(&mut self, _ctx: &HookContext, _point: &str, _h: ArrayViewMut3<'_, f32>) -> Result<(), String> {
        Ok(())
    }
    fn on_component(&mut self, _ctx: &HookContext, _point: &str, _out: ArrayView3<'_, f32>) -> Result<(), String> {
        Ok(())
    }
    fn edit_components(&mut self, _ctx: &HookContext, _layer: usize, _edits: &mut Edits<'_>) -> Result<(), String> {
        Ok(())
    }
    fn run_start(&mut self, _info: &str) -> Result<(), String> {
        Ok(())
    }
    fn step_end(&mut self, _step: u64) -> Result<(), String> {
        Ok(())
    }
    fn run_end(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Exit the decoder after this many layers (final LayerNorm and heads on that layer's residual,
    /// tokens fed back): DecoderLens. `None` runs every layer.
    fn exit_after(&self) -> Option<usize> {
        None
    }
}

/// A probe model: a classifier over feature vectors (one per sample).
pub trait ProbeModel: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    fn create(config: &str) -> Result<Self, String>;
    fn fit(&mut self, features: ArrayView2<'_, f32>, labels: &[i64], classes: usize) -> Result<(), String>;
    fn predict(&mut self, features: ArrayView2<'_, f32>) -> Result<Vec<i64>, String>;
    /// `[rows, classes]` scores.
    fn scores(&mut self, features: ArrayView2<'_, f32>) -> Result<ndarray::Array2<f32>, String>;
    fn save(&mut self, path: &str) -> Result<(), String>;
    fn load(&mut self, path: &str) -> Result<(), String>;
}

/// A judge: class probabilities of audio clips (an audio classifier), used to score generations.
pub trait Judge: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    fn create(config: &str) -> Result<Self, String>;
    /// The sample rate `judge` expects.
    fn sample_rate(&self) -> u32;
    /// Class names in output order.
    fn labels(&self) -> Vec<String>;
    /// `[clips, samples]` mono audio at `sample_rate()` -> `[clips, labels]` probabilities.
    fn judge(&mut self, audio: ArrayView2<'_, f32>) -> Result<ndarray::Array2<f32>, String>;
}

/// What an instance pointer points to (SDK-internal; public for the export macros).
#[doc(hidden)]
pub struct Instance<T> {
    pub plugin: Option<T>,
    pub error: Option<CString>,
    pub hook_points: CString,
}

thread_local! {
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Panics in a plugin are reported through the host as errors, so the plugin's own std (a cdylib
/// has its own) records where they happened instead of printing to the host's stderr.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_AT.with(|p| *p.borrow_mut() = at);
        }))
    });
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    match PANIC_AT.with(|p| p.borrow_mut().take()) {
        Some(at) => format!("plugin panicked: {what} (at {at})"),
        None => format!("plugin panicked: {what}"),
    }
}

fn c_string(s: String) -> CString {
    CString::new(s.replace('\0', " ")).expect("no interior NUL")
}

/// SDK-internal runtime of the export macros.
#[doc(hidden)]
// Called only by the `extern "C"` functions that `export_plugin!` writes, with the pointers the host
// passed them under the C ABI's contract (plugin_abi.h): live, of the stated shapes, for the call's
// duration. Marking each `unsafe` would only move the same promise into the macro's expansion.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub mod rt {
    use super::*;

    /// Runs `f` on the instance, catching panics and storing any error; returns OK or ERROR.
    pub fn call<T>(instance: *mut c_void, f: impl FnOnce(&mut T) -> Result<(), String>) -> i32 {
        if instance.is_null() {
            return ERROR;
        }
        // SAFETY: the host only passes instances this plugin's `create` returned.
        let inst = unsafe { &mut *(instance as *mut Instance<T>) };
        let Some(plugin) = inst.plugin.as_mut() else {
            return ERROR;
        };
        match catch_unwind(AssertUnwindSafe(|| f(plugin))) {
            Ok(Ok(())) => OK,
            Ok(Err(e)) => {
                inst.error = Some(c_string(e));
                ERROR
            }
            Err(p) => {
                inst.error = Some(c_string(panic_message(p)));
                ERROR
            }
        }
    }

    pub fn create<T>(config: *const c_char, make: fn(&str) -> Result<T, String>, points: fn(&T) -> Vec<String>) -> *mut c_void {
        quiet_panics();
        let result = catch_unwind(|| {
            let config = if config.is_null() { "" } else { unsafe { CStr::from_ptr(config) }.to_str().map_err(|e| e.to_string())? };
            make(config)
        });
        let inst = match result {
            Ok(Ok(plugin)) => {
                let hook_points = catch_unwind(AssertUnwindSafe(|| points(&plugin).join("\n"))).unwrap_or_default();
                Instance { plugin: Some(plugin), error: None, hook_points: c_string(hook_points) }
            }
            Ok(Err(e)) => Instance { plugin: None, error: Some(c_string(e)), hook_points: CString::default() },
            Err(p) => Instance { plugin: None, error: Some(c_string(panic_message(p))), hook_points: CString::default() },
        };
        Box::into_raw(Box::new(inst)) as *mut c_void
    }

    pub fn destroy<T>(instance: *mut c_void) {
        if !instance.is_null() {
            // SAFETY: created by `create` with Box::into_raw; the host destroys each instance once.
            let _ = catch_unwind(|| drop(unsafe { Box::from_raw(instance as *mut Instance<T>) }));
        }
    }

    pub fn last_error<T>(instance: *mut c_void) -> *const c_char {
        if instance.is_null() {
            return std::ptr::null();
        }
        let inst = unsafe { &*(instance as *const Instance<T>) };
        inst.error.as_ref().map_or(std::ptr::null(), |e| e.as_ptr())
    }

    pub fn hook_points<T>(instance: *mut c_void) -> *const c_char {
        let inst = unsafe { &*(instance as *const Instance<T>) };
        inst.hook_points.as_ptr()
    }

    pub fn str_arg<'a>(p: *const c_char) -> Result<&'a str, String> {
        if p.is_null() {
            return Err("null string from the host".into());
        }
        unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| e.to_string())
    }

    pub fn view_mut<'a>(t: TensorMut) -> ArrayViewMut3<'a, f32> {
        // SAFETY: the host passes a live exclusive buffer of this shape for the call's duration.
        unsafe { ArrayViewMut3::from_shape_ptr((t.rows as usize, t.positions as usize, t.width as usize), t.data) }
    }

    pub fn view<'a>(t: Tensor) -> ArrayView3<'a, f32> {
        unsafe { ArrayView3::from_shape_ptr((t.rows as usize, t.positions as usize, t.width as usize), t.data) }
    }

    pub fn matrix<'a>(m: Matrix) -> ArrayView2<'a, f32> {
        unsafe { ArrayView2::from_shape_ptr((m.rows as usize, m.cols as usize), m.data) }
    }

    pub fn edits(handle: *const EditsHandle) -> Edits<'static> {
        Edits { handle: unsafe { &*handle } }
    }
}

/// Exports a [`Method`] implementation as this library's plugin.
#[macro_export]
macro_rules! export_method {
    ($t:ty) => {
        const _: () = {
            use $crate::rt;
            use std::ffi::{c_char, c_void};
            extern "C" fn create(config: *const c_char) -> *mut c_void {
                rt::create::<$t>(config, <$t as $crate::Method>::create, <$t as $crate::Method>::hook_points)
            }
            extern "C" fn destroy(i: *mut c_void) {
                rt::destroy::<$t>(i)
            }
            extern "C" fn last_error(i: *mut c_void) -> *const c_char {
                rt::last_error::<$t>(i)
            }
            extern "C" fn hook_points(i: *mut c_void) -> *const c_char {
                rt::hook_points::<$t>(i)
            }
            extern "C" fn on_residual(i: *mut c_void, ctx: *const $crate::HookContext, point: *const c_char, h: $crate::TensorMut) -> i32 {
                rt::call::<$t>(i, |p| $crate::Method::on_residual(p, unsafe { &*ctx }, rt::str_arg(point)?, rt::view_mut(h)))
            }
            extern "C" fn on_component(i: *mut c_void, ctx: *const $crate::HookContext, point: *const c_char, out: $crate::Tensor) -> i32 {
                rt::call::<$t>(i, |p| $crate::Method::on_component(p, unsafe { &*ctx }, rt::str_arg(point)?, rt::view(out)))
            }
            extern "C" fn edit_components(i: *mut c_void, ctx: *const $crate::HookContext, layer: u64, edits: *const $crate::EditsHandle) -> i32 {
                rt::call::<$t>(i, |p| $crate::Method::edit_components(p, unsafe { &*ctx }, layer as usize, &mut rt::edits(edits)))
            }
            extern "C" fn run_start(i: *mut c_void, info: *const c_char) -> i32 {
                rt::call::<$t>(i, |p| $crate::Method::run_start(p, rt::str_arg(info)?))
            }
            extern "C" fn step_end(i: *mut c_void, step: u64) -> i32 {
                rt::call::<$t>(i, |p| $crate::Method::step_end(p, step))
            }
            extern "C" fn run_end(i: *mut c_void) -> i32 {
                rt::call::<$t>(i, |p| $crate::Method::run_end(p))
            }
            extern "C" fn exit_after(i: *mut c_void) -> u64 {
                let mut k = 0;
                rt::call::<$t>(i, |p| {
                    k = $crate::Method::exit_after(p).unwrap_or(0) as u64;
                    Ok(())
                });
                k
            }
            static VTABLE: $crate::MethodVTable = $crate::MethodVTable {
                hook_points, on_residual, on_component, edit_components, run_start, step_end, run_end, exit_after,
            };
            static DESCRIPTOR: std::sync::OnceLock<$crate::PluginDescriptor> = std::sync::OnceLock::new();
            #[no_mangle]
            pub extern "C" fn musicgen_interp_plugin() -> *const $crate::PluginDescriptor {
                DESCRIPTOR.get_or_init(|| $crate::PluginDescriptor {
                    abi_version: $crate::ABI_VERSION,
                    kind: $crate::KIND_METHOD,
                    name: $crate::leak_c(<$t as $crate::Method>::NAME),
                    version: $crate::leak_c(<$t as $crate::Method>::VERSION),
                    create, destroy, last_error,
                    method: &VTABLE,
                    probe: std::ptr::null(),
                    judge: std::ptr::null(),
                })
            }
        };
    };
}

/// Exports a [`ProbeModel`] implementation as this library's plugin.
#[macro_export]
macro_rules! export_probe {
    ($t:ty) => {
        const _: () = {
            use $crate::rt;
            use std::ffi::{c_char, c_void};
            fn no_points(_: &$t) -> Vec<String> {
                Vec::new()
            }
            extern "C" fn create(config: *const c_char) -> *mut c_void {
                rt::create::<$t>(config, <$t as $crate::ProbeModel>::create, no_points)
            }
            extern "C" fn destroy(i: *mut c_void) {
                rt::destroy::<$t>(i)
            }
            extern "C" fn last_error(i: *mut c_void) -> *const c_char {
                rt::last_error::<$t>(i)
            }
            extern "C" fn fit(i: *mut c_void, x: $crate::Matrix, labels: *const i64, classes: u64) -> i32 {
                rt::call::<$t>(i, |p| {
                    let y = unsafe { std::slice::from_raw_parts(labels, x.rows as usize) };
                    $crate::ProbeModel::fit(p, rt::matrix(x), y, classes as usize)
                })
            }
            extern "C" fn predict(i: *mut c_void, x: $crate::Matrix, out: *mut i64) -> i32 {
                rt::call::<$t>(i, |p| {
                    let labels = $crate::ProbeModel::predict(p, rt::matrix(x))?;
                    if labels.len() != x.rows as usize {
                        return Err(format!("predict returned {} labels for {} rows", labels.len(), x.rows));
                    }
                    unsafe { std::ptr::copy_nonoverlapping(labels.as_ptr(), out, labels.len()) };
                    Ok(())
                })
            }
            extern "C" fn scores(i: *mut c_void, x: $crate::Matrix, out: *mut f32) -> i32 {
                rt::call::<$t>(i, |p| {
                    let s = $crate::ProbeModel::scores(p, rt::matrix(x))?;
                    let s = s.as_standard_layout();
                    let flat = s.as_slice().expect("standard layout");
                    unsafe { std::ptr::copy_nonoverlapping(flat.as_ptr(), out, flat.len()) };
                    Ok(())
                })
            }
            extern "C" fn save(i: *mut c_void, path: *const c_char) -> i32 {
                rt::call::<$t>(i, |p| $crate::ProbeModel::save(p, rt::str_arg(path)?))
            }
            extern "C" fn load(i: *mut c_void, path: *const c_char) -> i32 {
                rt::call::<$t>(i, |p| $crate::ProbeModel::load(p, rt::str_arg(path)?))
            }
            static VTABLE: $crate::ProbeVTable = $crate::ProbeVTable { fit, predict, scores, save, load };
            static DESCRIPTOR: std::sync::OnceLock<$crate::PluginDescriptor> = std::sync::OnceLock::new();
            #[no_mangle]
            pub extern "C" fn musicgen_interp_plugin() -> *const $crate::PluginDescriptor {
                DESCRIPTOR.get_or_init(|| $crate::PluginDescriptor {
                    abi_version: $crate::ABI_VERSION,
                    kind: $crate::KIND_PROBE,
                    name: $crate::leak_c(<$t as $crate::ProbeModel>::NAME),
                    version: $crate::leak_c(<$t as $crate::ProbeModel>::VERSION),
                    create, destroy, last_error,
                    method: std::ptr::null(),
                    probe: &VTABLE,
                    judge: std::ptr::null(),
                })
            }
        };
    };
}

/// Exports a [`Judge`] implementation as this library's plugin.
#[macro_export]
macro_rules! export_judge {
    ($t:ty) => {
        const _: () = {
            use $crate::rt;
            use std::ffi::{c_char, c_void};
            fn labels_of(j: &$t) -> Vec<String> {
                <$t as $crate::Judge>::labels(j)
            }
            extern "C" fn create(config: *const c_char) -> *mut c_void {
                rt::create::<$t>(config, <$t as $crate::Judge>::create, labels_of)
            }
            extern "C" fn destroy(i: *mut c_void) {
                rt::destroy::<$t>(i)
            }
            extern "C" fn last_error(i: *mut c_void) -> *const c_char {
                rt::last_error::<$t>(i)
            }
            extern "C" fn sample_rate(i: *mut c_void) -> u32 {
                let mut rate = 0;
                rt::call::<$t>(i, |p| {
                    rate = $crate::Judge::sample_rate(p);
                    Ok(())
                });
                rate
            }
            extern "C" fn labels(i: *mut c_void) -> *const c_char {
                rt::hook_points::<$t>(i)
            }
            extern "C" fn judge(i: *mut c_void, audio: $crate::Matrix, out: *mut f32) -> i32 {
                rt::call::<$t>(i, |p| {
                    let probs = $crate::Judge::judge(p, rt::matrix(audio))?;
                    let classes = $crate::Judge::labels(p).len();
                    if probs.dim() != (audio.rows as usize, classes) {
                        return Err(format!("judge returned {:?} probabilities for {} clips and {classes} labels", probs.dim(), audio.rows));
                    }
                    let probs = probs.as_standard_layout();
                    let flat = probs.as_slice().expect("standard layout");
                    unsafe { std::ptr::copy_nonoverlapping(flat.as_ptr(), out, flat.len()) };
                    Ok(())
                })
            }
            static VTABLE: $crate::JudgeVTable = $crate::JudgeVTable { sample_rate, labels, judge };
            static DESCRIPTOR: std::sync::OnceLock<$crate::PluginDescriptor> = std::sync::OnceLock::new();
            #[no_mangle]
            pub extern "C" fn musicgen_interp_plugin() -> *const $crate::PluginDescriptor {
                DESCRIPTOR.get_or_init(|| $crate::PluginDescriptor {
                    abi_version: $crate::ABI_VERSION,
                    kind: $crate::KIND_JUDGE,
                    name: $crate::leak_c(<$t as $crate::Judge>::NAME),
                    version: $crate::leak_c(<$t as $crate::Judge>::VERSION),
                    create, destroy, last_error,
                    method: std::ptr::null(),
                    probe: std::ptr::null(),
                    judge: &VTABLE,
                })
            }
        };
    };
}

/// A `'static` C string for descriptor fields (made once per plugin load).
#[doc(hidden)]
pub fn leak_c(s: &str) -> *const c_char {
    Box::leak(c_string(s.to_string()).into_boxed_c_str()).as_ptr()
}

/// Reads a C string the host or plugin passed (helper for hosts).
///
/// # Safety
/// `p` must be null or a valid NUL-terminated string.
pub unsafe fn read_c(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}
