"""Dynamic masking: a fresh MLM mask for every batch, as RoBERTa does.

BERT masked its data once, during preprocessing ("static"); RoBERTa draws a new
mask each time a sequence is fed to the model. Of the tokens selected for
prediction (15%), 80% become <mask>, 10% a random token and 10% stay as they are.

Example:

    >>> collate = DynamicMaskingCollator(vocab_size=50265, mask_token_id=50264, pad_token_id=1,
    ...                                  special_token_ids=[0, 1, 2, 3, 50264])
    >>> batch = collate([torch.tensor([0, 713, 16, 10, 1296, 2]), torch.tensor([0, 31414, 2])])
    >>> batch["input_ids"].shape     # padded to the longest; attention_mask is 0 on the padding
    torch.Size([2, 6])

batch["labels"] holds the original id where a token was selected and -100 elsewhere.

Examples may also be dicts, as the pair formats (pairs.PairDataset) and BERT's static
copies (StaticCopies) give them: {"input_ids": 1-D, "token_type_ids": 1-D (optional),
"next_sentence_label": int (optional), "mask_copy": int (optional)}. token_type_ids are
padded with 0 and next_sentence_label stacked into the batch; mask_copy picks which of an
example's static masks it gets (see DynamicMaskingCollator).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ..config import IGNORE_INDEX


class DynamicMaskingCollator:
    """Pads a batch and draws its MLM mask. Vectorised: no Python loop over tokens.

    special_token_ids are never selected nor drawn as random replacements; neither is padding.
    static=True gives every distinct example the same mask on every call (BERT's
    preprocessing-time masking, for the static-vs-dynamic ablation): its mask is drawn from a
    generator seeded by the example's ids and `static_seed`. An example given as a dict with
    "mask_copy": c gets its c-th static mask instead (c = 0 is the one above): BERT's
    dupe_factor, where each sequence was written out K times with K different masks (see
    StaticCopies).
    word_start: a bool tensor over the vocabulary, True for tokens that begin a word (what the
    tokenizer's word_start_mask() says); when given, whole words are selected together.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        pad_token_id: int,
        special_token_ids: Sequence[int],
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
        generator: torch.Generator | None = None,
        static: bool = False,
        static_seed: int = 0,
        word_start: torch.Tensor | None = None,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1.0:
            raise ValueError(
                f"mask_replace_prob ({mask_replace_prob}) + random_replace_prob "
                f"({random_replace_prob}) must be probabilities summing to at most 1"
            )
        if word_start is not None and word_start.shape != (vocab_size,):
            raise ValueError(
                f"word_start must be a bool tensor of shape ({vocab_size},), got {tuple(word_start.shape)}"
            )
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.pad_to_multiple_of = pad_to_multiple_of
        self.generator = generator
        self.static = static
        self.static_seed = static_seed
        self.special = torch.zeros(vocab_size, dtype=torch.bool)
        self.special[torch.tensor(sorted(set(special_token_ids) | {pad_token_id, mask_token_id}))] = True
        self.replacements = (~self.special).nonzero().squeeze(1)  # ids a random replacement may take
        self.word_start = None if word_start is None else word_start.to(torch.bool)

    @classmethod
    def from_tokenizer(cls, tokenizer, whole_word: bool = False, **kwargs) -> DynamicMaskingCollator:
        """Read the ids from a tokenizer; whole_word groups tokens by its word_start_mask()."""
        word_start = torch.tensor(tokenizer.word_start_mask(), dtype=torch.bool) if whole_word else None
        return cls(
            tokenizer.vocab_size,
            tokenizer.mask_token_id,
            tokenizer.pad_token_id,
            sorted(tokenizer.special_tokens.values()),
            word_start=word_start,
            **kwargs,
        )

    # ------------------------------------------------------------------ batching
    def pad(self, examples: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """A (B, T) LongTensor from a list of 1-D sequences (right-padded) or a padded batch."""
        if isinstance(examples, torch.Tensor):
            if examples.dim() != 2:
                raise ValueError(f"expected a (batch, seq_len) tensor, got shape {tuple(examples.shape)}")
            ids = examples.long()
        else:
            if len(examples) == 0:
                raise ValueError("cannot collate an empty batch")
            lengths = [len(e) for e in examples]
            T = max(lengths)
            if self.pad_to_multiple_of:
                T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
            ids = torch.full((len(examples), T), self.pad_token_id, dtype=torch.long)
            for row, (e, n) in enumerate(zip(examples, lengths, strict=True)):  # one copy per example, not per token
                ids[row, :n] = torch.as_tensor(e, dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}); got {ids.min().item()}..{ids.max().item()}")
        return ids

    def __call__(self, examples) -> dict:
        """A list of 1-D sequences, a padded (B, T) batch, or a list of dicts (see the module
        docstring) -> {"input_ids", "attention_mask", "labels"}, plus "token_type_ids" and
        "next_sentence_label" when the dicts have them."""
        extra, copies = {}, None
        if not isinstance(examples, torch.Tensor) and len(examples) and isinstance(examples[0], dict):
            examples, extra, copies = self._unpack(examples)
        ids = self.pad(examples)
        if self.static:
            input_ids, labels = ids.clone(), torch.full_like(ids, IGNORE_INDEX)
            for row, n in enumerate(ids.ne(self.pad_token_id).sum(dim=1).tolist()):
                # subtle: draw over the unpadded tokens only, so the mask does not depend on
                # how much padding this batch happened to need
                real = ids[row, :n]
                g = _static_generator(real, self.static_seed, 0 if copies is None else copies[row])
                input_ids[row, :n], labels[row, :n] = self._draw(real[None], g)
        else:
            if copies is not None and any(copies):
                raise ValueError(
                    "examples carry mask_copy (BERT's static copies) but the collator draws dynamic "
                    "masks: pass static=True"
                )
            input_ids, labels = self._draw(ids, self.generator)
        batch = {"input_ids": input_ids, "attention_mask": ids.ne(self.pad_token_id).long(), "labels": labels}
        if "token_type_ids" in extra:
            types = torch.zeros_like(ids)  # padding gets type 0, like HF's
            for row, t in enumerate(extra["token_type_ids"]):
                types[row, : len(t)] = torch.as_tensor(t, dtype=torch.long)
            batch["token_type_ids"] = types
        if "next_sentence_label" in extra:
            batch["next_sentence_label"] = torch.as_tensor(
                [int(x) for x in extra["next_sentence_label"]], dtype=torch.long
            )
        return batch

    KEYS = ("input_ids", "token_type_ids", "next_sentence_label", "mask_copy")

    def _unpack(self, examples: Sequence[dict]):
        """(the input_ids of each, {extra key: one value per example}, mask copies or None)."""
        keys = set(examples[0])
        unknown = keys - set(self.KEYS)
        if "input_ids" not in keys or unknown:
            raise ValueError(f"example dicts need 'input_ids' and may have {list(self.KEYS[1:])}; got {sorted(keys)}")
        if any(set(e) != keys for e in examples):
            raise ValueError("every example of a batch must have the same keys")
        for e in examples:
            if "token_type_ids" in e and len(e["token_type_ids"]) != len(e["input_ids"]):
                raise ValueError(
                    f"token_type_ids has {len(e['token_type_ids'])} entries for {len(e['input_ids'])} input_ids"
                )
        extra = {k: [e[k] for e in examples] for k in ("token_type_ids", "next_sentence_label") if k in keys}
        copies = [int(e["mask_copy"]) for e in examples] if "mask_copy" in keys else None
        return [e["input_ids"] for e in examples], extra, copies

    # ------------------------------------------------------------------ masking
    def _draw(self, ids: torch.Tensor, g: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = ~self.special[ids]  # (B, T): never specials, never pads
        u = torch.rand(ids.shape, generator=g)
        if self.word_start is not None:
            u = self._per_word(ids, u)
        selected = candidates & (u < self.mlm_probability)
        labels = torch.where(selected, ids, IGNORE_INDEX)

        # 80% <mask>, 10% random, 10% unchanged: one uniform draw splits the selected tokens
        v = torch.rand(ids.shape, generator=g)
        to_mask = selected & (v < self.mask_replace_prob)
        to_random = selected & ~to_mask & (v < self.mask_replace_prob + self.random_replace_prob)
        random_ids = self.replacements[torch.randint(len(self.replacements), ids.shape, generator=g)]
        input_ids = torch.where(to_mask, self.mask_token_id, ids)
        input_ids = torch.where(to_random, random_ids, input_ids)
        return input_ids, labels

    def _per_word(self, ids: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Give every token of a word the draw of its first token, so words are selected whole.

        A word starts at a word-start token, at the start of the row, or right after a special token.
        """
        T = ids.shape[1]
        prev_special = torch.ones_like(ids, dtype=torch.bool)
        prev_special[:, 1:] = self.special[ids[:, :-1]]
        starts = self.word_start[ids] | prev_special | self.special[ids]
        positions = torch.arange(T).expand_as(ids)
        first = torch.where(starts, positions, 0).cummax(dim=1).values  # (B, T): index of the word's first token
        return u.gather(1, first)


class StaticCopies(torch.utils.data.Dataset):
    """BERT's static masking with dupe_factor K: the data seen as K copies, each with its own mask.

    Item c * N + i is example i of `dataset` as copy c: {"input_ids": ..., "mask_copy": c}
    (a dict example keeps its other keys), which a static collator masks with mask c of that
    example. An epoch over this dataset is K epochs of the data, with each (example, copy)
    pair once in the trainer's shuffled order; so 4K epochs of the data show every sequence
    with each of its K masks 4 times, as BERT's 10 copies over 40 epochs did. K = 1 is the
    one fixed mask of static=True.
    """

    def __init__(self, dataset, copies: int):
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.dataset, self.copies = dataset, copies

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, j: int) -> dict:
        copy, i = divmod(int(j), len(self.dataset))
        if not 0 <= copy < self.copies:
            raise IndexError(f"index {j} is out of range for {len(self)} (example, copy) pairs")
        example = self.dataset[i]
        example = dict(example) if isinstance(example, dict) else {"input_ids": example}
        return {**example, "mask_copy": copy}


def _static_generator(row: torch.Tensor, seed: int, copy: int = 0) -> torch.Generator:
    # copy 0 keeps the key of the single static mask; others add the copy (seed 1 copy 0 and
    # seed 0 copy 1 must not share a mask, so never seed + copy)
    key = str(seed) if copy == 0 else f"{seed}/copy{copy}"
    digest = hashlib.blake2b(row.numpy().tobytes(), digest_size=8, key=key.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
