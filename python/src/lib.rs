//! `musicgen_interp._native`: the musicgen-interp runtime as a Python extension module (PyO3).
//! `python/musicgen_interp/` wraps it; see its docstrings for the API as users see it.
//!
//! - The graphs run with the GIL released ([`Python::detach`]); it is taken again only to call a
//!   Python hook, and between decoding steps to look for Ctrl-C ([`Python::check_signals`]).
//! - Hooks get the activation as a numpy array that *borrows* the decoder's buffer (no copy): it is
//!   valid for the duration of the call only. After the call the host checks, by two reference
//!   counts, that nothing holds the array or its base object (a `Lease`) any more. numpy's views of
//!   it (`act[0]`, `act[:, -1]`, views of views) refer to the array as their base, so a kept view
//!   shows in the array's count (had numpy collapsed their base to the `Lease`, in the Lease's). If
//!   something was kept, the generation ends with a `ValueError` telling the hook to keep
//!   `act.copy()`, and first ([`escaped`]) the values are copied once and the array, and every kept
//!   view that `musicgen_interp._borrow.kept` finds among the objects the garbage collector tracks
//!   (lists, dicts, sets, attributes, closures, frames and tracebacks), is pointed at the same place
//!   in that copy, read-only; the `Lease` keeps the copy alive. What the search cannot reach is
//!   counted and named in the error instead: a memoryview of the array, or a view held only where
//!   the collector does not look (inside a numpy object array, by a C extension): such a view still
//!   points at the decoder's memory, which the next steps overwrite and the end of the generation
//!   frees, and must not be used. (`ctx.data_ptr` and `act.ctypes.data` are raw addresses and are
//!   never followed.) The search walks every tracked object, so it costs a moment on a large heap;
//!   it runs only on this error path.
//! - An exception in a hook ends the generation; the same exception object, with its traceback,
//!   is raised from `generate`. Library errors become `ValueError` (bad input) or `MusicGenError`
//!   with the CLI's one-line message.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Mutex;

use ndarray::{Array3, ArrayView3, ArrayViewMut3};
use numpy::npyffi::flags::NPY_ARRAY_WRITEABLE;
use numpy::{IntoPyArray, PyArray3, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySlice, PyString};

use musicgen_interp as mi;
use mi::generate::{generate as run_generation, GenerationRequest};
use mi::hooks::{check_points, Component, ForwardContext, HookPoint, Hooks, LayerEdits, Reduction};
use mi::plugin::MethodPlugin;

pyo3::create_exception!(musicgen_interp, MusicGenError, PyRuntimeError, "An error of the musicgen-interp runtime, with the CLI's message.");

/// A library error as a Python exception: bad input or a bad config is a `ValueError`, the rest `MusicGenError`.
fn py_err(e: mi::Error) -> PyErr {
    match e {
        mi::Error::Input(_) | mi::Error::Config { .. } => PyValueError::new_err(e.to_string()),
        _ => MusicGenError::new_err(e.to_string()),
    }
}

/// Moves values into [`Python::detach`]'s closure.
struct OnThisThread<T>(T);
// SAFETY: `detach` runs its closure on the calling thread and returns before this value is used
// again, so nothing wrapped here is ever used from another thread. (`detach` asks for `Send` only
// to keep GIL-bound values out of the closure; the Python objects inside the hooks are `Py<...>`,
// touched only after `Python::attach` takes the GIL back.)
unsafe impl<T> Send for OnThisThread<T> {}

impl<T> OnThisThread<T> {
    /// Unwraps as a whole (a closure destructuring the field would capture the parts, not the wrapper).
    fn take(self) -> T {
        self.0
    }
}

/// The base object of a borrowed array: holds the copy the array is pointed at if it escapes.
#[pyclass(module = "musicgen_interp._native")]
struct Lease {
    keep: Mutex<Option<Py<PyAny>>>,
}

/// Wraps `view`'s memory as a numpy array (no copy) whose base object is `container`.
///
/// # Safety
/// The memory must stay valid and otherwise unused until [`release`] is called on the array; if
/// `writable`, Python may write to it, so `view` must come from a mutable borrow held that long.
unsafe fn borrow<'py>(view: ArrayView3<'_, f32>, container: Bound<'py, PyAny>, writable: bool) -> Bound<'py, PyArray3<f32>> {
    // SAFETY: the caller keeps the memory valid until `release`, and `release` either finds no
    // other reference or points the array at a copy it owns, so the array never outlives it.
    let arr = unsafe { PyArray3::borrow_from_array(&view, container) };
    if !writable {
        // SAFETY: `arr` is a live numpy array created just above; clearing its WRITEABLE flag is
        // what `numpy.ndarray.setflags(write=False)` does.
        unsafe { (*arr.as_array_ptr()).fields.flags &= !NPY_ARRAY_WRITEABLE };
    }
    arr
}

/// Ends `arr`'s borrow: `Ok` when nothing but `arr` itself refers to it or to its `Lease` base
/// (the cheap check every call makes: two reference counts). Otherwise see [`escaped`].
fn release(py: Python<'_>, arr: Bound<'_, PyArray3<f32>>, lease: &Bound<'_, Lease>, what: impl FnOnce() -> String) -> PyResult<()> {
    // SAFETY: reading the reference counts of live objects while holding the GIL.
    let (arr_refs, lease_refs) = unsafe { (pyo3::ffi::Py_REFCNT(arr.as_ptr()), pyo3::ffi::Py_REFCNT(lease.as_ptr())) };
    // `arr` is held by the caller; `lease` by the caller and as `arr`'s base.
    if arr_refs <= 1 && lease_refs <= 2 {
        return Ok(());
    }
    escaped(py, arr, lease, &what())
}

