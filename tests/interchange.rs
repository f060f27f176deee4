//! Interchange interventions and the classifier judge:
//! - adjust / replace at a self-attention, a cross-attention and an MLP site give greedy codes equal
//!   to PyTorch forward hooks (onnx/reference_interchange.py), on both tiny configs;
//! - the `means` mode's time-aligned means equal numpy's over the same generations, batched unevenly;
//! - interventions batched into one generation give the same codes and scores as one by one;
//! - every row's effectiveness and precision (and the concept probabilities, and the saved per-label
//!   kl_divs) equal an independent numpy recomputation from the judge's saved probabilities
//!   (onnx/check_interchange_scores.py), so a swap of p0 and p1 or of the two concepts fails;
//! - the judge's saved probabilities of every clip kept as audio (baselines, extremes) equal the
//!   classifier run again on it with onnxruntime; every row's kl_divs sum to minus its precision;
//! - runs resume, shards merge into what one host writes (scores, all_probs, kl_divs, baselines);
//!   a sharded run refuses to start without the means phase (`means_only`, dealt by concept) unless
//!   asked to compute them; a failed part is recorded, listed by `status` with its error and the
//!   time estimate (pending x median recorded part time / active shards), and retried by another shard;
//!   foreign mean caches (other model, prompt set or prompt sampling, sampling) are refused;
//! - a run's batch size and settings are fixed by its first start's plan.json: another size or other
//!   settings are refused, also when a racing start wrote the plan after this one looked;
//! - a run's prompts are the seed's enumeration (written out by hand below) unless asked otherwise;
//! - the ONNX judge matches the classifier's own outputs, and refuses a label map lacking a concept.

mod common;
mod scores;

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array5, Ix2, Ix3, Ix5};

use common::{assert_close, fixture, load, npy};
use musicgen_interp::data::concepts::PromptSampling;
use musicgen_interp::data::Shard;
use musicgen_interp::generate::{generate, BatchSize, GenerationRequest, SamplingConfig};
use musicgen_interp::interchange::{read_results, Interchange, InterveneConfig, Mode};
use musicgen_interp::judge::{Judge, JudgeConfig};
use musicgen_interp::plugin::MethodPlugin;

fn greedy() -> SamplingConfig {
    SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 }
}

fn cases(preset: &str) -> (PathBuf, serde_json::Value) {
    let dir = fixture(preset).join("reference/interchange");
    let cases = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    (dir, cases)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap()
}

fn classifier() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/classifier")
}

fn judge_config(labels: &str) -> JudgeConfig {
    JudgeConfig::onnx(classifier().join("classifier.onnx"), classifier().join(labels), 16000)
}

fn judge(concepts: &[&str]) -> Judge {
    let _rt = common::runtime(); // onnxruntime up before the judge joins it
    Judge::load(&judge_config("labels.csv"), concepts).expect("judge")
}

#[test]
fn adjust_and_replace_match_pytorch_forward_hooks() {
    for preset in common::PRESETS {
        let (dir, cases) = cases(preset);
        let prompts = strings(&cases["prompts"]);
        let steps = cases["steps"].as_u64().unwrap() as usize;
        let mut m = load(preset);
        let plain = npy::<i64>(dir.join("codes_plain.npy")).into_dimensionality::<Ix3>().unwrap();
        let mut checked = 0;
        for mode in strings(&cases["modes"]) {
            for site in cases["sites"].as_array().unwrap() {
                let (layer, component) = (site["layer"].as_u64().unwrap(), site["component"].as_str().unwrap());
                let row = serde_json::json!({"layer": layer, "component": component, "kind": mode});
                let settings = serde_json::json!({
                    "mode": "intervene",
                    "original": dir.join("means_a.npy"),
                    "desired": dir.join("means_b.npy"),
                    "rows": vec![row; prompts.len()],
                });
                let mut plugin = MethodPlugin::load("interchange", &settings.to_string()).unwrap();
                let request = GenerationRequest { prompts: prompts.clone(), max_new_tokens: steps, sampling: greedy(), ..Default::default() };
                let out = generate(&mut m, &request, &mut plugin, |_, _| {}).unwrap();
                let want = npy::<i64>(dir.join(format!("codes_{mode}_{layer}_{component}.npy"))).into_dimensionality::<Ix3>().unwrap();
                let differ = out.codes.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{preset} {mode} blocks.{layer}.{component}: {differ} of {} codes differ from PyTorch", want.len());
                assert_ne!(out.codes, plain, "{preset} {mode} blocks.{layer}.{component} changed nothing");
                checked += 1;
            }
        }
        assert!(checked >= 6, "{preset}: expected adjust and replace at three kinds of site, ran {checked}");
    }
}

