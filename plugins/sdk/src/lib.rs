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

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use ndarray;

pub mod names;

/// What the host offers every plugin at creation (ABI 4: `create`'s second argument, JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// The host's name and version, e.g. `musicgen-interp 0.1.0`.
    pub host: String,
    /// The onnxruntime shared library the host runs on (a plugin that runs its own graphs joins it
    /// rather than loading a second copy), if it runs on one.
    pub onnxruntime_library: Option<String>,
    /// The whole JSON object, for keys newer than this SDK.
    pub raw: String,
}

impl HostInfo {
    /// Reads the host's JSON (an empty string gives the default: a host that offers nothing).
    pub fn parse(json: &str) -> Result<HostInfo, String> {
        if json.trim().is_empty() {
            return Ok(HostInfo::default());
        }
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("the host's information is not JSON: {e}"))?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Ok(HostInfo { host: text("host").unwrap_or_default(), onnxruntime_library: text("onnxruntime_library"), raw: json.to_string() })
    }
}

static HOST_INFO: std::sync::Mutex<Option<HostInfo>> = std::sync::Mutex::new(None);

fn set_host_info(info: HostInfo) {
    *HOST_INFO.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
}

/// What the host said of itself when it last created an instance of this plugin (call it from
/// `create` or later).
pub fn host_info() -> HostInfo {
    HOST_INFO.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
}
pub mod npy;
pub use names::{Component, HookPoint, NameError, Site};
use ndarray::{ArrayView2, ArrayView3, ArrayViewMut3};

/// The plugin ABI version this SDK speaks. A host refuses plugins whose descriptor says otherwise.
/// Version 2 added the judge kind (the descriptor's `judge` field) and the methods' `exit_after`;
/// version 3 gives a probe's `scores` the length of each row of its output (the host's class count),
/// so a plugin never writes past the host's buffer; version 4 gives `create` a second JSON string,
/// what the host offers every plugin ([`HostInfo`]: its name and version, the onnxruntime library it
/// runs on), read with [`host_info`].
pub const ABI_VERSION: u32 = 4;

/// The symbol every plugin exports: `extern "C" fn() -> *const PluginDescriptor`.
pub const ENTRY_SYMBOL: &[u8] = b"musicgen_interp_plugin\0";

// The C ABI contract. Every pointer the host passes to a plugin function, and every pointer a
// plugin function returns, follows these rules; the `unsafe` code of both sides relies on them.
//
// - `instance` is null or a value this plugin's `create` returned and `destroy` has not yet been
//   given; the host makes one call at a time on an instance (never two concurrently).
// - Strings are null or NUL-terminated, unchanged for the call's duration. A string a plugin returns
//   (`name`, `version`, `last_error`, `hook_points`, `labels`) stays valid until the next call on the
//   same instance (`name` / `version`: while the library is loaded).
// - `TensorMut` / `Tensor` / `Matrix`: `data` is non-null and aligned for `f32` and points to
//   `rows * positions * width` (`rows * cols`) values, row-major, for the call's duration; a
//   `TensorMut` is the only access to those values until the call returns.
// - `labels` of `fit` holds `features.rows` values; `out` of `predict` has room for `features.rows`
//   values, of `scores` for `features.rows * classes`, of `judge` for `audio.rows * labels`, where
//   `labels` is the count of lines `labels` returned.
// - `ctx` and `edits` point to live values for the call's duration; the tensors `EditsHandle`'s
//   functions return follow the `TensorMut` rule until `edit_components` returns.

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
/// An unknown `component` gets an empty tensor (non-null dangling `data`, all sizes 0) and the
/// host fails the call with an error naming the value.
///
/// The functions are `unsafe`: `host` must be the handle's own `host` pointer, called during the
/// `edit_components` call that received the handle.
#[repr(C)]
pub struct EditsHandle {
    pub host: *mut c_void,
    pub add: unsafe extern "C" fn(host: *mut c_void, component: u32) -> TensorMut,
    pub replace: unsafe extern "C" fn(host: *mut c_void, component: u32) -> TensorMut,
    pub mask: unsafe extern "C" fn(host: *mut c_void, component: u32) -> TensorMut,
}