/// A hook kept the array or a view of it. numpy's views (`act[0]`, `act[:, -1]`) keep their own
/// data pointer into the model's memory and refer to `arr` as their base (or to the `Lease`, had
/// numpy collapsed the chain of bases to it), so either count shows them. The values are copied
/// once; `arr` and every kept view the garbage collector can reach (`_borrow.kept`) are pointed at
/// the same place in the copy, read-only, kept alive by the `Lease` that each of them refers to.
/// Returns the error to raise, which also says how many references could not be found (and so may
/// still point at the model's memory).
#[cold]
fn escaped(py: Python<'_>, arr: Bound<'_, PyArray3<f32>>, lease: &Bound<'_, Lease>, what: &str) -> PyResult<()> {
    assert!(arr.is_c_contiguous(), "hook arrays are standard layout");
    // SAFETY: the memory is still valid (the caller releases before the borrow ends).
    let values = unsafe { arr.as_array() }.to_owned();
    let copy = values.into_pyarray(py);
    assert!(copy.is_c_contiguous());
    let start = arr.data() as usize;
    let end = start + arr.len() * std::mem::size_of::<f32>();
    let target = copy.data() as usize;
    // Moves one array's data pointer from the model's memory to the same offset in the copy.
    let repoint = |a: *mut numpy::npyffi::PyArrayObject| {
        // SAFETY: `a` is a live array (`arr`, or a view `kept` returned, held in `views`) that does
        // not own its data; its data lies in `start..=end` (checked), the copy has the same
        // C-contiguous layout, and `a` keeps `arr` or `lease` alive, and so `copy`, once
        // `lease.keep` holds it (below, before the GIL is released).
        unsafe {
            let d = (*a).fields.data as usize;
            if (start..=end).contains(&d) {
                (*a).fields.data = (target + (d - start)) as *mut _;
                (*a).fields.flags &= !NPY_ARRAY_WRITEABLE;
                true
            } else {
                false
            }
        }
    };
    let found = py
        .import("musicgen_interp._borrow")
        .and_then(|m| m.getattr("kept")?.call1((arr.as_ptr() as usize, lease.as_ptr() as usize)))
        .and_then(|r| r.extract::<(Vec<Bound<'_, numpy::PyUntypedArray>>, isize, isize, isize)>());
    let (views, to_arr, to_lease, memoryviews) = found.unwrap_or_default();
    let (mut on_arr, mut on_lease, mut moved) = (0isize, 0isize, 0usize);
    for v in &views {
        let a = v.as_array_ptr();
        // SAFETY: reading the base pointer of a live array.
        let base = unsafe { (*a).fields.base };
        on_arr += isize::from(base == arr.as_ptr());
        on_lease += isize::from(base == lease.as_ptr());
        moved += usize::from(repoint(a));
    }
    assert!(repoint(arr.as_array_ptr()), "the lent array points at the memory it borrows");
    *lease.borrow().keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(copy.into_any().unbind());
    // SAFETY: reading the reference counts of live objects while holding the GIL.
    let (arr_refs, lease_refs) = unsafe { (pyo3::ffi::Py_REFCNT(arr.as_ptr()), pyo3::ffi::Py_REFCNT(lease.as_ptr())) };
    // References nobody accounts for: not the caller's, not a tracked object's, not a found view's
    // base; plus memoryviews (found, but their pointer cannot be moved).
    let lost = (arr_refs - 1 - to_arr - on_arr).max(0) + (lease_refs - 2 - to_lease - on_lease).max(0) + memoryviews;
    drop(views);
    let kept = match (moved, to_arr > 0) {
        (0, _) => "the kept array".to_string(),
        (n, false) => format!("the {n} kept view(s)"),
        (n, true) => format!("the kept array and {n} view(s) of it"),
    };
    let mut message = format!(
        "{what} kept its activation array, or a view of it (act[0], act[:, -1]), after returning: the array borrows the model's memory only during the call; keep a copy (`act.copy()`, `act[0].copy()`) instead ({kept} now read a read-only copy of the values at the end of the call)"
    );
    if lost > 0 {
        message.push_str(&format!(
            "; {lost} reference(s) to it could not be found (a memoryview, or a view held where the garbage collector does not look, such as inside a numpy object array): a view among them still points at the model's memory, which is reused and freed after this error, so do not use it"
        ));
    }
    Err(PyValueError::new_err(message))
}

/// Where a hook is called: the forward and the rows (`ctx.cond`, `ctx.uncond` are slices of the
/// batch axis), the hook point and its layer.
#[pyclass(name = "HookContext", module = "musicgen_interp", frozen, get_all)]
struct PyContext {
    /// Forward call of this generation: 0 is the prefill, then one per decoding step.
    call: usize,
    past_len: usize,
    new_len: usize,
    rows: usize,
    /// The hook point's name (made once per hook, not per call).
    point: Py<PyString>,
    layer: Option<usize>,
    /// `attn`, `cross_attn` or `mlp` for component points.
    component: Option<&'static str>,
    cond_start: usize,
    cond_end: usize,
    /// Address of the activation's first value in the decoder's memory (what `act.ctypes.data`
    /// shows when the array borrows it).
    data_ptr: usize,
}

#[pymethods]
impl PyContext {
    /// The conditional rows, as a slice of the batch axis.
    #[getter]
    fn cond<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySlice>> {
        Ok(PySlice::new(py, self.cond_start as isize, self.cond_end as isize, 1))
    }
    /// The unconditional rows (empty without guidance).
    #[getter]
    fn uncond<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySlice>> {
        Ok(PySlice::new(py, self.cond_end as isize, self.rows as isize, 1))
    }
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "HookContext(point={:?}, call={}, past_len={}, new_len={}, rows={}, cond={}..{})",
            self.point.bind(py).to_string(),
            self.call, self.past_len, self.new_len, self.rows, self.cond_start, self.cond_end
        )
    }
}

