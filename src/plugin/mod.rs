//! The host side of plugins: load a library with `libloading` (by built-in name or path), check its
//! ABI version before anything else, create instances from JSON settings, and route the decoder's
//! hooks and the run's events to them. A plugin's error or panic (caught in the plugin by the SDK)
//! becomes an [`Error::Hook`] naming the plugin: the run stops with its message.

use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use musicgen_interp_sdk as sdk;
use ndarray::{ArrayView3, ArrayViewMut3};

use crate::error::{Error, Result};
use crate::hooks::{Component, ForwardContext, HookPoint, Hooks, LayerEdits};

pub mod builtin;

/// The plugin ABI this host speaks.
pub const ABI_VERSION: u32 = sdk::ABI_VERSION;

/// What a plugin is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Method,
    Probe,
    Judge,
}

/// A loaded plugin library.
pub struct Library {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub kind: Kind,
    descriptor: *const sdk::PluginDescriptor,
    // Last: dropped after everything that points into it.
    _lib: libloading::Library,
}

// SAFETY: `descriptor` points to the loaded library's descriptor: constants (a `'static` in the
// library, see the SDK's `PluginDescriptor`) that nothing writes and that stay mapped while `_lib`,
// owned by this value, keeps the library loaded. Sharing or sending it only shares those reads; the
// calls it leads to (`create`, from any thread) go through `Instance`, which is neither.
unsafe impl Send for Library {}
// SAFETY: as for `Send` above.
unsafe impl Sync for Library {}

impl Library {
    /// Loads `path` and checks its descriptor (ABI version first).
    pub fn open(path: &Path) -> Result<Arc<Library>> {
        let bad = |reason: String| Error::Plugin { plugin: path.display().to_string(), reason };
        if !path.is_file() {
            return Err(bad("no such file".into()));
        }
        // SAFETY: loading runs the library's initialisers (and its finalisers at unload): code the
        // user chose to run by naming the plugin, as trusted as the host itself. Nothing else about
        // the file is assumed here.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| bad(format!("cannot load: {}", crate::error::chain(&e))))?;
        let descriptor = {
            // SAFETY: the ABI reserves the symbol `musicgen_interp_plugin` for the entry point, whose
            // type is `extern "C" fn() -> *const PluginDescriptor` in every ABI version; a library
            // exporting that name promises it. The symbol is used only while `lib` is borrowed.
            let entry: libloading::Symbol<'_, extern "C" fn() -> *const sdk::PluginDescriptor> = unsafe { lib.get(sdk::ENTRY_SYMBOL) }
                .map_err(|_| bad("not a musicgen-interp plugin (no `musicgen_interp_plugin` symbol)".into()))?;
            entry()
        };
        if descriptor.is_null() {
            return Err(bad("its entry point returned no descriptor".into()));
        }
        // Only the first field is read before the version is known to match.
        // SAFETY: non-null, and in every ABI version the entry point returns a `#[repr(C)]`
        // descriptor, living as long as the library, whose first field is the `u32` ABI version:
        // the pointer is valid and aligned for reading that one `u32`, whatever the rest looks like.
        let abi = unsafe { std::ptr::read(descriptor as *const u32) };
        if abi != ABI_VERSION {
            return Err(bad(format!(
                "built for plugin ABI version {abi}, but this musicgen-interp speaks ABI version {ABI_VERSION}; rebuild the plugin against musicgen-interp-sdk {}",
                env!("CARGO_PKG_VERSION")
            )));
        }
        // SAFETY: the ABI version matches this host's, so the non-null `descriptor` points to a
        // `PluginDescriptor` of this very layout: constants in the library (see the `Send` impl),
        // valid while `lib` is loaded, which outlives `d`.
        let d = unsafe { &*descriptor };
        let kind = match d.kind {
            sdk::KIND_METHOD if !d.method.is_null() => Kind::Method,
            sdk::KIND_PROBE if !d.probe.is_null() => Kind::Probe,
            sdk::KIND_JUDGE if !d.judge.is_null() => Kind::Judge,
            k => return Err(bad(format!("unknown plugin kind {k}"))),
        };
        // SAFETY: C ABI contract: `name` is null or a NUL-terminated string valid while the library is
        // loaded (it is, by `lib`); `read_c` copies it.
        let name = unsafe { sdk::read_c(d.name) }.unwrap_or_default();
        // SAFETY: as for `name`.
        let version = unsafe { sdk::read_c(d.version) }.unwrap_or_default();
        Ok(Arc::new(Library { path: path.to_path_buf(), name, version, kind, descriptor, _lib: lib }))
    }