/// Function pointers of a method plugin. `instance` is what `create` returned. Every function is
/// `unsafe`: its arguments must follow the C ABI contract above.
#[repr(C)]
pub struct MethodVTable {
    /// Hook point names this instance wants, one per line (valid until `destroy`).
    pub hook_points: unsafe extern "C" fn(instance: *mut c_void) -> *const c_char,
    pub on_residual: unsafe extern "C" fn(instance: *mut c_void, ctx: *const HookContext, point: *const c_char, h: TensorMut) -> i32,
    pub on_component: unsafe extern "C" fn(instance: *mut c_void, ctx: *const HookContext, point: *const c_char, out: Tensor) -> i32,
    pub edit_components: unsafe extern "C" fn(instance: *mut c_void, ctx: *const HookContext, layer: u64, edits: *const EditsHandle) -> i32,
    /// `info`: JSON with the run's settings and `output_dir`.
    pub run_start: unsafe extern "C" fn(instance: *mut c_void, info: *const c_char) -> i32,
    pub step_end: unsafe extern "C" fn(instance: *mut c_void, step: u64) -> i32,
    pub run_end: unsafe extern "C" fn(instance: *mut c_void) -> i32,
    /// Layers the decoder runs before the final LayerNorm and heads; 0 = all (DecoderLens's early
    /// exit is a plugin that answers k).
    pub exit_after: unsafe extern "C" fn(instance: *mut c_void) -> u64,
}

/// Function pointers of a probe-model plugin (`unsafe`: arguments under the C ABI contract).
#[repr(C)]
pub struct ProbeVTable {
    /// `labels`: `features.rows` class ids in `0 .. classes`.
    pub fit: unsafe extern "C" fn(instance: *mut c_void, features: Matrix, labels: *const i64, classes: u64) -> i32,
    /// Writes `features.rows` class ids to `out`.
    pub predict: unsafe extern "C" fn(instance: *mut c_void, features: Matrix, out: *mut i64) -> i32,
    /// Writes `features.rows x classes` scores (probabilities or decision values) to `out`; a
    /// plugin whose model has another class count fails the call instead.
    pub scores: unsafe extern "C" fn(instance: *mut c_void, features: Matrix, classes: u64, out: *mut f32) -> i32,
    pub save: unsafe extern "C" fn(instance: *mut c_void, path: *const c_char) -> i32,
    pub load: unsafe extern "C" fn(instance: *mut c_void, path: *const c_char) -> i32,
}

/// Function pointers of a judge plugin: an audio classifier (`unsafe`: arguments under the C ABI
/// contract).
#[repr(C)]
pub struct JudgeVTable {
    /// The sample rate the judge wants its audio at (the host resamples).
    pub sample_rate: unsafe extern "C" fn(instance: *mut c_void) -> u32,
    /// Class names, one per line, in output order (valid until `destroy`).
    pub labels: unsafe extern "C" fn(instance: *mut c_void) -> *const c_char,
    /// `audio`: `[clips, samples]` mono at `sample_rate`; writes `clips x labels` probabilities
    /// (each row sums to 1) to `out`, `labels` being the count of lines `labels` returned.
    pub judge: unsafe extern "C" fn(instance: *mut c_void, audio: Matrix, out: *mut f32) -> i32,
}