fn context(py: Python<'_>, ctx: &ForwardContext, point: &Py<PyString>, layer: Option<usize>, component: Option<Component>, data_ptr: usize) -> PyContext {
    PyContext {
        call: ctx.call,
        past_len: ctx.past_len,
        new_len: ctx.new_len,
        rows: ctx.rows,
        point: point.clone_ref(py),
        layer,
        component: component.map(Component::name),
        cond_start: ctx.conditional_rows.start,
        cond_end: ctx.conditional_rows.end,
        data_ptr,
    }
}

/// A component edit hook: `fn(edits, ctx)` called before the layer runs. Wrap a function with
/// `musicgen_interp.edit(fn)` and key it by a component hook point.
#[pyclass(name = "Edit", module = "musicgen_interp", frozen)]
struct PyEdit {
    #[pyo3(get)]
    function: Py<PyAny>,
}

#[pymethods]
impl PyEdit {
    #[new]
    fn new(function: Py<PyAny>) -> Self {
        PyEdit { function }
    }
}

/// The edit buffers of one component in one forward, `[rows, new positions, d_model]`, zero until
/// written: the output becomes `out * (1 - mask) + replace * mask + add`. Valid during the call.
#[pyclass(name = "ComponentEdits", module = "musicgen_interp", unsendable)]
struct PyEdits {
    edits: *mut LayerEdits,
    component: Component,
    live: Cell<bool>,
    /// add, replace, mask: each handed out once and kept here, so that the release can check them.
    arrays: RefCell<[Option<Py<PyArray3<f32>>>; 3]>,
}

impl PyEdits {
    fn array(slf: &Bound<'_, Self>, which: usize) -> PyResult<Py<PyArray3<f32>>> {
        let this = slf.borrow();
        if !this.live.get() {
            return Err(PyValueError::new_err("component edits are usable only during the hook's call"));
        }
        if let Some(a) = &this.arrays.borrow()[which] {
            return Ok(a.clone_ref(slf.py()));
        }
        // SAFETY: `live` is set only while `edit_components` runs the hook with `edits` pointing at
        // the layer's `LayerEdits`, borrowed mutably for that call and used by nothing else meanwhile.
        let edits = unsafe { &mut *this.edits };
        // One `Lease` per array, so that `release` knows how many references each should have.
        let made = |view: ArrayViewMut3<'_, f32>| -> PyResult<Py<PyArray3<f32>>> {
            let lease = Bound::new(slf.py(), Lease { keep: Mutex::new(None) })?;
            // SAFETY: the buffers of `LayerEdits` live (unmoved) until the layer runs, after the
            // hook returned and `release` ended every borrow; the mutable borrow is held that long.
            Ok(unsafe { borrow(view.view(), lease.into_any(), true) }.unbind())
        };
        let mut arrays = this.arrays.borrow_mut();
        if which == 0 {
            arrays[0] = Some(made(edits.add(this.component))?);
        } else {
            let (values, mask) = edits.replace(this.component);
            arrays[1] = Some(made(values)?);
            arrays[2] = Some(made(mask)?);
        }
        Ok(arrays[which].as_ref().expect("just made").clone_ref(slf.py()))
    }
}

#[pymethods]
impl PyEdits {
    /// Added to the component's output.
    #[getter]
    fn add(slf: &Bound<'_, Self>) -> PyResult<Py<PyArray3<f32>>> {
        PyEdits::array(slf, 0)
    }
    /// Replacement values, used where `mask` is 1 (fractions blend).
    #[getter]
    fn replace(slf: &Bound<'_, Self>) -> PyResult<Py<PyArray3<f32>>> {
        PyEdits::array(slf, 1)
    }
    #[getter]
    fn mask(slf: &Bound<'_, Self>) -> PyResult<Py<PyArray3<f32>>> {
        PyEdits::array(slf, 2)
    }
}

enum PyHook {
    /// Residual points: writable; the return value, if an array, replaces the activation.
    Residual(HookPoint, Py<PyAny>, Py<PyString>),
    /// Component outputs and `ln_final.hook_normalized`: read-only.
    Observe(HookPoint, Py<PyAny>, Py<PyString>),
    /// Component edits before the layer runs.
    Edit(usize, Component, Py<PyAny>, Py<PyString>),
}

/// Python callables as decoder [`Hooks`]. The first Python exception ends the generation and is
/// kept in `error`, to be raised as it is.
struct PyHooks {
    hooks: Vec<PyHook>,
    error: Option<PyErr>,
}

impl PyHooks {
    fn parse(hooks: Option<&Bound<'_, PyDict>>) -> PyResult<PyHooks> {
        let mut out = Vec::new();
        for (key, value) in hooks.into_iter().flat_map(|d| d.iter()) {
            let name: String = key.extract().map_err(|_| PyValueError::new_err(format!("hook keys are hook point names, got {key}")))?;
            let point = parse_point(&name)?;
            let functions: Vec<Bound<'_, PyAny>> = if value.is_instance_of::<pyo3::types::PyList>() { value.extract()? } else { vec![value] };
            for f in functions {
                let edit = f.cast::<PyEdit>().ok().map(|e| e.get().function.clone_ref(f.py()));
                // The name as `ctx.point` shows it, made once here rather than at every call.
                let label = PyString::new(f.py(), &point.to_string()).unbind();
                let hook = match (point, edit) {
                    (HookPoint::Component(l, c), Some(e)) => PyHook::Edit(l, c, e, label),
                    (_, Some(_)) => return Err(PyValueError::new_err(format!("musicgen_interp.edit(...) applies to component points (blocks.L.attn/cross_attn/mlp.hook_out), not {name}"))),
                    _ if !f.is_callable() => return Err(PyValueError::new_err(format!("the hook for {name} is not callable"))),
                    (p, None) if p.is_residual() => PyHook::Residual(p, f.unbind(), label),
                    (p, None) => PyHook::Observe(p, f.unbind(), label),
                };
                out.push(hook);
            }
        }
        Ok(PyHooks { hooks: out, error: None })
    }