    fn descriptor(&self) -> &sdk::PluginDescriptor {
        // SAFETY: `open` made `self.descriptor` only from a non-null descriptor of this ABI version:
        // a `PluginDescriptor` of this layout, constant, valid while `_lib` keeps the library loaded,
        // which is as long as `self`, and the returned borrow of `self` is no longer than that.
        unsafe { &*self.descriptor }
    }

    /// The method vtable; `None` unless the plugin is a method.
    fn method(&self) -> Option<&sdk::MethodVTable> {
        // SAFETY: the descriptor's `method` is null or a pointer to the plugin's `static` vtable,
        // valid as long as the library stays loaded, that is as long as `self` (C ABI contract).
        (self.kind == Kind::Method).then(|| unsafe { self.descriptor().method.as_ref() }).flatten()
    }

    /// The probe vtable; `None` unless the plugin is a probe model.
    fn probe(&self) -> Option<&sdk::ProbeVTable> {
        // SAFETY: as in `method`, for the descriptor's `probe`.
        (self.kind == Kind::Probe).then(|| unsafe { self.descriptor().probe.as_ref() }).flatten()
    }

    /// The judge vtable; `None` unless the plugin is a judge.
    fn judge(&self) -> Option<&sdk::JudgeVTable> {
        // SAFETY: as in `method`, for the descriptor's `judge`.
        (self.kind == Kind::Judge).then(|| unsafe { self.descriptor().judge.as_ref() }).flatten()
    }

    /// Creates an instance from JSON settings, telling it what the host offers ([`host_info`]).
    fn create(self: &Arc<Self>, config_json: &str) -> Result<Instance> {
        let config = CString::new(config_json).map_err(|_| Error::Input("plugin settings contain a NUL byte".into()))?;
        let host = CString::new(host_info().to_string()).map_err(|_| Error::Internal("the host's information holds a NUL byte".into()))?;
        // SAFETY: C ABI contract for `create`: two NUL-terminated strings (the `CString`s, alive and
        // unchanged until the call returns); `create` may be called from any thread.
        let ptr = unsafe { (self.descriptor().create)(config.as_ptr(), host.as_ptr()) };
        let inst = Instance { lib: self.clone(), ptr };
        if let Some(e) = inst.last_error() {
            return Err(Error::Plugin { plugin: self.name.clone(), reason: e });
        }
        Ok(inst)
    }
}

/// One plugin instance; destroyed on drop.
///
/// The raw `ptr` makes it neither `Send` nor `Sync`: every call on the instance is made from the
/// thread that owns it, one at a time (the plugin's calls back into the host, `EditsHandle`'s, make
/// none). With `ptr` coming from `lib`'s `create` and destroyed only by `Drop`, every call through
/// it below meets the C ABI contract's rule for `instance`.
struct Instance {
    lib: Arc<Library>,
    ptr: *mut c_void,
}

impl Instance {
    fn last_error(&self) -> Option<String> {
        // SAFETY: `self.ptr` is a live instance of this library (see the type's docs); the string
        // returned is valid until the next call on the instance, and `read_c` copies it before any.
        unsafe { sdk::read_c((self.lib.descriptor().last_error)(self.ptr)) }
    }

