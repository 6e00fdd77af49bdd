"""bpe.py: the near-linear merge loop gives exactly the ids of BPE's definition, on words of
any length, and a word of a megabyte costs about what a megabyte of prose does."""

import random
import signal
import time

import pytest

from roberta_scratch.tokenization.bpe import MergeTable, _merge_short, apply_merges, encode_reference, merge
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer

ALPHABETS = {"dna": "ACGT", "letters": "abcdefghijklmnopqrstuvwxyz", "mixed": "aAbB0123+/=-_ é日😀\n\t"}


@pytest.fixture(scope="module")
def trained(docstrings):
    """A 2,000-token byte-level BPE learned from the standard library's docstrings."""
    return ByteLevelBPETokenizer.train(iter(docstrings[:2500]), vocab_size=2000, show_progress=False)


def reference_ids(tok, word):
    ranks = {}
    for rank, (a, b) in enumerate(tok.merges):
        ranks[(tok.vocab[a], tok.vocab[b])] = (rank, tok.vocab[a + b])
    return encode_reference([tok._byte_ids[b] for b in word.encode()], ranks)


def test_merge_and_the_reference_loop():
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge([1, 2, 1, 2], (1, 2), 7) == [7, 7]
    assert encode_reference([1, 2, 1, 2], {(1, 2): (0, 3), (3, 3): (1, 4)}) == [4]
    table = MergeTable([(1, 2, 3), (3, 3, 4)], vocab_size=5)
    assert (
        apply_merges([1, 2, 1, 2], table) == [4] and apply_merges([], table) == [] and apply_merges([2], table) == [2]
    )


def test_overlaps_and_ties_follow_the_definition():
    # a a a: the leftmost pair merges first; ranks decide, then positions
    merges = [(1, 1, 5), (5, 1, 6), (1, 5, 7)]
    table = MergeTable(merges, 8)
    ranks = {(a, b): (r, n) for r, (a, b, n) in enumerate(merges)}
    rng = random.Random(0)
    for _ in range(500):
        word = [1 if rng.random() < 0.8 else 2 for _ in range(rng.randint(0, 12))]
        assert apply_merges(word, table) == encode_reference(word, ranks), word


def test_short_words_fall_back_where_a_merge_creates_a_lower_rank():
    # (1, 2) merges at rank 1; the 3 it makes forms (3, 1), ranked 0. The definition merges
    # every (1, 2) first: [3, 3]. One merge at a time would give [4, 2].
    table = MergeTable([(3, 1, 4), (1, 2, 3)], vocab_size=5)
    assert _merge_short([1, 2, 1, 2], table) is None
    assert (
        apply_merges([1, 2, 1, 2], table) == [3, 3] == encode_reference([1, 2, 1, 2], {(3, 1): (0, 4), (1, 2): (1, 3)})
    )


def test_short_words_match_the_definition_on_random_merge_tables():
    """Hand-written tables: a token used before it is made, a pair listed twice, self-merges."""
    rng = random.Random(0)
    fallbacks = 0
    for _ in range(3000):
        n = rng.randint(1, 10)
        merges = [(rng.randrange(4 + n), rng.randrange(4 + n), 4 + k) for k in range(n)]
        table = MergeTable(merges, 4 + n)
        ranks = {(a, b): (table.rank_of[a << table.bits | b], new) for a, b, new in merges}
        word = [rng.randrange(4 + n) for _ in range(rng.randint(0, 12))]
        short = _merge_short(word, table) if word else []
        fallbacks += short is None
        assert apply_merges(word, table) == encode_reference(word, ranks), (word, merges)
        assert short is None or short == encode_reference(word, ranks), (word, merges)
    assert fallbacks  # the fallback was exercised


@pytest.mark.parametrize("kind", sorted(ALPHABETS))
def test_apply_merges_matches_the_definition_on_random_words(trained, kind):
    rng = random.Random(kind)
    for n in [1, 2, 3, 17, 200, 2000]:
        for _ in range(5):
            word = "".join(rng.choice(ALPHABETS[kind]) for _ in range(n))
            assert list(trained._bpe(word)) == reference_ids(trained, word), (kind, n)


def test_apply_merges_matches_the_definition_on_real_words(trained, docstrings):
    words = {w for d in docstrings[2500:3500] for w in trained.pattern.findall(d)}
    for w in words:
        assert list(trained._bpe(w)) == reference_ids(trained, w), w


def test_long_words_match_tokenizers(reference_dir):
    """100 KB without a space, as base64 or DNA arrives: token-exact with roberta-base's fast tokenizer."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.RobertaTokenizerFast.from_pretrained(reference_dir)
    ours = ByteLevelBPETokenizer.from_pretrained(reference_dir)
    rng = random.Random(1)
    for alphabet in ("ACGT", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"):
        text = "".join(rng.choice(alphabet) for _ in range(100_000))
        assert ours.encode(text) == theirs(text)["input_ids"]


class TookTooLong(Exception):
    pass


def test_a_megabyte_word_costs_about_what_a_megabyte_of_prose_does(trained, docstrings):
    """The quadratic loop took 27 s for 20k characters with roberta-base, and 1.7 s for 50k with
    this vocabulary (about 35 s for the megabyte); a 1 MB word with roberta-base never finished."""
    prose = "\n\n".join(docstrings[4000:])[:1_000_000]
    letters = "".join(c for c in prose if c.isascii() and c.isalpha())  # the prose "minified": one word
    word = (letters * (1_000_000 // len(letters) + 1))[:1_000_000]
    cold = ByteLevelBPETokenizer(trained.vocab, trained.merges)  # an empty word cache
    start = time.perf_counter()
    cold.encode(prose)
    t_prose = time.perf_counter() - start

    budget = 10 * t_prose + 2.0  # the near-linear loop needs about 5x; the quadratic one about 150x

    def stop(signum, frame):
        raise TookTooLong

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        start = time.perf_counter()
        ids = cold.encode(word, add_special_tokens=False)
        t_word = time.perf_counter() - start
    except TookTooLong:
        pytest.fail(f"a 1 MB word took over {budget:.1f} s, against {t_prose:.2f} s for 1 MB of prose")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cold.decode(ids) == word
    assert t_word < budget, (t_word, t_prose)
    print(f"1 MB of prose {t_prose:.2f} s, a 1 MB word {t_word:.2f} s")
