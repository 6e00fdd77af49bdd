"""Byte-level BPE tokenizer: exact parity with the reference tokenizers, the batch API, speed features.

Parity tests need the real roberta-base files through ROBERTA_REFERENCE_DIR and
compare against `transformers`' RobertaTokenizerFast (built from the same files,
`<mask>` with lstrip as in the original) and against tiktoken. The rest run on
a tiny hand-made vocabulary.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
import unicodedata
from itertools import pairwise
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roberta_scratch.tokenization import byte_level as tokenizer_module
from roberta_scratch.tokenization import pool as tokenizer_pool
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, bytes_to_unicode, load_tokenizer

REF = os.environ.get("ROBERTA_REFERENCE_DIR")
needs_ref = pytest.mark.skipif(
    not REF,
    reason="ROBERTA_REFERENCE_DIR is unset: point it at the roberta-base tokenizer files (../shared/reference/roberta-base)",
)
HYPOTHESIS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings chosen to break pre-tokenisers: whitespace of every kind, contractions in both
# cases, digits of several scripts, emoji with modifiers and ZWJ, combining marks, RTL
# scripts, control characters, and special tokens at the edges of words and punctuation.
ADVERSARIAL = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    " \n ",
    "\t",
    "\t\t x",
    "\r\n",
    "a\r\nb",
    "x \n\n  y",
    "trailing   ",
    "   leading",
    "Hello world!",
    "Hello  world",
    "hello\u00a0world",
    "a\u3000b",
    "x\u2028y",
    "x\x85y",
    "x \x85 y",
    "\x0b\x0c",
    "it's I'm you're we've they'll he'd don't",
    "IT'S I'M YOU'RE WE'VE THEY'LL HE'D DON'T",
    "'s 't 're 've 'm 'll 'd",
    "''s",
    "'",
    "rock'n'roll",
    "l'été",
    "\u2019s curly",
    "0 12 345 6789 3.14159 1,000,000 2024-01-01",
    "x1y2z3",
    "\u0663\u0664\u0665 \uff14\uff15\uff16 \u2177 \u00b2\u00b3",
    "😀",
    "😀😀😀",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦",
    "🏳️\u200d🌈",
    "a\u200db",
    "\u200b\u200c\u200d\ufeff",
    "日本語のテキスト",
    "中文，标点。",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "שלום עולם",
    "Привет, мир",
    "Ελληνικά",
    "e\u0301 a\u0300\u0316 Z\u0351\u0352\u0353",
    "\ufb01 \ufb02 \u216b \u338f \u00bd",
    "\x00\x01\x02\x1b[31m\x7f",
    "x\x1cy\x1d\x1e\x1f",
    "tab\tsep\tvalues",
    "<mask>",
    "<mask>.",
    " <mask>",
    "  <mask>",
    "\n<mask>",
    "a <mask> b",
    "a<mask>b",
    "(<mask>)",
    "<mask><mask>",
    "<mask> <mask>",
    "The capital of France is <mask>.",
    "end <mask>",
    "<mask> start",
    "x\t<mask>",
    "\u00a0<mask>",
    "\u200b<mask>",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "hello<s>world",
    "hello </s> world",
    "<s><s></s>",
    "un<unk>known",
    "pad<pad>ded",
    "<s",
    "s>",
    "<mas k>",
    "<MASK>",
    "< mask >",
    "<<mask>>",
    "</s >",
    "def f(x):\n    return x  # comment\n",
    "    indented\n        more\n",
    "a, b; c: d! e? f.",
    "...",
    "--",
    "(((x)))",
    "http://example.com/a?b=c&d=e#f",
    "user@example.com",
    "C++ C# F#",
    "$100 €200 ¥300",
    "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
    "\ufffd",
    "a\ufffdb",
    "\U0010ffff",
    "\U0001f600\U0001f601",
    "x" * 300,
    "ab" * 200,
    " " * 100,
    "\n" * 50,
]
# Building blocks for generated strings: each interacts with the pre-tokeniser differently.
FRAGMENTS = [
    "a",
    "Z",
    "é",
    "e\u0301",
    "ß",
    "İ",
    "\ufb01",
    "日本",
    "\u0640",
    "1",
    "23",
    "\u0663",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    "\x0b",
    "\x1c",
    "\x85",
    "\xa0",
    "\u3000",
    "'",
    "s",
    "'s",
    "'S",
    "'ll",
    "'LL",
    "😀",
    "\u200d",
    "👍🏽",
    "<mask>",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<",
    ">",
    "/",
    ".",
    ",",
    "!",
    "-",
    "_",
    "\x00",
    "\x7f",
    "\ufffd",
]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
# Characters assigned in this Python's Unicode database: the reference's regex engine may
# classify characters assigned later differently (see test_every_code_point_splits_like_reference).
assigned_text = st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=40)


# ---- corpora and tokenizers -------------------------------------------------------------


def reference_tokenizer(**kwargs):
    from tokenizers import AddedToken
    from transformers import RobertaTokenizerFast

    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    return RobertaTokenizerFast.from_pretrained(REF, mask_token=mask, **kwargs)


@pytest.fixture(scope="session")
def hf():
    return reference_tokenizer()


@pytest.fixture(scope="session")
def ours():
    return ByteLevelBPETokenizer.from_pretrained(REF)


@pytest.fixture(scope="session", params=[False, True], ids=["plain", "add_prefix_space"])
def pair_of_tokenizers(request):
    aps = request.param
    return reference_tokenizer(add_prefix_space=aps), ByteLevelBPETokenizer.from_pretrained(REF, add_prefix_space=aps)


# A hand-made vocabulary: specials, the 256 bytes, nine merges spelling "Ġthe", "in" and "Ġworld", <mask> last.
TINY_MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("l", "d"),
    ("Ġwor", "ld"),
]
TINY_TOKENS = [
    "<s>",
    "<pad>",
    "</s>",
    "<unk>",
    *sorted(bytes_to_unicode().values()),
    *(a + b for a, b in TINY_MERGES),
    "<mask>",
]
TINY_VOCAB = {t: i for i, t in enumerate(TINY_TOKENS)}
THE, WORLD, MASK = TINY_VOCAB["Ġthe"], TINY_VOCAB["Ġworld"], TINY_VOCAB["<mask>"]


def tiny(**kwargs) -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer(TINY_VOCAB, TINY_MERGES, **kwargs)


def byte_id(tok: ByteLevelBPETokenizer, b: int) -> int:
    return tok.vocab[bytes_to_unicode()[b]]


# ---- parity with transformers' RobertaTokenizerFast on the real vocabulary ----------------------


@needs_ref
def test_known_values(ours):
    assert ours.encode("Hello world!") == [0, 31414, 232, 328, 2]
    assert ours.encode("Hello", "world") == [0, 31414, 2, 2, 8331, 2]
    assert ours.encode("The capital of France is <mask>.") == [0, 133, 812, 9, 1470, 16, 50264, 4, 2]
    assert ours.decode([0, 31414, 232, 328, 2]) == "<s>Hello world!</s>"
    assert ours.tokenize("Hello world!") == ["Hello", "Ġworld", "!"]
    assert (ours.vocab_size, ours.mask_token_id, ours.pad_token_id) == (50265, 50264, 1)


@needs_ref
def test_stdlib_docstrings_match_reference(ours, hf, docstrings):
    assert sum(len(d.encode()) for d in docstrings) > 1_500_000
    expected = [e.ids for e in hf.backend_tokenizer.encode_batch(docstrings)]
    got = [ours.encode(d) for d in docstrings]
    assert got == expected
    assert [ours.decode(ids) for ids in got] == hf.backend_tokenizer.decode_batch(expected, skip_special_tokens=False)
    assert [ours.decode(ids, skip_special_tokens=True) for ids in got[:500]] == hf.batch_decode(
        expected[:500], skip_special_tokens=True
    )


@needs_ref
def test_stdlib_docstrings_offsets_and_words_match_reference(ours, hf, docstrings):
    subset = docstrings[::10]  # ~200 kB: the offsets path is slower
    expected, got = hf(subset, return_offsets_mapping=True), ours(subset, return_offsets_mapping=True)
    assert got["input_ids"] == expected["input_ids"]
    assert got["offset_mapping"] == expected["offset_mapping"]
    assert all(got.word_ids(i) == expected.word_ids(i) for i in range(len(subset)))


@needs_ref
def test_adversarial_strings_match_reference(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    for s in ADVERSARIAL:
        expected = hf(s, return_offsets_mapping=True, return_special_tokens_mask=True)
        got = ours(s, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert dict(got) == dict(expected), repr(s)
        assert got.word_ids() == expected.word_ids(), repr(s)
        assert ours.encode(s) == expected["input_ids"], repr(s)
        assert ours.decode(got["input_ids"]) == hf.decode(expected["input_ids"]), repr(s)
        assert ours.encode(s, add_special_tokens=False) == hf(s, add_special_tokens=False)["input_ids"], repr(s)


@needs_ref
def test_adversarial_pairs_match_reference(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    # subtle: the reference reads an empty second text as no pair at all; ours keeps the pair.
    assert ours.encode("x", "") == ours.encode("x") + [ours.sep_token_id] * 2
    for a, b in pairwise(ADVERSARIAL):
        expected = hf(a, b, return_offsets_mapping=True, return_special_tokens_mask=True)
        got = ours(a, b, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert dict(got) == dict(expected), (a, b)
        assert got.word_ids() == expected.word_ids() and got.sequence_ids() == expected.sequence_ids(), (a, b)


@needs_ref
def test_split_into_words_matches_reference(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    words = [w for w in ADVERSARIAL if w]
    for i in range(0, len(words), 5):
        batch = words[i : i + 5]
        expected = hf(batch, is_split_into_words=True, return_offsets_mapping=True)
        got = ours(batch, is_split_into_words=True, return_offsets_mapping=True)
        assert dict(got) == dict(expected), batch
        assert got.word_ids() == expected.word_ids(), batch
        # Without offsets, the fast path gives the same ids and still knows the words.
        fast = ours(batch, is_split_into_words=True)
        assert fast["input_ids"] == expected["input_ids"] and fast.word_ids() == expected.word_ids()


@needs_ref
@HYPOTHESIS
@given(text=st.one_of(fragment_text, assigned_text))
def test_generated_text_matches_reference(pair_of_tokenizers, text):
    hf, ours = pair_of_tokenizers
    expected = hf(text, return_offsets_mapping=True)
    got = ours(text, return_offsets_mapping=True)
    assert dict(got) == dict(expected)
    assert got.word_ids() == expected.word_ids()
    assert ours.decode(got["input_ids"]) == hf.decode(expected["input_ids"])


def gpt2_and_fast_splits():
    import regex

    from roberta_scratch.tokenization import bpe

    return (
        regex.compile(bpe.GPT2_SPLIT_PATTERN).findall,
        [regex.compile(bpe.GPT2_SPLIT_PATTERN_FAST).findall, bpe.split_words],
    )


ascii_text = st.text(st.characters(max_codepoint=127), max_size=40)


@HYPOTHESIS
@given(text=st.one_of(fragment_text, assigned_text, ascii_text))
def test_fast_split_patterns_match_gpt2s(text):
    gpt2, fast = gpt2_and_fast_splits()
    for split in fast:
        assert split(text) == gpt2(text)


def test_fast_split_patterns_match_gpt2s_on_docstrings_and_every_ascii_pair(docstrings):
    import re

    from roberta_scratch.tokenization import bpe

    gpt2, fast = gpt2_and_fast_splits()
    ascii_split = re.compile(bpe.GPT2_SPLIT_PATTERN_ASCII).findall
    chars = [chr(i) for i in range(128)]
    # every ASCII character alone and beside every other, then runs that exercise the
    # whitespace look-ahead and the contractions
    texts = chars + [a + b for a in chars for b in chars]
    texts += [a + b + c for a in " \t\n\x0b'x1." for b in " \t\n\x0c\r'sd" for c in chars]
    for text in texts:
        assert ascii_split(text) == gpt2(text), repr(text)
    for text in ADVERSARIAL + docstrings:
        for split in fast:
            assert split(text) == gpt2(text), repr(text[:80])


@needs_ref
@HYPOTHESIS
@given(ids=st.lists(st.integers(0, 50264), max_size=30), skip=st.booleans())
def test_decoding_any_ids_matches_reference(ours, hf, ids, skip):
    # Random ids are mostly broken UTF-8: both must replace the same bytes with U+FFFD.
    assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


@needs_ref
def test_split_special_tokens_matches_reference(ours):
    """split_special_tokens=True reads "<s>", "<mask>", ... as plain text."""
    hf = reference_tokenizer(split_special_tokens=True)
    split = ByteLevelBPETokenizer.from_pretrained(REF, split_special_tokens=True)
    for s in ADVERSARIAL:
        assert split.encode(s) == hf(s)["input_ids"], repr(s)
    assert split.tokenize("a <mask>") == ["a", "Ġ<", "mask", ">"]
    assert ours.tokenize("a <mask>") == ["a", "<mask>"]


@needs_ref
@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_truncation_matches_reference(ours, hf, strategy):
    a, b = "one two three four five six seven", "alpha beta gamma delta"  # 7 and 4 tokens
    for max_length in range(5, 16):
        try:
            expected = hf(a, b, truncation=strategy, max_length=max_length)["input_ids"]
        except Exception:  # the reference refuses: the kept text alone is too long
            with pytest.raises(ValueError, match="cannot truncate only"):
                ours(a, b, truncation=strategy, max_length=max_length)
            continue
        assert ours(a, b, truncation=strategy, max_length=max_length)["input_ids"] == expected, max_length


@needs_ref
def test_batch_padding_and_tensors_match_reference(ours, hf):
    texts, pairs = ["Hello world", "a <mask> b<s>", "", "x" * 40], ["one", "two three", "four", ""]
    kwargs = dict(
        padding=True, truncation=True, max_length=12, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    assert dict(ours(texts, pairs, **kwargs)) == dict(hf(texts, pairs, **kwargs))
    assert dict(ours(texts, padding="max_length", max_length=16)) == dict(
        hf(texts, padding="max_length", max_length=16)
    )
    got, expected = (
        ours(texts, pairs, padding=True, return_tensors="pt"),
        hf(texts, pairs, padding=True, return_tensors="pt"),
    )
    assert got.keys() == expected.keys()
    for key in got:
        assert torch.equal(got[key], expected[key]), key
    assert ours("Hello world", return_tensors="pt")["input_ids"].shape == (1, 4)


@needs_ref
@pytest.mark.parametrize("special", [True, False], ids=["special", "no-special"])
def test_texts_alone_are_built_a_column_at_a_time_as_the_reference_does(ours, hf, special):
    """Texts without pairs or offsets take _single_columns: truncation, the special-tokens mask
    and padding as the reference gives them, with and without special tokens."""
    texts = ["Hello world", "a <mask> b<s>", "", "x y " * 20, "é" * 9]
    for kwargs in [
        dict(),
        dict(padding=True, return_special_tokens_mask=True),
        dict(truncation=True, max_length=5, padding="max_length", return_special_tokens_mask=True),
        dict(truncation="only_first", max_length=3, padding=True, return_attention_mask=False),
    ]:
        got, expected = (
            ours(texts, add_special_tokens=special, **kwargs),
            hf(texts, add_special_tokens=special, **kwargs),
        )
        assert dict(got) == dict(expected), kwargs
    for kwargs in [dict(), dict(return_offsets_mapping=True, return_special_tokens_mask=True, padding=True)]:
        assert dict(ours([], **kwargs)) == {k: [] for k in ours("a", **kwargs)}, kwargs  # no text: empty columns
    with pytest.raises(ValueError, match="needs a text pair"):
        ours(texts, truncation="only_second", max_length=5)
    with pytest.raises(ValueError, match="smaller than the 2 special tokens"):
        ours(texts, truncation=True, max_length=1)


# ---- parity with tiktoken's GPT-2 encoding ----------------------------------------------------


@pytest.fixture(scope="session")
def gpt2_pair():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder, merges = os.path.join(REF, "gpt2-encoder.json"), os.path.join(REF, "merges.txt")
    with mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):  # read the files, cache nothing
        ranks = data_gym_to_mergeable_bpe_ranks(merges, encoder)
    pattern = tokenizer_module.GPT2_SPLIT_PATTERN
    enc = tiktoken.Encoding(
        "gpt2-reference", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    return enc, ByteLevelBPETokenizer.from_files(encoder, merges)


@needs_ref
def test_tiktoken_parity_on_docstrings_and_adversarial_strings(gpt2_pair, docstrings):
    enc, ours = gpt2_pair
    assert ours.special_tokens == {}  # GPT-2 has none of RoBERTa's, so "<s>" etc. are text
    assert [ours.encode(d, add_special_tokens=False) for d in docstrings] == enc.encode_ordinary_batch(docstrings)
    for s in ADVERSARIAL + ["<|endoftext|> is text here"]:
        assert ours.encode(s, add_special_tokens=False) == enc.encode_ordinary(s), repr(s)
    with pytest.raises(ValueError, match="no '<s>' token"):
        ours.encode("x")


@needs_ref
@HYPOTHESIS
@given(text=st.one_of(fragment_text, assigned_text))
def test_tiktoken_parity_generated(gpt2_pair, text):
    enc, ours = gpt2_pair
    assert ours.encode(text, add_special_tokens=False) == enc.encode_ordinary(text)


@needs_ref
def test_lone_surrogates_become_replacement_characters_like_tiktoken(gpt2_pair, ours):
    enc, gpt2 = gpt2_pair
    for s in ["a\ud800b", "\udfff", "x \ud83d", "\ud800\ud800 y"]:
        assert gpt2.encode(s, add_special_tokens=False) == enc.encode_ordinary(s), repr(s)
        fixed = s.replace("\ud800", "\ufffd").replace("\udfff", "\ufffd").replace("\ud83d", "\ufffd")
        assert ours.encode(s) == ours.encode(fixed)
        assert (
            ours(s, return_offsets_mapping=True)["offset_mapping"]
            == ours(fixed, return_offsets_mapping=True)["offset_mapping"]
        )


# ---- round trip ---------------------------------------------------------------------------------


@HYPOTHESIS
@given(text=st.text(max_size=60))
def test_decode_inverts_encode_for_any_string(text):
    tok = tiny(split_special_tokens=True)  # with specials recognised, "<mask>" swallows a space by design
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


@needs_ref
@HYPOTHESIS
@given(text=st.text(max_size=60))
def test_decode_inverts_encode_on_real_vocabulary(ours, text):
    if "<" not in text:
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


def test_invalid_utf8_decodes_with_replacement():
    tok = tiny()
    emoji = tok.encode("😀", add_special_tokens=False)  # four byte tokens
    assert len(emoji) == 4
    assert tok.decode(emoji[:2]) == "\ufffd"
    assert tok.decode(emoji[:2] + tok.encode(" the", add_special_tokens=False)) == "\ufffd the"
    assert tok.decode([byte_id(tok, 0xFF), byte_id(tok, 0x41)]) == "\ufffdA"


# ---- the API, on the tiny vocabulary ----------------------------------------------------------


def test_bpe_merges_by_rank():
    tok = tiny()
    assert tok.tokenize(" the world") == ["Ġthe", "Ġworld"]
    assert tok.tokenize("in the") == ["in", "Ġthe"]
    assert tok.tokenize(" worn") == ["Ġwor", "n"]  # "Ġwor" + "n": no merge makes "Ġworn"
    assert tok.encode(" the world") == [0, THE, WORLD, 2]
    assert tok.encode("the <mask>") == [0, byte_id(tok, ord("t")), TINY_VOCAB["he"], MASK, 2]


def test_single_texts_give_flat_lists_and_batches_nested_lists():
    tok = tiny()
    single = tok(" the", " world")
    assert single["input_ids"] == [0, THE, 2, 2, WORLD, 2] and single["attention_mask"] == [1] * 6
    batch = tok([" the", " world the"], padding=True)
    assert batch["input_ids"] == [[0, THE, 2, 1], [0, WORLD, THE, 2]]
    assert batch["attention_mask"] == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.input_ids == batch["input_ids"]
    pairs = tok([(" the", " world"), (" world", " the")])
    assert pairs["input_ids"] == [[0, THE, 2, 2, WORLD, 2], [0, WORLD, 2, 2, THE, 2]]
    assert tok([" the"], [" world"])["input_ids"] == [[0, THE, 2, 2, WORLD, 2]]
    tensors = tok(" the world", return_tensors="pt", return_special_tokens_mask=True)
    assert tensors["input_ids"].tolist() == [[0, THE, WORLD, 2]]
    assert tensors["special_tokens_mask"].tolist() == [[1, 0, 0, 1]]
    with pytest.raises(ValueError, match="padding=True"):
        tok([" the", " the world"], return_tensors="pt")


def test_offsets_of_multibyte_characters_split_across_tokens():
    tok = tiny()
    enc = tok("é😀 the", return_offsets_mapping=True, return_special_tokens_mask=True)
    # é is two byte tokens, 😀 four: every piece of a character maps to that whole character.
    assert enc["offset_mapping"] == [(0, 0), (0, 1), (0, 1), (1, 2), (1, 2), (1, 2), (1, 2), (3, 6), (0, 0)]
    assert enc["special_tokens_mask"] == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert enc.word_ids() == [None, 0, 0, 1, 1, 1, 1, 2, None]
    text = "naïve 日本 the world"
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = [text[s:e] for s, e in enc["offset_mapping"]]
    assert "".join(dict.fromkeys(pieces)) == text.replace(" ", "")  # spans cover the text, spaces trimmed


def test_word_ids_align_labels_for_pre_split_words():
    tok = tiny(add_prefix_space=True)
    words = ["the", "world", "in", "naïve"]
    enc = tok(words, is_split_into_words=True, return_offsets_mapping=True)
    assert enc["input_ids"][:4] == [0, THE, WORLD, TINY_VOCAB["Ġ"]]
    assert enc.word_ids() == [None, 0, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, None]  # " naïve": 7 byte tokens
    assert enc["offset_mapping"][1:3] == [(0, 3), (0, 5)]  # relative to each word
    # Lazily, without asking for offsets first:
    lazy = tok([words, words[:2]], is_split_into_words=True, padding=True)
    assert lazy.word_ids(0) == enc.word_ids() and lazy.word_ids(1)[:4] == [None, 0, 1, None]
    assert lazy.sequence_ids(1)[:4] == [None, 0, 0, None]


def test_add_prefix_space():
    assert tiny(add_prefix_space=True).encode("the world") == [0, THE, WORLD, 2]
    assert tiny().encode("the world") == [0, byte_id(tiny(), ord("t")), TINY_VOCAB["he"], WORLD, 2]


def test_truncation_and_padding_rules():
    tok = tiny()
    a, b = " the" * 7, " world" * 4

    def lengths(enc):
        return enc["input_ids"].count(THE), enc["input_ids"].count(WORLD)

    assert lengths(tok(a, b, truncation=True, max_length=12)) == (4, 4)  # longer cut to the shorter
    assert lengths(tok(a, b, truncation=True, max_length=9)) == (3, 2)  # halves, odd one to the longer
    assert lengths(tok(a, b, truncation="only_first", max_length=10)) == (2, 4)
    assert lengths(tok(a, b, truncation="only_second", max_length=12)) == (7, 1)
    assert len(tok(a, truncation=True, max_length=5)["input_ids"]) == 5
    assert len(tok(a, truncation=True)["input_ids"]) == 9  # max_length defaults to model_max_length
    padded = tok([a, b], padding="max_length", max_length=12, return_special_tokens_mask=True)
    assert [len(r) for r in padded["input_ids"]] == [12, 12]
    assert padded["special_tokens_mask"][1] == [1, 0, 0, 0, 0, 1] + [1] * 6
    with pytest.raises(ValueError, match="only_second' needs a text pair"):
        tok(a, truncation="only_second", max_length=4)


def test_bounded_word_cache_gives_the_same_ids():
    tok, fresh = tiny(cache_size=50), tiny()
    words = [" w" + "".join(random.Random(i).choices("abcdefgh", k=6)) for i in range(400)]
    texts = ["".join(words[i : i + 20]) for i in range(0, 400, 20)]
    for text in texts:
        assert tok.encode(text) == fresh.encode(text)
        assert len(tok._cache) <= 50
    assert len(fresh._cache) == 400


# ---- many texts: processes and streaming ----------------------------------------------------


def test_encode_batch_over_processes_matches_serial(monkeypatch):
    tok = tiny()
    texts = [f" the world {i} in {'é' * (i % 5)} <mask>" for i in range(300)]
    serial = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, num_workers=2) == serial
    assert tok.encode_batch(texts, add_special_tokens=False, num_workers=2) == [s[1:-1] for s in serial]
    assert tok.encode_batch(texts[:7], num_workers=3) == serial[:7]  # this process's share, then the others'
    used = []
    real_pool = tokenizer_pool._worker_pool
    monkeypatch.setattr(tokenizer_pool, "_worker_pool", lambda *a: used.append(a[1]) or real_pool(*a))
    monkeypatch.setattr(tokenizer_pool, "PARALLEL_MIN_CHARS", 1000)  # "large" batches use every CPU
    monkeypatch.setattr(tokenizer_pool, "available_cpus", lambda: 2)
    assert tok(texts)["input_ids"] == serial
    assert used == [1]  # every CPU: this process encodes a share beside one worker


def test_small_batch_of_short_texts_stays_in_this_process(monkeypatch):
    """Below PARALLEL_MIN_CHARS, tok(texts) and encode_batch start no worker pool, however many texts
    and CPUs: for many short documents, starting workers and sending ids back costs more than it
    saves (only the BPE of new words is shared, tested below)."""
    tok = tiny()
    texts = [f" the world {i} in {'é' * (i % 5)}" for i in range(3000)]  # many short documents
    monkeypatch.setattr(tokenizer_pool, "available_cpus", lambda: 8)
    monkeypatch.setattr(tokenizer_pool, "_worker_pool", lambda *a: pytest.fail("started workers"))
    serial = [tok.encode(t) for t in texts]
    assert sum(map(len, texts)) < tokenizer_pool.PARALLEL_MIN_CHARS
    assert tok(texts)["input_ids"] == serial
    assert tok.encode_batch(texts) == serial


def test_a_batch_shares_the_bpe_of_its_new_words_among_processes(monkeypatch):
    """tok(texts) below PARALLEL_MIN_CHARS: once the batch looks likely to hold SHARED_BPE_MIN_WORDS
    new words, forked children share their BPE while this process splits the rest; the ids are those
    of encode, one text at a time, whatever is in the texts (special tokens, surrogates, empty,
    non-ASCII); the new words end in the cache; a warm batch forks nothing; a cache too small for
    the batch falls back to text by text."""
    started, instances, finished = [], [], []

    class Spy(tokenizer_pool.ForkedMap):
        CHUNK = 7  # many chunks, so that some are stolen at the end

        def __init__(self, fn, children):
            started.append(children)
            super().__init__(fn, children)
            self.processes = [child for child, _ in self.children]
            instances.append(self)

        def finish(self):
            finished.append(len(started))
            return super().finish()

    monkeypatch.setattr(tokenizer_module, "ForkedMap", Spy)
    monkeypatch.setattr(tokenizer_module, "SHARED_BPE_MIN_WORDS", 50)
    monkeypatch.setattr(tokenizer_module, "SHARED_BPE_ROUND_CHARS", 500)
    monkeypatch.setattr(tokenizer_pool, "available_cpus", lambda: 3)
    rng = random.Random(0)
    words = [" " + "".join(rng.choices("abcdefghé", k=rng.randint(1, 12))) for _ in range(300)]
    texts = ["".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(200)]
    texts += ["", " ", "the <mask> world", "bad \ud800 half", "<s>", "x" * 40, "\n\n  a"]
    expected = [tiny().encode(t) for t in texts]
    tok = tiny()
    assert tok(texts)["input_ids"] == expected
    assert started == [2]  # two children beside this process
    assert set(words) <= set(tok._cache)
    assert tok.encode_batch(texts) == expected and started == [2]  # warm: nothing new, nothing forked
    small = tiny(cache_size=50)
    assert small.encode_batch(texts) == expected and started == [2, 2] and len(small._cache) <= 50
    fits = tiny(cache_size=len(tok._cache))  # the batch's words fit only once the old ones are gone
    fits.encode(" ".join(f"w{i}" for i in range(100)))
    assert fits.encode_batch(texts) == expected and started == [2, 2, 2] and finished == [1, 3]  # not 2: too small
    assert set(words) <= set(fits._cache) and len(fits._cache) <= fits.cache_size
    few = tiny()
    assert few.encode_batch(texts[-3:]) == expected[-3:] and started == [2, 2, 2]  # too few words to fork for
    with pytest.raises(TypeError, match="expected a str"):
        tok([*texts, None])
    monkeypatch.setattr(tokenizer_pool, "available_cpus", lambda: 64)  # children for the work, not the CPUs
    assert tiny().encode_batch(texts[:20]) == expected[:20] and 1 <= started[-1] < 8
    started.pop(), finished.pop()
    monkeypatch.setattr(tokenizer_pool, "available_cpus", lambda: 3)

    interrupted, real_words = tiny(), tiny()._plain_words  # an error while splitting stops the children

    def words_then_fail(text):
        if started == [2, 2, 2, 2]:
            raise KeyboardInterrupt
        return real_words(text)

    monkeypatch.setattr(interrupted, "_plain_words", words_then_fail)
    with pytest.raises(KeyboardInterrupt):
        interrupted.encode_batch(texts)
    assert started == [2, 2, 2, 2] and not any(p.is_alive() for p in instances[-1].processes)


@pytest.mark.parametrize("children", [1, 3])
def test_forked_map_gives_each_result_once_whoever_computes_it(children):
    """Items put a list at a time come back as (items, [fn(x) ...]) chunks, each item once, from the
    children or stolen back at the end; a child's error is raised here."""
    forked = tokenizer_pool.ForkedMap(lambda x: (x, os.getpid()), children)
    forked.CHUNK = 5
    items = list(range(400))
    for i in range(0, 400, 37):
        forked.put(items[i : i + 37])
    deadline = time.monotonic() + 30  # let the children take some, however busy the machine
    while sum(forked.claimed) < children and time.monotonic() < deadline:
        time.sleep(0.005)
    got = [(x, r) for chunk, results in forked.finish() for x, r in zip(chunk, results, strict=True)]
    assert sorted(x for x, _ in got) == items and all(r[0] == x for x, r in got)
    assert len({pid for _, (_, pid) in got}) > 1  # the work was shared
    assert forked.children == []

    def fails(x):
        if x == 3:
            raise ValueError("item 3")
        return x

    forked = tokenizer_pool.ForkedMap(fails, children)
    forked.put(list(range(10)))
    with pytest.raises(ValueError, match="item 3"):
        forked.finish()


