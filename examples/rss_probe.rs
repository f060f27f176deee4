use musicgen_interp::model::{MusicGen, Verify};
use musicgen_interp::runtime::{Runtime, RuntimeOptions, Device};
fn smaps_summary(tag: &str) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut cur = String::new();
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let name = parts.get(5).map(|s| s.to_string()).unwrap_or("[anon]".into());
            let kind = if name.ends_with(".data") || name.contains(".onnx") { format!("onnx {} {}", parts[1], name.rsplit('/').next().unwrap().split('.').next().unwrap().chars().take(14).collect::<String>()) } else if name.starts_with('/') { "files".into() } else { name };
            cur = kind;
        } else if line.starts_with("Rss:") {
            let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            *by.entry(cur.clone()).or_default() += kb;
        }
    }
    let total: u64 = by.values().sum();
    eprintln!("== {tag}: total RSS {:.2} GB", total as f64 / 1e6);
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    for (k, kb) in v.iter().take(8) { eprintln!("   {:>8.1} MB  {k}", *kb as f64 / 1e3); }
}
fn main() {
    let rt = Runtime::init(&RuntimeOptions { device: Device::Cpu, threads: 2, ..Default::default() }).unwrap();
    let mut m = MusicGen::load(&rt, std::env::args().nth(1).unwrap(), Verify::Cached).unwrap();
    smaps_summary("after load");
    let steps: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(100);
    stages(&mut m, steps);
}
fn hwm() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1e6
}
pub fn stages(m: &mut MusicGen, steps: usize) {
    use musicgen_interp::generate::{generate, GenerationRequest};
    eprintln!("HWM after load {:.2} GB", hwm());
    let req = GenerationRequest { prompts: vec!["rock".into()], max_new_tokens: steps, ..Default::default() };
    let t = std::time::Instant::now();
    let out = generate(m, &req, &mut musicgen_interp::hooks::NoHooks, |_, _| {}).unwrap();
    eprintln!("HWM after {steps} steps {:.2} GB ({:.1} s)", hwm(), t.elapsed().as_secs_f64());
    smaps_summary("after generate");
    let _w = m.encodec.decode(out.codes.view()).unwrap();
    eprintln!("HWM after decode {:.2} GB", hwm());
    smaps_summary("after decode");
}