/// What [`ENTRY_SYMBOL`] returns. `abi_version` must stay the first field in every ABI version.
#[repr(C)]
pub struct PluginDescriptor {
    pub abi_version: u32,
    pub kind: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    /// Creates an instance from a JSON settings string and the host's JSON [`HostInfo`]. Never null:
    /// a failed creation returns an instance whose `last_error` says why (and which the host then
    /// destroys).
    pub create: unsafe extern "C" fn(config_json: *const c_char, host_json: *const c_char) -> *mut c_void,
    /// Frees an instance; the host makes no call on it afterwards.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// The message of the last failed call (or failed creation), or null.
    pub last_error: unsafe extern "C" fn(instance: *mut c_void) -> *const c_char,
    /// Non-null for `KIND_METHOD`.
    pub method: *const MethodVTable,
    /// Non-null for `KIND_PROBE`.
    pub probe: *const ProbeVTable,
    /// Non-null for `KIND_JUDGE`.
    pub judge: *const JudgeVTable,
}

// SAFETY: a descriptor's pointers are to immutable data that lives as long as the library: the
// `'static` C strings of `leak_c` and the `static` vtables; nothing is written through them, so
// sharing or sending the descriptor between threads reads the same constants.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: as for `Sync` above: only pointers to immutable statics (a `OnceLock` static needs both).
unsafe impl Send for PluginDescriptor {}
// The vtables hold only function pointers, which are `Send + Sync` whatever their signatures: they
// need no `unsafe impl`.

/// Edits a method plugin makes to one layer's components (see [`EditsHandle`]).
///
/// Made only by [`rt::edits`], whose caller promises that the handle and the tensors its functions
/// return follow the C ABI contract for `'a`.
pub struct Edits<'a> {
    handle: &'a EditsHandle,
}

impl Edits<'_> {
    /// The view of one edit buffer, borrowing `self` mutably: one view at a time per `Edits`, so
    /// asking twice for the same buffer cannot give two live `&mut` views of it.
    fn view(&mut self, get: unsafe extern "C" fn(*mut c_void, u32) -> TensorMut, component: Component) -> ArrayViewMut3<'_, f32> {
        // SAFETY: `self.handle` came through `rt::edits`, whose caller promised the C ABI contract:
        // `get` is one of the handle's functions, called with the handle's own `host` during the
        // `edit_components` call that lasts at least as long as `self`.
        let t = unsafe { get(self.handle.host, component as u32) };
        // SAFETY: by the same contract the tensor is live, aligned and `rows * positions * width`
        // values long until `edit_components` returns, which outlives this borrow of `self`; the
        // host hands out no other access to it meanwhile, and the `&mut self` borrow keeps this
        // `Edits` from handing out a second view while this one lives.
        unsafe { rt::view_mut(t) }
    }
    /// The term added to `component`'s output (zero until changed).
    pub fn add(&mut self, component: Component) -> ArrayViewMut3<'_, f32> {
        self.view(self.handle.add, component)
    }
    /// The replacement values for `component`'s output (used where the mask is 1).
    pub fn replace(&mut self, component: Component) -> ArrayViewMut3<'_, f32> {
        self.view(self.handle.replace, component)
    }
    /// The replace mask for `component` (1 replace, 0 keep).
    pub fn mask(&mut self, component: Component) -> ArrayViewMut3<'_, f32> {
        self.view(self.handle.mask, component)
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
///
/// Every function that reads through a pointer the host passed is `unsafe`: the `extern "C"`
/// functions that `export_method!` / `export_probe!` / `export_judge!` write (themselves `unsafe`,
/// see the vtables) call them with the host's arguments, whose validity the C ABI contract (at the
/// top of this file) promises.
#[doc(hidden)]
pub mod rt {
    use super::*;