def test_forked_map_children_leave_ctrl_c_to_this_process():
    """Ctrl-C reaches every process of the group: a child ignores it (this process stops it, if it
    must), so it neither dies nor prints a traceback of its own."""
    import signal

    forked = tokenizer_pool.ForkedMap(lambda x: os.getpid(), 1)
    child = forked.children[0][0]
    forked.put([1, 2, 3])
    deadline = time.monotonic() + 30
    while forked.claimed[0] == 0 and time.monotonic() < deadline:  # it has started serving
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGINT)
    results = [pid for _, pids in forked.finish() for pid in pids]
    assert results == [child.pid] * 3  # the child answered: it was not stopped by the signal


def test_forked_map_stops_its_children_when_interrupted():
    forked = tokenizer_pool.ForkedMap(lambda x: x, 2)
    processes = [child for child, _ in forked.children]
    forked.put([1, 2, 3])
    forked.close()  # as finish's `finally` does on an exception
    assert all(not p.is_alive() for p in processes)


def test_batches_are_encoded_with_the_collector_paused_and_restored(monkeypatch):
    """tok(texts) and encode_batch pause the garbage collector (rows of small lists, no cycle),
    and leave it as they found it, an error included."""
    import gc

    tok = tiny()
    seen = []
    real = tok._plain_words  # where a batch's every text starts
    monkeypatch.setattr(tok, "_plain_words", lambda t: seen.append(gc.isenabled()) or real(t))
    assert gc.isenabled()
    tok(["the world", "in"])
    tok.encode_batch(["the world"], add_special_tokens=False)
    assert seen == [False, False, False] and gc.isenabled()
    with pytest.raises(TypeError):
        tok(["the world", None])
    assert gc.isenabled()
    gc.disable()
    try:
        tok(["the world"])
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_batches_encodes_with_the_collector_paused_but_hands_rows_back_with_it_on(monkeypatch, workers):
    """This process pauses it around each batch it encodes, not while the caller holds the rows;
    a pool's workers run without it (their collector would copy every inherited page it touches)."""
    import gc

    tok = tiny()
    monkeypatch.setattr(tok, "_encode_text", lambda t: [int(gc.isenabled())])  # each row: was it on?
    assert gc.isenabled()
    rows = []
    for batch in tok.encode_batches([["x", "y"]] * 6, num_workers=workers):
        assert gc.isenabled()
        rows += [[int(i) for i in row] for row in batch]
    assert rows == [[0]] * 12