    fn points(&self) -> Vec<HookPoint> {
        self.hooks
            .iter()
            .map(|h| match h {
                PyHook::Residual(p, ..) | PyHook::Observe(p, ..) => *p,
                PyHook::Edit(l, c, ..) => HookPoint::Component(*l, *c),
            })
            .collect()
    }

    /// Keeps the first Python error and hands the generation loop an error with its message.
    fn fail(&mut self, point: impl std::fmt::Display, e: PyErr) -> mi::Error {
        let reason = e.to_string();
        self.error.get_or_insert(e);
        mi::Error::Hook { hook: format!("Python hook at {point}"), reason }
    }
}

/// The replacement a hook returned, as `[rows, positions, d_model]` float32 (checked).
fn replacement(py: Python<'_>, ret: Bound<'_, PyAny>, shape: [usize; 3], point: &str) -> PyResult<Array3<f32>> {
    let np = py.import("numpy")?;
    let a = np.call_method1("ascontiguousarray", (ret, "float32")).map_err(|e| PyValueError::new_err(format!("the hook for {point} returned something that is not an array of numbers: {e}")))?;
    let got: Vec<usize> = a.getattr("shape")?.extract()?;
    if got != shape {
        return Err(PyValueError::new_err(format!(
            "the hook for {point} returned an array of shape {got:?}, but the activation is [rows, positions, d_model] = {shape:?}; return None to keep in-place edits"
        )));
    }
    Ok(a.cast::<PyArray3<f32>>()?.readonly().as_array().to_owned())
}

fn call_residual(py: Python<'_>, f: &Py<PyAny>, label: &Py<PyString>, ctx: &ForwardContext, point: HookPoint, h: &mut ArrayViewMut3<'_, f32>) -> PyResult<()> {
    let shape = [h.shape()[0], h.shape()[1], h.shape()[2]];
    let pyctx = Bound::new(py, context(py, ctx, label, point.layer(), None, h.as_ptr() as usize))?;
    let lease = Bound::new(py, Lease { keep: Mutex::new(None) })?;
    // SAFETY: `h` is borrowed mutably for this whole function and `release` below ends the
    // array's borrow before it returns.
    let arr = unsafe { borrow(h.view(), lease.clone().into_any(), true) };
    let ret = f.bind(py).call1((arr.clone(), pyctx));
    let new = match ret {
        Err(e) => Err(e),
        Ok(r) if r.is_none() || r.is(&arr) => Ok(None),
        Ok(r) => replacement(py, r, shape, &point.to_string()).map(Some),
    };
    // An exception's traceback holds the hook's frame, and so the array: `release` copies it then,
    // and the hook's own exception is the one to raise.
    let released = release(py, arr, &lease, || format!("the hook for {point}"));
    if let Some(new) = new? {
        h.assign(&new);
    }
    released
}

fn call_observe(py: Python<'_>, f: &Py<PyAny>, label: &Py<PyString>, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> PyResult<()> {
    let component = match point {
        HookPoint::Component(_, c) => Some(c),
        _ => None,
    };
    let pyctx = Bound::new(py, context(py, ctx, label, point.layer(), component, out.as_ptr() as usize))?;
    let lease = Bound::new(py, Lease { keep: Mutex::new(None) })?;
    // SAFETY: `out` is borrowed for this whole function, read-only here (the array is not
    // writeable), and `release` ends the array's borrow before it returns.
    let arr = unsafe { borrow(out, lease.clone().into_any(), false) };
    let ret = f.bind(py).call1((arr.clone(), pyctx));
    let returned = match ret {
        Err(e) => Err(e),
        Ok(r) if r.is_none() || r.is(&arr) => Ok(()),
        Ok(_) => Err(PyValueError::new_err(format!(
            "the hook for {point} returned a value, but {point} is computed inside the layer graph and is read-only here: wrap the hook in musicgen_interp.edit(fn) to add to it or replace it"
        ))),
    };
    let released = release(py, arr, &lease, || format!("the hook for {point}"));
    returned.and(released)
}

fn call_edit(py: Python<'_>, f: &Py<PyAny>, label: &Py<PyString>, ctx: &ForwardContext, layer: usize, component: Component, edits: &mut LayerEdits) -> PyResult<()> {
    let name = HookPoint::Component(layer, component).to_string();
    let pyctx = Bound::new(py, context(py, ctx, label, Some(layer), Some(component), 0))?;
    let handle = Bound::new(py, PyEdits { edits: edits as *mut LayerEdits, component, live: Cell::new(true), arrays: RefCell::new([None, None, None]) })?;
    let ret = f.bind(py).call1((handle.clone(), pyctx));
    let shape = [ctx.rows, ctx.new_len, 0];
    let outcome = match ret {
        Err(e) => Err(e),
        Ok(r) if r.is_none() => Ok(None),
        Ok(r) => {
            let d = r.getattr("shape").ok().and_then(|s| s.extract::<Vec<usize>>().ok()).and_then(|s| s.get(2).copied()).unwrap_or(0);
            replacement(py, r, [shape[0], shape[1], d.max(1)], &name).map(Some)
        }
    };
    let this = handle.borrow();
    this.live.set(false);
    let arrays = std::mem::take(&mut *this.arrays.borrow_mut());
    drop(this);
    let mut released = Ok(());
    for a in arrays.into_iter().flatten() {
        let a = a.into_bound(py);
        let lease = a.getattr("base")?.cast_into::<Lease>()?;
        released = released.and(release(py, a, &lease, || format!("the edit hook for {name}")));
    }
    if let Some(new) = outcome? {
        // A returned array replaces the whole output: checked against d_model here.
        let (mut values, mut mask) = edits.replace(component);
        if new.shape() != values.shape() {
            return Err(PyValueError::new_err(format!(
                "the edit hook for {name} returned an array of shape {:?}, but the component output is [rows, positions, d_model] = {:?}",
                new.shape(),
                values.shape()
            )));
        }
        values.assign(&new);
        mask.fill(1.0);
    }
    released
}

