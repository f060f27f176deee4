#!/usr/bin/env python3
"""Recompute an `intervene` run's scores with numpy, straight from the seed's formulas.

    python onnx/check_interchange_scores.py --run RUN_DIR --labels LABELS.csv --out checked.csv

Reads only what the run saved: for every pair, `results/{orig}__{des}.csv` (the rows, in order),
`results/{orig}__{des}_all_probs.npy` (the judge's probabilities p1 of each row's intervened clip) and
`results/{orig}__{des}_kl_divs.npy`; the baseline probabilities p0 of each prompt from
`baseline/{orig}/p{prompt:04}.json`; the concept -> label-name map from `intervene.resolved.yaml`
(`judge.concepts`) and the label names from LABELS.csv (the judge's label map, in output order).

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
    args = ap.parse_args(argv)
    run = Path(args.run)

    resolved = yaml.safe_load((run / "intervene.resolved.yaml").read_text())
    names = [n.lower() for n in label_names(args.labels)]
    concept_labels = {}
    for concept, labels in resolved["judge"]["concepts"].items():
        try:
            concept_labels[concept] = [names.index(l.lower()) for l in labels]
        except ValueError:
            continue  # a concept this label map does not name cannot be in the run

    def concept_p(p, concept):
        return float(np.sum(p[concept_labels[concept]]))

    out_rows = []
    results = sorted(p for p in (run / "results").glob("*.csv"))
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
            base = json.loads((run / "baseline" / orig / f"p{prompt:04}.json").read_text())
            # The judge's numbers are f32: the JSON's shortest decimal and the .npy hold the same f32.
            p0 = np.asarray(base["probabilities"], dtype=np.float32).astype(np.float64)
            p1 = all_probs[r].astype(np.float32).astype(np.float64)
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
    keys = list(out_rows[0])
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in out_rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    print(f"recomputed {len(out_rows)} rows of {len(results)} pairs into {args.out}")


if __name__ == "__main__":
    main()
