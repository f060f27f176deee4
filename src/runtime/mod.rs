//! The ONNX Runtime environment: the library loaded at run time (`load-dynamic`), one global thread
//! pool shared by every session (so the per-layer sessions do not fight over the cores), and the
//! execution provider, with the one that really runs reported (ORT falls back to CPU silently).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::error::{Error, Result};

pub mod attention;
pub mod cuda_libs;
pub mod matmul;
pub mod matmul_int8;
pub mod ops;

/// The kernels' tests' one comparison.
#[cfg(test)]
pub(crate) mod testing {
    /// The largest `|got - want|`, infinite where `got` is not finite (a NaN left in an output the
    /// kernel should have written, an overflow) so that no comparison can skip it.
    pub fn max_error<G: Into<f64> + Copy, W: Into<f64> + Copy>(got: &[G], want: &[W]) -> f64 {
        assert_eq!(got.len(), want.len(), "lengths differ");
        got.iter()
            .zip(want)
            .map(|(&g, &w)| {
                let (g, w): (f64, f64) = (g.into(), w.into());
                if g.is_finite() { (g - w).abs() } else { f64::INFINITY }
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn a_nan_is_an_infinite_error() {
        assert_eq!(max_error(&[1.0f32, f32::NAN], &[1.0f64, 2.0]), f64::INFINITY);
        assert_eq!(max_error(&[1.0f32, 2.5], &[1.0f32, 2.0]), 0.5);
    }
}
pub use musicgen_interp_pool as pool;

/// Environment variables that name the onnxruntime shared library, most specific first.
pub const LIBRARY_ENV_VARS: [&str; 2] = ["MUSICGEN_INTERP_ORT_LIB", "ORT_DYLIB_PATH"];

/// Where the graphs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    /// CUDA when the library has it and a GPU answers, else CPU (and say so).
    #[default]
    Auto,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            other => Err(Error::Input(format!("unknown device {other:?}: use cpu, cuda or auto"))),
        }
    }
}

/// The provider the sessions really run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda { device_id: i32 },
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Cpu => write!(f, "CPUExecutionProvider"),
            Provider::Cuda { device_id } => write!(f, "CUDAExecutionProvider (device {device_id})"),
        }
    }
}

/// How to start the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    pub device: Device,
    /// Intra-op threads of the global pool; 0 = one per core.
    pub threads: usize,
    /// The onnxruntime library; `None` = [`find_library`].
    pub library: Option<PathBuf>,
    /// CUDA device ordinal.
    pub cuda_device: i32,
    /// Whether the pool's worker threads spin between operators instead of sleeping at once. A
    /// decoding step runs many operators per layer (66 in the plain graphs, 17 in the CPU copies),
    /// most of them microseconds long; with the plain graphs, waking a sleeping worker for each
    /// cost about 10% of the step on a 2-core VM (50 cached positions, three alternating runs of 60
    /// steps: 51-55 ms medians spinning against 58-66 ms sleeping).
    /// The price is CPU time burnt while a step waits on the host, which other processes cannot use.
    /// The decoder's CPU copies run their parallel work on the operators' own pool instead
    /// ([`pool::Pool`], which spins for 5 ms and then sleeps), so this affects the text encoder,
    /// EnCodec and the plain graphs.
    pub spin: bool,
    /// On the CPU provider, load the decoder's `*.cpu.onnx` graphs (built from the runtime's own
    /// operators, [`ops`]) when the bundle has them; `false` runs the plain graphs.
    pub cpu_kernels: bool,
    /// Write onnxruntime's per-node profile of every session into this folder (what `info
    /// --placement` reads: which provider ran each node).
    pub profile: Option<PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { device: Device::Auto, threads: 0, library: None, cuda_device: 0, spin: true, cpu_kernels: true, profile: None }
    }
}

/// The process-wide runtime. ONNX Runtime allows one environment per process, so the first
/// [`Runtime::init`] decides the library and thread pool; the device is chosen per [`Runtime`].
#[derive(Clone)]
pub struct Runtime {
    env: Environment,
    provider: Provider,
    /// Why `auto` chose CPU, when it did.
    fallback_reason: Option<String>,
    library: PathBuf,
    threads: usize,
    cpu_kernels: bool,
    profile: Option<PathBuf>,
}

struct Global {
    env: Environment,
    library: PathBuf,
    /// The global pool's intra-op threads (resolved: never 0).
    threads: usize,
}

static GLOBAL: OnceLock<std::result::Result<Global, String>> = OnceLock::new();

/// The onnxruntime library this process loaded, once [`Runtime::init`] has run.
pub fn loaded_library() -> Option<PathBuf> {
    match GLOBAL.get() {
        Some(Ok(g)) => Some(g.library.clone()),
        _ => None,
    }
}