impl Hooks for PyHooks {
    fn wants(&self, point: &HookPoint) -> bool {
        self.hooks.iter().any(|h| matches!(h, PyHook::Observe(p, ..) if p == point))
    }

    fn check_points(&self, layers: usize) -> mi::Result<()> {
        check_points("the Python hooks", &self.points(), layers)
    }

    fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> mi::Result<()> {
        for i in 0..self.hooks.len() {
            let PyHook::Edit(l, c, f, label) = &self.hooks[i] else { continue };
            if *l != layer {
                continue;
            }
            let c = *c;
            if let Err(e) = Python::attach(|py| call_edit(py, f, label, ctx, layer, c, edits)) {
                return Err(self.fail(HookPoint::Component(layer, c), e));
            }
        }
        Ok(())
    }

    fn on_residual(&mut self, ctx: &ForwardContext, point: HookPoint, mut h: ArrayViewMut3<'_, f32>) -> mi::Result<()> {
        for i in 0..self.hooks.len() {
            let PyHook::Residual(p, f, label) = &self.hooks[i] else { continue };
            if *p != point {
                continue;
            }
            if let Err(e) = Python::attach(|py| call_residual(py, f, label, ctx, point, &mut h)) {
                return Err(self.fail(point, e));
            }
        }
        Ok(())
    }

    fn on_component(&mut self, ctx: &ForwardContext, point: HookPoint, out: ArrayView3<'_, f32>) -> mi::Result<()> {
        for i in 0..self.hooks.len() {
            let PyHook::Observe(p, f, label) = &self.hooks[i] else { continue };
            if *p != point {
                continue;
            }
            if let Err(e) = Python::attach(|py| call_observe(py, f, label, ctx, point, out)) {
                return Err(self.fail(point, e));
            }
        }
        Ok(())
    }

    fn step_end(&mut self, step: usize) -> mi::Result<()> {
        // Ctrl-C (or any signal handler that raises) stops the generation between steps.
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(format!("step {step}"), e)),
        }
    }
}

/// What `generate` returns.
#[pyclass(name = "Generation", module = "musicgen_interp", frozen, get_all)]
struct PyGeneration {
    /// `[batch, samples]` float32, or None when not decoded.
    audio: Py<PyAny>,
    sample_rate: u32,
    /// `[batch, codebooks, frames]` int64.
    codes: Py<PyAny>,
    /// Decoder steps run.
    steps: usize,
    decode_seconds: f64,
    /// With `cache_points`: `{point: array}` of the conditional rows, and of the unconditional rows
    /// (empty without guidance).
    cache: Py<PyAny>,
    uncond_cache: Py<PyAny>,
}

#[pyclass(name = "MusicGen", module = "musicgen_interp", frozen)]
struct PyModel {
    model: Mutex<mi::MusicGen>,
    runtime: mi::Runtime,
    path: PathBuf,
}

/// A hook point name, or a `ValueError` with the library's message.
fn parse_point(name: &str) -> PyResult<HookPoint> {
    name.parse::<HookPoint>().map_err(|e| PyValueError::new_err(e.to_string()))
}

fn json_value<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (v.to_string(),))
}

fn settings_json(py: Python<'_>, settings: Option<Bound<'_, PyAny>>) -> PyResult<String> {
    match settings {
        None => Ok("{}".into()),
        Some(s) if s.is_instance_of::<pyo3::types::PyString>() => s.extract(),
        Some(s) => {
            let kw = PyDict::new(py);
            kw.set_item("default", py.import("builtins")?.getattr("str")?)?;
            py.import("json")?.call_method("dumps", (s,), Some(&kw))?.extract()
        }
    }
}

impl PyModel {
    fn lock(&self) -> std::sync::MutexGuard<'_, mi::MusicGen> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyModel {
    /// Loads a bundle folder (or a checkpoint folder / hub id exported into the models folder).
    #[staticmethod]
    #[pyo3(signature = (path, device="auto", threads=0, ort_library=None, verify_all=false, plain_graphs=false))]
    fn load(py: Python<'_>, path: String, device: &str, threads: usize, ort_library: Option<PathBuf>, verify_all: bool, plain_graphs: bool) -> PyResult<PyModel> {
        let options = mi::RuntimeOptions {
            device: device.parse().map_err(py_err)?,
            threads,
            library: ort_library,
            cpu_kernels: !plain_graphs,
            ..Default::default()
        };
        let verify = if verify_all { mi::Verify::Full } else { mi::Verify::Cached };
        let (runtime, model) = py
            .detach(|| -> mi::Result<_> {
                let runtime = mi::Runtime::init(&options)?;
                let model = mi::api::load_model(&runtime, &path, verify)?;
                Ok((runtime, model))
            })
            .map_err(py_err)?;
        let path = model.bundle.dir.clone();
        Ok(PyModel { model: Mutex::new(model), runtime, path })
    }

    /// The bundle folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The execution provider the sessions run on (and why not CUDA, when `auto` fell back).
    #[getter]
    fn provider(&self) -> String {
        self.runtime.describe()
    }

    /// The onnxruntime library loaded.
    #[getter]
    fn ort_library(&self) -> PathBuf {
        self.runtime.library().to_path_buf()
    }

