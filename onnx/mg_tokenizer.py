"""The tokenizer written into random-weight bundles, and the bundle-tokenizer helpers.

A random-weight model has no tokenizer of its own, so the exporter builds a small deterministic one with
the `tokenizers` library: T5-like ids (pad 0, eos 1, unk 2), lower-casing, whitespace/punctuation words,
unknown words map to unk instead of failing, and "</s>" appended to every sequence. Every id is below the
text encoder's vocab_size. Bundle tokenizers (random or a real checkpoint's) are saved without a padding
rule, as hub tokenizer.json files are: the host pads (right, to the longest, with the text pad id, mask 0).
"""

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

# Fixed, ordered word list: the words of the prompts the tests and the concept templates use first,
# then common music vocabulary. Order defines ids, so only ever append.
WORDS = """
80s 90s pop track with bassy drums and synth rock song loud guitars heavy
compose a an the piece melody use tempo of in for on to at by from
emotional passionate groovy energetic happy sad calm dark bright epic
fast medium slow
guitar piano trumpet violin cello bass drum drums synthesizer saxophone flute organ strings choir vocals
voice beat beats percussion harp clarinet trombone horn ukulele banjo accordion
classical jazz electronic hip hop funk soul blues country reggae metal folk ambient techno house disco
dance orchestral cinematic lofi lo fi trap dubstep punk indie gospel latin
music generate continuing given audio sound style song songs track tracks
and or but not no very more less some many all
60s 70s 00s 10s 20s
1 2 3 4 5 6 7 8 9 0
major minor key bpm chord chords rhythm rhythmic harmony solo riff groove loop
soft hard gentle aggressive warm cold smooth rough deep high low
intro outro verse chorus bridge drop build
. , ! ? - ' : ;
""".split()


def build_tokenizer(vocab_size: int, pad_id: int = 0, eos_id: int = 1, unk_id: int = 2) -> Tokenizer:
    if sorted((pad_id, eos_id, unk_id)) != [0, 1, 2]:
        raise ValueError("the built tokenizer needs pad/eos/unk ids 0, 1, 2 (T5's); set them in the text config")
    if vocab_size < 4:
        raise ValueError(f"text vocab_size {vocab_size} is too small for a tokenizer (needs at least 4)")
    vocab = {PAD: pad_id, EOS: eos_id, UNK: unk_id}
    for word in WORDS:
        if len(vocab) >= vocab_size:
            break
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    tok.add_special_tokens([PAD, EOS, UNK])
    return tok


def without_padding(tok: Tokenizer) -> Tokenizer:
    tok.no_padding()
    tok.no_truncation()
    return tok


def encode_batch(tok: Tokenizer, texts, pad_id: int):
    """ids and mask (lists), padded on the right to the longest text, as transformers pads."""
    rows = [tok.encode(t).ids for t in texts]
    longest = max(len(r) for r in rows)
    ids = [r + [pad_id] * (longest - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (longest - len(r)) for r in rows]
    return ids, mask