    fn check(&self, status: i32, during: impl FnOnce() -> String) -> Result<()> {
        if status == sdk::OK {
            return Ok(());
        }
        Err(Error::Hook {
            hook: format!("plugin {} ({})", self.lib.name, during()),
            reason: self.last_error().unwrap_or_else(|| "failed without a message".into()),
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: `self.ptr` came from this library's `create` and is given to `destroy` only here,
        // once; nothing uses it afterwards (`self` is being dropped).
        unsafe { (self.lib.descriptor().destroy)(self.ptr) }
    }
}

/// The folders searched for built-in plugins (`libmusicgen_interp_NAME.so`): beside the executable
/// (and its parent, for test binaries in `deps/`), then this source tree's release and debug builds.
pub fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    dirs.extend([root.join("release"), root.join("debug")]);
    dirs.dedup();
    dirs
}

fn library_file(name: &str) -> String {
    format!("{}musicgen_interp_{}{}", std::env::consts::DLL_PREFIX, name.replace('-', "_"), std::env::consts::DLL_SUFFIX)
}

/// A plugin by built-in name (`steering`) or by path to a library.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if spec.contains(std::path::MAIN_SEPARATOR) || path.extension().is_some() {
        return Ok(path.to_path_buf());
    }
    let file = library_file(spec);
    plugin_dirs().into_iter().map(|d| d.join(&file)).find(|p| p.is_file()).ok_or_else(|| Error::Plugin {
        plugin: spec.into(),
        reason: format!("no built-in plugin of that name ({file} not found; build it with `cargo build --release --workspace`, or give a path)"),
    })
}

/// Every plugin library found in [`plugin_dirs`], loaded (or the error loading it).
pub fn installed() -> Vec<(PathBuf, Result<Arc<Library>>)> {
    let prefix = format!("{}musicgen_interp_", std::env::consts::DLL_PREFIX);
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for dir in plugin_dirs() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(std::env::consts::DLL_SUFFIX) && seen.insert(name) {
                out.push((entry.path(), Library::open(&entry.path())));
            }
        }
    }
    out
}

fn context(ctx: &ForwardContext) -> sdk::HookContext {
    sdk::HookContext {
        call: ctx.call as u64,
        past_len: ctx.past_len as u64,
        new_len: ctx.new_len as u64,
        rows: ctx.rows as u64,
        cond_start: ctx.conditional_rows.start as u64,
        cond_end: ctx.conditional_rows.end as u64,
    }
}

fn tensor_mut(mut a: ArrayViewMut3<'_, f32>) -> sdk::TensorMut {
    let (rows, positions, width) = a.dim();
    assert!(a.is_standard_layout(), "hook tensors are standard layout");
    sdk::TensorMut { data: a.as_mut_ptr(), rows: rows as u64, positions: positions as u64, width: width as u64 }
}

/// A method plugin instance, acting as decoder [`Hooks`].
pub struct MethodPlugin {
    instance: Instance,
    points: Vec<HookPoint>,
    names: Vec<(HookPoint, CString)>,
}

impl MethodPlugin {
    /// Loads the plugin `spec` (built-in name or path) and creates it from JSON settings.
    pub fn load(spec: &str, config_json: &str) -> Result<MethodPlugin> {
        Self::create(&Library::open(&resolve(spec)?)?, config_json)
    }

    /// An instance of the already loaded method library `lib`, from JSON settings.
    pub fn create(lib: &Arc<Library>, config_json: &str) -> Result<MethodPlugin> {
        if lib.kind != Kind::Method {
            return Err(Error::Plugin { plugin: lib.name.clone(), reason: format!("is a {:?} plugin, not a method", lib.kind) });
        }
        let instance = lib.create(config_json)?;
        let m = lib.method().ok_or_else(|| Error::Plugin { plugin: lib.name.clone(), reason: "has no method table".into() })?;
        // SAFETY: `instance.ptr` is a live instance of this library (see `Instance`); the list it
        // returns stays valid until `destroy`, and `read_c` copies it at once.
        let listed = unsafe { sdk::read_c((m.hook_points)(instance.ptr)) }.unwrap_or_default();
        let mut points = Vec::new();
        for name in listed.lines().filter(|l| !l.trim().is_empty()) {
            points.push(name.trim().parse::<HookPoint>().map_err(|e| Error::Plugin { plugin: lib.name.clone(), reason: e.to_string() })?);
        }
        let names = points.iter().map(|p| (*p, CString::new(p.to_string()).expect("no NUL"))).collect();
        Ok(MethodPlugin { instance, points, names })
    }

