//! The thread pool of the runtime's own operators ([`super::ops`]): the calling thread and
//! `threads - 1` workers of this module's own, which spin between parallel sections for a while and
//! then sleep.
//!
//! Why not onnxruntime's pool (`ComputeContext::par_for`): a decoding step on the CPU copies of the
//! graphs is about 200 parallel sections of 0.1-1 ms with a few microseconds of other operators
//! between them, so the workers must spin between sections. Here the decoder's sessions run with one
//! onnxruntime intra-op thread (no onnxruntime worker at all) and the kernels' sections run on this
//! pool. (A scratch build with this pool's worker beside onnxruntime's spinning one, three threads
//! on two cores, took twice as long per step.) On a 2-core host, alternating processes, step / floor
//! came out 1.21 / 1.15 / 1.09 against 1.23 / 1.26 / 1.15 with onnxruntime's pool at 50 cached
//! positions (53.5 / 53.1 / 58.1 against 58.9 / 55.9 / 66.8 ms per step), and 1.19 / 1.25 / 1.28
//! against 1.24 / 1.25 / 1.24 at 1500: a small gain at best, within the host's noise at 1500.
//!
//! Parts are claimed, not assigned: a part goes to whichever thread asks first (the caller takes
//! part 0 first). A sleeping worker, or a core the host has taken away, holds back only the part it
//! has claimed: the caller runs the others itself. A claim names the section's number, so a worker
//! that wakes late can never run a finished section's closure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps inside and between
/// decoding steps (host work between steps is about 1 ms), short enough that a finished job burns
/// little CPU time.
const SPIN: Duration = Duration::from_millis(5);

/// A pool of `threads - 1` worker threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// One section at a time (the pool's slots hold one job).
    section: Mutex<()>,
}

struct Shared {
    /// `section << 32 | next unclaimed part` of the current section.
    state: AtomicU64,
    /// Parts in the current section.
    total: AtomicUsize,
    /// Parts of the current section finished.
    done: AtomicUsize,
    /// The current section's closure: a `*const &(dyn Fn(usize) + Sync)`, valid while the section
    /// runs (the caller waits for every claimed part before returning).
    job: AtomicUsize,
    /// A part panicked in the current section.
    panicked: AtomicBool,
    /// Workers asleep on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

type Job<'a> = &'a (dyn Fn(usize) + Sync);

impl Pool {
    /// A pool whose sections run on `threads` threads (the caller and `threads - 1` workers,
    /// started now).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            total: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("musicgen-kernels-{i}"))
                .spawn(move || shared.work())
                .expect("starting a kernel worker thread");
        }
        Pool { shared, threads: threads.max(1), section: Mutex::new(()) }
    }

    /// The process's pool, with `threads` threads (the size asked for first wins).
    pub fn global(threads: usize) -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(threads))
    }

    /// Runs `f(0)`, ..., `f(total - 1)`, each once, on the caller and the workers, and returns when
    /// all are done. A panic in a part comes back as an error after every part has ended.
    pub fn run(&self, total: usize, f: &(dyn Fn(usize) + Sync)) -> Result<(), String> {
        if total <= 1 || self.threads == 1 {
            return catch_unwind(AssertUnwindSafe(|| (0..total).for_each(f))).map_err(|_| panic_message());
        }
        assert!(total < u32::MAX as usize, "a section of {total} parts");
        let _one = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: Job = f;
        let section = (s.state.load(SeqCst) >> 32) + 1;
        s.total.store(total, SeqCst);
        s.done.store(0, SeqCst);
        s.panicked.store(false, SeqCst);
        s.job.store(&job as *const Job as usize, SeqCst);
        s.state.store(section << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        while s.claim_and_run(section) {}
        while s.done.load(SeqCst) < total {
            std::hint::spin_loop();
        }
        if s.panicked.load(SeqCst) {
            return Err(panic_message());
        }
        Ok(())
    }
}

fn panic_message() -> String {
    "a parallel part of a runtime kernel panicked".into()
}

impl Shared {
    /// Claims the next part of section `section` and runs it; `false` when none is left (or the
    /// section is over).
    fn claim_and_run(&self, section: u64) -> bool {
        let mut state = self.state.load(SeqCst);
        loop {
            let (current, next) = (state >> 32, (state & 0xffff_ffff) as usize);
            if current != section || next >= self.total.load(SeqCst) {
                return false;
            }
            match self.state.compare_exchange_weak(state, state + 1, SeqCst, SeqCst) {
                Ok(_) => {
                    // The claim succeeded while the section ran, and the caller waits for this part
                    // before it returns or posts another job: the job is this section's and alive.
                    let job = unsafe { *(self.job.load(SeqCst) as *const Job) };
                    if catch_unwind(AssertUnwindSafe(|| job(next))).is_err() {
                        self.panicked.store(true, SeqCst);
                    }
                    self.done.fetch_add(1, SeqCst);
                    return true;
                }
                Err(now) => state = now,
            }
        }
    }

    /// A worker's loop: run parts of each new section; spin while sections come often, sleep when
    /// they stop.
    fn work(&self) {
        let mut seen = 0u64;
        loop {
            let started = Instant::now();
            let mut spins = 0u32;
            let section = loop {
                let section = self.state.load(SeqCst) >> 32;
                if section != seen {
                    break section;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && started.elapsed() > SPIN {
                    let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, SeqCst);
                    let guard = self
                        .wake
                        .wait_while(guard, |_| self.state.load(SeqCst) >> 32 == seen)
                        .unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_sub(1, SeqCst);
                    drop(guard);
                }
            };
            seen = section;
            while self.claim_and_run(section) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_section() {
        let pool = Pool::new(3);
        for total in [0usize, 1, 2, 3, 7, 64] {
            for _ in 0..200 {
                let counts: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
                pool.run(total, &|i| {
                    counts[i].fetch_add(1, SeqCst);
                })
                .unwrap();
                assert!(counts.iter().all(|c| c.load(SeqCst) == 1), "total {total}");
            }
        }
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_section() {
        let pool = Pool::new(2);
        std::thread::sleep(SPIN * 3);
        let threads = Mutex::new(std::collections::HashSet::new());
        // Parts long enough that the woken worker takes some of them.
        pool.run(16, &|_| {
            threads.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(Duration::from_millis(2));
        })
        .unwrap();
        assert_eq!(threads.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_panicking_part_is_an_error_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let err = pool.run(4, &|i| assert!(i != 2, "part 2 fails")).unwrap_err();
        assert!(err.contains("panicked"), "{err}");
        let sum = AtomicUsize::new(0);
        pool.run(4, &|i| {
            sum.fetch_add(i, SeqCst);
        })
        .unwrap();
        assert_eq!(sum.load(SeqCst), 6);
    }
}