impl Runtime {
    /// Loads onnxruntime (once per process), sets up the global thread pool and picks the provider.
    pub fn init(options: &RuntimeOptions) -> Result<Runtime> {
        let global = GLOBAL.get_or_init(|| init_global(options).map_err(|e| e.to_string()));
        let global = match global {
            Ok(g) => g,
            Err(message) => return Err(Error::Runtime(message.clone())),
        };
        let (provider, fallback_reason) = choose_provider(options)?;
        Ok(Runtime {
            env: global.env.clone(),
            provider,
            fallback_reason,
            library: global.library.clone(),
            threads: global.threads,
            cpu_kernels: options.cpu_kernels,
            profile: options.profile.clone(),
        })
    }

    /// The provider every session of this runtime uses.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// One line for logs: which provider runs, and why CPU if CUDA was hoped for.
    pub fn describe(&self) -> String {
        match &self.fallback_reason {
            Some(why) => format!("{} (CUDA not used: {why})", self.provider),
            None => format!("{}", self.provider),
        }
    }

    /// Whether the decoder's CPU graph copies (with the runtime's own operators) are to be used.
    pub fn cpu_kernels(&self) -> bool {
        self.cpu_kernels && self.provider == Provider::Cpu
    }

    /// The onnxruntime library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Creates a session for one graph file on this runtime's provider.
    pub fn session(&self, path: &Path) -> Result<Session> {
        self.session_with(path, false)
    }

    /// Like [`Runtime::session`], with the project's operators ([`ops::domain`]) registered
    /// when `kernels` is set (the decoder's `*.cpu.onnx` copies need them; CPU provider only).
    pub fn session_with(&self, path: &Path, kernels: bool) -> Result<Session> {
        let context = format!("loading {}", path.display());
        let mut builder = Session::builder(&self.env)
            .map_err(Error::ort(context.clone()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)?;
        if std::env::var("MUSICGEN_INTERP_CPU_ARENA").as_deref() != Ok("1") {
            // No per-session CPU arena: with 26+ sessions whose shapes change every step (the cache
            // grows), each arena grew by powers of two to its own peak and kept it (peak RSS 4.8x the
            // weights on the small model); plain allocations cost no measurable speed.
            builder = builder.with_memory_pattern(false)?;
            builder = builder.with_execution_providers([ep::CPU::default().with_arena_allocator(false).build()])?;
        }
        if let Provider::Cuda { device_id } = self.provider {
            builder = builder.with_execution_providers([cuda_ep(device_id).error_on_failure()]).map_err(|e| {
                Error::CudaUnavailable { reason: ort::Error::<()>::from(e).to_string() }
            })?;
        }
        if let Some(dir) = &self.profile {
            // onnxruntime appends the date and `.json` to this prefix.
            let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            builder = builder.with_profiling(dir.join(stem))?;
        }
        if kernels {
            let domain = ops::domain(self.threads).map_err(Error::ort(context.clone()))?;
            // The operators' parallel parts run on their own pool ([`pool::Pool`]); the session's
            // other operators (a few microseconds each at decoding) run on the calling thread, so
            // no onnxruntime worker spins beside the pool's.
            builder = builder.with_operators(domain)?.with_independent_thread_pool()?.with_intra_threads(1)?;
        }
        // onnxruntime adds a custom domain to a process-wide table (which every model load reads)
        // while it creates the session; two sessions created at once collided there ("domain is
        // already exist"), so sessions are created one at a time.
        static CREATING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let session = builder.commit_from_file(path).map_err(Error::ort(context))?;
        release_free_memory();
        Ok(session)
    }
}

/// Hands memory the allocator holds free back to the operating system. onnxruntime frees a graph's
/// original weights once it has packed them, and its load-time buffers, but glibc keeps those pages
/// (measured on the small model: 0.63 GB of 2.83 GB resident after loading was free heap). Called
/// after each session is created and after large transient work.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's `malloc_trim` takes the allocator's own locks and only returns free pages to
    // the system; it takes an integer, touches no live allocation and may run on any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn cuda_ep(device_id: i32) -> ort::ep::ExecutionProviderDispatch {
    // TF32 off: parity with PyTorch fp32 is the contract.
    ep::CUDA::default().with_device_id(device_id).with_tf32(false).build()
}

/// Large buffers (from 1 MiB) get their own pages from the system and give them back when freed.
/// glibc's default raises that threshold as buffers are freed, after which the KV cache's growth
/// (every layer's buffer replaced by a larger one, 64 positions at a time) left holes in the heap that
/// no later buffer fit: a 30 s generation on the small model peaked at 1.04 GB over the weights for a
/// 0.6 GB cache. Measured at 750 steps: peak 2.88 GB with the default, 2.51 GB with this. The
/// decoding step does not allocate that much, so its time did not move (1500 cached positions:
/// 94.5-96.1 ms either way); large one-off buffers (EnCodec's activations, a long prefill) now come
/// fresh from the system each time, which made EnCodec decoding about 5% slower (0.140 against 0.133
/// s per second of audio).
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's `mallopt` takes the allocator's lock and only changes the threshold later
    // allocations use (`M_MMAP_THRESHOLD`, a valid parameter, with a value in its range); it
    // takes integers and touches no live allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn init_global(options: &RuntimeOptions) -> Result<Global> {
    fixed_mmap_threshold();
    let library = match &options.library {
        Some(p) => p.clone(),
        None => find_library()?,
    };
    if !library.is_file() {
        return Err(Error::RuntimeLibraryMissing { searched: library.display().to_string() });
    }
    let builder = ort::init_from(&library)
        .map_err(|e| Error::RuntimeLibraryLoad { path: library.clone(), reason: e.to_string() })?;
    let mut pool = GlobalThreadPoolOptions::default().with_spin_control(options.spin)?.with_inter_threads(1)?;
    if options.threads > 0 {
        pool = pool.with_intra_threads(options.threads)?;
    }
    let env = builder
        .with_name("musicgen-interp")
        .with_telemetry(false)
        .with_global_thread_pool(pool)
        .build()
        .map_err(|e| Error::RuntimeLibraryLoad { path: library.clone(), reason: e.to_string() })?;
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Ok(Global { env, library, threads })
}