    pub fn name(&self) -> &str {
        &self.instance.lib.name
    }

    pub fn version(&self) -> &str {
        &self.instance.lib.version
    }

    /// The hook points the plugin asked for.
    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    fn vtable(&self) -> &sdk::MethodVTable {
        self.instance.lib.method().expect("a method plugin's library has its method table (checked by `load`)")
    }

    fn name_of(&self, point: HookPoint) -> Option<&CString> {
        self.names.iter().find(|(p, _)| *p == point).map(|(_, n)| n)
    }

    pub fn run_start(&mut self, info_json: &str) -> Result<()> {
        let info = CString::new(info_json).map_err(|_| Error::Internal("a plugin's run information holds a NUL byte".into()))?;
        // SAFETY: a live instance (see `Instance`) and a NUL-terminated string alive until the call
        // returns.
        let status = unsafe { (self.vtable().run_start)(self.instance.ptr, info.as_ptr()) };
        self.instance.check(status, || "run start".into())
    }

    pub fn run_end(&mut self) -> Result<()> {
        // SAFETY: a live instance (see `Instance`).
        let status = unsafe { (self.vtable().run_end)(self.instance.ptr) };
        self.instance.check(status, || "run end".into())
    }
}

/// What `EditsHandle::host` points to during one `edit_components` call.
struct EditsHost<'a> {
    edits: &'a mut LayerEdits,
    /// The first unknown component number the plugin asked for.
    error: Option<String>,
}

/// The component an ABI number stands for; any other number is an error naming it.
fn component(c: u32) -> std::result::Result<Component, String> {
    Ok(match sdk::Component::try_from(c)? {
        sdk::Component::Attn => Component::Attn,
        sdk::Component::CrossAttn => Component::CrossAttn,
        sdk::Component::Mlp => Component::Mlp,
    })
}

