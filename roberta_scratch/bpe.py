"""Byte-level BPE's building blocks, shared by encoding (tokenizer.py) and training (bpe_train.py).

    bytes_to_unicode()      the printable character GPT-2 writes for each byte
    GPT2_SPLIT_PATTERN      how text is cut into words before BPE
    merge(word, pair, new)  one BPE step: every occurrence of a pair becomes one token

Encoding applies the learned merges to a word, the earliest learned first;
training finds which merges to learn. Both call the same `merge`, as minbpe does.
"""
from __future__ import annotations

from typing import Hashable, Sequence

# GPT-2's pre-tokenisation pattern (openai/gpt-2 encoder.py), used unchanged by RoBERTa.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


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