def test_encode_batches_over_processes_keeps_batches_and_order():
    tok = tiny()
    batches = [[f" the world {b} {i} {'é' * (i % 5)}" for i in range(n)] for b, n in enumerate([1, 0, 9, 40, 3] * 6)]
    serial = [[tok.encode(t, add_special_tokens=False) for t in batch] for batch in batches]
    for workers in (2, 3):
        got = list(tok.encode_batches(iter(batches), num_workers=workers))
        # this process's rows are lists, the workers' int32 arrays, mixed within a batch
        assert [[list(map(int, row)) for row in batch] for batch in got] == serial


@pytest.mark.parametrize("n_batches", [0, 1, 3, 30])
@pytest.mark.parametrize("workers", [1, 2])
def test_encode_batches_runs_meanwhile_once(workers, n_batches):
    tok = tiny()
    batches = [[f" the world {b}"] * 3 for b in range(n_batches)]
    calls = []
    got = list(tok.encode_batches(iter(batches), num_workers=workers, meanwhile=lambda: calls.append(1)))
    assert calls == [1]
    assert [[list(map(int, row)) for row in batch] for batch in got] == [
        [tok._encode_text(t) for t in b] for b in batches
    ]


def test_encode_file_streams_lines(tmp_path):
    tok = tiny()
    path = tmp_path / "corpus.txt"
    lines = ["the world\n", "  indented <s>\r\n", "\n", "naïve 😀 end"]
    path.write_bytes("".join(lines).encode() + b"\nbad \xff byte\n")  # the last line gets a newline
    with pytest.warns(UserWarning, match="1 line\\(s\\) are not valid UTF-8"):
        got = list(tok.encode_file(path))
    expected_lines = lines[:3] + ["naïve 😀 end\n", "bad \ufffd byte\n"]
    assert got == [tok.encode(line, add_special_tokens=False) for line in expected_lines]
    assert tok.decode([i for ids in got for i in ids]) == "".join(lines) + "\nbad \ufffd byte\n"
    with pytest.warns(UserWarning):
        assert list(tok.encode_file(path, num_workers=2, lines_per_batch=2)) == got