/// One of the layer's edit buffers for the plugin, or, for an unknown component number, an empty
/// tensor (non-null dangling pointer, all sizes 0: nothing to read or write) and the error kept for
/// `edit_components` to report.
///
/// # Safety
/// `host` must be the `EditsHost` pointer of the `EditsHandle` that `edit_components` made, during
/// that call, with no other reference to the `EditsHost` in use.
unsafe fn edit_buffer(host: *mut c_void, c: u32, pick: for<'b> fn(&'b mut LayerEdits, Component) -> ArrayViewMut3<'b, f32>) -> sdk::TensorMut {
    // SAFETY: by this function's contract `host` points to the live `EditsHost` on
    // `edit_components`' stack, and nothing else uses it until this returns: a unique borrow is
    // sound. (The pointer handed out below points into the `LayerEdits`' heap buffers, not into the
    // `EditsHost`.)
    let host = unsafe { &mut *(host as *mut EditsHost<'_>) };
    match component(c) {
        Ok(c) => tensor_mut(pick(host.edits, c)),
        Err(e) => {
            host.error.get_or_insert(e);
            sdk::TensorMut { data: std::ptr::NonNull::<f32>::dangling().as_ptr(), rows: 0, positions: 0, width: 0 }
        }
    }
}

unsafe extern "C" fn edits_add(host: *mut c_void, c: u32) -> sdk::TensorMut {
    // SAFETY: the plugin calls this through the handle with the handle's `host`, during
    // `edit_components` (the `EditsHandle` functions' contract); `edit_components` itself does not
    // touch the `EditsHost` until the plugin returns.
    unsafe { edit_buffer(host, c, |e, c| e.add(c)) }
}

unsafe extern "C" fn edits_replace(host: *mut c_void, c: u32) -> sdk::TensorMut {
    // SAFETY: as in `edits_add`.
    unsafe { edit_buffer(host, c, |e, c| e.replace(c).0) }
}

unsafe extern "C" fn edits_mask(host: *mut c_void, c: u32) -> sdk::TensorMut {
    // SAFETY: as in `edits_add`.
    unsafe { edit_buffer(host, c, |e, c| e.replace(c).1) }
}

/// What the host offers every plugin (ABI 4, the SDK's `HostInfo`): its name and version, and the
/// onnxruntime library it runs on once the runtime has started (a plugin that runs its own graphs,
/// like the ONNX judge, joins it instead of loading a second copy).
pub fn host_info() -> serde_json::Value {
    let mut info = serde_json::json!({"host": concat!("musicgen-interp ", env!("CARGO_PKG_VERSION"))});
    if let Some(lib) = crate::runtime::loaded_library() {
        info["onnxruntime_library"] = serde_json::json!(lib);
    }
    info
}

impl Hooks for MethodPlugin {
    fn wants(&self, point: &HookPoint) -> bool {
        self.points.contains(point)
    }
    fn wants_residual(&self, point: &HookPoint) -> bool {
        self.points.contains(point)
    }

    fn check_points(&self, layers: usize) -> Result<()> {
        crate::hooks::check_points(&format!("plugin {}", self.name()), &self.points, layers)
    }

    fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> Result<()> {
        if !self.points.iter().any(|p| matches!(p, HookPoint::Component(l, _) if *l == layer)) {
            return Ok(());
        }
        let mut host = EditsHost { edits, error: None };
        let handle = sdk::EditsHandle {
            host: &mut host as *mut EditsHost<'_> as *mut c_void,
            add: edits_add,
            replace: edits_replace,
            mask: edits_mask,
        };
        let c = context(ctx);
        // SAFETY: a live instance (see `Instance`); `c` and `handle` live on this stack frame until
        // the call returns, and `handle.host` points to `host`, which nothing here touches until
        // then. The buffers its functions hand out belong to `edits`, borrowed mutably by this
        // function, so nothing else reads or writes them during the call; they are allocated once
        // per component and never moved or freed while `edits` is borrowed.
        let status = unsafe { (self.vtable().edit_components)(self.instance.ptr, &c, layer as u64, &handle) };
        if let Some(reason) = host.error {
            return Err(Error::Plugin { plugin: self.name().to_string(), reason: format!("editing layer {layer}: {reason}") });
        }
        self.instance.check(status, || format!("editing layer {layer}"))
    }

    fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
        let Some(name) = self.name_of(point) else { return Ok(()) };
        let c = context(ctx);
        // SAFETY: a live instance (see `Instance`); `c` and the `CString` `name` (owned by `self`)
        // outlive the call; `h` is a standard-layout view (`tensor_mut` asserts it) borrowed
        // mutably by this function, so the plugin has its elements to itself during the call.
        let status = unsafe { (self.vtable().on_residual)(self.instance.ptr, &c, name.as_ptr() as *const c_char, tensor_mut(h)) };
        self.instance.check(status, || point.to_string())
    }

    fn on_component(&mut self, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> Result<()> {
        let Some(name) = self.name_of(point) else { return Ok(()) };
        // The ABI's tensors are row-major: a strided view is copied first.
        let out = out.as_standard_layout();
        let (rows, positions, width) = out.dim();
        let t = sdk::Tensor { data: out.as_ptr(), rows: rows as u64, positions: positions as u64, width: width as u64 };
        let c = context(ctx);
        // SAFETY: a live instance (see `Instance`); `c`, `name` and `out` (standard layout, exactly
        // `rows * positions * width` values at `t.data`, borrowed shared so unchanged) outlive the
        // call.
        let status = unsafe { (self.vtable().on_component)(self.instance.ptr, &c, name.as_ptr(), t) };
        self.instance.check(status, || point.to_string())
    }

    fn step_end(&mut self, step: usize) -> Result<()> {
        // SAFETY: a live instance (see `Instance`).
        let status = unsafe { (self.vtable().step_end)(self.instance.ptr, step as u64) };
        self.instance.check(status, || format!("end of step {step}"))
    }

    fn exit_after(&self) -> Option<usize> {
        // SAFETY: a live instance (see `Instance`).
        let k = unsafe { (self.vtable().exit_after)(self.instance.ptr) };
        (k > 0).then_some(k as usize)
    }
}

/// A probe-model plugin instance.
pub struct ProbePlugin {
    instance: Instance,
}

impl ProbePlugin {
    pub fn load(spec: &str, config_json: &str) -> Result<ProbePlugin> {
        let lib = Library::open(&resolve(spec)?)?;
        if lib.kind != Kind::Probe {
            return Err(Error::Plugin { plugin: lib.name.clone(), reason: format!("is a {:?} plugin, not a probe model", lib.kind) });
        }
        Ok(ProbePlugin { instance: lib.create(config_json)? })
    }

    pub fn name(&self) -> &str {
        &self.instance.lib.name
    }

    fn vtable(&self) -> &sdk::ProbeVTable {
        self.instance.lib.probe().expect("a probe plugin's library has its probe table (checked by `load`)")
    }

    fn matrix<'a>(x: &'a ndarray::ArrayView2<'_, f32>) -> (sdk::Matrix, ndarray::CowArray<'a, f32, ndarray::Ix2>) {
        let x = x.as_standard_layout();
        let m = sdk::Matrix { data: x.as_ptr(), rows: x.nrows() as u64, cols: x.ncols() as u64 };
        (m, x)
    }

    pub fn fit(&mut self, x: ndarray::ArrayView2<'_, f32>, labels: &[i64], classes: usize) -> Result<()> {
        if labels.len() != x.nrows() {
            return Err(Error::Input(format!("{} labels for {} feature rows", labels.len(), x.nrows())));
        }
        let (m, _keep) = Self::matrix(&x);
        // SAFETY: a live instance (see `Instance`); `m` points into `_keep` (standard layout,
        // `rows * cols` values) and `labels` holds `m.rows` values (checked above), both borrowed
        // shared until the call returns.
        let status = unsafe { (self.vtable().fit)(self.instance.ptr, m, labels.as_ptr(), classes as u64) };
        self.instance.check(status, || "fit".into())
    }

    pub fn predict(&mut self, x: ndarray::ArrayView2<'_, f32>) -> Result<Vec<i64>> {
        let (m, _keep) = Self::matrix(&x);
        let mut out = vec![0i64; x.nrows()];
        // SAFETY: a live instance (see `Instance`); `m` points into `_keep` as in `fit`, and `out`
        // is this function's own buffer of `m.rows` values.
        let status = unsafe { (self.vtable().predict)(self.instance.ptr, m, out.as_mut_ptr()) };
        self.instance.check(status, || "predict".into())?;
        Ok(out)
    }

    pub fn scores(&mut self, x: ndarray::ArrayView2<'_, f32>, classes: usize) -> Result<ndarray::Array2<f32>> {
        let (m, _keep) = Self::matrix(&x);
        let mut out = ndarray::Array2::<f32>::zeros((x.nrows(), classes));
        // SAFETY: a live instance (see `Instance`); `m` points into `_keep` as in `fit`, and `out`
        // is this function's own standard-layout buffer of `m.rows * classes` values, the room the
        // ABI gives `scores` for the `classes` passed.
        let status = unsafe { (self.vtable().scores)(self.instance.ptr, m, classes as u64, out.as_mut_ptr()) };
        self.instance.check(status, || "scores".into())?;
        Ok(out)
    }

    pub fn save(&mut self, path: &Path) -> Result<()> {
        let p = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| Error::Input("path contains NUL".into()))?;
        // SAFETY: a live instance (see `Instance`); `p` is NUL-terminated and outlives the call.
        let status = unsafe { (self.vtable().save)(self.instance.ptr, p.as_ptr()) };
        self.instance.check(status, || "save".into())
    }

    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let p = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| Error::Input("path contains NUL".into()))?;
        // SAFETY: a live instance (see `Instance`); `p` is NUL-terminated and outlives the call.
        let status = unsafe { (self.vtable().load)(self.instance.ptr, p.as_ptr()) };
        self.instance.check(status, || "load".into())
    }
}