    /// The manifest's sizes: `{"decoder": {...}, "audio": {...}, "generation": {...}, "dtype": ...}`.
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.lock();
        let man = m.manifest();
        let v = serde_json::json!({
            "decoder": man.decoder,
            "audio": man.audio,
            "generation": man.generation,
            "dtype": format!("{:?}", man.dtype).to_lowercase(),
            "source": man.source.kind,
        });
        json_value(py, &v)
    }

    /// Every hook point name, in forward order.
    fn hook_points(&self) -> Vec<String> {
        HookPoint::all(self.lock().decoder.num_layers()).iter().map(|p| p.to_string()).collect()
    }

    /// Generates; see `musicgen_interp.MusicGen.generate`.
    #[pyo3(signature = (prompts, *, steps=None, duration=None, audio=None, audio_start=0.0, audio_duration=None, top_k=None, temperature=None, guidance_scale=None, seed=0, hooks=None, plugins=None, cache_points=None, reduction="last", decode=true))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        steps: Option<usize>,
        duration: Option<f64>,
        audio: Option<PathBuf>,
        audio_start: f64,
        audio_duration: Option<f64>,
        top_k: Option<usize>,
        temperature: Option<f32>,
        guidance_scale: Option<f32>,
        seed: u64,
        hooks: Option<Bound<'_, PyDict>>,
        plugins: Option<Vec<(String, Option<Bound<'_, PyAny>>)>>,
        cache_points: Option<Vec<String>>,
        reduction: &str,
        decode: bool,
    ) -> PyResult<PyGeneration> {
        // Everything about the request is checked before any graph runs.
        if prompts.is_empty() {
            return Err(PyValueError::new_err("no prompt given"));
        }
        if prompts.iter().any(|t| t.trim().is_empty()) {
            return Err(PyValueError::new_err("empty text prompt: describe the music to generate"));
        }
        let reduction: Reduction = reduction.parse().map_err(py_err)?;
        let mut py_hooks = PyHooks::parse(hooks.as_ref())?;
        let cache_points = cache_points.map(|v| v.iter().map(|p| parse_point(p)).collect::<PyResult<Vec<_>>>()).transpose()?;
        let mut loaded = Vec::new();
        for (spec, settings) in plugins.unwrap_or_default() {
            let json = settings_json(py, settings)?;
            loaded.push(MethodPlugin::load(&spec, &json).map_err(py_err)?);
        }
        let mut guard = self.lock();
        let m = &mut *guard;
        let layers = m.decoder.num_layers();
        py_hooks.check_points(layers).map_err(py_err)?;
        for p in &loaded {
            p.check_points(layers).map_err(py_err)?;
        }
        let man = m.manifest().clone();
        let steps = mi::api::steps_for(&man, steps, duration).map_err(py_err)?;
        let sampling = mi::api::sampling(&man, top_k, temperature, guidance_scale, seed).map_err(py_err)?;
        let b = prompts.len();
        let mut capture = cache_points.map(|points| mi::api::PointCapture::new(points, reduction));
        if let Some(c) = &capture {
            c.check_points(layers).map_err(py_err)?;
        }
        let info = serde_json::json!({"output": std::env::current_dir().unwrap_or_default(), "prompts": prompts, "steps": steps, "seed": seed}).to_string();
        for p in loaded.iter_mut() {
            p.run_start(&info).map_err(py_err)?;
        }
        let work = OnThisThread((m, &mut loaded, &mut py_hooks, &mut capture, audio, prompts));
        let outcome = py.detach(move || {
            let (m, loaded, py_hooks, capture, audio, prompts) = work.take();
            let audio_codes = match &audio {
                Some(path) => Some(mi::api::audio_prompt_codes(m, path, audio_start, audio_duration, b)?),
                None => None,
            };
            let request = GenerationRequest { prompts, audio_codes, max_new_tokens: steps, sampling, ..Default::default() };
            let mut all: Vec<&mut dyn Hooks> = loaded.iter_mut().map(|p| p as &mut dyn Hooks).collect();
            all.push(py_hooks);
            if let Some(c) = capture.as_mut() {
                all.push(c);
            }
            let out = run_generation(m, &request, &mut all, |_, _| {})?;
            drop(all);
            let wave = if decode { Some(m.encodec.decode(out.codes.view())?) } else { None };
            Ok::<_, mi::Error>((out, wave))
        });
        let (out, wave) = match outcome {
            Ok(v) => v,
            Err(e) => return Err(py_hooks.error.take().unwrap_or_else(|| py_err(e))),
        };
        for p in loaded.iter_mut() {
            p.run_end().map_err(py_err)?;
        }
        let sample_rate = man.audio.sample_rate;
        let audio = match wave {
            Some(w) => {
                let n = w.shape()[2];
                w.into_shape_with_order((b, n)).map_err(|e| MusicGenError::new_err(e.to_string()))?.into_pyarray(py).into_any().unbind()
            }
            None => py.None(),
        };
        let (cache, uncond) = (PyDict::new(py), PyDict::new(py));
        if let Some(c) = capture {
            let guided = out.codes.shape()[0] < c.results().map(|r| r.first().map_or(0, |(_, a)| a.shape()[0])).unwrap_or(0);
            for (point, a) in c.results().map_err(py_err)? {
                let rows = a.shape()[0];
                let cond = a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..b.min(rows))).to_owned();
                cache.set_item(point.to_string(), cond.into_pyarray(py))?;
                if guided {
                    let un = a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(b..rows)).to_owned();
                    uncond.set_item(point.to_string(), un.into_pyarray(py))?;
                }
            }
        }
        Ok(PyGeneration {
            audio,
            sample_rate,
            codes: out.codes.into_pyarray(py).into_any().unbind(),
            steps: out.steps,
            decode_seconds: out.decode_time.as_secs_f64(),
            cache: cache.into_any().unbind(),
            uncond_cache: uncond.into_any().unbind(),
        })
    }

    /// `decoder-lens --config PATH` on this model; returns the report.
    fn decoder_lens<'py>(&self, py: Python<'py>, config: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let config = mi::decoder_lens::DecoderLensConfig::load(&config).map_err(py_err)?;
        config.prompt_set().map_err(py_err)?;
        mi::store::check_writable(&config.output, true).map_err(py_err)?;
        let mut guard = self.lock();
        let work = OnThisThread((&mut *guard, &config));
        let report = py
            .detach(move || {
                let (m, config) = work.take();
                let mut judge = match &config.judge {
                    Some(j) => Some(mi::judge::Judge::load(j, &config.judged_concepts()?)?),
                    None => None,
                };
                mi::decoder_lens::run(m, judge.as_mut(), config, |_| {})
            })
            .map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("output", &config.output)?;
        d.set_item("clips", report.clips)?;
        d.set_item("self_similarity", report.self_similarity.into_pyarray(py))?;
        d.set_item("ndcg_by_layer", report.ndcg_by_layer)?;
        d.set_item("ndcg_by_text_layer", report.ndcg_by_text_layer)?;
        Ok(d)
    }

    /// `intervene --config PATH [--shard i/n]` on this model; returns the report's counts.
    #[pyo3(signature = (config, shard="0/1"))]
    fn intervene<'py>(&self, py: Python<'py>, config: PathBuf, shard: &str) -> PyResult<Bound<'py, PyDict>> {
        let shard: mi::data::Shard = shard.parse().map_err(py_err)?;
        let config = mi::interchange::InterveneConfig::load(&config).map_err(py_err)?;
        mi::store::check_writable(&config.output, true).map_err(py_err)?;
        let output = config.output.clone();
        let mut guard = self.lock();
        let work = OnThisThread((&mut *guard, config));
        let r = py
            .detach(move || {
                let (m, config) = work.take();
                let needed = config.concepts()?;
                let mut judge = mi::judge::Judge::load(&config.judge, &needed)?;
                let mut run = mi::interchange::Interchange::new(m, &mut judge, config)?;
                run.run(shard, |_| {})
            })
            .map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("output", output)?;
        d.set_item("means_computed", r.means_computed)?;
        d.set_item("means_loaded", r.means_loaded)?;
        d.set_item("units_done", r.units_done)?;
        d.set_item("units_skipped", r.units_skipped)?;
        d.set_item("units_left_to_other_shards", r.units_left_to_other_shards)?;
        d.set_item("merged", r.merged)?;
        Ok(d)
    }

    /// `extract` from a folder (`data_dir`) or a prompt set (`prompts`); returns the report and,
    /// when merged, the merged arrays.
    #[pyo3(signature = (output_dir, *, data_dir=None, prompts=None, labels=None, max_samples=None, steps=50, reduction="last", segment_seconds=10.0, min_seconds=2.0, prompt_template=None, top_k=None, temperature=None, guidance_scale=None, seed=0, shard="0/1", batch_size=None))]
    #[allow(clippy::too_many_arguments)]
    fn extract<'py>(
        &self,
        py: Python<'py>,
        output_dir: PathBuf,
        data_dir: Option<PathBuf>,
        prompts: Option<PathBuf>,
        labels: Option<String>,
        max_samples: Option<usize>,
        steps: usize,
        reduction: &str,
        segment_seconds: f64,
        min_seconds: f64,
        prompt_template: Option<String>,
        top_k: Option<usize>,
        temperature: Option<f32>,
        guidance_scale: Option<f32>,
        seed: u64,
        shard: &str,
        batch_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let shard: mi::data::Shard = shard.parse().map_err(py_err)?;
        // None: auto, sized to the device's free memory.
        let batch = match batch_size {
            None => mi::generate::BatchSize::Auto,
            Some(0) => return Err(PyValueError::new_err("batch_size must be 1 or more, or None (auto)")),
            Some(n) => mi::generate::BatchSize::Rows(n),
        };
        let reduction: Reduction = reduction.parse().map_err(py_err)?;
        let mut guard = self.lock();
        let sampling = mi::api::sampling(guard.manifest(), top_k, temperature, guidance_scale, seed).map_err(py_err)?;
        let settings = mi::extract::ExtractSettings {
            model: self.path.display().to_string(),
            segment_seconds,
            min_seconds,
            prompt_template: prompt_template.unwrap_or_else(|| mi::extract::DEFAULT_PROMPT.into()),
            steps,
            reduction,
            guidance_scale: sampling.guidance_scale,
            top_k: sampling.top_k,
            temperature: sampling.temperature,
            seed: sampling.seed,
        };
        let work = OnThisThread((&mut *guard, settings, labels, output_dir.clone()));
        let (report, merged) = py
            .detach(move || {
                let (m, settings, labels, out) = work.take();
                let source = match (&data_dir, &prompts) {
                    (Some(d), None) => mi::api::ExtractSource::Folder(d),
                    (None, Some(p)) => mi::api::ExtractSource::Prompts(p),
                    _ => return Err(mi::Error::Input("extract needs data_dir or prompts (one of them)".into())),
                };
                mi::api::extract(m, source, labels.as_deref(), max_samples, &out, &settings, shard, batch, |_| {})
            })
            .map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("output", output_dir)?;
        d.set_item("extracted", report.extracted)?;
        d.set_item("already_done", report.already_done)?;
        d.set_item("failed", report.failed)?;
        if let Some(m) = merged {
            d.set_item("residuals_cond", m.cond.into_pyarray(py))?;
            d.set_item("residuals_uncond", m.uncond.into_pyarray(py))?;
            d.set_item("labels", ndarray::Array1::from(m.labels).into_pyarray(py))?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let m = self.lock();
        let d = &m.manifest().decoder;
        format!("MusicGen({:?}, layers={}, d_model={}, codebooks={}, provider={})", self.path.display().to_string(), d.num_layers, d.d_model, d.num_codebooks, self.runtime.provider())
    }
}

