#!/usr/bin/env python3
"""transformers' T5 tokenizer on a bundle's tokenizer.json: the ids and attention masks the Rust host must give.

    python onnx/reference_tokenizer.py --bundle tests/data/tiny-t5tok

Loads `T5TokenizerFast(tokenizer_file=BUNDLE/tokenizer.json)` (pad `<pad>`, eos `</s>`, unk `<unk>`, as T5;
`extra_ids=0`: T5's 100 sentinel tokens are pretraining masks that a real T5 tokenizer.json carries in its own
vocabulary, so here they would only be ids the file does not have), checks that the tokenizer transformers
built is the file's (normalizer, pre-tokenizer, model, post-processor), and writes
BUNDLE/reference/tokenizer_cases.json: for each case a batch of prompts (one prompt, or several padded on the
right to the longest with id 0 and mask 0, transformers' `padding=True`) with `input_ids` and
`attention_mask`. The cases cover ASCII, case, accented (composed and combining), NFKC forms (full-width,
ligature, no-break space), CJK, Korean, emoji (with a variation selector), characters outside the vocabulary
(`<unk>`), and near-empty prompts ("", " ", ".", "   jazz  ", tabs/newlines, the "▁" character itself).

transformers gives the empty prompt (and whitespace-only ones) the ids [</s>] with mask [1]; the Rust host's
`TextEncoder::tokenize` gives the same (the CLI and run configs refuse blank prompts before tokenizing).
"""

import argparse
import json
import os
import sys
from pathlib import Path

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

SINGLE = [
    ("ascii", "80s pop track with bassy drums and synth"),
    ("ascii_case", "A Calm Piano Melody With Soft Strings"),
    ("ascii_punct", "a happy song. a sad song! a calm song? (slow, 120 bpm)"),
    ("accented", "café crème, naïve"),
    ("accented_de_es", "Jürgen spielt Geige; señor jalapeño"),
    ("combining_accent", "cafe\u0301 cre\u0300me"),
    ("nfkc_fullwidth", "ｊａｚｚ ｐｉａｎｏ"),
    ("nfkc_ligature", "\ufb01ddle and \ufb02ute"),
    ("no_break_space", "jazz\u00a0piano"),
    ("cjk", "爵士钢琴"),
    ("cjk_spaced", "爵士乐 钢琴 鼓 贝斯"),
    ("japanese", "ジャズピアノ と ドラム"),
    ("korean", "재즈 피아노 음악"),
    ("emoji", "🎸🔥 rock"),
    ("emoji_variation_selector", "🎻 violin ❤️ melody"),
    ("mixed", "jazz 爵士 🎷 café, ROCK!"),
    ("unknown_chars", "straße Ω 🎺 鼓手"),
    ("tabs_newlines", "jazz\tpiano\nsolo"),
]
EMPTYISH = [
    ("empty", ""),
    ("space", " "),
    ("dot", "."),
    ("padded_word", "   jazz  "),
    ("tab_newline", "\t\n"),
    ("metaspace_char", "▁"),
]
BATCHES = [
    ("batch_two", ["80s pop track with bassy drums and synth", "jazz"]),
    ("batch_scripts", ["café crème, naïve", "爵士钢琴", "🎸🔥 rock"]),
    ("batch_with_empty", ["", "🎸🔥 rock and roll", " "]),
    ("batch_all_empty", ["", " ", "\t"]),
    ("batch_emptyish", [".", "   jazz  ", ""]),
    ("batch_longest_last", ["rock", "a sad jazz ballad with a muted trumpet and brushed drums, 爵士乐 🎷"]),
    ("batch_same_length", ["jazz piano", "jazz piano"]),
]


class RefError(Exception):
    pass


def load(bundle: Path):
    from transformers import T5TokenizerFast

    path = bundle / "tokenizer.json"
    if not path.is_file():
        raise RefError(f"{path} is missing; export the bundle first (onnx/export.py)")
    tok = T5TokenizerFast(tokenizer_file=str(path), pad_token=PAD, eos_token=EOS, unk_token=UNK, extra_ids=0)
    ours = json.loads(path.read_text(encoding="utf-8"))
    theirs = json.loads(tok.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "model", "post_processor", "added_tokens"):
        if ours.get(part) != theirs.get(part):
            raise RefError(f"transformers' tokenizer differs from {path.name} in its {part}; the reference would not be of this file")
    if (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) != (0, 1, 2):
        raise RefError(f"pad/eos/unk ids are {tok.pad_token_id}/{tok.eos_token_id}/{tok.unk_token_id}, not T5's 0/1/2")
    if tok.padding_side != "right":
        raise RefError(f"transformers pads on the {tok.padding_side}; T5 pads on the right")
    return tok


def case(tok, name, kind, prompts):
    enc = tok(prompts, padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    for row, m in zip(ids, mask):
        n = sum(m)
        if row[n - 1] != tok.eos_token_id or any(t != tok.pad_token_id for t in row[n:]):
            raise RefError(f"case {name}: transformers did not end a row with </s> and pad after it: {row}")
    return {"name": name, "kind": kind, "prompts": prompts, "input_ids": ids, "attention_mask": mask}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder holding tokenizer.json")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tokenizers
    import transformers

    transformers.logging.set_verbosity_error()
    bundle = Path(args.bundle)
    tok = load(bundle)
    cases = [case(tok, n, "single", [t]) for n, t in SINGLE]
    cases += [case(tok, n, "emptyish", [t]) for n, t in EMPTYISH]
    cases += [case(tok, n, "batch", ts) for n, ts in BATCHES]
    all_ids = {t for c in cases for row in c["input_ids"] for t in row}
    if tok.unk_token_id not in all_ids:
        raise RefError("no case reaches <unk>: the unknown-character prompts are all in the vocabulary")
    if not any(0 in m for c in cases for m in c["attention_mask"]):
        raise RefError("no case is padded")
    doc = {
        "what": "transformers T5TokenizerFast(tokenizer_file=tokenizer.json) ids and masks, padding=True (right, "
        "to the longest, pad id 0, mask 0); every case is a batch of prompts",
        "tokenizer": "tokenizer.json",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "unk_token_id": tok.unk_token_id,
        "cases": cases,
    }
    out = bundle / "reference"
    out.mkdir(exist_ok=True)
    dst = out / "tokenizer_cases.json"
    tmp = out / f".tokenizer_cases.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, dst)
    print(f"wrote {dst}: {len(cases)} cases")


if __name__ == "__main__":
    try:
        main()
    except RefError as e:
        print(f"reference_tokenizer.py: error: {e}", file=sys.stderr)
        sys.exit(2)
