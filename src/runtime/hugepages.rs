//! Transparent huge pages for the memory a decoding step streams through: the packed weights
//! onnxruntime builds when a session loads, and the KV cache.
//!
//! A step reads every weight once and the whole cache once, so its speed is the speed of a long
//! sequential read. On 4 KiB pages such a read walks the page table every 4 KiB, which costs most
//! under virtualisation (two-level walks). Measured on a 2-core AMD EPYC VM: a 2-thread sequential
//! read reached 25-26 GB/s (median) on 4 KiB pages and 30 GB/s on 2 MiB pages.
//!
//! Where the kernel leaves huge pages to `madvise` (the common default), nothing gets them unless
//! asked. onnxruntime allocates its packed weights itself, so after loading we ask the kernel to
//! collapse the anonymous mappings the load created into huge pages (`MADV_COLLAPSE`, Linux 6.1+);
//! only mappings that are already fully resident are touched, so resident memory does not grow.
//! Our own cache buffers are marked before their first write (`MADV_HUGEPAGE`).
//!
//! Set `MUSICGEN_INTERP_HUGE_PAGES=0` to turn both off. Elsewhere than Linux both are no-ops.

use std::collections::HashSet;

const HUGE: usize = 2 << 20;

/// Whether huge pages are wanted (not turned off by `MUSICGEN_INTERP_HUGE_PAGES=0`).
pub fn enabled() -> bool {
    std::env::var("MUSICGEN_INTERP_HUGE_PAGES").as_deref() != Ok("0")
}

/// One anonymous private writable mapping of this process, from `/proc/self/smaps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss: usize,
    anon_huge: usize,
}

/// The anonymous mappings present at one moment; [`collapse_new`] leaves these alone.
pub struct Snapshot(HashSet<(usize, usize)>);

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot(anonymous_mappings().into_iter().map(|m| (m.start, m.end)).collect())
    }
}

/// What [`collapse_new`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collapsed {
    /// Mappings asked to collapse.
    pub mappings: usize,
    /// Bytes of those mappings on huge pages afterwards.
    pub huge_bytes: u64,
    /// Whether the kernel refused (an old kernel, or huge pages turned off system-wide).
    pub refused: bool,
}

/// Collapses into huge pages every anonymous mapping of at least 2 MiB that was not in `before` and
/// is fully resident (so no page is added). Returns what it did; failures are not errors, the memory
/// just stays on small pages.
pub fn collapse_new(before: &Snapshot) -> Collapsed {
    let mut done = Collapsed::default();
    if !enabled() {
        return done;
    }
    let candidates: Vec<Mapping> = anonymous_mappings()
        .into_iter()
        .filter(|m| !before.0.contains(&(m.start, m.end)))
        .filter(|m| m.rss >= m.end - m.start && m.anon_huge < m.rss)
        .collect();
    for m in candidates {
        let Some((start, len)) = aligned_interior(m.start, m.end - m.start) else { continue };
        done.mappings += 1;
        if !madvise(start, len, Advice::Huge) || !madvise(start, len, Advice::Collapse) {
            done.refused = true;
        }
    }
    done.huge_bytes = anonymous_mappings().iter().map(|m| m.anon_huge as u64).sum();
    done
}

/// Marks a buffer we own, before its first write, so the kernel backs it with huge pages.
pub fn advise(data: &[f32]) {
    if !enabled() {
        return;
    }
    if let Some((start, len)) = aligned_interior(data.as_ptr() as usize, std::mem::size_of_val(data)) {
        madvise(start, len, Advice::Huge);
    }
}

/// The whole 2 MiB pages inside `[start, start + len)`.
fn aligned_interior(start: usize, len: usize) -> Option<(usize, usize)> {
    let first = start.next_multiple_of(HUGE);
    let last = (start + len) / HUGE * HUGE;
    (last > first).then(|| (first, last - first))
}

enum Advice {
    Huge,
    Collapse,
}

#[cfg(target_os = "linux")]
fn madvise(start: usize, len: usize, advice: Advice) -> bool {
    let advice = match advice {
        Advice::Huge => libc::MADV_HUGEPAGE,
        Advice::Collapse => 25, // MADV_COLLAPSE (Linux 6.1); not in every libc target's constants
    };
    // SAFETY: both advices only change how the kernel backs the range, never its contents; the range
    // lies inside one mapping of this process.
    unsafe { libc::madvise(start as *mut libc::c_void, len, advice) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn madvise(_start: usize, _len: usize, _advice: Advice) -> bool {
    false
}

fn anonymous_mappings() -> Vec<Mapping> {
    std::fs::read_to_string("/proc/self/smaps").map(|text| parse_smaps(&text)).unwrap_or_default()
}

/// The anonymous private writable mappings in an smaps listing.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let kb = |line: &str| line.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()).map_or(0, |v| v * 1024);
    let mut out = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            out.extend(current.take());
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("");
            let anonymous = inode == "0" && fields.next().is_none();
            if let (true, Ok(start), Ok(end)) = (anonymous && perms == "rw-p", usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                current = Some(Mapping { start, end, rss: 0, anon_huge: 0 });
            }
        } else if let Some(m) = current.as_mut() {
            match first {
                "Rss:" => m.rss = kb(line),
                "AnonHugePages:" => m.anon_huge = kb(line),
                _ => {}
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000600000 rw-p 00000000 00:00 0 
Size:               6144 kB
Rss:                6144 kB
AnonHugePages:      2048 kB
7f0000600000-7f0000700000 r--p 00000000 08:01 1234                       /usr/lib/libfoo.so
Size:               1024 kB
Rss:                1024 kB
AnonHugePages:         0 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn smaps_keeps_anonymous_private_writable_mappings_only() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps, vec![Mapping { start: 0x7f0000000000, end: 0x7f0000600000, rss: 6 << 20, anon_huge: 2 << 20 }]);
    }

    #[test]
    fn collapses_a_new_resident_mapping_unless_the_kernel_refuses() {
        if !enabled() {
            return;
        }
        let before = Snapshot::take();
        let mut v = vec![0.0f32; 16 << 20]; // 64 MB: above glibc's largest mmap threshold, its own mapping
        v.fill(1.0);
        let done = collapse_new(&before);
        assert!(done.mappings >= 1, "{done:?}");
        // Advising splits the mapping around its whole huge pages: sum what covers the buffer.
        let (at, end) = (v.as_ptr() as usize, v.as_ptr_range().end as usize);
        let huge: usize = anonymous_mappings().iter().filter(|m| m.start < end && at < m.end).map(|m| m.anon_huge).sum();
        if !done.refused {
            assert!(huge >= 60 << 20, "{huge} bytes on huge pages after {done:?}");
        }
        assert!(v.iter().all(|&x| x == 1.0), "collapsing kept the contents");
    }

    #[test]
    fn interior_is_whole_huge_pages() {
        assert_eq!(aligned_interior(HUGE + 4096, 3 * HUGE), Some((2 * HUGE, 2 * HUGE)));
        assert_eq!(aligned_interior(HUGE, 2 * HUGE), Some((HUGE, 2 * HUGE)));
        assert_eq!(aligned_interior(4096, HUGE), None);
    }
}
