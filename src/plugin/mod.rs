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

// The descriptor points to statics of the loaded library, which lives as long as this value.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

impl Library {
    /// Loads `path` and checks its descriptor (ABI version first).
    pub fn open(path: &Path) -> Result<Arc<Library>> {
        let bad = |reason: String| Error::Plugin { plugin: path.display().to_string(), reason };
        if !path.is_file() {
            return Err(bad("no such file".into()));
        }
        // SAFETY: loading a library runs its initialisers; plugins are trusted code the user chose.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| bad(format!("cannot load: {}", crate::error::chain(&e))))?;
        let descriptor = {
            let entry: libloading::Symbol<'_, extern "C" fn() -> *const sdk::PluginDescriptor> = unsafe { lib.get(sdk::ENTRY_SYMBOL) }
                .map_err(|_| bad("not a musicgen-interp plugin (no `musicgen_interp_plugin` symbol)".into()))?;
            entry()
        };
        if descriptor.is_null() {
            return Err(bad("its entry point returned no descriptor".into()));
        }
        // Only the first field is read before the version is known to match.
        let abi = unsafe { std::ptr::read(descriptor as *const u32) };
        if abi != ABI_VERSION {
            return Err(bad(format!(
                "built for plugin ABI version {abi}, but this musicgen-interp speaks ABI version {ABI_VERSION}; rebuild the plugin against musicgen-interp-sdk {}",
                env!("CARGO_PKG_VERSION")
            )));
        }
        let d = unsafe { &*descriptor };
        let kind = match d.kind {
            sdk::KIND_METHOD if !d.method.is_null() => Kind::Method,
            sdk::KIND_PROBE if !d.probe.is_null() => Kind::Probe,
            sdk::KIND_JUDGE if !d.judge.is_null() => Kind::Judge,
            k => return Err(bad(format!("unknown plugin kind {k}"))),
        };
        let name = unsafe { sdk::read_c(d.name) }.unwrap_or_default();
        let version = unsafe { sdk::read_c(d.version) }.unwrap_or_default();
        Ok(Arc::new(Library { path: path.to_path_buf(), name, version, kind, descriptor, _lib: lib }))
    }

    fn descriptor(&self) -> &sdk::PluginDescriptor {
        unsafe { &*self.descriptor }
    }

    /// Creates an instance from JSON settings.
    fn create(self: &Arc<Self>, config_json: &str) -> Result<Instance> {
        let config = CString::new(config_json).map_err(|_| Error::Input("plugin settings contain a NUL byte".into()))?;
        let ptr = (self.descriptor().create)(config.as_ptr());
        let inst = Instance { lib: self.clone(), ptr };
        if let Some(e) = inst.last_error() {
            return Err(Error::Plugin { plugin: self.name.clone(), reason: e });
        }
        Ok(inst)
    }
}

/// One plugin instance; destroyed on drop.
struct Instance {
    lib: Arc<Library>,
    ptr: *mut c_void,
}

impl Instance {
    fn last_error(&self) -> Option<String> {
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
        (self.lib.descriptor().destroy)(self.ptr)
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
        let lib = Library::open(&resolve(spec)?)?;
        if lib.kind != Kind::Method {
            return Err(Error::Plugin { plugin: lib.name.clone(), reason: format!("is a {:?} plugin, not a method", lib.kind) });
        }
        let instance = lib.create(config_json)?;
        let m = unsafe { &*lib.descriptor().method };
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
        unsafe { &*self.instance.lib.descriptor().method }
    }

    fn name_of(&self, point: HookPoint) -> Option<&CString> {
        self.names.iter().find(|(p, _)| *p == point).map(|(_, n)| n)
    }

    pub fn run_start(&mut self, info_json: &str) -> Result<()> {
        let info = CString::new(info_json).map_err(|_| Error::Input("run info contains a NUL byte".into()))?;
        let status = (self.vtable().run_start)(self.instance.ptr, info.as_ptr());
        self.instance.check(status, || "run start".into())
    }

    pub fn run_end(&mut self) -> Result<()> {
        let status = (self.vtable().run_end)(self.instance.ptr);
        self.instance.check(status, || "run end".into())
    }
}

struct EditsHost<'a> {
    edits: &'a mut LayerEdits,
}

fn component(c: u32) -> Component {
    match c {
        0 => Component::Attn,
        1 => Component::CrossAttn,
        _ => Component::Mlp,
    }
}