#[test]
fn means_are_time_aligned_and_weighted_over_uneven_batches() {
    for preset in common::PRESETS {
        let (dir, cases) = cases(preset);
        let prompts = strings(&cases["means_prompts"]);
        let steps = cases["steps"].as_u64().unwrap() as usize;
        let mut m = load(preset);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("means.npy");
        let settings = serde_json::json!({"mode": "means", "layers": m.decoder.num_layers(), "positions": steps, "output": out});
        let mut plugin = MethodPlugin::load("interchange", &settings.to_string()).unwrap();
        plugin.run_start("{}").unwrap();
        // Batches of two and one: each generation counts once, whatever its batch.
        for batch in [&prompts[..2], &prompts[2..]] {
            let request = GenerationRequest { prompts: batch.to_vec(), max_new_tokens: steps, sampling: greedy(), ..Default::default() };
            generate(&mut m, &request, &mut plugin, |_, _| {}).unwrap();
        }
        plugin.run_end().unwrap();
        let got: Array5<f32> = ndarray_npy::read_npy(&out).unwrap();
        let want = npy::<f32>(dir.join("means_ref.npy")).into_dimensionality::<Ix5>().unwrap();
        // The reference also holds the last position, which no forward feeds (all zeros there).
        assert_close(&format!("{preset} means"), &got, &want.slice(s![.., .., ..steps, .., ..]), 1e-5);
    }
}

#[test]
fn batched_interventions_equal_one_by_one() {
    // Sampled (top-k 250), not greedy: every row of a prompt draws from the prompt's stream.
    let dir = cases("tiny").0;
    let mut m = load("tiny");
    let rows = [("attn", 0, "adjust"), ("mlp", 1, "replace"), ("cross_attn", 1, "adjust")];
    let settings = |rows: &[(&str, u64, &str)]| {
        let rows: Vec<_> = rows.iter().map(|(c, l, k)| serde_json::json!({"layer": l, "component": c, "kind": k})).collect();
        serde_json::json!({"mode": "intervene", "original": dir.join("means_a.npy"), "desired": dir.join("means_b.npy"), "rows": rows}).to_string()
    };
    let sampling = SamplingConfig { guidance_scale: 3.0, top_k: 250, temperature: 1.0, seed: 11 };
    let request = |n: usize| GenerationRequest {
        prompts: vec!["slow jazz with a trumpet".to_string(); n],
        max_new_tokens: 20,
        sampling: sampling.clone(),
        row_streams: Some(vec![7; n]),
        ..Default::default()
    };
    let mut batched = MethodPlugin::load("interchange", &settings(&rows)).unwrap();
    let together = generate(&mut m, &request(3), &mut batched, |_, _| {}).unwrap().codes;
    for (r, row) in rows.iter().enumerate() {
        let mut alone = MethodPlugin::load("interchange", &settings(&[*row])).unwrap();
        let one = generate(&mut m, &request(1), &mut alone, |_, _| {}).unwrap().codes;
        assert_eq!(together.slice(s![r, .., ..]), one.slice(s![0, .., ..]), "intervention {row:?} batched vs alone");
    }
    assert_ne!(together.slice(s![0, .., ..]), together.slice(s![1, .., ..]), "different interventions should give different music");
}