/// A judge plugin instance: class probabilities of audio clips.
pub struct JudgePlugin {
    instance: Instance,
    labels: Vec<String>,
    sample_rate: u32,
}

impl JudgePlugin {
    pub fn load(spec: &str, config_json: &str) -> Result<JudgePlugin> {
        let lib = Library::open(&resolve(spec)?)?;
        if lib.kind != Kind::Judge {
            return Err(Error::Plugin { plugin: lib.name.clone(), reason: format!("is a {:?} plugin, not a judge", lib.kind) });
        }
        let instance = lib.create(config_json)?;
        let j = lib.judge().ok_or_else(|| Error::Plugin { plugin: lib.name.clone(), reason: "has no judge table".into() })?;
        // SAFETY: a live instance (see `Instance`); the list it returns stays valid until `destroy`,
        // and `read_c` copies it at once.
        let labels: Vec<String> = unsafe { sdk::read_c((j.labels)(instance.ptr)) }.unwrap_or_default().lines().map(str::to_string).collect();
        // SAFETY: a live instance (see `Instance`).
        let sample_rate = unsafe { (j.sample_rate)(instance.ptr) };
        instance.check(if sample_rate > 0 { sdk::OK } else { sdk::ERROR }, || "sample rate".into())?;
        if labels.is_empty() {
            return Err(Error::Plugin { plugin: lib.name.clone(), reason: "names no labels".into() });
        }
        Ok(JudgePlugin { instance, labels, sample_rate })
    }