def test_encode_file_memory_stays_flat(tmp_path):
    """The peak of Python allocations does not grow with the size of the file streamed."""
    rng = random.Random(0)
    vocab = ["the", "world", "in", "naïve", "😀", "12", "x"] + [
        "".join(rng.choices("abcdefghij", k=5)) for _ in range(800)
    ]
    text = "".join(" ".join(rng.choices(vocab, k=12)) + "\n" for _ in range(3000))
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(text, encoding="utf-8")
    big.write_text(text * 4, encoding="utf-8")
    tok = tiny(cache_size=1000)
    list(tok.encode_file(small))  # warm up: the cache and one-off allocations

    def peak_while_streaming(path) -> int:
        tracemalloc.start()
        for _ in tok.encode_file(path, lines_per_batch=200):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    peak_small, peak_big = peak_while_streaming(small), peak_while_streaming(big)
    assert peak_big < 1.2 * peak_small + 10_000, (peak_small, peak_big)
    assert peak_big < big.stat().st_size / 2


# ---- save and load ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    tok = tiny(add_prefix_space=True)
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    assert (tmp_path / "merges.txt").read_text().splitlines()[:2] == ["#version: 0.2", "Ġ t"]
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteLevelBPETokenizer)
    assert loaded.vocab == tok.vocab and loaded.merges == tok.merges and loaded.add_prefix_space
    assert loaded.encode("the world <mask>") == tok.encode("the world <mask>")


