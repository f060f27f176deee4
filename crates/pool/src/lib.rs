//! The thread pool of musicgen-interp's own onnxruntime operators: the calling thread and
//! `threads - 1` workers, which spin between parallel sections for a while and then sleep.
//!
//! Why not onnxruntime's pool: a decoding step on the CPU copies of the graphs is about 200 parallel
//! sections of 0.1-1 ms with a few microseconds of other operators between them, so the workers must
//! spin between sections; the decoder's sessions run with one onnxruntime intra-op thread and the
//! kernels' sections run here (the measurements are in the README's benchmark notes).
//!
//! Parts are claimed, not assigned: a part goes to whichever thread asks first (the caller takes part
//! 0 first). A sleeping worker, or a core the host has taken away, holds back only the part it has
//! claimed: the caller runs the others itself.
//!
//! # The claim protocol
//!
//! One 64-bit word, [`Board::word`], holds the current section's number, its part count and its next
//! unclaimed part: `section << 32 | total << 16 | next`. Everything a claim decides on is in that
//! word, so a claim is a single compare-and-swap of `(s, t, n)` to `(s, t, n + 1)` that succeeds only
//! while section `s` is still the published one, and `n < t` is checked against that same section's
//! count. (The pool before this design kept the part count in a second atomic: a worker finishing
//! section `s` could read the count of section `s + 1`, claim a part `s` never had, and run it with
//! either closure: parts ran twice, out of range, or through a dangling pointer.)
//!
//! Memory ordering, the argument (`Board`'s methods carry the same orderings):
//! 1. **Publish** ([`Board::publish`]): the caller stores `done = 0`, `panicked = false` and the closure
//!    pointer `job`, then stores the new word (SeqCst, so also Release). Only one thread publishes at a
//!    time (the pool's `section` mutex), and only after the previous section has finished (4).
//! 2. **Claim** ([`Board::claim`]): a successful CAS (AcqRel) reads the published word or a later
//!    claim of the same section (a release sequence headed by the publish store), so it synchronizes
//!    with the publish: the claimer then sees that section's `job`, `done = 0` and `panicked = false`.
//!    It cannot see a *later* `job`: the next publish happens only after the caller has seen this
//!    part's completion (3, 4), which comes after this load in this thread's order.
//! 3. **Complete** ([`Board::complete`]): the part's writes (the kernel's outputs), then `panicked`
//!    (if it panicked), then `done += 1` (Release).
//! 4. **Finish** ([`Board::finished`]): the caller's Acquire load of `done == total` synchronizes with
//!    every part's increment (read-modify-writes extend the release sequence), so it sees every part's
//!    outputs and its `panicked` flag. `done` counts only parts of the caller's section: every
//!    increment follows a successful claim (2), a claim succeeds only for a part `n < total` of the
//!    published section, each such `n` is claimed once, and no claim of an earlier section can
//!    succeed after that section's last part was claimed (`next == total` in the word).
//!
//! The section number wraps after 2^32 sections: a claim could be confused with one of a section
//! 2^32 sections later (ABA) only if a thread stalled between reading the word and its CAS for that
//! many sections (about 250 days of decoding at the pool's section rate) and the word then matched
//! exactly. The protocol is checked by a stress test (`tests/stress.rs`) and a loom model of the
//! board (`RUSTFLAGS="--cfg loom" cargo test -p musicgen-interp-pool --release`).
//!
//! Waking sleepers is the Dekker pattern: the caller stores the word then reads `sleepers`; a worker
//! adds itself to `sleepers` under the lock and then reads the word in `wait_while`'s predicate. All
//! four are SeqCst, so at least one side sees the other: the caller notifies (under the lock, so not
//! before the worker waits) or the worker sees the new section and does not wait.

#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps inside and between
/// decoding steps (host work between steps is about 1 ms), short enough that a finished job burns
/// little CPU time.
const SPIN: Duration = Duration::from_millis(5);

/// The most parts one section holds (16 bits of the claim word); [`Pool::run`] runs a larger job as
/// consecutive sections of at most this many parts.
pub const MAX_PARTS: usize = 0xffff;

/// A section's closure, called with a part index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The claim word's three fields.
fn pack(section: u32, total: usize, next: usize) -> u64 {
    debug_assert!(total <= MAX_PARTS && next <= MAX_PARTS);
    (section as u64) << 32 | (total as u64) << 16 | next as u64
}

fn unpack(word: u64) -> (u32, usize, usize) {
    ((word >> 32) as u32, (word >> 16 & 0xffff) as usize, (word & 0xffff) as usize)
}

/// The published section and its claims (the module docs give the protocol and its orderings).
struct Board {
    /// `section << 32 | total << 16 | next`.
    word: AtomicU64,
    /// Parts of the current section completed.
    done: AtomicUsize,
    /// The current section's closure: a `*const Job`, valid until its section has finished.
    job: AtomicUsize,
    /// A part of the current section panicked.
    panicked: AtomicBool,
}

