//! Back-to-back sections on pools of several sizes: every part of every section runs exactly once,
//! with its own section's closure and an index inside that section, and a panicking part comes back
//! as an error without disturbing the sections after it.
//!
//! Bounded in time (`POOL_STRESS_MS` per pool size, 1500 ms unless set), so it fits CI; on the pool
//! before the claim was made one atomic unit, 2 threads found a part run twice within the first
//! 100,000 sections of every run.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use musicgen_interp_pool::Pool;

/// A small deterministic generator (xorshift), so a failure names a reproducible section.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn budget() -> Duration {
    let ms = std::env::var("POOL_STRESS_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    Duration::from_millis(ms)
}

/// Runs sections of 2..=12 parts (1 in 64 with a part that panics) until the time is up; returns
/// how many sections ran.
fn stress(threads: usize, budget: Duration) -> usize {
    let pool = Pool::new(threads);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ threads as u64);
    let started = Instant::now();
    let mut sections = 0usize;
    while started.elapsed() < budget {
        for _ in 0..256 {
            let total = 2 + rng.below(11);
            let panics_at = (rng.below(64) == 0).then(|| rng.below(total));
            // A fresh closure each section, over counters on this stack frame: a part run with a
            // finished section's closure writes into a frame that no longer exists, one run with
            // the next section's closure counts twice or goes out of range.
            let calls: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
            let out_of_range = AtomicUsize::new(0);
            let result = pool.run(total, &|i| {
                if i >= total {
                    out_of_range.fetch_add(1, Relaxed);
                    return;
                }
                calls[i].fetch_add(1, Relaxed);
                if Some(i) == panics_at {
                    panic!("part {i} fails on purpose");
                }
            });
            let counts: Vec<usize> = calls.iter().map(|c| c.load(Relaxed)).collect();
            assert_eq!(out_of_range.load(Relaxed), 0, "{threads} threads, section {sections}: a part index out of range");
            assert!(
                counts.iter().all(|&c| c == 1),
                "{threads} threads, section {sections} of {total} parts: calls per part {counts:?}"
            );
            match (panics_at, result) {
                (None, Ok(())) => {}
                (Some(_), Err(e)) => assert!(e.contains("panicked"), "{e}"),
                (None, Err(e)) => panic!("{threads} threads, section {sections}: unexpected error {e}"),
                (Some(p), Ok(())) => panic!("{threads} threads, section {sections}: part {p} panicked but run returned Ok"),
            }
            sections += 1;
        }
    }
    sections
}

#[test]
fn every_part_runs_once_under_back_to_back_sections() {
    // Quiet the expected panics' messages (they are caught and returned as errors).
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("fails on purpose") {
            default(info)
        }
    }));
    for threads in [2, 3, 4, 8] {
        let sections = stress(threads, budget());
        assert!(sections > 1000, "{threads} threads: only {sections} sections ran");
        eprintln!("{threads} threads: {sections} sections, every part once");
    }
}

#[test]
fn sections_larger_than_one_claim_word_run_every_part_once() {
    let pool = Pool::new(3);
    for total in [65_535usize, 65_536, 200_001] {
        let calls: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
        pool.run(total, &|i| {
            calls[i].fetch_add(1, Relaxed);
        })
        .unwrap();
        assert!(calls.iter().all(|c| c.load(Relaxed) == 1), "total {total}");
    }
}