fn metrics_list<'py>(py: Python<'py>, metrics: &[mi::probe::LayerMetrics]) -> PyResult<Vec<Bound<'py, PyDict>>> {
    metrics
        .iter()
        .map(|m| {
            let d = PyDict::new(py);
            d.set_item("layer", m.layer)?;
            d.set_item("accuracy", m.accuracy)?;
            d.set_item("loss", m.loss)?;
            d.set_item("classes", m.classes)?;
            Ok(d)
        })
        .collect()
}

/// `train-probes`: one probe per layer on extracted residuals; returns the per-layer test metrics,
/// the best layer and the files written.
#[pyfunction]
#[pyo3(signature = (data_dir, output_dir, num_classes, *, loss="mse", epochs=None, stream="cond", test_fraction=None, seed=None, probe="linear-probe"))]
#[allow(clippy::too_many_arguments)]
fn train_probes<'py>(
    py: Python<'py>,
    data_dir: PathBuf,
    output_dir: PathBuf,
    num_classes: usize,
    loss: &str,
    epochs: Option<u64>,
    stream: &str,
    test_fraction: Option<f64>,
    seed: Option<u64>,
    probe: &str,
) -> PyResult<Bound<'py, PyDict>> {
    if loss != "mse" && loss != "ce" {
        return Err(PyValueError::new_err(format!("loss {loss:?}: use mse or ce")));
    }
    let options = mi::probe::TrainOptions {
        num_classes,
        loss: loss.into(),
        epochs,
        stream: stream.parse().map_err(py_err)?,
        test_fraction: test_fraction.unwrap_or(mi::probe::DEFAULT_TEST_FRACTION),
        seed: seed.unwrap_or(mi::probe::DEFAULT_SEED),
        probe: probe.into(),
    };
    mi::store::check_writable(&output_dir, true).map_err(py_err)?;
    let metrics = py.detach(|| mi::probe::train(&data_dir, &output_dir, &options, |_, _| {})).map_err(py_err)?;
    let d = PyDict::new(py);
    d.set_item("best_layer", mi::probe::best_layer(&metrics))?;
    d.set_item("metrics", metrics_list(py, &metrics)?)?;
    d.set_item("weights", output_dir.join(format!("{loss}_weights.npy")))?;
    d.set_item("split", output_dir.join(format!("{loss}_split.json")))?;
    d.set_item("metrics_file", output_dir.join(format!("{loss}_metrics.json")))?;
    Ok(d)
}