    /// Runs `f` on the instance, catching panics and storing any error; returns OK or ERROR.
    ///
    /// # Safety
    /// `instance` must be null or a pointer `create::<T>` returned that `destroy::<T>` has not been
    /// given, and no other call may use the same instance until this one returns.
    pub unsafe fn call<T>(instance: *mut c_void, f: impl FnOnce(&mut T) -> Result<(), String>) -> i32 {
        if instance.is_null() {
            return ERROR;
        }
        // SAFETY: non-null, so by this function's contract a live `Box<Instance<T>>` that `create`
        // leaked, used by no other call now: a unique reference for this call is sound.
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

    /// Makes an instance (never null: a failed creation keeps its error for `last_error`).
    ///
    /// # Safety
    /// `config` and `host` must each be null or a NUL-terminated string left unchanged until this
    /// returns.
    pub unsafe fn create<T>(config: *const c_char, host: *const c_char, make: fn(&str) -> Result<T, String>, points: fn(&T) -> Vec<String>) -> *mut c_void {
        quiet_panics();
        let result = catch_unwind(|| {
            let text = |p: *const c_char| -> Result<&str, String> {
                if p.is_null() {
                    return Ok("");
                }
                // SAFETY: non-null, so by this function's contract a NUL-terminated string that
                // stays unchanged while the `&str` (dropped before `create` returns) lives.
                unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| e.to_string())
            };
            crate::set_host_info(crate::HostInfo::parse(text(host)?)?);
            make(text(config)?)
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

    /// Frees an instance.
    ///
    /// # Safety
    /// `instance` must be null or a pointer `create::<T>` returned, given here once, with no call
    /// on it running now or made afterwards.
    pub unsafe fn destroy<T>(instance: *mut c_void) {
        if !instance.is_null() {
            // SAFETY: by this function's contract `instance` is the `Box::into_raw` of `create::<T>`,
            // freed only here, once, and unused afterwards: taking the box back is sound.
            let _ = catch_unwind(|| drop(unsafe { Box::from_raw(instance as *mut Instance<T>) }));
        }
    }

    /// The last error's message, or null; valid until the next call on the instance.
    ///
    /// # Safety
    /// As for [`call`].
    pub unsafe fn last_error<T>(instance: *mut c_void) -> *const c_char {
        if instance.is_null() {
            return std::ptr::null();
        }
        // SAFETY: non-null, so by this function's contract a live `Instance<T>` from `create` that
        // no other call uses now; only read here.
        let inst = unsafe { &*(instance as *const Instance<T>) };
        inst.error.as_ref().map_or(std::ptr::null(), |e| e.as_ptr())
    }

    /// The hook points (a method) or labels (a judge) listed at creation, one per line; valid until
    /// `destroy`. Null for a null instance.
    ///
    /// # Safety
    /// As for [`call`].
    pub unsafe fn hook_points<T>(instance: *mut c_void) -> *const c_char {
        if instance.is_null() {
            return std::ptr::null();
        }
        // SAFETY: non-null, so by this function's contract a live `Instance<T>` from `create` that
        // no other call uses now; only read here.
        let inst = unsafe { &*(instance as *const Instance<T>) };
        inst.hook_points.as_ptr()
    }

    /// How many lines [`hook_points`] lists: a judge's label count, as the host counts it.
    ///
    /// # Safety
    /// As for [`call`].
    pub unsafe fn listed<T>(instance: *mut c_void) -> usize {
        if instance.is_null() {
            return 0;
        }
        // SAFETY: as in `hook_points`.
        let inst = unsafe { &*(instance as *const Instance<T>) };
        inst.hook_points.to_string_lossy().lines().count()
    }

    /// A string argument (an error for null or invalid UTF-8).
    ///
    /// # Safety
    /// `p` must be null or a NUL-terminated string left unchanged for `'a`.
    pub unsafe fn str_arg<'a>(p: *const c_char) -> Result<&'a str, String> {
        if p.is_null() {
            return Err("null string from the host".into());
        }
        // SAFETY: non-null, so by this function's contract NUL-terminated and unchanged for `'a`.
        unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| e.to_string())
    }

    /// The hook context (an error for null).
    ///
    /// # Safety
    /// `ctx` must be null or point to a `HookContext` left unchanged for `'a`.
    pub unsafe fn context<'a>(ctx: *const HookContext) -> Result<&'a HookContext, String> {
        // SAFETY: by this function's contract null (then `None`) or a live, aligned `HookContext`
        // that nothing writes during `'a`.
        unsafe { ctx.as_ref() }.ok_or_else(|| "null hook context from the host".into())
    }

    /// `rows * positions * width` as a length, if it fits.
    fn len3(rows: u64, positions: u64, width: u64) -> usize {
        let n = rows.checked_mul(positions).and_then(|n| n.checked_mul(width)).and_then(|n| usize::try_from(n).ok());
        n.filter(|&n| n <= isize::MAX as usize / std::mem::size_of::<f32>()).expect("tensor size overflows the address space")
    }

    /// A mutable view of the host's activation.
    ///
    /// # Safety
    /// `t.data` must be non-null, aligned, and point to `rows * positions * width` `f32`s, row-major,
    /// valid for reads and writes and accessed through nothing else during `'a`.
    pub unsafe fn view_mut<'a>(t: TensorMut) -> ArrayViewMut3<'a, f32> {
        let shape = (t.rows as usize, t.positions as usize, t.width as usize);
        len3(t.rows, t.positions, t.width);
        // SAFETY: by this function's contract `data` is non-null, aligned and exclusively ours for
        // `'a` over exactly the elements of this standard-layout shape, whose byte size `len3`
        // checked fits in `isize`.
        unsafe { ArrayViewMut3::from_shape_ptr(shape, t.data) }
    }

    /// A read-only view of the host's activation.
    ///
    /// # Safety
    /// `t.data` must be non-null, aligned, and point to `rows * positions * width` `f32`s, row-major,
    /// that nothing writes during `'a`.
    pub unsafe fn view<'a>(t: Tensor) -> ArrayView3<'a, f32> {
        let shape = (t.rows as usize, t.positions as usize, t.width as usize);
        len3(t.rows, t.positions, t.width);
        // SAFETY: by this function's contract `data` is non-null, aligned, readable and unchanged
        // for `'a` over exactly the elements of this shape, whose byte size `len3` checked.
        unsafe { ArrayView3::from_shape_ptr(shape, t.data) }
    }

    /// A read-only view of the host's matrix.
    ///
    /// # Safety
    /// `m.data` must be non-null, aligned, and point to `rows * cols` `f32`s, row-major, that
    /// nothing writes during `'a`.
    pub unsafe fn matrix<'a>(m: Matrix) -> ArrayView2<'a, f32> {
        let shape = (m.rows as usize, m.cols as usize);
        len3(m.rows, m.cols, 1);
        // SAFETY: by this function's contract `data` is non-null, aligned, readable and unchanged
        // for `'a` over exactly the elements of this shape, whose byte size `len3` checked.
        unsafe { ArrayView2::from_shape_ptr(shape, m.data) }
    }

    /// The probe's `labels` argument: `rows` class ids.
    ///
    /// # Safety
    /// `labels` must be non-null, aligned, and point to `rows` `i64`s that nothing writes during `'a`.
    pub unsafe fn labels<'a>(labels: *const i64, rows: u64) -> Result<&'a [i64], String> {
        if labels.is_null() {
            return Err("null labels from the host".into());
        }
        let rows = usize::try_from(rows).map_err(|_| format!("{rows} labels do not fit in memory"))?;
        // SAFETY: non-null, so by this function's contract aligned, `rows` values long, readable
        // and unchanged for `'a`; a live buffer of that many `i64`s fits in `isize` bytes.
        Ok(unsafe { std::slice::from_raw_parts(labels, rows) })
    }

    /// The component edits of one `edit_components` call.
    ///
    /// # Safety
    /// `handle` must be non-null, point to an `EditsHandle` left unchanged for `'a`, and its functions,
    /// called with its `host`, must return tensors that follow [`view_mut`]'s contract for `'a`
    /// (the C ABI contract for the `edit_components` call that lasts `'a`).
    pub unsafe fn edits<'a>(handle: *const EditsHandle) -> Result<Edits<'a>, String> {
        // SAFETY: by this function's contract null (then `None`) or a live handle for `'a`.
        let handle = unsafe { handle.as_ref() }.ok_or("null edits handle from the host")?;
        Ok(Edits { handle })
    }

    /// Writes `values` to the host's `out`, which has room for exactly `room` values; a different
    /// count (the plugin's own result) is an error naming `what`, and nothing is written.
    ///
    /// # Safety
    /// `out` must be null or aligned and valid for writes of `room` values of `E`, accessed through
    /// nothing else until this returns.
    pub unsafe fn write_out<E: Copy>(out: *mut E, room: u64, values: &[E], what: &str) -> Result<(), String> {
        if values.len() as u64 != room {
            return Err(format!("{what}: {} values for the host's {room}", values.len()));
        }
        if values.is_empty() {
            return Ok(());
        }
        if out.is_null() {
            return Err("null output buffer from the host".into());
        }
        // SAFETY: `out` is non-null, so by this function's contract aligned and writable for `room`
        // values, which is exactly `values.len()` (checked above); a host buffer does not overlap
        // the plugin's freshly computed `values`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, values.len()) };
        Ok(())
    }
}

// The `extern "C"` functions the export macros write are `unsafe`: only the host calls them, through
// the descriptor's vtables, and the C ABI contract (at the top of this file) is its promise about
// their arguments. Each one's `unsafe` block hands those arguments to the `rt` functions whose
// `# Safety` sections restate the part of the contract they rely on.

/// Exports a [`Method`] implementation as this library's plugin.
#[macro_export]
macro_rules! export_method {
    ($t:ty) => {
        const _: () = {
            use $crate::rt;
            use std::ffi::{c_char, c_void};
            unsafe extern "C" fn create(config: *const c_char, host: *const c_char) -> *mut c_void {
                // SAFETY: C ABI contract: `config` and `host` are each null or a NUL-terminated
                // string, unchanged during this call.
                unsafe { rt::create::<$t>(config, host, <$t as $crate::Method>::create, <$t as $crate::Method>::hook_points) }
            }
            unsafe extern "C" fn destroy(i: *mut c_void) {
                // SAFETY: C ABI contract: `i` is null or from `create`, destroyed once, unused afterwards.
                unsafe { rt::destroy::<$t>(i) }
            }
            unsafe extern "C" fn last_error(i: *mut c_void) -> *const c_char {
                // SAFETY: C ABI contract: `i` is null or a live instance, one call at a time.
                unsafe { rt::last_error::<$t>(i) }
            }
            unsafe extern "C" fn hook_points(i: *mut c_void) -> *const c_char {
                // SAFETY: C ABI contract: `i` is null or a live instance, one call at a time.
                unsafe { rt::hook_points::<$t>(i) }
            }
            unsafe extern "C" fn on_residual(i: *mut c_void, ctx: *const $crate::HookContext, point: *const c_char, h: $crate::TensorMut) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `ctx` and
                // `point` are live and unchanged, and `h` is ours alone, until this call returns,
                // which outlives every borrow the closure makes of them.
                unsafe { rt::call::<$t>(i, |p| $crate::Method::on_residual(p, rt::context(ctx)?, rt::str_arg(point)?, rt::view_mut(h))) }
            }
            unsafe extern "C" fn on_component(i: *mut c_void, ctx: *const $crate::HookContext, point: *const c_char, out: $crate::Tensor) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `ctx`,
                // `point` and `out` are live and unchanged until this call returns, which outlives
                // every borrow the closure makes of them.
                unsafe { rt::call::<$t>(i, |p| $crate::Method::on_component(p, rt::context(ctx)?, rt::str_arg(point)?, rt::view(out))) }
            }
            unsafe extern "C" fn edit_components(i: *mut c_void, ctx: *const $crate::HookContext, layer: u64, edits: *const $crate::EditsHandle) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `ctx` and
                // `edits` are live until this call returns, and the tensors `edits` hands out are
                // ours alone until then; the `Edits` made here is dropped before it returns.
                unsafe {
                    rt::call::<$t>(i, |p| $crate::Method::edit_components(p, rt::context(ctx)?, layer as usize, &mut rt::edits(edits)?))
                }
            }
            unsafe extern "C" fn run_start(i: *mut c_void, info: *const c_char) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `info` is a
                // NUL-terminated string unchanged until this call returns.
                unsafe { rt::call::<$t>(i, |p| $crate::Method::run_start(p, rt::str_arg(info)?)) }
            }
            unsafe extern "C" fn step_end(i: *mut c_void, step: u64) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call.
                unsafe { rt::call::<$t>(i, |p| $crate::Method::step_end(p, step)) }
            }
            unsafe extern "C" fn run_end(i: *mut c_void) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call.
                unsafe { rt::call::<$t>(i, |p| $crate::Method::run_end(p)) }
            }
            unsafe extern "C" fn exit_after(i: *mut c_void) -> u64 {
                let mut k = 0;
                // SAFETY: C ABI contract: `i` is a live instance used by no other call.
                unsafe {
                    rt::call::<$t>(i, |p| {
                        k = $crate::Method::exit_after(p).unwrap_or(0) as u64;
                        Ok(())
                    })
                };
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
            unsafe extern "C" fn create(config: *const c_char, host: *const c_char) -> *mut c_void {
                // SAFETY: C ABI contract: `config` and `host` are each null or a NUL-terminated
                // string, unchanged during this call.
                unsafe { rt::create::<$t>(config, host, <$t as $crate::ProbeModel>::create, no_points) }
            }
            unsafe extern "C" fn destroy(i: *mut c_void) {
                // SAFETY: C ABI contract: `i` is null or from `create`, destroyed once, unused afterwards.
                unsafe { rt::destroy::<$t>(i) }
            }
            unsafe extern "C" fn last_error(i: *mut c_void) -> *const c_char {
                // SAFETY: C ABI contract: `i` is null or a live instance, one call at a time.
                unsafe { rt::last_error::<$t>(i) }
            }
            unsafe extern "C" fn fit(i: *mut c_void, x: $crate::Matrix, labels: *const i64, classes: u64) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `x` and
                // `labels` (`x.rows` values) are live and unchanged until this call returns.
                unsafe { rt::call::<$t>(i, |p| $crate::ProbeModel::fit(p, rt::matrix(x), rt::labels(labels, x.rows)?, classes as usize)) }
            }
            unsafe extern "C" fn predict(i: *mut c_void, x: $crate::Matrix, out: *mut i64) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `x` is live
                // and unchanged, and `out` has room for `x.rows` values, until this call returns.
                unsafe {
                    rt::call::<$t>(i, |p| {
                        let labels = $crate::ProbeModel::predict(p, rt::matrix(x))?;
                        if labels.len() as u64 != x.rows {
                            return Err(format!("predict returned {} labels for {} rows", labels.len(), x.rows));
                        }
                        rt::write_out(out, x.rows, &labels, "predict")
                    })
                }
            }
            unsafe extern "C" fn scores(i: *mut c_void, x: $crate::Matrix, classes: u64, out: *mut f32) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `x` is live
                // and unchanged, and `out` has room for `x.rows * classes` values, until this call
                // returns.
                unsafe {
                    rt::call::<$t>(i, |p| {
                        let s = $crate::ProbeModel::scores(p, rt::matrix(x))?;
                        if s.dim() != (x.rows as usize, classes as usize) {
                            return Err(format!("scores returned {:?} values for {} rows and {classes} classes", s.dim(), x.rows));
                        }
                        let s = s.as_standard_layout();
                        rt::write_out(out, x.rows * classes, s.as_slice().expect("standard layout"), "scores")
                    })
                }
            }
            unsafe extern "C" fn save(i: *mut c_void, path: *const c_char) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `path` is a
                // NUL-terminated string unchanged until this call returns.
                unsafe { rt::call::<$t>(i, |p| $crate::ProbeModel::save(p, rt::str_arg(path)?)) }
            }
            unsafe extern "C" fn load(i: *mut c_void, path: *const c_char) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call; `path` is a
                // NUL-terminated string unchanged until this call returns.
                unsafe { rt::call::<$t>(i, |p| $crate::ProbeModel::load(p, rt::str_arg(path)?)) }
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
            unsafe extern "C" fn create(config: *const c_char, host: *const c_char) -> *mut c_void {
                // SAFETY: C ABI contract: `config` and `host` are each null or a NUL-terminated
                // string, unchanged during this call.
                unsafe { rt::create::<$t>(config, host, <$t as $crate::Judge>::create, labels_of) }
            }
            unsafe extern "C" fn destroy(i: *mut c_void) {
                // SAFETY: C ABI contract: `i` is null or from `create`, destroyed once, unused afterwards.
                unsafe { rt::destroy::<$t>(i) }
            }
            unsafe extern "C" fn last_error(i: *mut c_void) -> *const c_char {
                // SAFETY: C ABI contract: `i` is null or a live instance, one call at a time.
                unsafe { rt::last_error::<$t>(i) }
            }
            unsafe extern "C" fn sample_rate(i: *mut c_void) -> u32 {
                let mut rate = 0;
                // SAFETY: C ABI contract: `i` is a live instance used by no other call.
                unsafe {
                    rt::call::<$t>(i, |p| {
                        rate = $crate::Judge::sample_rate(p);
                        Ok(())
                    })
                };
                rate
            }
            unsafe extern "C" fn labels(i: *mut c_void) -> *const c_char {
                // SAFETY: C ABI contract: `i` is null or a live instance, one call at a time.
                unsafe { rt::hook_points::<$t>(i) }
            }
            unsafe extern "C" fn judge(i: *mut c_void, audio: $crate::Matrix, out: *mut f32) -> i32 {
                // SAFETY: C ABI contract: `i` is a live instance used by no other call (read twice
                // here, one call after the other); `audio` is live and unchanged, and `out` has
                // room for `audio.rows` times as many values as `labels` listed lines, until this
                // call returns.
                unsafe {
                    let classes = rt::listed::<$t>(i);
                    rt::call::<$t>(i, |p| {
                        let probs = $crate::Judge::judge(p, rt::matrix(audio))?;
                        if probs.dim() != (audio.rows as usize, classes) {
                            return Err(format!("judge returned {:?} probabilities for {} clips and {classes} labels", probs.dim(), audio.rows));
                        }
                        let probs = probs.as_standard_layout();
                        rt::write_out(out, audio.rows * classes as u64, probs.as_slice().expect("standard layout"), "judge")
                    })
                }
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
        // SAFETY: non-null, so by this function's contract a NUL-terminated string, read (and
        // copied) before returning.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_numbers_round_trip_and_unknown_ones_are_named() {
        for c in Component::ALL {
            assert_eq!(Component::try_from(c as u32), Ok(c));
        }
        for n in [3, 7, u32::MAX] {
            let err = Component::try_from(n).unwrap_err();
            assert!(err.contains(&format!("unknown component number {n}")), "{err}");
        }
    }

    #[test]
    fn write_out_refuses_a_count_other_than_the_hosts_room() {
        let mut out = [0i64; 2];
        // SAFETY: `out` is a live local array with room for exactly 2 values.
        let err = unsafe { rt::write_out(out.as_mut_ptr(), 2, &[1, 2, 3], "predict") }.unwrap_err();
        assert!(err.contains("3 values for the host's 2"), "{err}");
        assert_eq!(out, [0, 0]);
        // SAFETY: as above.
        unsafe { rt::write_out(out.as_mut_ptr(), 2, &[4, 5], "predict") }.unwrap();
        assert_eq!(out, [4, 5]);
    }
}
