"""Byte-level BPE's building blocks, shared by encoding (tokenization/byte_level.py) and training (bpe_train.py).

    bytes_to_unicode()        the printable character GPT-2 writes for each byte
    GPT2_SPLIT_PATTERN        how text is cut into words before BPE
    split_words(text)         that cut, by faster equivalent patterns (_FAST, and _ASCII for ASCII text)
    merge(word, pair, new)    one BPE step: every occurrence of a pair becomes one token
    encode_reference(...)     BPE by definition: merge the lowest-ranked pair present, repeat
    MergeTable, apply_merges  the same result in near-linear time, for words of any length
                              (short words, most of them, by a simpler loop: _merge_short)

Training finds which merges to learn and applies each with `merge`; the definition of
encoding repeats `merge` too, as minbpe does. But that loop rescans the whole word for
every merge: quadratic, so a 1 MB word with no spaces (base64, minified JSON, DNA) never
finishes. `apply_merges` gives the same ids by visiting each pair a bounded number of
times; the tests check it against `encode_reference`.
"""

from __future__ import annotations

import heapq
import operator
import re
from collections.abc import Hashable, Sequence
from itertools import pairwise, repeat

import regex

# GPT-2's pre-tokenisation pattern (openai/gpt-2 encoder.py), used unchanged by RoBERTa.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# What the tokenizers run: the same pattern with the contractions' apostrophe factored out.
# The alternatives are tried in the same order, so every match is the same (tested), and
# `regex` finds them 8% faster (140 -> 128 ms on the 2 MB default corpus).
GPT2_SPLIT_PATTERN_FAST = r"""'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# And for a text that is all ASCII (most code and English prose): the same pattern with its
# classes written out as the ASCII characters `regex` puts in them (letters A-Z a-z, digits
# 0-9, whitespace \t \n \v \f \r and space; the tests check each of the 128), run by the
# standard library's `re`, which finds these matches twice as fast (100 -> 48 ms on the
# default corpus's ASCII documents).
_WS = r"\t\n\x0b\x0c\r "
GPT2_SPLIT_PATTERN_ASCII = (
    rf"""'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+"""
    rf"""|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)
_split_any = regex.compile(GPT2_SPLIT_PATTERN_FAST).findall
_split_ascii = re.compile(GPT2_SPLIT_PATTERN_ASCII).findall


def split_words(text: str) -> list[str]:
    """GPT-2's pre-tokenisation: the pieces BPE encodes one by one (their concatenation is `text`).

    >>> split_words("It's 2024, hello  world!")
    ['It', "'s", ' 2024', ',', ' hello', ' ', ' world', '!']
    """
    return _split_ascii(text) if text.isascii() else _split_any(text)


def bytes_to_unicode() -> dict[int, str]:
    """The printable character GPT-2 uses for each byte.

    Printable Latin-1 bytes stand for themselves; the 68 others (control
    characters, space, ...) are moved to U+0100 and up, in byte order. So a
    BPE vocabulary can be stored as text with no spaces or control characters.

        >>> b2u = bytes_to_unicode()
        >>> b2u[ord("A")], b2u[ord(" ")], b2u[ord("\\n")]
        ('A', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return dict(sorted(table.items()))


def merge(word: Sequence[Hashable], pair: tuple, new) -> list:
    """Replace each non-overlapping occurrence of `pair` in `word`, left to right, by `new`.

    >>> merge([1, 1, 1], (1, 1), 9)
    [9, 1]
    >>> merge(["l", "o", "w", "e", "r"], ("e", "r"), "er")
    ['l', 'o', 'w', 'er']
    """
    left, right = pair
    out, i, n = [], 0, len(word)
    while i < n:
        if word[i] == left and i + 1 < n and word[i + 1] == right:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def encode_reference(ids: list[int], ranks: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """BPE by its definition: while some adjacent pair has a merge, merge every occurrence of
    the lowest-ranked one (left to right), then look again. `ranks` maps a pair of ids to
    (rank, merged id). Quadratic in the word's length: the specification, not the encoder.

        >>> encode_reference([1, 2, 1, 2], {(1, 2): (0, 3), (3, 3): (1, 4)})
        [4]
    """
    ids = list(ids)
    while len(ids) > 1:
        found = [ranks[pair] for pair in pairwise(ids) if pair in ranks]
        if not found:
            break
        rank, new = min(found)
        pair = next(p for p in pairwise(ids) if ranks.get(p, (None,))[0] == rank)
        ids = merge(ids, pair, new)
    return ids


class MergeTable:
    """Merges in the form apply_merges reads fast: `rank_of` maps a pair of ids, packed into one
    int (left << bits | right), to its rank; `pairs[rank]` is (left, right, merged id)."""

    def __init__(self, merges: Sequence[tuple[int, int, int]], vocab_size: int):
        """merges: (left id, right id, merged id) in rank order (the order they were learned)."""
        self.bits = max(1, (vocab_size - 1).bit_length())
        self.pairs = [tuple(m) for m in merges]
        # a pair listed twice keeps its last rank, as a dict built in rank order would
        self.rank_of = {left << self.bits | right: rank for rank, (left, right, _) in enumerate(self.pairs)}


def apply_merges(ids: list[int], merges: MergeTable) -> list[int]:
    """The ids BPE turns `ids` into: the same result as encode_reference, in near-linear time.

    The word is a linked list of symbols. Every adjacent pair that has a merge is filed
    under its rank ("buckets"); a heap holds the ranks that have pairs waiting. The lowest
    rank's bucket is taken whole and its positions merged left to right, which is one pass
    of the definition: every occurrence of the lowest-ranked pair, non-overlapping, left
    to right. A merge files the two pairs it creates with its neighbours under their ranks.
    Entries whose pair has changed since they were filed are skipped when their turn comes.
    Each merge costs O(1) plus its share of a sort, so a word of n bytes takes O(n log n).

    subtle: no pair created during a pass can have that pass's rank (the merged symbol is
    a new id, so the new pair differs), so a pass never needs to look at its own output.
    """
    n = len(ids)
    if n < 2:
        return list(ids)
    if n <= SHORT_WORD:
        short = _merge_short(ids, merges)
        if short is not None:
            return short
    bits, pairs, rank_of = merges.bits, merges.pairs, merges.rank_of.get
    ids = list(ids)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    buckets: dict[int, list[int]] = {}
    # The first pairs, looked up in C: left << bits | right for every adjacent pair.
    found = map(rank_of, map(operator.or_, map(operator.lshift, ids, repeat(bits)), ids[1:]))
    for i, rank in enumerate(found):
        if rank is not None:
            bucket = buckets.get(rank)
            if bucket is None:
                buckets[rank] = [i]
            else:
                bucket.append(i)
    pending = list(buckets)  # the ranks with pairs waiting
    heapq.heapify(pending)
    push, pop, waiting = heapq.heappush, heapq.heappop, buckets.get

    while pending:
        rank = pop(pending)
        left, right, new = pairs[rank]
        positions = buckets.pop(rank)
        positions.sort()
        for i in positions:
            if ids[i] != left:  # merged away, or merged into something else, since it was filed
                continue
            j = nxt[i]
            if j < 0 or ids[j] != right:
                continue
            ids[i], ids[j] = new, -1
            k = nxt[j]
            nxt[i] = k
            if k >= 0:  # file the pair (new, next)
                prv[k] = i
                r = rank_of(new << bits | ids[k])
                if r is not None:
                    bucket = waiting(r)
                    if bucket is None:
                        buckets[r] = [i]
                        push(pending, r)
                    else:
                        bucket.append(i)
            p = prv[i]
            if p >= 0:  # file the pair (previous, new)
                r = rank_of(ids[p] << bits | new)
                if r is not None:
                    bucket = waiting(r)
                    if bucket is None:
                        buckets[r] = [p]
                        push(pending, r)
                    else:
                        bucket.append(p)
    return [x for x in ids if x >= 0]


# Up to this many bytes a word goes through _merge_short: most words are short (7.4 bytes on
# average over the stdlib's docstrings), and for them setting up apply_merges's linked list,
# buckets and heap costs more than the merging. Measured per distinct word of those docstrings,
# roberta-base, on a busy 2-core machine: 2-4 bytes 3.9 -> 3.3 us, 5-8 bytes 8.2 -> 6.8 us,
# 9-16 bytes 13 -> 11.5 us; 17-32 bytes even; 33-48 bytes 16 -> 26 us. A fresh tokenizer's
# encode of all 7,226 docstrings: 321 -> 292 ms (median of 7, interleaved).
SHORT_WORD = 16
_NO_MERGE = 1 << 62  # a rank above every real one


def _merge_short(ids: list[int], merges: MergeTable) -> list[int] | None:
    """apply_merges for a short word: one merge a step, the leftmost pair of the lowest rank,
    found by min() over a list of ranks kept beside the word; None if the result might differ.

    Merging the occurrences of the lowest-ranked pair one at a time, leftmost first, is the same
    pass as the definition's, as long as no pair it creates ranks lower: the next lowest is then
    the next occurrence to the right (a merged symbol is a new id, so it starts no occurrence).
    subtle: learned merges never create a lower rank (a token is learned before any merge that
    uses it), but a hand-written merges file may; then this answers None and apply_merges runs.
    O(n^2) with the loop in C: for short words only.
    """
    bits, pairs, rank_of = merges.bits, merges.pairs, merges.rank_of.get
    ids = list(ids)
    # ranks[i]: the rank of the pair (ids[i], ids[i + 1]), _NO_MERGE where none.
    ranks = list(map(rank_of, map(operator.or_, map(operator.lshift, ids, repeat(bits)), ids[1:]), repeat(_NO_MERGE)))
    while True:
        rank = min(ranks, default=_NO_MERGE)
        if rank == _NO_MERGE:
            return ids
        i = ranks.index(rank)
        new = pairs[rank][2]
        ids[i : i + 2] = (new,)
        del ranks[i]
        if i + 1 < len(ids):  # the pair (new, next)
            ranks[i] = rank_of(new << bits | ids[i + 1], _NO_MERGE)
            if ranks[i] < rank:
                return None
        if i:  # the pair (previous, new)
            ranks[i - 1] = rank_of(ids[i - 1] << bits | new, _NO_MERGE)
            if ranks[i - 1] < rank:
                return None
