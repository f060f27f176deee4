#!/usr/bin/env python3
"""Recompute an `intervene` run's scores with numpy, straight from the seed's formulas.

    python onnx/check_interchange_scores.py --run RUN_DIR --labels LABELS.csv --out checked.csv \
        [--judge-model JUDGE.onnx --clips-out clips.csv]

Reads only what the run saved: for every pair, `results/{orig}__{des}.csv` (the rows, in order),
`results/{orig}__{des}_all_probs.npy` (the judge's probabilities p1 of each row's intervened clip) and
`results/{orig}__{des}_kl_divs.npy`; the baseline probabilities p0 of each prompt from
`results/baseline_probabilities.npy` (its rows named by `results/baselines.csv`), which must equal
`baseline/{orig}/p{prompt:04}.json` and cover exactly the run's original concepts and prompts (texts
as in `prompts.csv`); the concept -> label map from `intervene.resolved.yaml` (`judge.concepts`: label names or class indices)
and the label names from LABELS.csv (the judge's label map, in output order).

With --judge-model, the saved probabilities are also checked against the judge itself: the ONNX
classifier is run here (onnxruntime, one clip per call, the resolved config's `activation`, default
softmax, in float64) on every clip the run kept as audio, the baselines (`baseline/{c}/p{i:04}.wav`,
against their row of baseline_probabilities.npy) and with save_extremes the best and worst clips
(`extremes/{pair}/p{i:04}_{best|worst}_{mode}_{site}.wav`, against their results row of all_probs);
one row per clip goes to --clips-out (the largest absolute difference). The clips must be at the
judge's sample rate (no resampling here).

Orientation (the seed, ISMIR 2024, as SPEC.md states it):
- p0 = the unintervened baseline clip's probabilities, p1 = the intervened clip's;
- orig = the pair's first concept (whose prompts are generated), des = the second (whose mean is
  swapped in);
- a concept's probability is the sum over its labels;
- effectiveness = log(p0[orig] / p0[des]) - log(p1[orig] / p1[des]) (positive: the odds moved from
  orig towards des);
- precision = -KL(p1 || p0) = -sum_i p1_i (log p1_i - log p0_i), the seed's kl_divs being
  torch.kl_div(log p0, log p1, log_target=True, reduction="none") = p1 (log p1 - log p0) per label.

Writes one CSV row per results row (pairs in file-name order, rows in file order) with the numpy
values, the row's sum of the saved kl_divs, and the swapped variants (precision with p0 and p1
exchanged) so a caller can tell whether the data could tell a swap apart. The comparison with the
run's CSV is the caller's (tests/interchange.rs, tests/commands.rs). Exits 2 on a malformed run.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml


def fail(msg):
    print(f"check_interchange_scores.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def label_names(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = "display_name" if rows and "display_name" in rows[0] else "name"
    return [r[key] for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished intervene output folder")
    ap.add_argument("--labels", required=True, help="the judge's label map CSV")
    ap.add_argument("--out", required=True, help="CSV to write")
    ap.add_argument("--judge-model", help="the judge's ONNX classifier: check the saved probabilities of every saved clip")
    ap.add_argument("--clips-out", help="CSV of the clips judged here (with --judge-model)")
    args = ap.parse_args(argv)
    if bool(args.judge_model) != bool(args.clips_out):
        fail("--judge-model and --clips-out go together")
    run = Path(args.run)

    resolved = yaml.safe_load((run / "intervene.resolved.yaml").read_text())
    names = [n.lower() for n in label_names(args.labels)]
    concept_labels = {}
    for concept, labels in resolved["judge"]["concepts"].items():
        try:
            # a class by index (an integer in the YAML) or by label name, as the judge maps them
            concept_labels[concept] = [l if isinstance(l, int) else names.index(l.lower()) for l in labels]
        except ValueError:
            continue  # a concept this label map does not name cannot be in the run

    def concept_p(p, concept):
        return float(np.sum(p[concept_labels[concept]]))

    # The baselines, once for all pairs: p0 of every (original concept, prompt), row for row.
    with open(run / "results" / "baselines.csv", newline="") as f:
        base_rows = list(csv.DictReader(f))
    base_probs = np.load(run / "results" / "baseline_probabilities.npy")
    if base_probs.dtype != np.float32 or base_probs.shape != (len(base_rows), len(names)):
        fail(f"baseline_probabilities {base_probs.dtype} {base_probs.shape}, {len(base_rows)} baselines, {len(names)} labels")
    with open(run / "prompts.csv", newline="") as f:
        texts = {(r["concept"], int(r["prompt"])): r["text"] for r in csv.DictReader(f)}
    base_index = {}
    for r, row in enumerate(base_rows):
        key = (row["concept"], int(row["prompt"]))
        if int(row["row"]) != r or key in base_index:
            fail(f"baselines.csv row {r}: {row}")
        if row["text"] != texts.get(key):
            fail(f"baselines.csv row {r}: text {row['text']!r}, prompts.csv {texts.get(key)!r}")
        base = json.loads((run / "baseline" / key[0] / f"p{key[1]:04}.json").read_text())
        # The judge's numbers are f32: the JSON's shortest decimal and the .npy hold the same f32.
        if not np.array_equal(np.asarray(base["probabilities"], dtype=np.float32), base_probs[r]):
            fail(f"baseline_probabilities row {r} differs from baseline/{key[0]}/p{key[1]:04}.json")
        base_index[key] = r

    out_rows = []
    saved_p1 = {}  # (pair, prompt, mode, site) -> p1, for the clips kept as audio
    originals = set()
    results = sorted(p for p in (run / "results").glob("*__*.csv"))
    if not results:
        fail(f"{run}/results holds no pair CSV")
    for path in results:
        orig, des = path.stem.split("__")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        all_probs = np.load(path.with_name(f"{path.stem}_all_probs.npy"))
        kl_divs = np.load(path.with_name(f"{path.stem}_kl_divs.npy"))
        if all_probs.shape != (len(rows), len(names)) or kl_divs.shape != all_probs.shape:
            fail(f"{path.stem}: all_probs {all_probs.shape}, kl_divs {kl_divs.shape}, {len(rows)} rows, {len(names)} labels")
        for r, row in enumerate(rows):
            if (row["original"], row["desired"]) != (orig, des):
                fail(f"{path.name} row {r} names the pair {row['original']} -> {row['desired']}")
            prompt = int(row["prompt"])
            if (orig, prompt) not in base_index:
                fail(f"{path.name} row {r}: no baseline row for {orig} prompt {prompt}")
            originals.add(orig)
            p0 = base_probs[base_index[(orig, prompt)]].astype(np.float64)
            p1 = all_probs[r].astype(np.float32).astype(np.float64)
            saved_p1[(path.stem, prompt, row["mode"], row["site"])] = all_probs[r]
            p0o, p0d = concept_p(p0, orig), concept_p(p0, des)
            p1o, p1d = concept_p(p1, orig), concept_p(p1, des)
            eff = np.log(p0o / p0d) - np.log(p1o / p1d)
            terms = p1 * (np.log(p1) - np.log(p0))  # KL(p1 || p0) per label
            prec = -np.sum(terms)
            prec_swapped = -np.sum(p0 * (np.log(p0) - np.log(p1)))  # -KL(p0 || p1): the wrong way round
            out_rows.append({
                "pair": path.stem, "row": r, "prompt": prompt, "mode": row["mode"], "site": row["site"],
                "p0_original": p0o, "p0_desired": p0d, "p1_original": p1o, "p1_desired": p1d,
                "effectiveness": eff, "precision": prec,
                "saved_kl_sum": float(np.sum(kl_divs[r])),
                "kl_terms_max_abs_diff": float(np.max(np.abs(kl_divs[r] - terms))),
                "kl_terms_max_abs": float(np.max(np.abs(terms))),
                "precision_swapped": prec_swapped,
            })
    prompts_seen = {(o, i) for (o, i) in texts if o in originals}
    if set(base_index) != prompts_seen:
        fail(f"baselines.csv covers {sorted(base_index)}, the results' original concepts' prompts are {sorted(prompts_seen)}")
    if args.judge_model:
        judge_clips(run, resolved, args.judge_model, base_index, base_probs, saved_p1, args.clips_out)
    keys = list(out_rows[0])
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in out_rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    print(f"recomputed {len(out_rows)} rows of {len(results)} pairs into {args.out}")


def judge_clips(run, resolved, model, base_index, base_probs, saved_p1, out):
    """The judge's probabilities of every saved clip, recomputed with onnxruntime, vs the saved rows."""
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_sensitive_judge import read_float_wav

    settings = resolved["judge"]["settings"]
    activation = settings.get("activation", "softmax")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name_in = settings.get("input") or sess.get_inputs()[0].name
    name_out = settings.get("output") or sess.get_outputs()[0].name

    def judge(wav):
        rate, samples = read_float_wav(wav)
        if rate != int(settings["sample_rate"]):
            fail(f"{wav}: {rate} Hz, the judge takes {settings['sample_rate']} Hz (no resampling here)")
        s = sess.run([name_out], {name_in: samples[None, :]})[0][0].astype(np.float64)
        if activation == "softmax":
            s = np.exp(s - s.max())
        elif activation == "sigmoid":
            s = 1.0 / (1.0 + np.exp(-s))
        return s / s.sum()

    clips = []
    for (c, i), r in sorted(base_index.items()):
        wav = run / "baseline" / c / f"p{i:04}.wav"
        clips.append(("baseline", wav, base_probs[r]))
    for wav in sorted((run / "extremes").glob("*/*.wav")) if (run / "extremes").is_dir() else []:
        # p{prompt:04}_{best|worst}_{mode}_{site}.wav
        prompt, _tag, mode, site = wav.stem.split("_", 3)
        key = (wav.parent.name, int(prompt[1:]), mode, site)
        if key not in saved_p1:
            fail(f"{wav}: no results row for {key}")
        clips.append(("intervened", wav, saved_p1[key]))
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "clip", "max_abs_diff", "max_prob"])
        for kind, wav, saved in clips:
            p = judge(wav)
            w.writerow([kind, wav.relative_to(run), repr(float(np.max(np.abs(p - saved.astype(np.float64))))), repr(float(p.max()))])
    print(f"judged {len(clips)} saved clips with {model} into {out}")


if __name__ == "__main__":
    main()