fn config(out: &Path, batch_size: usize) -> InterveneConfig {
    InterveneConfig {
        model: fixture("tiny").display().to_string(),
        concepts: vec!["jazz".into(), "rock".into(), "piano".into()],
        fixed_concept: None,
        n_prompts_per_concept: 2,
        prompt_sampling: PromptSampling::Enumerate,
        prompt_seed: 0,
        duration: 0.3,
        seed: 5,
        top_k: None,
        temperature: None,
        guidance_scale: None,
        modes: vec![Mode::Adjust, Mode::Replace],
        sites: vec!["blocks.0.attn".into(), "blocks.1.cross_attn".into(), "blocks.1.mlp".into()],
        batch_size: BatchSize::Rows(batch_size),
        means_batch_size: BatchSize::Rows(2),
        pre_computed_means: None,
        save_extremes: true,
        judge: judge_config("labels.csv"),
        output: out.to_path_buf(),
    }
}

fn run(c: InterveneConfig, shard: Shard) -> musicgen_interp::interchange::Report {
    let mut m = load("tiny");
    let mut j = judge(&["jazz", "rock", "piano"]);
    let mut ic = Interchange::new(&mut m, &mut j, c).unwrap();
    ic.run(shard, |_| {}).unwrap()
}

fn results(dir: &Path) -> Vec<musicgen_interp::interchange::Score> {
    let mut all = Vec::new();
    for pair in ["jazz__rock", "jazz__piano", "rock__jazz", "rock__piano", "piano__jazz", "piano__rock"] {
        all.extend(read_results(&dir.join("results").join(format!("{pair}.csv"))).unwrap());
    }
    all
}

fn assert_same_scores(a: &[musicgen_interp::interchange::Score], b: &[musicgen_interp::interchange::Score], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y, "{what}");
    }
}

/// The merged arrays beside the scores (every pair's all_probs and kl_divs, the baselines' CSV and
/// probabilities): byte for byte the same in `a` and `b` (each clip is decoded and judged alone, so
/// its numbers do not depend on its batch or shard).
fn assert_same_arrays(a: &Path, b: &Path, what: &str) {
    let mut files = vec!["results/baselines.csv".to_string(), "results/baseline_probabilities.npy".to_string()];
    for pair in ["jazz__rock", "jazz__piano", "rock__jazz", "rock__piano", "piano__jazz", "piano__rock"] {
        files.push(format!("results/{pair}_all_probs.npy"));
        files.push(format!("results/{pair}_kl_divs.npy"));
    }
    for f in files {
        let (x, y) = (std::fs::read(a.join(&f)).unwrap(), std::fs::read(b.join(&f)).unwrap());
        assert!(x == y, "{what}: {f} differs");
    }
}