/// `evaluate`: the probes in `weights_file` on their own test split; writes the evaluation files and
/// the plot; returns the metrics, the best layer and the confusion matrices `[layers, classes, classes]`.
#[pyfunction]
#[pyo3(signature = (data_dir, weights_file, output_plot, *, output_dir=None, split=None, loss=None))]
fn evaluate_probes<'py>(
    py: Python<'py>,
    data_dir: PathBuf,
    weights_file: PathBuf,
    output_plot: PathBuf,
    output_dir: Option<PathBuf>,
    split: Option<PathBuf>,
    loss: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let split = split.unwrap_or_else(|| mi::probe::split_path_for(&weights_file));
    let kind = loss.unwrap_or_else(|| {
        let name = weights_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("ce") { "ce".into() } else { "mse".into() }
    });
    let dir = output_dir.unwrap_or_else(|| weights_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf());
    mi::store::check_writable(&output_plot, false).map_err(py_err)?;
    mi::store::check_writable(&dir.join("x"), false).map_err(py_err)?;
    let e = py
        .detach(|| -> mi::Result<_> {
            let e = mi::probe::evaluate(&data_dir, &weights_file, &split, &kind)?;
            let stem = mi::probe::output_stem(&weights_file);
            mi::probe::write_evaluation(&dir, &stem, &e)?;
            mi::probe::plot(&output_plot, &e.metrics, &kind, e.best)?;
            Ok(e)
        })
        .map_err(py_err)?;
    let d = PyDict::new(py);
    d.set_item("best_layer", e.best)?;
    d.set_item("metrics", metrics_list(py, &e.metrics)?)?;
    d.set_item("confusion", e.confusion.into_pyarray(py))?;
    d.set_item("plot", output_plot)?;
    d.set_item("output_dir", dir)?;
    Ok(d)
}

/// A PNG of values by layer: `series` maps a name to one value per layer (0-based).
#[pyfunction]
#[pyo3(signature = (path, series, *, title="", y_label="value"))]
fn plot_by_layer(path: PathBuf, series: Vec<(String, Vec<f64>)>, title: &str, y_label: &str) -> PyResult<PathBuf> {
    mi::api::plot_by_layer(&path, title, y_label, &series).map_err(py_err)?;
    Ok(path)
}

/// The onnxruntime library the runtime would load (environment variables, then the project's
/// `.venv`), or the error saying where it looked.
#[pyfunction]
fn find_ort_library() -> PyResult<PathBuf> {
    mi::runtime::find_library().map_err(py_err)
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PyGeneration>()?;
    m.add_class::<PyContext>()?;
    m.add_class::<PyEdit>()?;
    m.add_class::<PyEdits>()?;
    m.add_class::<Lease>()?;
    m.add_function(wrap_pyfunction!(train_probes, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_probes, m)?)?;
    m.add_function(wrap_pyfunction!(find_ort_library, m)?)?;
    m.add_function(wrap_pyfunction!(plot_by_layer, m)?)?;
    m.add("MusicGenError", m.py().get_type::<MusicGenError>())?;
    m.add("ABI_VERSION", mi::plugin::ABI_VERSION)?;
    Ok(())
}
