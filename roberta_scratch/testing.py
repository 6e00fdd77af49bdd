"""Inputs for checking a model against a reference: random padded batches.

    >>> ids, mask = padded_batch(vocab_size=1000, lengths=(5, 3))
    >>> ids.shape, mask.tolist()
    (torch.Size([2, 5]), [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

Used by `roberta-scratch convert --verify`, the tests and the benchmarks, so they all
exercise the same shapes: unequal lengths, <s> ... </s>, then padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def padded_batch(
    vocab_size: int = 1000,
    lengths: Sequence[int] = (11, 7, 3),
    pad_id: int = 1,
    bos_id: int = 0,
    eos_id: int = 2,
    seed: int = 0,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape (len(lengths), seq_len or max(lengths)).

    Row i is <s>, lengths[i] - 2 ids drawn past the four specials, </s>, then padding.
    """
    g = torch.Generator().manual_seed(seed)
    T = seq_len or max(lengths)
    if max(lengths) > T or min(lengths) < 2:
        raise ValueError(f"lengths {tuple(lengths)} must lie in [2, {T}]")
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, vocab_size, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = bos_id, eos_id
    return ids, ids.ne(pad_id).long()