    pub fn name(&self) -> &str {
        &self.instance.lib.name
    }

    /// Class names in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The rate the judge wants its audio at.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// `[clips, samples]` at [`Self::sample_rate`] -> `[clips, labels]` probabilities.
    pub fn judge(&mut self, audio: ndarray::ArrayView2<'_, f32>) -> Result<ndarray::Array2<f32>> {
        let audio = audio.as_standard_layout();
        let m = sdk::Matrix { data: audio.as_ptr(), rows: audio.nrows() as u64, cols: audio.ncols() as u64 };
        let mut out = ndarray::Array2::<f32>::zeros((audio.nrows(), self.labels.len()));
        let j = self.instance.lib.judge().expect("a judge plugin's library has its judge table (checked by `load`)");
        // SAFETY: a live instance (see `Instance`); `m` points into `audio` (standard layout,
        // `rows * cols` values, borrowed shared) and `out` is this function's own buffer of
        // `rows * labels` values, `labels` being the lines the plugin's `labels` listed (`load`).
        let status = unsafe { (j.judge)(self.instance.ptr, m, out.as_mut_ptr()) };
        self.instance.check(status, || "judging clips".into())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_numbers_map_and_unknown_ones_are_errors_naming_the_value() {
        assert_eq!(component(0), Ok(Component::Attn));
        assert_eq!(component(1), Ok(Component::CrossAttn));
        assert_eq!(component(2), Ok(Component::Mlp));
        for n in [3, 42, u32::MAX] {
            let err = component(n).unwrap_err();
            assert!(err.contains(&format!("unknown component number {n}")), "{err}");
        }
    }

    #[test]
    fn an_unknown_component_gets_an_empty_tensor_and_is_reported() {
        let mut edits = LayerEdits::new(2, 3, 4);
        let mut host = EditsHost { edits: &mut edits, error: None };
        let ptr = &mut host as *mut EditsHost<'_> as *mut c_void;
        // SAFETY: `ptr` points to `host`, live and otherwise unused during these calls, as
        // `edit_components` hands it to a plugin.
        let (known, unknown) = unsafe { (edits_add(ptr, 2), edits_mask(ptr, 7)) };
        assert_eq!((known.rows, known.positions, known.width), (2, 3, 4));
        assert!(!unknown.data.is_null());
        assert_eq!((unknown.rows, unknown.positions, unknown.width), (0, 0, 0));
        let err = host.error.expect("the unknown component is kept as the call's error");
        assert!(err.contains("unknown component number 7"), "{err}");
        assert!(edits.add(Component::Mlp).iter().all(|&x| x == 0.0));
    }
}
