"""BERT's input formats, the baselines of RoBERTa's Table 2: SEGMENT-PAIR and SENTENCE-PAIR.

Each example is `<s> A </s></s> B </s>` (RoBERTa's pair template, as tokenizer_base
assembles a text pair) with a next-sentence label:

    SEGMENT-PAIR   A and B each hold one or more whole consecutive sentences of a document
                   (BERT's original format); together they fill the block.
    SENTENCE-PAIR  A and B are each one natural sentence: short examples.

With probability 1/2 B is what follows A in the same document (label 0, IsNext, as in
BERT and Hugging Face); otherwise B is drawn from another document (label 1), never the
same one. The instances are drawn once, at construction, from `seed` (as BERT's
create_pretraining_data.py wrote them to disk), so example i is the same in every epoch
and after a resume; the masks are drawn later, by the collator. It needs data prepared
with `prepare --sentences` (the sentence ends, sentences.py).

How instances are drawn, per document, in order (after create_instances_from_document):
  SEGMENT-PAIR: from the next unused sentence, gather whole sentences until they reach
    seq_len - 4 tokens (at least two sentences; a single sentence left at the end of the
    document joins the chunk). A is the chunk's first k sentences, k uniform in
    [1, sentences - 1]. IsNext: B is the rest of the chunk. Random: B is gathered from a
    random sentence of another document until it reaches the tokens A left free, and the
    chunk's unused sentences are put back (the next chunk starts after A), as BERT does.
  SENTENCE-PAIR: every sentence but a document's last is an A once; IsNext: B is the next
    sentence; random: a uniformly drawn sentence of another document.
  Documents of one sentence have nothing after their A, so they are never an A (which
  keeps the label an exact fair coin); they are still drawn from for random Bs.
Truncation, BERT's truncate_seq_pair: while the pair is longer than seq_len - 4 tokens,
one token goes from the longer part (B on a tie), from its front or its end at random.
So the shorter part is kept whole when it fits in half the budget, and neither part is
ever emptied (each keeps at least half the budget, rounded down, or all it had).

token_type_ids: 0 for `<s> A </s>` (the first </s> included), 1 for `</s> B </s>`.
"""

from __future__ import annotations

import numpy as np
import torch

from .packed import TokenStream

PAIR_MODES = ("segment-pair", "sentence-pair")
ISNEXT, RANDOM = 0, 1  # next_sentence_label values, as BERT and Hugging Face number them
SPECIALS = 4  # <s> A </s></s> B </s>


class PairDataset(torch.utils.data.Dataset):
    """Pairs of segments or sentences from a split prepared with --sentences, with NSP labels.

    dataset[i] -> {"input_ids": (T,), "token_type_ids": (T,), "next_sentence_label": 0 or 1}
    with T <= seq_len. mean_length is the mean T (the tokens an example holds).
    """

    def __init__(self, data_dir: str, split: str, seq_len: int, mode: str, seed: int = 0):
        if mode not in PAIR_MODES:
            raise ValueError(f"pair mode must be one of {PAIR_MODES}, got {mode!r}")
        if seq_len < 8:
            raise ValueError(f"seq_len must be at least 8 for a pair (4 special tokens), got {seq_len}")
        self.stream = TokenStream(data_dir, split)
        if self.stream.sent_ends is None:
            raise ValueError(
                f"{data_dir} was prepared without sentence boundaries, which the {mode} format "
                "needs: run `roberta-scratch prepare --sentences` (prepare(..., sentences=True))"
            )
        self.bos, self.eos = self.stream.meta["bos_token_id"], self.stream.meta["eos_token_id"]
        self.seq_len, self.mode, self.seed = seq_len, mode, seed
        docs = _documents(self.stream.doc_ends, self.stream.sent_ends)
        if len(docs) < 2:
            raise ValueError(
                f"the {split} split of {data_dir} has {len(docs)} document(s) with text; the {mode} "
                "format draws its random second parts from another document, so it needs at least 2"
            )
        rng = np.random.default_rng(seed)
        draw = _segment_pairs if mode == "segment-pair" else _sentence_pairs
        rows = draw(docs, seq_len - SPECIALS, rng)
        if not rows:
            raise ValueError(
                f"the {split} split of {data_dir} has no document of two sentences or more: no {mode} "
                "example can be made from it"
            )
        spans = np.array(rows, dtype=np.int64)  # (N, 5): a_start, a_end, b_start, b_end, label
        self.spans = _truncate(spans[:, :4], seq_len - SPECIALS, rng)
        self.labels = spans[:, 4].copy()

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def mean_length(self) -> float:
        """The mean number of tokens per example, specials included (for equal tokens per step)."""
        a0, a1, b0, b1 = self.spans.T
        return float(((a1 - a0) + (b1 - b0)).mean() + SPECIALS)

    def __getitem__(self, i: int) -> dict:
        a0, a1, b0, b1 = (int(x) for x in self.spans[i])
        a = torch.from_numpy(self.stream[a0:a1].astype(np.int64))
        b = torch.from_numpy(self.stream[b0:b1].astype(np.int64))
        bos, eos = torch.tensor([self.bos]), torch.tensor([self.eos])
        input_ids = torch.cat([bos, a, eos, eos, b, eos])  # <s> A </s></s> B </s>
        token_type_ids = torch.cat(
            [
                torch.zeros(len(a) + 2, dtype=torch.long),  # <s> A </s>
                torch.ones(len(b) + 2, dtype=torch.long),
            ]
        )  # </s> B </s>
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "next_sentence_label": int(self.labels[i])}