#[test]
fn runs_resume_shard_merge_and_batch_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let r = run(config(&single, 4), Shard::ALL);
    // 6 pairs x 2 prompts x ceil(6 interventions / 4) batches.
    assert_eq!((r.units_done, r.units_skipped, r.means_computed), (24, 0, 3));
    assert!(r.merged);
    let base = results(&single);
    assert_eq!(base.len(), 6 * 2 * 6);
    assert!(base.iter().all(|s| s.effectiveness.is_finite() && s.precision <= 1e-12), "precision is -KL <= 0");
    assert!(base.iter().any(|s| s.effectiveness != 0.0), "interventions changed the judge's view");
    for f in ["summary.csv", "plots/all_pairs_adjust.png", "plots/jazz__rock_replace.png", "prompts.csv", "means/jazz.npy", "means/jazz.json"] {
        assert!(single.join(f).is_file(), "{f}");
    }
    let extremes = std::fs::read_dir(single.join("extremes/jazz__rock")).unwrap().count();
    assert_eq!(extremes, 2 * 2, "best and worst clip per prompt");
    // The seed's enumeration (from SPEC's lists by hand): a genre concept over (mood, instrument,
    // tempo), an instrument concept over (genre, mood, tempo); the baselines row for row with them.
    let prompts = std::fs::read_to_string(single.join("prompts.csv")).unwrap();
    let baselines = std::fs::read_to_string(single.join("results/baselines.csv")).unwrap();
    let mut want_baselines = String::from("row,concept,prompt,text\n");
    for (row, (c, i, text)) in [
        ("jazz", 0, "Compose a emotional jazz piece, with a guitar melody. Use a fast tempo."),
        ("jazz", 1, "Compose a emotional jazz piece, with a guitar melody. Use a medium tempo."),
        ("rock", 0, "Compose a emotional rock piece, with a guitar melody. Use a fast tempo."),
        ("rock", 1, "Compose a emotional rock piece, with a guitar melody. Use a medium tempo."),
        ("piano", 0, "Compose a emotional rock piece, with a piano melody. Use a fast tempo."),
        ("piano", 1, "Compose a emotional rock piece, with a piano melody. Use a medium tempo."),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(prompts.contains(&format!("{c},{i},\"{text}\"\n")), "{c} {i}: {prompts}");
        want_baselines.push_str(&format!("{row},{c},{i},\"{text}\"\n"));
    }
    assert_eq!(baselines, want_baselines);
    let p0: Array2<f32> = ndarray_npy::read_npy(single.join("results/baseline_probabilities.npy")).unwrap();
    assert_eq!(p0.dim(), (6, 12));
    for (row, (c, i)) in [("jazz", 0), ("jazz", 1), ("rock", 0), ("rock", 1), ("piano", 0), ("piano", 1)].into_iter().enumerate() {
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(single.join(format!("baseline/{c}/p{i:04}.json"))).unwrap()).unwrap();
        let saved: Vec<f32> = serde_json::from_value(json["probabilities"].clone()).unwrap();
        assert_eq!(p0.row(row).to_vec(), saved, "baseline row {row}");
    }

    // Resume: a finished batch is not recomputed; a lost one (its scores or its probabilities) is,
    // and the results do not move.
    let keep = tempfile::tempdir().unwrap();
    for f in ["results/baseline_probabilities.npy", "results/jazz__rock_all_probs.npy", "results/jazz__rock_kl_divs.npy"] {
        std::fs::create_dir_all(keep.path().join("results")).unwrap();
        std::fs::copy(single.join(f), keep.path().join(f)).unwrap();
    }
    std::fs::remove_file(single.join("parts/rock__piano/p0001_b000.csv")).unwrap();
    std::fs::remove_file(single.join("parts/jazz__rock/p0000_b001.probs.npy")).unwrap();
    let again = run(config(&single, 4), Shard::ALL);
    assert_eq!((again.units_done, again.units_skipped, again.means_computed, again.means_loaded), (2, 22, 0, 3));
    assert_same_scores(&results(&single), &base, "resumed run");
    for f in ["results/baseline_probabilities.npy", "results/jazz__rock_all_probs.npy", "results/jazz__rock_kl_divs.npy"] {
        assert!(std::fs::read(single.join(f)).unwrap() == std::fs::read(keep.path().join(f)).unwrap(), "resumed run: {f} moved");
    }

    // The run's batch size is fixed in its plan: another given size, or other settings, into the same
    // folder are refused before anything runs (their parts would mix with this run's); auto takes
    // the plan's.
    let start = |c: InterveneConfig| {
        let mut m = load("tiny");
        let mut j = judge(&["jazz", "rock", "piano"]);
        Interchange::new(&mut m, &mut j, c).map(|ic| (ic.batch_size(), ic.batch_notes().join("\n"))).map_err(|e| e.to_string())
    };
    let err = start(config(&single, 2)).unwrap_err();
    assert!(err.contains("batch size 2") && err.contains("batches of 4 interventions"), "{err}");
    let mut auto = config(&single, 4);
    auto.batch_size = BatchSize::Auto;
    let (rows, notes) = start(auto.clone()).unwrap();
    assert!(rows == 4 && notes.contains("fixed by the run's plan.json"), "{rows}: {notes}");
    for (what, change) in [
        ("other sampling settings", Box::new(|c: &mut InterveneConfig| c.seed = 6) as Box<dyn Fn(&mut InterveneConfig)>),
        ("other modes or sites", Box::new(|c: &mut InterveneConfig| c.modes = vec![Mode::Adjust])),
        ("another prompt set", Box::new(|c: &mut InterveneConfig| c.prompt_sampling = PromptSampling::Random)),
        ("steps a clip", Box::new(|c: &mut InterveneConfig| c.duration = 0.4)),
        ("other concept pairs", Box::new(|c: &mut InterveneConfig| c.fixed_concept = Some("jazz".into()))),
    ] {
        let mut c = config(&single, 4);
        change(&mut c);
        let err = start(c).unwrap_err();
        assert!(err.contains(what) && err.contains("another output folder"), "{what}: {err}");
    }
    // On a fresh folder auto sizes the batch: here the work (6 interventions) is the limit.
    auto.output = tmp.path().join("fresh");
    let (rows, notes) = start(auto).unwrap();
    assert!(rows == 6 && notes.contains("batch size auto: 6 rows") && notes.contains("limited by the work's size"), "{rows}: {notes}");
    // A plan of an earlier version (no batch size, no settings): resumed with the size it ran with.
    let plan_path = single.join("plan.json");
    let plan_text = std::fs::read_to_string(&plan_path).unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&plan_text).unwrap();
    old.as_object_mut().unwrap().retain(|k, _| k != "batch_size" && k != "run");
    std::fs::write(&plan_path, old.to_string()).unwrap();
    let err = start(config(&single, 2)).unwrap_err();
    assert!(err.contains("earlier version") && err.contains("2 batches per prompt"), "{err}");
    assert_eq!(start(config(&single, 4)).unwrap().0, 4);
    std::fs::write(&plan_path, plan_text).unwrap();

    // One by one (batch 1), reusing the means: the same scores.
    let one = tmp.path().join("one");
    let mut c = config(&one, 1);
    c.pre_computed_means = Some(single.join("means"));
    let r = run(c, Shard::ALL);
    assert_eq!((r.units_done, r.means_computed, r.means_loaded), (6 * 2 * 6, 0, 3));
    assert_same_scores(&results(&one), &base, "batch 1 vs batch 4");
    assert_same_arrays(&one, &single, "batch 1 vs batch 4");

    // Two shards into one folder: a sharded run refuses to start without the means (naming the
    // missing concepts, writing nothing), the means phase deals the concepts over its shards, and
    // the second shard to finish merges the same files.
    let sharded = tmp.path().join("sharded");
    let mut m = load("tiny");
    let mut j = judge(&["jazz", "rock", "piano"]);
    let err = Interchange::new(&mut m, &mut j, config(&sharded, 4)).unwrap().run("0/2".parse().unwrap(), |_| {}).unwrap_err().to_string();
    assert!(err.contains("no concept means for jazz, piano, rock") && err.contains("--means-only") && err.contains("--compute-means"), "{err}");
    assert!(!sharded.exists(), "nothing written for a refused run");
    let means = |shard: &str| {
        let mut m = load("tiny");
        let mut j = judge(&["jazz", "rock", "piano"]);
        Interchange::new(&mut m, &mut j, config(&sharded, 4)).unwrap().means_only(shard.parse().unwrap(), |_| {}).unwrap()
    };
    // Concepts in the paper's order (instruments, then genres: piano, jazz, rock), dealt round-robin.
    let m0 = means("0/2");
    assert_eq!((m0.means_computed, m0.means_loaded, m0.means_left_to_other_shards, m0.units_done), (2, 0, 1, 0));
    assert!(sharded.join("means/piano.npy").is_file() && sharded.join("means/rock.npy").is_file() && !sharded.join("means/jazz.npy").exists());
    assert!(!sharded.join("baseline").exists() && !sharded.join("parts").exists(), "the means phase runs no baselines or interventions");
    let st = musicgen_interp::interchange::status(&sharded).unwrap();
    assert_eq!((st.done(), st.pending(), st.means_missing.clone()), (0, 24, vec!["jazz".to_string()]));
    let m1 = means("1/2");
    assert_eq!((m1.means_computed, m1.means_left_to_other_shards), (1, 2));
    for c in ["jazz", "rock", "piano"] {
        assert_eq!(std::fs::read(sharded.join(format!("means/{c}.npy"))).unwrap(), std::fs::read(single.join(format!("means/{c}.npy"))).unwrap(), "{c}'s means");
    }
    // A part that fails (its baseline unreadable) is recorded and the shard goes on; `status` names
    // it with its error; the other shard, rerun, retries it and merges.
    let a = run(config(&sharded, 4), "0/2".parse().unwrap());
    assert!(!a.merged && a.units_done == 12 && a.units_left_to_other_shards == 12 && a.means_computed == 0);
    let broken = sharded.join("baseline/rock/p0001.json");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, "not json").unwrap();
    let b = run(config(&sharded, 4), "1/2".parse().unwrap());
    // Shard 1 owns prompt 1 of every pair: rock__jazz and rock__piano's two batches each fail.
    assert_eq!((b.units_done, b.units_failed.len(), b.merged), (8, 4, false), "{:?}", b.units_failed);
    assert!(b.units_failed.iter().all(|(part, e)| part.starts_with("rock__") && part.contains("p0001") && e.contains("p0001.json")), "{:?}", b.units_failed);
    let st = musicgen_interp::interchange::status(&sharded).unwrap();
    assert_eq!((st.done(), st.pending(), st.failed.len()), (20, 4, 4));
    assert!(st.pairs.contains(&("rock__jazz".to_string(), 2, 0, 2)) && st.pairs.contains(&("jazz__rock".to_string(), 4, 0, 0)), "{:?}", st.pairs);
    assert!(st.failed.iter().all(|(_, f)| f.shard == "1/2" && f.error.contains("p0001.json")));
    // The estimate: pending parts x the median of the parts' own recorded times / shards active.
    let mut times: Vec<f64> = Vec::new();
    for e in walk(&sharded.join("parts")) {
        if e.to_string_lossy().ends_with(".time.json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&e).unwrap()).unwrap();
            times.push(v["seconds"].as_f64().unwrap());
        }
    }
    times.sort_by(f64::total_cmp);
    assert_eq!(times.len(), 20);
    let median = (times[9] + times[10]) / 2.0;
    assert_eq!(st.active_workers, 2, "both shards finished parts just now");
    assert!((st.eta_seconds().unwrap() - 4.0 * median / 2.0).abs() < 1e-12, "{:?} vs {median}", st.eta_seconds());
    let shown = st.to_string();
    assert!(shown.contains("20 of 24 parts done, 4 pending (4 failed)") && shown.contains("failed: rock__jazz p0001 b000 (shard 1/2)") && shown.contains("rerun any shard"), "{shown}");
    std::fs::remove_file(&broken).unwrap();
    let again = run(config(&sharded, 4), "0/2".parse().unwrap());
    assert_eq!((again.units_done, again.units_skipped, again.units_retried, again.merged), (0, 12, 4, true));
    assert!(walk(&sharded.join("parts")).iter().all(|p| !p.to_string_lossy().contains("failed") && !p.to_string_lossy().contains("retrying")));
    assert!(musicgen_interp::interchange::status(&sharded).unwrap().merged);
    assert_same_scores(&results(&sharded), &base, "sharded run");
    assert_same_arrays(&sharded, &single, "sharded run");
    assert_eq!(std::fs::read(sharded.join("summary.csv")).unwrap(), std::fs::read(single.join("summary.csv")).unwrap());

    // --compute-means: a shard may still compute missing means itself when asked.
    let asked = tmp.path().join("asked");
    let mut m = load("tiny");
    let mut j = judge(&["jazz", "rock", "piano"]);
    let r = Interchange::new(&mut m, &mut j, config(&asked, 4))
        .unwrap()
        .run_with("1/2".parse().unwrap(), musicgen_interp::interchange::MeansPolicy::for_run("1/2".parse().unwrap(), true), |_| {})
        .unwrap();
    assert_eq!((r.means_computed, r.units_done), (3, 12));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn scores_equal_numpy_from_the_judges_saved_probabilities() {
    // A judge that tells the clips apart, so that the checks below could see a swap (the helper
    // asserts it: some effectiveness far from 0, KL(p0||p1) far from KL(p1||p0) on some row).
    let tmp = tempfile::tempdir().unwrap();
    let (model, labels) = scores::sensitive_judge(tmp.path());
    let out = tmp.path().join("run");
    let mut c = config(&out, 6);
    c.concepts = vec!["jazz".into(), "rock".into()];
    c.judge = JudgeConfig::onnx(model.clone(), labels.clone(), 32000);
    let mut m = load("tiny");
    let _rt = common::runtime(); // onnxruntime up before the judge joins it
    let mut j = Judge::load(&c.judge, &["jazz", "rock"]).unwrap();
    let r = Interchange::new(&mut m, &mut j, c).unwrap().run(Shard::ALL, |_| {}).unwrap();
    assert!(r.merged);
    // 2 pairs x 2 prompts x (2 modes x 3 sites), every row checked; the 2 x 2 baselines and the
    // 2 pairs x 2 prompts x (best, worst) extremes judged again from their WAVs.
    assert_eq!(scores::check_interchange_scores_and_clips(&out, &labels, Some(&model)), (2 * 2 * 6, 2 * 2, 2 * 2 * 2));
}

