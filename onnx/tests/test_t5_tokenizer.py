"""The T5-style tokenizer (make_t5_tokenizer.py), the exporter's --tokenizer option and reference_tokenizer.py.
Run: .venv/bin/python -m pytest onnx/tests/test_t5_tokenizer.py -q
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ONNX_DIR = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def run(*args, check=True):
    res = subprocess.run([PY, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=ONNX_DIR.parent)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def t5tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("t5tok") / "tokenizer.json"
    run(ONNX_DIR / "make_t5_tokenizer.py", "--out", out)
    return out


def test_training_is_deterministic(t5tok, tmp_path):
    again = tmp_path / "again.json"
    run(ONNX_DIR / "make_t5_tokenizer.py", "--out", again)
    assert again.read_bytes() == t5tok.read_bytes()


def test_t5_configuration(t5tok):
    from tokenizers import Tokenizer

    doc = json.loads(t5tok.read_text(encoding="utf-8"))
    assert doc["model"]["type"] == "Unigram" and doc["model"]["unk_id"] == 2
    assert not doc["model"]["byte_fallback"]
    assert [p for p, _ in doc["model"]["vocab"][:3]] == ["<pad>", "</s>", "<unk>"]
    assert doc["normalizer"]["type"] == "Precompiled"
    assert [p["type"] for p in doc["pre_tokenizer"]["pretokenizers"]] == ["WhitespaceSplit", "Metaspace"]
    assert doc["pre_tokenizer"]["pretokenizers"][1]["prepend_scheme"] == "always"
    assert doc["decoder"]["type"] == "Metaspace"
    assert doc["padding"] is None and doc["truncation"] is None
    tok = Tokenizer.from_file(str(t5tok))
    assert tok.get_vocab_size(with_added_tokens=True) <= 320
    # nmt_nfkc: full-width letters are the ASCII ones; "</s>" ends every sequence; unseen characters are <unk>.
    assert tok.encode("ｊａｚｚ").ids == tok.encode("jazz").ids
    assert tok.encode("").ids == [1]
    assert tok.encode("爵士钢琴").tokens[-1] == "</s>" and tok.encode("爵士钢琴").tokens[0].startswith("▁")
    assert 2 in tok.encode("straße").ids
    assert tok.decode(tok.encode("café crème, naïve").ids) == "café crème, naïve"


def synthetic_tokenizer(path, pieces, pad_first=True):
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    if not pad_first:
        specials = [specials[1], specials[0], specials[2]]
    vocab = specials + [(f"p{i}", -1.0 - i / 1000) for i in range(pieces)]
    Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False)).save(str(path))
    return path


def export(tmp_path, tokenizer, preset="tiny", check=True):
    out = tmp_path / "bundle"
    return out, run(ONNX_DIR / "export.py", "--preset", preset, "--random-weights", "--tokenizer", tokenizer,
                    "--out", out, "--no-verify", check=check)


def one_line_error(res, fragment):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("export.py: error: "), res.stderr
    assert fragment in lines[0], lines[0]


def test_export_refuses_a_vocabulary_larger_than_the_text_encoders(tmp_path):
    big = synthetic_tokenizer(tmp_path / "big.json", 400)  # 403 ids; tiny2's text vocab_size is 384
    out, res = export(tmp_path, big, "tiny2", check=False)
    one_line_error(res, "vocab_size is 384")
    assert not out.exists()


def test_export_refuses_other_special_ids(tmp_path):
    swapped = synthetic_tokenizer(tmp_path / "swapped.json", 10, pad_first=False)
    out, res = export(tmp_path, swapped, check=False)
    one_line_error(res, "<pad> the id 1")
    assert not out.exists()


def test_export_refuses_a_missing_tokenizer_file(tmp_path):
    out, res = export(tmp_path, tmp_path / "nope.json", check=False)
    one_line_error(res, "is not a file")


def test_tokenizer_option_needs_random_weights(tmp_path, t5tok):
    res = run(ONNX_DIR / "export.py", "--model", tmp_path, "--tokenizer", t5tok, "--out", tmp_path / "b", check=False)
    assert res.returncode == 2 and "--tokenizer goes with --random-weights" in res.stderr


def test_bundle_ships_the_tokenizer_and_the_reference_matches_it(tmp_path, t5tok):
    from tokenizers import Tokenizer

    out, _ = export(tmp_path, t5tok)
    shipped = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert shipped == json.loads(t5tok.read_text(encoding="utf-8"))
    man = json.loads((out / "manifest.json").read_text())
    assert man["tokenizer"] == "tokenizer.json" and "tokenizer.json" in man["files"]
    run(ONNX_DIR / "reference_tokenizer.py", "--bundle", out)
    ref = json.loads((out / "reference" / "tokenizer_cases.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    names = {c["name"] for c in ref["cases"]}
    assert {"ascii", "accented", "cjk", "emoji", "empty", "space", "dot", "padded_word"} <= names
    for c in ref["cases"]:
        width = max(len(tok.encode(p).ids) for p in c["prompts"])
        for p, ids, mask in zip(c["prompts"], c["input_ids"], c["attention_mask"]):
            own = tok.encode(p).ids
            assert ids == own + [0] * (width - len(own)), c["name"]
            assert mask == [1] * len(own) + [0] * (width - len(own)), c["name"]
