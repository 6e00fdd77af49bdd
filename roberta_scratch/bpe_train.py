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

import os
import warnings
from collections import Counter, defaultdict
from heapq import heapify, heappop, heappush
from itertools import islice
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from tqdm.auto import tqdm


def iter_lines(paths: Iterable[str | os.PathLike], bad_files: list | None = None) -> Iterator[str]:
    """The lines of text files, each with its newline.

    Bytes that are not UTF-8 are read as U+FFFD, and each file that had any
    is reported with a warning (and appended to `bad_files` when given): one
    bad byte must not stop a run over a corpus.
    """
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file {str(path)!r} does not exist")
        bad_lines, first_bad = 0, 0
        # Binary, so that lines end at b"\n" only and "\r\n" comes back as written.
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    bad_lines += 1
                    first_bad = first_bad or n
                    yield raw.decode("utf-8", errors="replace")
        if bad_lines:
            if bad_files is not None:
                bad_files.append(str(path))
            warnings.warn(
                f"{path}: {bad_lines} line(s) are not valid UTF-8 (first: line {first_bad}); "
                "their invalid bytes were read as U+FFFD",
                stacklevel=2,
            )


def chunked(items: Iterable, n: int) -> Iterator[list]:
    """Lists of n items at a time (the last may be shorter), reading `items` lazily."""
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def count_words(
    texts: Iterable[str], split: Callable[[str], list[str]], show_progress: bool = True
) -> dict[bytes, int]:
    """How often each word occurs, words found by `split` and keyed by their UTF-8 bytes.

        >>> count_words(["the cat", "the end"], str.split, show_progress=False)
        {b'the': 2, b'cat': 1, b'end': 1}
    """
    counts: Counter[str] = Counter()
    for text in tqdm(texts, desc="counting words", unit=" texts", disable=not show_progress):
        counts.update(split(text))
    # subtle: a lone surrogate has no UTF-8 form; it is counted as "?".
    return {word.encode("utf-8", errors="replace"): n for word, n in counts.items()}


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
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(wi)

    def entry(pair, count):
        # heapq pops the smallest: highest count first, then the pair whose tokens come first.
        return (-count, place[pair[0]], place[pair[1]], pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    new_tokens: set[bytes] = set()
    with tqdm(total=num_merges, desc="learning merges", unit=" merges", disable=not show_progress) as bar:
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

            delta: dict[tuple[int, int], int] = defaultdict(int)
            for wi in where.pop(pair):
                word = words[wi]
                merged = _merge(word, pair, new_id)
                if len(merged) == len(word):  # this word lost the pair in an earlier merge
                    continue
                freq = freqs[wi]
                for p in zip(word, word[1:]):
                    delta[p] -= freq
                for p in zip(merged, merged[1:]):
                    delta[p] += freq
                    if new_id in p:
                        where[p].add(wi)
                words[wi] = merged
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


def _merge(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each non-overlapping occurrence of `pair`, left to right: [1, 1, 1] with (1, 1) -> [new, 1]."""
    left, right = pair
    out, i, n = [], 0, len(word)
    while i < n:
        if word[i] == left and i + 1 < n and word[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