extern "C" fn edits_add(host: *mut c_void, c: u32) -> sdk::TensorMut {
    let host = unsafe { &mut *(host as *mut EditsHost<'_>) };
    tensor_mut(host.edits.add(component(c)))
}

extern "C" fn edits_replace(host: *mut c_void, c: u32) -> sdk::TensorMut {
    let host = unsafe { &mut *(host as *mut EditsHost<'_>) };
    tensor_mut(host.edits.replace(component(c)).0)
}

extern "C" fn edits_mask(host: *mut c_void, c: u32) -> sdk::TensorMut {
    let host = unsafe { &mut *(host as *mut EditsHost<'_>) };
    tensor_mut(host.edits.replace(component(c)).1)
}

impl Hooks for MethodPlugin {
    fn wants(&self, point: &HookPoint) -> bool {
        self.points.contains(point)
    }

    fn check_points(&self, layers: usize) -> Result<()> {
        crate::hooks::check_points(&format!("plugin {}", self.name()), &self.points, layers)
    }

    fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> Result<()> {
        if !self.points.iter().any(|p| matches!(p, HookPoint::Component(l, _) if *l == layer)) {
            return Ok(());
        }
        let mut host = EditsHost { edits };
        let handle = sdk::EditsHandle {
            host: &mut host as *mut EditsHost<'_> as *mut c_void,
            add: edits_add,
            replace: edits_replace,
            mask: edits_mask,
        };
        let c = context(ctx);
        let status = (self.vtable().edit_components)(self.instance.ptr, &c, layer as u64, &handle);
        self.instance.check(status, || format!("editing layer {layer}"))
    }

    fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, h: ArrayViewMut3<'_, f32>) -> Result<()> {
        let Some(name) = self.name_of(point) else { return Ok(()) };
        let c = context(ctx);
        let status = (self.vtable().on_residual)(self.instance.ptr, &c, name.as_ptr() as *const c_char, tensor_mut(h));
        self.instance.check(status, || point.to_string())
    }

    fn on_component(&mut self, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> Result<()> {
        let Some(name) = self.name_of(point) else { return Ok(()) };
        let (rows, positions, width) = out.dim();
        let t = sdk::Tensor { data: out.as_ptr(), rows: rows as u64, positions: positions as u64, width: width as u64 };
        let c = context(ctx);
        let status = (self.vtable().on_component)(self.instance.ptr, &c, name.as_ptr(), t);
        self.instance.check(status, || point.to_string())
    }

    fn step_end(&mut self, step: usize) -> Result<()> {
        let status = (self.vtable().step_end)(self.instance.ptr, step as u64);
        self.instance.check(status, || format!("end of step {step}"))
    }

    fn exit_after(&self) -> Option<usize> {
        let k = (self.vtable().exit_after)(self.instance.ptr);
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
        unsafe { &*self.instance.lib.descriptor().probe }
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
        let status = (self.vtable().fit)(self.instance.ptr, m, labels.as_ptr(), classes as u64);
        self.instance.check(status, || "fit".into())
    }

    pub fn predict(&mut self, x: ndarray::ArrayView2<'_, f32>) -> Result<Vec<i64>> {
        let (m, _keep) = Self::matrix(&x);
        let mut out = vec![0i64; x.nrows()];
        let status = (self.vtable().predict)(self.instance.ptr, m, out.as_mut_ptr());
        self.instance.check(status, || "predict".into())?;
        Ok(out)
    }

    pub fn scores(&mut self, x: ndarray::ArrayView2<'_, f32>, classes: usize) -> Result<ndarray::Array2<f32>> {
        let (m, _keep) = Self::matrix(&x);
        let mut out = ndarray::Array2::<f32>::zeros((x.nrows(), classes));
        let status = (self.vtable().scores)(self.instance.ptr, m, out.as_mut_ptr());
        self.instance.check(status, || "scores".into())?;
        Ok(out)
    }

    pub fn save(&mut self, path: &Path) -> Result<()> {
        let p = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| Error::Input("path contains NUL".into()))?;
        let status = (self.vtable().save)(self.instance.ptr, p.as_ptr());
        self.instance.check(status, || "save".into())
    }

    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let p = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| Error::Input("path contains NUL".into()))?;
        let status = (self.vtable().load)(self.instance.ptr, p.as_ptr());
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
        let j = unsafe { &*lib.descriptor().judge };
        let labels: Vec<String> = unsafe { sdk::read_c((j.labels)(instance.ptr)) }.unwrap_or_default().lines().map(str::to_string).collect();
        let sample_rate = (j.sample_rate)(instance.ptr);
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
        let j = unsafe { &*self.instance.lib.descriptor().judge };
        let status = (j.judge)(self.instance.ptr, m, out.as_mut_ptr());
        self.instance.check(status, || "judging clips".into())?;
        Ok(out)
    }
}