impl Board {
    fn new() -> Board {
        Board { word: AtomicU64::new(0), done: AtomicUsize::new(0), job: AtomicUsize::new(0), panicked: AtomicBool::new(false) }
    }

    /// The published section's number (0 before the first).
    fn section(&self) -> u32 {
        unpack(self.word.load(SeqCst)).0
    }

    /// Publishes a section of `total` parts (`1..=MAX_PARTS`) running `*job`, and returns its number.
    ///
    /// # Safety
    /// One publisher at a time; the previous section has [`finished`](Board::finished); `*job`
    /// stays valid until this section has finished.
    unsafe fn publish(&self, total: usize, job: *const Job) -> u32 {
        assert!((1..=MAX_PARTS).contains(&total), "a section of {total} parts");
        let section = match self.section().wrapping_add(1) {
            0 => 1, // 0 stands for "no section yet"
            s => s,
        };
        self.done.store(0, Relaxed);
        self.panicked.store(false, Relaxed);
        self.job.store(job as usize, Relaxed);
        self.word.store(pack(section, total, 0), SeqCst);
        section
    }

    /// Claims the next part of `section`: the part's index and the section's closure, or `None` when
    /// every part is claimed or another section is published.
    fn claim(&self, section: u32) -> Option<(usize, *const Job<'static>)> {
        let mut word = self.word.load(Acquire);
        loop {
            let (current, total, next) = unpack(word);
            if current != section || next >= total {
                return None;
            }
            match self.word.compare_exchange_weak(word, word + 1, AcqRel, Acquire) {
                Ok(_) => return Some((next, self.job.load(Relaxed) as *const Job)),
                Err(now) => word = now,
            }
        }
    }

    /// Records a claimed part's end (after its writes).
    fn complete(&self, panicked: bool) {
        if panicked {
            self.panicked.store(true, Relaxed);
        }
        self.done.fetch_add(1, Release);
    }

    /// Whether all `total` parts of the current section have completed.
    fn finished(&self, total: usize) -> bool {
        self.done.load(Acquire) >= total
    }

    /// Claims and runs parts of `section` until none is left; returns how many ran here.
    fn claim_and_run(&self, section: u32) -> usize {
        let mut ran = 0;
        while let Some((part, job)) = self.claim(section) {
            // SAFETY: the claim's compare-exchange succeeded on a word holding `section` with a
            // part left, so `section` is still the published one and its publisher (see `publish`'s
            // contract) keeps `*job` alive until `done` reaches `total`, which needs this part's
            // `complete` below. The `job` pointer read after the claim is this section's: the
            // claim's Acquire synchronizes with the publish's store (module docs).
            let job = unsafe { *job };
            let panicked = catch_unwind(AssertUnwindSafe(|| job(part))).is_err();
            self.complete(panicked);
            ran += 1;
        }
        ran
    }
}

/// What the caller and the workers share.
struct Shared {
    board: Board,
    /// Workers asleep on `wake`.
    sleepers: AtomicUsize,
    /// The pool is being dropped: workers return.
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A pool of `threads - 1` worker threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    workers: Vec<JoinHandle<()>>,
    /// One section at a time (the board holds one).
    section: Mutex<()>,
}

