#!/usr/bin/env python3
"""A small T5-style SentencePiece (Unigram) tokenizer, trained deterministically with the `tokenizers` trainer.

    python onnx/make_t5_tokenizer.py --out tests/data/t5-tokenizer.json [--vocab-size 320]

Real MusicGen checkpoints ship T5's tokenizer: a Unigram model over "▁"-prefixed pieces. This script builds
one of the same shape from the committed corpus `onnx/t5_tokenizer_corpus.txt` (music prompts, accented
words, CJK and emoji lines), so that a random-weight bundle can carry it (`export.py --tokenizer`) and the
Rust host's tokenization can be checked against transformers' T5 tokenizer on the same file
(`reference_tokenizer.py`, `tests/tokenizer.rs`). The configuration is T5's, component for component:

- ids: `<pad>` 0, `</s>` 1, `<unk>` 2 (the trainer's special tokens, in that order), then the pieces;
- normalizer: `Precompiled` with SentencePiece's `nmt_nfkc` character map, the rule T5's model was trained
  with (NFKC plus SentencePiece's control-character and whitespace mapping). The map is taken from a
  throwaway SentencePiece model trained in memory with `normalization_rule_name=nmt_nfkc`; the map is a
  fixed table, the same whatever that model learns;
- pre-tokenizer: `WhitespaceSplit` then `Metaspace` (replacement "▁", prepend_scheme "always", split), as
  transformers' T5 tokenizer builds it; the decoder is the matching `Metaspace`;
- model: Unigram, unk id 2, no byte fallback (characters outside the vocabulary become `<unk>`, fused);
- post-processor: `$A </s>` (pair `$A </s> $B </s>`), no padding or truncation rule (the host pads).

The trainer's scores vary in their last bits between runs and ties come out in any order, so the model is
rewritten with scores rounded to 8 decimals and pieces in a fixed order: the same corpus gives the same file.
"""

import argparse
import io
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "t5_tokenizer_corpus.txt"
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIALS = [PAD, EOS, UNK]  # ids 0, 1, 2, as T5
DEFAULT_VOCAB = 320  # below both test presets' text vocab_size (tiny 512, tiny2 384)


class TokError(Exception):
    pass


def corpus_lines(path: Path):
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise TokError(f"cannot read the corpus {path}: {e.strerror}")
    lines = [line for line in lines if line]
    if not lines:
        raise TokError(f"the corpus {path} has no text lines")
    return lines


def nmt_nfkc_charsmap(lines):
    """SentencePiece's compiled `nmt_nfkc` normalization map (what a T5 tokenizer.json's Precompiled holds)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="char",
        vocab_size=8,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        minloglevel=2,
    )
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if not charsmap:
        raise TokError("sentencepiece gave no precompiled nmt_nfkc map")
    return charsmap


def canonical_unigram(tok):
    """The trained model with its pieces in a fixed order. Between runs the trainer's scores differ in the
    last bits (its sums run in hash-map order), equal scores come out in any order, and the characters it
    must keep but did not choose are appended in hash-set order with made-up scores 1e-4 apart at the
    bottom. So: scores rounded to 8 decimals; those bottom characters (single characters within 0.01 of
    the lowest score) all given the highest of their scores; pieces sorted by (score descending, piece),
    the special tokens first. Segmentation depends on the scores only; this fixes them and the ids."""
    import json

    from tokenizers.models import Unigram

    model = json.loads(tok.to_str())["model"]
    pieces = [(p, round(score, 8)) for p, score in model["vocab"]]
    lowest = min(score for p, score in pieces if p not in SPECIALS)
    bottom = [i for i, (p, score) in enumerate(pieces) if len(p) == 1 and p not in SPECIALS and score <= lowest + 0.01]
    if bottom:
        top = max(pieces[i][1] for i in bottom)
        for i in bottom:
            pieces[i] = (pieces[i][0], top)
    specials = [x for x in pieces if x[0] in SPECIALS]
    specials.sort(key=lambda x: SPECIALS.index(x[0]))
    rest = sorted((x for x in pieces if x[0] not in SPECIALS), key=lambda x: (-x[1], x[0]))
    return Unigram(specials + rest, unk_id=SPECIALS.index(UNK), byte_fallback=False)


def build(lines, vocab_size):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram

    if vocab_size < len(SPECIALS) + 1:
        raise TokError(f"--vocab-size {vocab_size} is too small (needs at least {len(SPECIALS) + 1})")
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Precompiled(nmt_nfkc_charsmap(lines))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        unk_token=UNK,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.model = canonical_unigram(tok)
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    if ids != {PAD: 0, EOS: 1, UNK: 2}:
        raise TokError(f"the trained special ids are {ids}, not T5's <pad> 0, </s> 1, <unk> 2")
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, ids[EOS])]
    )
    tok.no_padding()
    tok.no_truncation()
    got = tok.get_vocab_size(with_added_tokens=True)
    if got > vocab_size:
        raise TokError(f"the trained vocabulary has {got} ids, more than --vocab-size {vocab_size}")
    return tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="tokenizer.json to write")
    p.add_argument("--corpus", default=str(CORPUS), help="training text, one line per sentence (default: the committed corpus)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB, help=f"largest vocabulary (default {DEFAULT_VOCAB})")
    args = p.parse_args(argv)
    # Few threads; the pieces are put in a fixed order afterwards anyway (canonical_unigram).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    tok = build(corpus_lines(Path(args.corpus)), args.vocab_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, out)
    print(f"wrote {out}: Unigram, {tok.get_vocab_size(with_added_tokens=True)} ids (<pad> 0, </s> 1, <unk> 2)")


if __name__ == "__main__":
    try:
        main()
    except TokError as e:
        print(f"make_t5_tokenizer.py: error: {e}", file=sys.stderr)
        sys.exit(2)