#[test]
fn foreign_mean_caches_unknown_concepts_and_incomplete_label_maps_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let mut c = config(&first, 8);
    c.concepts = vec!["jazz".into(), "rock".into()];
    c.sites = vec!["blocks.0.mlp".into()];
    let mut m = load("tiny");
    let mut j = judge(&["jazz", "rock"]);
    Interchange::new(&mut m, &mut j, c.clone()).unwrap().run(Shard::ALL, |_| {}).unwrap();

    let refuse = |model: &str, change: &dyn Fn(&mut InterveneConfig), want: &str| {
        let mut c2 = c.clone();
        c2.output = tmp.path().join(format!("second-{}", want.replace(' ', "-")));
        c2.pre_computed_means = Some(first.join("means"));
        change(&mut c2);
        let mut m = load(model);
        let mut j = judge(&["jazz", "rock"]);
        let err = Interchange::new(&mut m, &mut j, c2).unwrap().run(Shard::ALL, |_| {}).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains("refusing"), "{err}");
    };
    refuse("tiny2", &|c| c.model = fixture("tiny2").display().to_string(), "another model");
    refuse("tiny", &|c| c.prompt_sampling = PromptSampling::Random, "another prompt set");
    refuse("tiny", &|c| (c.prompt_sampling, c.prompt_seed) = (PromptSampling::Random, 9), "another prompt set");
    refuse("tiny", &|c| c.n_prompts_per_concept = 3, "another prompt set");
    refuse("tiny", &|c| c.seed = 6, "other sampling settings");

    // A prompt seed without random draws, refused before anything runs.
    let mut c2 = c.clone();
    c2.prompt_seed = 9;
    let mut j = judge(&["jazz", "rock"]);
    let err = Interchange::new(&mut m, &mut j, c2).err().unwrap().to_string();
    assert!(err.contains("prompt_seed 9 only applies to prompt_sampling: random"), "{err}");

    // An unknown concept, through the command line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "intervene", "--model", fixture("tiny").to_str().unwrap(), "--concepts", "jazz,polka"])
        .args(["--judge-model", classifier().join("classifier.onnx").to_str().unwrap(), "--judge-labels", classifier().join("labels.csv").to_str().unwrap()])
        .args(["--output-dir", tmp.path().join("polka").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown concept \"polka\""), "{err}");
    assert!(!tmp.path().join("polka").exists(), "nothing written for a refused run");

    // A label map without the trumpet concept's label.
    let _rt = common::runtime(); // onnxruntime up before the judge joins it
    let err = Judge::load(&judge_config("labels_no_trumpet.csv"), &["jazz", "trumpet"]).err().unwrap().to_string();
    assert!(err.contains("concept trumpet") && err.contains("\"Trumpet\""), "{err}");
    // A concept the mapping does not cover.
    let mut cfg = judge_config("labels.csv");
    cfg.concepts.remove("rock");
    let err = Judge::load(&cfg, &["rock"]).err().unwrap().to_string();
    assert!(err.contains("no classifier labels for concept rock"), "{err}");
}