impl Pool {
    /// A pool whose sections run on `threads` threads (the caller and `threads - 1` workers,
    /// started now).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            board: Board::new(),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("musicgen-kernels-{i}"))
                    .spawn(move || shared.work())
                    .expect("starting a kernel worker thread")
            })
            .collect();
        Pool { shared, threads: threads.max(1), workers, section: Mutex::new(()) }
    }

    /// The process's pool, with `threads` threads (the size asked for first wins).
    pub fn global(threads: usize) -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(threads))
    }

    /// The threads sections run on (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0)`, ..., `f(total - 1)`, each once, on the caller and the workers, and returns when
    /// all are done. A panic in a part comes back as an error after every part of its section has
    /// ended (a job of more than [`MAX_PARTS`] parts runs as consecutive sections and stops after the
    /// section that panicked).
    pub fn run(&self, total: usize, f: &(dyn Fn(usize) + Sync)) -> Result<(), String> {
        if total <= 1 || self.threads == 1 {
            return catch_unwind(AssertUnwindSafe(|| (0..total).for_each(f))).map_err(|_| panic_message());
        }
        if total > MAX_PARTS {
            for start in (0..total).step_by(MAX_PARTS) {
                self.run(MAX_PARTS.min(total - start), &|i| f(start + i))?;
            }
            return Ok(());
        }
        let _one = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: Job = f;
        // SAFETY: `_one` makes this the only publisher; the previous section finished before its
        // `run` returned; `job` lives on this frame until this section has finished, below.
        let section = unsafe { s.board.publish(total, &job as *const Job as *const Job<'static>) };
        if s.sleepers.load(SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.board.claim_and_run(section);
        let mut spins = 0u32;
        while !s.board.finished(total) {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // A worker holding a claimed part was descheduled: give it the core.
                std::thread::yield_now();
            }
        }
        if s.board.panicked.load(Relaxed) {
            return Err(panic_message());
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn panic_message() -> String {
    "a parallel part of a runtime kernel panicked".into()
}

impl Shared {
    /// A worker's loop: run parts of each new section; spin while sections come often, sleep when
    /// they stop.
    fn work(&self) {
        let mut seen = 0u32;
        loop {
            let started = Instant::now();
            let mut spins = 0u32;
            let section = loop {
                if self.stop.load(Relaxed) {
                    return;
                }
                let section = self.board.section();
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
                        .wait_while(guard, |_| self.board.section() == seen && !self.stop.load(SeqCst))
                        .unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_sub(1, SeqCst);
                    drop(guard);
                }
            };
            seen = section;
            self.board.claim_and_run(section);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn every_part_runs_once_per_section() {
        let pool = Pool::new(3);
        for total in [0usize, 1, 2, 3, 7, 64] {
            for _ in 0..200 {
                let counts: Vec<std::sync::atomic::AtomicUsize> =
                    (0..total).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect();
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
        let sum = std::sync::atomic::AtomicUsize::new(0);
        pool.run(4, &|i| {
            sum.fetch_add(i, SeqCst);
        })
        .unwrap();
        assert_eq!(sum.load(SeqCst), 6);
    }

    #[test]
    fn the_claim_word_keeps_its_fields_apart() {
        for (s, t, n) in [(0u32, 0usize, 0usize), (1, MAX_PARTS, MAX_PARTS - 1), (u32::MAX, 7, 7)] {
            assert_eq!(unpack(pack(s, t, n)), (s, t, n));
        }
        // A claim's increment never carries into the count while next < total.
        let w = pack(5, 9, 8);
        assert_eq!(unpack(w + 1), (5, 9, 9));
    }

    #[test]
    fn a_claim_of_a_finished_section_fails_even_when_the_next_has_more_parts() {
        // The old pool's failure, step by step: a worker that saw section 1 (2 parts, both claimed)
        // must not claim part 2 of section 2's 5 parts under section 1's number.
        let board = Board::new();
        let f = |_: usize| {};
        let job: Job = &f;
        // SAFETY: this test is the board's only publisher, no section was published before, and
        // `job` lives to the end of the test.
        let s1 = unsafe { board.publish(2, &job as *const Job as *const Job<'static>) };
        assert!(board.claim(s1).is_some() && board.claim(s1).is_some() && board.claim(s1).is_none());
        board.complete(false);
        board.complete(false);
        assert!(board.finished(2));
        // SAFETY: the only publisher; section 1 has finished (asserted just above); `job` lives on.
        let s2 = unsafe { board.publish(5, &job as *const Job as *const Job<'static>) };
        assert_ne!(s1, s2);
        assert!(board.claim(s1).is_none());
        assert_eq!(board.claim(s2).map(|c| c.0), Some(0));
    }

    #[test]
    fn dropping_a_pool_stops_its_workers() {
        for _ in 0..50 {
            let pool = Pool::new(4);
            pool.run(8, &|_| {}).unwrap();
            drop(pool); // joins: a hang here fails the test by timeout
        }
    }
}

/// The claim protocol under loom: every interleaving of a late worker against a caller publishing
/// two sections of different sizes (the shape of the old pool's race).
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;

    fn run_section(board: &Board, total: usize, calls: &[AtomicUsize]) {
        let f = |i: usize| {
            assert!(i < total, "part {i} of a {total}-part section");
            calls[i].fetch_add(1, Relaxed);
        };
        let job: Job = &f;
        // SAFETY: the model's caller thread is the board's only publisher and waits below until
        // this section has finished before returning (so before the next publish and before `job`,
        // on this frame, is dropped).
        let section = unsafe { board.publish(total, &job as *const Job as *const Job<'static>) };
        board.claim_and_run(section);
        // Bounded: a `done` count that lost or gained a part would spin here forever.
        let mut waits = 0;
        while !board.finished(total) {
            waits += 1;
            assert!(waits < 20, "the {total}-part section never finished (done {})", board.done.load(Relaxed));
            loom::thread::yield_now();
        }
        assert_eq!(board.done.load(Relaxed), total, "done counted parts of another section");
        for (i, c) in calls.iter().take(total).enumerate() {
            assert_eq!(c.load(Relaxed), 1, "part {i} of a {total}-part section");
        }
    }

    #[test]
    fn a_late_worker_never_runs_a_part_twice_or_out_of_range() {
        loom::model(|| {
            let board = Arc::new(Board::new());
            let worker = {
                let board = Arc::clone(&board);
                loom::thread::spawn(move || {
                    // A worker that reads the section number and then claims, twice over: its
                    // claims can land in either section or between them.
                    for _ in 0..2 {
                        let section = board.section();
                        if section != 0 {
                            board.claim_and_run(section);
                        }
                    }
                })
            };
            let first: Vec<AtomicUsize> = (0..1).map(|_| AtomicUsize::new(0)).collect();
            run_section(&board, 1, &first);
            let second: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
            run_section(&board, 2, &second);
            worker.join().unwrap();
        });
    }
}