@needs_ref
def test_saved_directory_loads_in_transformers(ours, tmp_path):

    ours.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(tmp_path)
    for s in ["The capital of France is <mask>.", "Hello world!", *ADVERSARIAL[:40]]:
        assert theirs(s)["input_ids"] == ours.encode(s), repr(s)


# ---- clear errors ------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors(tmp_path):
    tok = tiny()
    with pytest.raises(TypeError, match="got NoneType"):
        tok.encode(None)
    with pytest.raises(TypeError, match="got None"):
        tok(None)
    with pytest.raises(TypeError, match="got NoneType"):
        tok(["fine", None])
    with pytest.raises(TypeError, match="list of ids"):
        tok.decode(None)
    with pytest.raises(ValueError, match="cannot decode id 99999"):
        tok.decode([0, 99999])
    with pytest.raises(ValueError, match="max_length=3 is smaller than the 4 special tokens a pair needs"):
        tok("a", "b", truncation=True, max_length=3)
    with pytest.raises(ValueError, match="max_length=1 is smaller than the 2 special tokens"):
        tok(["a"], truncation=True, max_length=1)
    with pytest.raises(ValueError, match=r"merge #1 \('h', 'x'\) uses 'hx', which is not in the vocab"):
        ByteLevelBPETokenizer(TINY_VOCAB, [("Ġ", "t"), ("h", "x")])
    with pytest.raises(ValueError, match="lacks 1 of the 256 byte tokens"):
        ByteLevelBPETokenizer({t: i for t, i in TINY_VOCAB.items() if t != "Ā"}, [])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds neither"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps(TINY_VOCAB))
    with pytest.raises(FileNotFoundError, match="merges.txt' does not exist"):
        load_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nthree tokens here\n")
    with pytest.raises(ValueError, match="merges.txt:3: expected two tokens"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="truncation='both'"):
        tok("a", truncation="both")
    with pytest.raises(ValueError, match="return_tensors='tf'"):
        tok("a", return_tensors="tf")