#[test]
fn onnx_judge_matches_the_classifier_and_resamples() {
    let input = npy::<f32>(classifier().join("reference_input.npy")).into_dimensionality::<Ix2>().unwrap();
    let logits = npy::<f32>(classifier().join("reference_logits.npy")).into_dimensionality::<Ix2>().unwrap();
    let mut softmax = logits.clone();
    for mut row in softmax.rows_mut() {
        let max = row.fold(f32::MIN, |a, &b| a.max(b));
        row.mapv_inplace(|x| (x - max).exp());
        let total = row.sum();
        row.mapv_inplace(|x| x / total);
    }
    let mut j = judge(&["jazz"]);
    assert_eq!(j.labels().len(), 12);
    assert_eq!(j.labels()[3], "Violin, fiddle");
    let probs = j.probabilities(input.view(), 16000).unwrap();
    assert_close("judge probabilities vs the classifier's softmax", &probs, &softmax, 1e-5);
    // Clips at another rate are resampled to the judge's 16 kHz first: a 440 Hz sine at 32 kHz is
    // judged as at 16 kHz (up to the resampler's edges), and exactly as its explicit resampling.
    let sine: Vec<f32> = input.row(0).to_vec();
    let up = musicgen_interp::audio::resample(&sine, 16000, 32000).unwrap();
    let up = Array2::from_shape_vec((1, up.len()), up).unwrap();
    let judged = j.probabilities(up.view(), 32000).unwrap();
    assert_close("sine judged at 32 kHz vs at 16 kHz", &judged.row(0), &softmax.row(0), 2e-2);
    let down = musicgen_interp::audio::resample(&up.row(0).to_vec(), 32000, 16000).unwrap();
    let down = Array2::from_shape_vec((1, down.len()), down).unwrap();
    assert_eq!(judged, j.probabilities(down.view(), 16000).unwrap());
}

