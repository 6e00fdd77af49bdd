"""Learning byte-level BPE merges from a corpus (the training half of minbpe, made incremental).

The corpus is first reduced to counts of pre-tokenised words, so 10 MB of
English becomes some 100k distinct words. Then, over and over, the most
frequent adjacent pair of tokens becomes a new token. Worked example, on
words given with their counts:

    hug x10, pug x5, pun x12, bun x4, hugs x5
    pairs: (u,g)=20 (p,u)=17 (u,n)=16 (h,u)=15 (g,s)=5 (b,u)=4  -> merge u+g
    words: h ug, p ug, p u n, b u n, h ug s
    pairs: (u,n)=16 (h,ug)=15 (p,u)=12 (p,ug)=5 (ug,s)=5 (b,u)=4 -> merge u+n
    pairs: (h,ug)=15 (p,un)=12 ...                                -> merge h+ug

    >>> learn_merges({b"hug": 10, b"pug": 5, b"pun": 12, b"bun": 4, b"hugs": 5}, 3, show_progress=False)
    [(b'u', b'g'), (b'u', b'n'), (b'h', b'ug')]

Incremental: the count of every pair is kept, with the words each pair occurs
in. A merge touches only the words holding the merged pair and moves the
counts of the pairs that changed there; nothing is recounted. A heap finds
the most frequent pair; entries whose count has changed since they were
pushed are skipped or pushed again when popped ("lazy deletion").

Ties go to the pair whose tokens come first in the vocabulary (bytes in
`byte_order`, then merged tokens by age), so the result depends neither on
dict order nor on the order of the corpus. With GPT-2's byte order this is
the rule of Hugging Face's trainer, and both learn the same merges.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from heapq import heapify, heappop, heappush
from itertools import pairwise

from ..progress import progress
from .bpe import merge


def count_words(
    texts: Iterable[str], split: Callable[[str], list[str]], show_progress: bool = True
) -> dict[bytes, int]:
    """How often each word occurs, words found by `split` and keyed by their UTF-8 bytes.

    >>> count_words(["the cat", "the end"], str.split, show_progress=False)
    {b'the': 2, b'cat': 1, b'end': 1}
    """
    counts: Counter[str] = Counter()
    for text in progress(texts, desc="counting words", unit="texts", disable=not show_progress):
        counts.update(split(text))
    # subtle: a lone surrogate has no UTF-8 form; it is counted as "?".
    return {word.encode("utf-8", errors="replace"): n for word, n in counts.items()}


def _merge_in_words(words: list, freqs: list, where: dict, pair: tuple[int, int], new_id: int) -> dict:
    """Merge `pair` into `new_id` in every word that holds it (updating `words` and `where`); the
    change of each pair's count."""
    delta: dict[tuple[int, int], int] = defaultdict(int)
    for wi in where.pop(pair):
        word = words[wi]
        merged = merge(word, pair, new_id)
        if len(merged) == len(word):  # this word lost the pair in an earlier merge
            continue
        freq = freqs[wi]
        for p in pairwise(word):
            delta[p] -= freq
        for p in pairwise(merged):
            delta[p] += freq
            if new_id in p:
                where[p].add(wi)
        words[wi] = merged
    return delta


def learn_merges(
    word_counts: Mapping[bytes, int],
    num_merges: int,
    min_frequency: int = 2,
    byte_order: Sequence[int] = range(256),
    show_progress: bool = True,
) -> list[tuple[bytes, bytes]]:
    """Merges, in the order learned, until `num_merges` distinct new tokens exist
    or no pair occurs `min_frequency` times.

    byte_order: the bytes in the order of the vocabulary, for breaking ties.
    """
    # Tokens are ints: 0..255 are the bytes, each merge adds the next id.
    token_bytes = [bytes([b]) for b in range(256)]
    # A token's place in the vocabulary: bytes in `byte_order`, then merged tokens by age.
    place = [0] * 256
    for i, b in enumerate(byte_order):
        place[b] = i
    words = [list(word) for word in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words that hold it
    for wi, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(word):
            pair_counts[pair] += freq
            where[pair].add(wi)

    def entry(pair, count):
        # heapq pops the smallest: highest count first, then the pair whose tokens come first.
        return (-count, place[pair[0]], place[pair[1]], pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    new_tokens: set[bytes] = set()
    with progress(total=num_merges, desc="learning merges", unit="merges", disable=not show_progress) as bar:
        while len(new_tokens) < num_merges and heap:
            neg_count, _, _, pair = heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -neg_count:  # stale entry: the count changed after it was pushed
                if count:
                    heappush(heap, entry(pair, count))
                continue
            if count < min_frequency:
                break
            left, right = pair
            new_id = len(token_bytes)
            token_bytes.append(token_bytes[left] + token_bytes[right])
            place.append(new_id)
            merges.append((token_bytes[left], token_bytes[right]))
            # subtle: two merge paths can spell the same bytes ("ab"+"c", "a"+"bc"); only a
            # new spelling is a new vocabulary entry.
            if token_bytes[new_id] not in new_tokens:
                new_tokens.add(token_bytes[new_id])
                bar.update()

            delta = _merge_in_words(words, freqs, where, pair, new_id)
            for p, d in delta.items():
                if not d:
                    continue
                count = pair_counts[p] + d
                if count:
                    pair_counts[p] = count
                else:
                    del pair_counts[p]
                if d > 0:
                    heappush(heap, entry(p, count))
    return merges