# ---- exhaustive and large-scale checks ------------------------------------------------------


@needs_ref
def test_every_code_point_splits_like_reference():
    """Every assigned code point, in contexts that exercise each branch of the regex."""
    from tokenizers import pre_tokenizers

    ours = ByteLevelBPETokenizer.from_pretrained(REF)
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    b2u = bytes_to_unicode()
    for cp in range(0x110000):
        c = chr(cp)
        if unicodedata.category(c) in ("Cs", "Cn"):
            continue
        s = f"x{c} {c}{c}1 {c}\n{c}"
        expected = [p for p, _ in pre.pre_tokenize_str(s)]
        assert ["".join(b2u[b] for b in p.encode()) for p in ours.pattern.findall(s)] == expected, hex(cp)


@pytest.mark.slow
def test_encode_file_of_one_gigabyte_keeps_memory_flat(tmp_path):
    """Stream 1 GB through encode_file in a fresh process and compare its peak RSS with the file size."""
    path = tmp_path / "1gb.txt"
    line = ("The quick brown fox jumps over the lazy dog; naïve café 😀 1234. " * 4 + "\n").encode()
    with open(path, "wb") as f:
        for _ in range((1 << 30) // (len(line) * 1000)):
            f.write(line * 1000)
    tiny().save_pretrained(tmp_path / "tok")
    script = (
        "import resource, sys\n"
        "from roberta_scratch.tokenization.byte_level import load_tokenizer\n"
        "tok = load_tokenizer(sys.argv[2])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "n = sum(len(ids) for ids in tok.encode_file(sys.argv[1], num_workers=2))\n"
        "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "tok")], capture_output=True, text=True, check=True
    )
    n_tokens, growth_kb = map(int, out.stdout.split())
    assert n_tokens > 100_000_000
    assert growth_kb * 1024 < 100_000_000, f"peak memory grew by {growth_kb} kB while streaming 1 GB"