#[test]
fn bad_config_keys_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "model: m\noutput: o\nbatch_sise: 3\njudge:\n  settings: {}\n").unwrap();
    let err = InterveneConfig::load(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown field `batch_sise`") && err.contains("line 3"), "{err}");
}

/// A plan another start writes between this start's look and its own write (starts racing): one of
/// other settings is refused; one of another batch size is taken, and the run lists its parts in it.
#[test]
fn a_plan_written_by_a_racing_start_is_checked_and_its_batch_size_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("race");
    let (mut m1, mut m2) = (load("tiny"), load("tiny"));
    let (mut j1, mut j2) = (judge(&["jazz", "rock", "piano"]), judge(&["jazz", "rock", "piano"]));
    let mut auto = config(&dir, 4);
    auto.batch_size = BatchSize::Auto;
    auto.fixed_concept = Some("jazz".into());
    let mut late = Interchange::new(&mut m1, &mut j1, auto.clone()).unwrap();
    assert_eq!(late.batch_size(), 6, "{:?}", late.batch_notes());
    // Another start, of other settings, writes its plan first.
    let mut other = auto.clone();
    other.seed = 6;
    Interchange::new(&mut m2, &mut j2, other).unwrap().means_only(Shard::ALL, |_| {}).unwrap();
    let err = late.run(Shard::ALL, |_| {}).unwrap_err().to_string();
    assert!(err.contains("other sampling settings") && err.contains("another output folder"), "{err}");
    assert!(!dir.join("parts").exists(), "nothing ran");
    // Another start of the same settings but batches of 4 writes its plan first: taken.
    std::fs::remove_dir_all(&dir).unwrap();
    let mut late = Interchange::new(&mut m1, &mut j1, auto.clone()).unwrap();
    let mut first = auto.clone();
    first.batch_size = BatchSize::Rows(4);
    Interchange::new(&mut m2, &mut j2, first).unwrap().means_only(Shard::ALL, |_| {}).unwrap();
    let r = late.run(Shard::ALL, |_| {}).unwrap();
    assert!(r.merged && late.batch_size() == 4, "{:?}", late.batch_notes());
    assert!(late.batch_notes().iter().any(|n| n.contains("a moment ago")), "{:?}", late.batch_notes());
    // 2 pairs x 2 prompts x ceil(6 / 4) parts, named in batches of 4.
    assert_eq!(r.units_done, 2 * 2 * 2);
    assert!(dir.join("parts/jazz__rock/p0001_b001.csv").is_file());
}