fn choose_provider(options: &RuntimeOptions) -> Result<(Provider, Option<String>)> {
    let cuda = Provider::Cuda { device_id: options.cuda_device };
    if options.device == Device::Cpu {
        return Ok((Provider::Cpu, None));
    }
    // CUDA and cuDNN from the environment's NVIDIA wheels, before the provider looks for them (only
    // where the onnxruntime library has the CUDA provider: a CPU build would load them for nothing).
    let preloaded = match GLOBAL.get() {
        Some(Ok(global)) if matches!(ep::CUDA::is_available(), Ok(true)) => Some(cuda_libs::preload(&global.library)),
        _ => None,
    };
    let problem = cuda_problem().map(|reason| match preloaded.and_then(|p| p.failed.first()) {
        Some((path, why)) => format!("{reason} (and {} from the NVIDIA wheels would not load, e.g. {}: {why})", preloaded.map_or(0, |p| p.failed.len()), path.display()),
        None => reason,
    });
    match (options.device, problem) {
        (_, None) => Ok((cuda, None)),
        (Device::Auto, Some(reason)) => Ok((Provider::Cpu, Some(reason))),
        (_, Some(reason)) => Err(Error::CudaUnavailable { reason }),
    }
}

/// `None` when the CUDA provider is compiled into the loaded library and can be registered.
fn cuda_problem() -> Option<String> {
    match ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => return Some("the loaded onnxruntime library was built without CUDA".into()),
        Err(e) => return Some(e.to_string()),
    }
    // Registering on a throwaway builder loads the provider library and its CUDA/cuDNN dependencies.
    let env = GLOBAL.get()?.as_ref().ok()?.env.clone();
    let attempt = Session::builder(&env)
        .map_err(ort::Error::<()>::from)
        .and_then(|b| b.with_execution_providers([cuda_ep(0).error_on_failure()]).map_err(ort::Error::<()>::from));
    attempt.err().map(|e| e.to_string())
}

/// Finds the onnxruntime shared library: the environment variables in [`LIBRARY_ENV_VARS`], then the
/// project's virtual environment (`.venv`, written by `scripts/setup.sh`) beside the working
/// directory, beside the executable's ancestors, and in the source tree this crate was built from.
pub fn find_library() -> Result<PathBuf> {
    for var in LIBRARY_ENV_VARS {
        if let Some(value) = std::env::var_os(var) {
            let path = PathBuf::from(value);
            if path.is_file() {
                return Ok(path);
            }
            // A variable the user set names the library they want: do not silently use another.
            return Err(Error::RuntimeLibraryMissing { searched: format!("{var}={} is not a file", path.display()) });
        }
    }
    let mut searched = Vec::new();
    for venv in venv_dirs() {
        searched.push(venv.display().to_string());
        if let Some(lib) = library_in_venv(&venv) {
            return Ok(lib);
        }
    }
    Err(Error::RuntimeLibraryMissing {
        searched: if searched.is_empty() { "no .venv found and no library variable set".into() } else { format!("looked in {}", searched.join(", ")) },
    })
}

/// Where the project's files may be, in order: the working directory and its ancestors, the
/// executable's folder and its ancestors, and the source tree this crate was built from.
pub fn project_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// The project's virtual environments (`.venv`, written by `scripts/setup.sh`): beside the working
/// directory or its ancestors, beside the executable's ancestors, and in the source tree this crate
/// was built from, in that order.
pub fn venv_dirs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for venv in project_roots().into_iter().map(|r| r.join(".venv")) {
        if venv.is_dir() && !out.contains(&venv) {
            out.push(venv);
        }
    }
    out
}

/// The Python of the first project virtual environment.
pub fn find_venv_python() -> Option<PathBuf> {
    venv_dirs().into_iter().map(|v| v.join("bin/python")).find(|p| p.is_file())
}

/// `VENV/lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so*` (the PyPI wheels' layout;
/// `onnxruntime-gpu` installs into the same package folder).
fn library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut candidates = Vec::new();
    for python in std::fs::read_dir(&lib).ok()?.flatten() {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        for entry in std::fs::read_dir(&capi).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("libonnxruntime.so") {
                candidates.push(entry.path());
            }
        }
    }
    // Prefer the versioned file (the wheel ships `libonnxruntime.so.X.Y.Z`).
    candidates.sort();
    candidates.pop()
}