def _documents(doc_ends: np.ndarray, sent_ends: np.ndarray) -> list[np.ndarray]:
    """Every document that has text, as its sentences' (start, end) stream offsets, (S, 2), the
    document's </s> left out."""
    docs = []
    starts = np.concatenate([[0], doc_ends[:-1]])
    for start, end in zip(starts.tolist(), doc_ends.tolist(), strict=True):
        lo, hi = np.searchsorted(sent_ends, [start, end], side="right")
        ends = sent_ends[lo:hi].copy()
        ends[-1] -= 1  # drop the document's </s>
        bounds = np.concatenate([[start], ends])
        sentences = np.stack([bounds[:-1], bounds[1:]], axis=1)
        sentences = sentences[sentences[:, 1] > sentences[:, 0]]
        if len(sentences):
            docs.append(sentences)
    return docs


def _other_document(n_docs: int, d: int, rng) -> int:
    """A document index drawn uniformly from every document but d."""
    other = int(rng.integers(n_docs - 1))
    return other + (other >= d)


def _segment_pairs(docs: list, budget: int, rng) -> list[tuple]:
    rows = []
    for d, sents in enumerate(docs):
        n, i = len(sents), 0
        lengths = (sents[:, 1] - sents[:, 0]).tolist()
        while i < n - 1:  # two sentences left at least: an A and a B
            j, tokens = i + 1, lengths[i]
            while j < n and (tokens < budget or j == i + 1):
                tokens += lengths[j]
                j += 1
            if j == n - 1:  # one sentence would be left over: it joins this chunk
                j = n
            k = int(rng.integers(i + 1, j))  # A is sentences [i, k), B [k, j)
            a = (sents[i, 0], sents[k - 1, 1])
            if rng.random() < 0.5:
                rows.append((*a, sents[k, 0], sents[j - 1, 1], ISNEXT))
                i = j
            else:
                other = docs[_other_document(len(docs), d, rng)]
                s = int(rng.integers(len(other)))
                e, want = s, max(1, budget - (a[1] - a[0]))
                while e < len(other) and (e == s or other[e - 1, 1] - other[s, 0] < want):
                    e += 1
                rows.append((*a, other[s, 0], other[e - 1, 1], RANDOM))
                i = k  # the chunk's unused sentences are put back
    return rows


def _sentence_pairs(docs: list, budget: int, rng) -> list[tuple]:
    rows = []
    for d, sents in enumerate(docs):
        for i in range(len(sents) - 1):
            if rng.random() < 0.5:
                rows.append((sents[i, 0], sents[i, 1], sents[i + 1, 0], sents[i + 1, 1], ISNEXT))
            else:
                other = docs[_other_document(len(docs), d, rng)]
                s = int(rng.integers(len(other)))
                rows.append((sents[i, 0], sents[i, 1], other[s, 0], other[s, 1], RANDOM))
    return rows


def _truncate(spans: np.ndarray, budget: int, rng) -> np.ndarray:
    """BERT's truncate_seq_pair on (a_start, a_end, b_start, b_end) rows, vectorised: the
    lengths the token-by-token loop ends with, and a fair coin per removed token for the end
    it leaves from (a binomial count from the front)."""
    spans = spans.copy()
    la, lb = spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2]
    over = la + lb > budget
    # The loop cuts the longer part (B on a tie) until the two fit. The shorter part stays
    # whole when it fits in half the budget; otherwise both end near half: A ceil, B floor.
    keep_shorter = 2 * np.minimum(la, lb) <= budget
    new_a = np.where(keep_shorter, np.where(la <= lb, la, budget - lb), (budget + 1) // 2)
    new_a = np.where(over, new_a, la)
    new_b = np.where(over, budget - new_a, lb)
    for col, old, new in ((0, la, new_a), (2, lb, new_b)):
        cut = old - new
        front = rng.binomial(cut, 0.5)
        spans[:, col] += front
        spans[:, col + 1] -= cut - front
    return spans
