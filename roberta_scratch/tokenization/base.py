"""What every tokenizer here shares: special tokens, pairs, and the Hugging Face-style batch API.

A tokenizer kind (byte-level BPE in tokenization/byte_level.py, SentencePiece in tokenization/spm.py)
subclasses `Tokenizer` and supplies the vocabulary: how plain text becomes ids, how
ids become text, which files it owns, and which tokens start a word. Everything
else lives here once:

- special tokens written in the text (`<s>`, `<mask>`, ...) keep their ids, and
  `<mask>` swallows the whitespace before it, as in the original RoBERTa tokenizer;
- `encode` with `<s> A </s>` / `<s> A </s></s> B </s>` around the text;
- `__call__` over batches: padding, truncation (longest_first / only_first /
  only_second), offsets, special-tokens mask, `word_ids()`, tensors;
- `encode_batch` over worker processes, and `encode_file` streaming a file.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import chain, islice
from pathlib import Path

import regex

from ..fileio import atomic_write, chunked, iter_lines

# RoBERTa's special tokens; roberta-base gives them ids 0, 1, 2, 3 and 50264.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# Special tokens that swallow the whitespace before them ("is <mask>." -> "is", "<mask>", ".").
LSTRIP_TOKENS = ("<mask>",)

CONFIG_FILE = "tokenizer_config.json"  # settings every kind saves beside its vocabulary

# Below this many characters in a batch, worker processes cost more than they save: starting
# them and sending the ids back takes ~0.1 s, and one process encodes ~10 MB/s once warm.
PARALLEL_MIN_CHARS = 4 << 20


def _replace_surrogates(text: str) -> str:
    # A str can hold UTF-16 surrogates, which have no UTF-8 form; like tiktoken we
    # encode them as U+FFFD. One for one, so character offsets stay valid.
    return regex.sub(r"[\ud800-\udfff]", "\ufffd", text)


class BatchEncoding(dict):
    """What `Tokenizer.__call__` returns: a dict of model inputs
    (`input_ids`, `attention_mask`, and the extras asked for), also readable as
    attributes, plus the per-token word and sequence indices.

        >>> enc = tok(["Hello world", "Hi"], padding=True)
        >>> enc["input_ids"]
        [[0, 31414, 232, 2], [0, 30086, 2, 1]]
        >>> enc.word_ids(0)          # which word each token came from; None for specials and padding
        [None, 0, 1, None]
    """

    def __init__(self, data: dict, word_ids=None, sequence_ids=None, batched: bool = True, details=None):
        super().__init__(data)
        self._word_ids, self._sequence_ids = word_ids, sequence_ids
        self._batched = batched
        self._details = details  # re-encodes with offsets when word ids are asked for later

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _row(self, rows, batch_index: int):
        return rows[batch_index] if self._batched else rows

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """The word each token of row `batch_index` came from (None for special tokens and padding).

        A word is a pre-tokenised piece of the text, or, with `is_split_into_words=True`,
        one of the words given. Counting restarts at 0 in the second text of a pair.
        """
        if self._word_ids is None:
            # Asked for without offsets: encode once more on the slower path that tracks words.
            detailed = self._details()
            self._word_ids, self._sequence_ids = detailed._word_ids, detailed._sequence_ids
        return self._row(self._word_ids, batch_index)

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 or 1 for the text of a pair each token belongs to, None for special tokens and padding."""
        self.word_ids(batch_index)
        return self._row(self._sequence_ids, batch_index)


class Tokenizer:
    """What every tokenizer here shares. A subclass provides the vocabulary:

    - `_encode_plain(text)`: ids of text that holds no special token;
    - `_encode_plain_details(text, start)`: the same ids, the (start, end)
      character span of each in the whole text (`text` begins at `start`),
      and the index of the word each came from;
    - `decode`, `id_to_token`, `token_to_id`, `vocab_size`, `save_pretrained`;
    - `files` and `model_files` (what it owns on disk), `_from_directory`,
      `word_start_mask()` and `fingerprint()`.

    `special_tokens` maps the special tokens this vocabulary has to their ids.
    """

    def __init__(self, special_tokens: dict[str, int], split_special_tokens: bool, model_max_length: int):
        self.special_tokens = dict(special_tokens)
        self.split_special_tokens = split_special_tokens
        self.model_max_length = model_max_length
        self._special_ids = frozenset(self.special_tokens.values())
        self._special_pattern = None
        # A text that holds none of these skips the search (str's own search, in C): most text,
        # including code with "<" in it, whose search costs the pattern's whitespace look-ahead.
        self._special_names = tuple(t for t in self.special_tokens if t)
        if self.special_tokens and not split_special_tokens:
            # subtle: longest first, so a token that starts another (a user's "<s>" vs "<s>x")
            # never shadows it; this is the leftmost-longest match of the reference tokenizer.
            names = sorted(self.special_tokens, key=len, reverse=True)
            pattern = "(" + "|".join(map(regex.escape, names)) + ")"
            lstrip = [t for t in LSTRIP_TOKENS if t in self.special_tokens]
            if lstrip:
                # Whitespace is consumed only when an lstrip token follows; split() drops it
                # because it sits outside the captured group.
                pattern = r"(?:\s*(?=" + "|".join(map(regex.escape, lstrip)) + "))?" + pattern
            self._special_pattern = regex.compile(pattern)

    def plain_text(self) -> Tokenizer:
        """This tokenizer reading "<s>", "<mask>", ... written in a text as plain characters, as
        split_special_tokens=True does: a corpus is plain text (fairseq reads it so). A shallow
        copy, sharing the vocabulary and the word cache (nothing reloaded).

            >>> tok.plain_text().encode("a <mask>", add_special_tokens=False) == tok.encode("a <mask>")
            False
        """
        if self.split_special_tokens:
            return self
        plain = copy.copy(self)
        plain.split_special_tokens, plain._special_pattern = True, None
        return plain

    # ---- special token ids -------------------------------------------------------------

    cls_token, sep_token, pad_token, unk_token, mask_token = "<s>", "</s>", "<pad>", "<unk>", "<mask>"

    @property
    def cls_token_id(self) -> int | None:
        return self.special_tokens.get(self.cls_token)

    bos_token_id = cls_token_id

    @property
    def sep_token_id(self) -> int | None:
        return self.special_tokens.get(self.sep_token)

    eos_token_id = sep_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.special_tokens.get(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self.special_tokens.get(self.unk_token)

    @property
    def mask_token_id(self) -> int | None:
        return self.special_tokens.get(self.mask_token)

    def __len__(self) -> int:
        return self.vocab_size

    # ---- loading ---------------------------------------------------------------------

    # What a kind of tokenizer declares about itself.
    files: tuple[str, ...] = ()  # the files it owns in a directory, `tokenizer_config.json` included
    model_files: tuple[str, ...] = ()  # the ones whose presence says a directory holds this kind

    @classmethod
    def holds(cls, directory: str | os.PathLike) -> bool:
        """Whether `directory` holds a tokenizer of this kind (any of its model files)."""
        return any((Path(directory) / name).is_file() for name in cls.model_files)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> Tokenizer:
        """Load a tokenizer of this kind from a directory; keyword arguments override the
        settings saved in its `tokenizer_config.json`. (`load_tokenizer(dir)` picks the kind.)

            >>> ByteLevelBPETokenizer.from_pretrained("roberta-base/").vocab_size
            50265
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
        return cls._from_directory(directory, read_config(directory), **kwargs)

    @classmethod
    def _from_directory(cls, directory: Path, config: dict, **kwargs) -> Tokenizer:
        """Build from the files in `directory` and its saved settings `config` (a subclass's job)."""
        raise TypeError(
            f"{cls.__name__} is not a kind of tokenizer; load_tokenizer(dir) picks the kind a directory holds"
        )

    def word_start_mask(self) -> list[bool]:
        """For each id, whether its token begins a word (whole-word masking groups the rest
        with the token before). Special tokens are never word starts."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of everything that decides how text is encoded: it changes exactly when
        some text would be encoded differently (the vocabulary, merges, settings)."""
        raise NotImplementedError

    # ---- encoding one text -------------------------------------------------------------

    def _check_text(self, text) -> None:
        if not isinstance(text, str):
            raise TypeError(f"expected a str to tokenize, got {type(text).__name__}")

    def _encode_text(self, text: str) -> list[int]:
        """Ids of one text: special tokens written in it are recognised, none are added."""
        self._check_text(text)
        try:
            return self._encode_text_unchecked(text)
        except UnicodeEncodeError:  # only raised for surrogates
            return self._encode_text_unchecked(_replace_surrogates(text))

    def _encode_text_unchecked(self, text: str) -> list[int]:
        if self._special_pattern is None or not any(t in text for t in self._special_names):
            return self._encode_plain(text) if text else []
        parts = self._special_pattern.split(text)  # [plain, special, plain, special, ..., plain]
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def _encode_text_details(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[int]]:
        """Like `_encode_text`, plus each token's character span and word index."""
        self._check_text(text)
        text = _replace_surrogates(text)
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        words: list[int] = []

        def add_plain(start: int, end: int) -> None:
            if start < end:
                first_word = words[-1] + 1 if words else 0
                p_ids, p_spans, p_words = self._encode_plain_details(text[start:end], start)
                ids.extend(p_ids)
                spans.extend(p_spans)
                words.extend(first_word + w for w in p_words)

        pos = 0
        if self._special_pattern is not None:
            for m in self._special_pattern.finditer(text):
                add_plain(pos, m.start())
                ids.append(self.special_tokens[m.group(1)])
                spans.append(m.span())  # with the whitespace an lstrip token swallowed, as the reference
                words.append(words[-1] + 1 if words else 0)
                pos = m.end()
        add_plain(pos, len(text))
        return ids, spans, words

    def _encode_sequence(self, text, is_split_into_words: bool, details: bool):
        """(ids, spans, words) of one side of an input; spans and words are None unless `details`.

        With `is_split_into_words`, `text` is a list of words, each encoded on
        its own; spans are then relative to each word and words are list indices.
        """
        if not is_split_into_words:
            if not details:
                return self._encode_text(text), None, None
            ids, spans, words = self._encode_text_details(text)
        else:
            if isinstance(text, str) or not isinstance(text, (list, tuple)):
                raise TypeError(f"with is_split_into_words=True, expected a list of words, got {type(text).__name__}")
            if not details:
                return [i for word in text for i in self._encode_text(word)], None, None
            ids, spans, words = [], [], []
            for w, word in enumerate(text):
                w_ids, w_spans, _ = self._encode_text_details(word)
                ids += w_ids
                spans += w_spans
                words += [w] * len(w_ids)
        return ids, self._postprocess_spans(ids, spans), words

    def _postprocess_spans(self, ids: list[int], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Adjust the spans of one text's tokens (the byte-level tokenizer trims spaces); here, as they are."""
        return spans

    def tokenize(self, text: str) -> list[str]:
        """The tokens of `text` as strings (no special tokens added)."""
        return [self.id_to_token(i) for i in self._encode_text(text)]

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Ids of a text, or of a pair of texts, with `<s> A </s>` / `<s> A </s></s> B </s>` around them.

        >>> tok.encode("The capital of France is <mask>.")
        [0, 133, 812, 9, 1470, 16, 50264, 4, 2]
        >>> tok.encode("Hello world!", add_special_tokens=False)
        [31414, 232, 328]
        """
        first = self._encode_text(text)
        if text_pair is None:  # the common case, without building _assemble's other columns
            return (
                [self._require(self.cls_token), *first, self._require(self.sep_token)] if add_special_tokens else first
            )
        second = (self._encode_text(text_pair), None, None)
        return self._assemble((first, None, None), second, add_special_tokens)["input_ids"]

    # ---- many texts ----------------------------------------------------------------

    def encode_batch(
        self, texts: Iterable[str], add_special_tokens: bool = True, num_workers: int | None = None
    ) -> list[list[int]]:
        """`encode` over many texts, spread over worker processes when the batch is large.

        num_workers: None picks one per available CPU once the batch holds
        `PARALLEL_MIN_CHARS` characters or more, else 1 (this process).

            >>> tok.encode_batch(["Hello world!", "Hi"])
            [[0, 31414, 232, 328, 2], [0, 30086, 2]]
        """
        texts = texts if isinstance(texts, list) else list(texts)
        if num_workers is None:
            large = sum(len(t) for t in texts if isinstance(t, str)) >= PARALLEL_MIN_CHARS
            num_workers = _available_cpus() if large else 1
        if num_workers <= 1 or len(texts) < 2:
            return _encode_all(self, texts, add_special_tokens)
        # This process encodes an equal share itself while num_workers - 1 others encode the rest:
        # one process fewer to start and one share fewer to send back (10% faster on 2 cores).
        # The others take a few chunks each, so that one long chunk does not leave the rest idle.
        share = len(texts) // num_workers
        mine, rest = texts[:share], texts[share:]
        size = -(-len(rest) // (4 * (num_workers - 1)))
        chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
        with _worker_pool(self, num_workers - 1) as pool:
            pending = pool.starmap_async(_encode_in_worker, [(chunk, add_special_tokens) for chunk in chunks])
            head = _encode_all(self, mine, add_special_tokens)
            parts = pending.get()
        return head + list(chain.from_iterable(parts))

    def encode_file(
        self,
        path: str | os.PathLike,
        add_special_tokens: bool = False,
        num_workers: int = 1,
        lines_per_batch: int = 2000,
    ) -> Iterator[list[int]]:
        """Yield the ids of each line of a text file, reading it a batch of lines at a time.

        Memory stays flat whatever the size of the file: at most
        `2 * num_workers` batches are in flight, and the word cache is bounded.
        Each line keeps its newline, so decoding all the ids gives the file
        back; bytes that are not UTF-8 become U+FFFD and are reported.

            >>> for ids in tok.encode_file("corpus.txt"):
            ...     shard.write(ids)
        """
        for rows in self.encode_batches(chunked(iter_lines([path]), lines_per_batch), add_special_tokens, num_workers):
            yield from (r if isinstance(r, list) else r.tolist() for r in rows)

    def encode_batches(
        self, batches: Iterable[list[str]], add_special_tokens: bool = False, num_workers: int = 1
    ) -> Iterator[list[list[int]]]:
        """The ids of each batch of texts, in order, encoded over `num_workers` processes.

        A stream of any length: at most `2 * num_workers` batches are in flight,
        so memory stays bounded, and the output is the same whatever the
        number of workers (`prepare --workers` relies on both). Rows come back
        as lists in this process, as int32 arrays from workers.
        """
        if num_workers <= 1:
            for batch in batches:
                yield _encode_all(self, batch, add_special_tokens)
            return
        batches = iter(batches)
        # The first batch is encoded here, before the workers fork: they start with its words
        # (a corpus's most frequent) in their caches rather than each finding them again.
        for batch in islice(batches, 1):
            yield _encode_all(self, batch, add_special_tokens)
        # subtle: this process only reads, hands out and writes. Measured on 2 cores (25 MB,
        # roberta-base), making it encode a share beside one worker was slower: the pool's
        # threads here wait up to the interpreter's 5 ms switch interval for the lock while
        # this process encodes, and the worker, its results unread, stalls.
        with _worker_pool(self, num_workers) as pool:
            pending: deque = deque()
            for batch in batches:
                pending.append(pool.apply_async(_encode_packed, (batch, add_special_tokens)))
                if len(pending) >= 2 * num_workers:
                    yield _unpack(*pending.popleft().get())
            while pending:
                yield _unpack(*pending.popleft().get())

    # ---- the batch API ---------------------------------------------------------------

    def __call__(
        self,
        text,
        text_pair=None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        is_split_into_words: bool = False,
        num_workers: int | None = None,
    ) -> BatchEncoding:
        """Encode texts (or pairs) into model inputs, as Hugging Face tokenizers do.

        text / text_pair: a str (or a list of words with `is_split_into_words`)
            gives flat lists; a list of them gives one list per text. Pairs may
            also come as a list of (a, b) tuples in `text`.
        padding: True / "longest" pads to the longest row, "max_length" to `max_length`.
        truncation: True / "longest_first" cuts the longer text of a pair first;
            "only_first" / "only_second" cut just that one. `max_length`
            defaults to `model_max_length` and counts the special tokens.
        return_tensors: "pt" for torch tensors of shape (B, T) (a single text gives B = 1).
        return_offsets_mapping: the (start, end) characters of each token,
            (0, 0) for special tokens.
        return_special_tokens_mask: 1 where `<s>`, `</s>` or padding was added.

            >>> enc = tok(["Hello world", "Hi"], padding=True, return_tensors="pt")
            >>> enc["input_ids"]
            tensor([[    0, 31414,   232,     2],
                    [    0, 30086,     2,     1]])
            >>> tok("héllo", return_offsets_mapping=True)["offset_mapping"]
            [(0, 0), (0, 1), (1, 2), (2, 5), (0, 0)]
        """
        batched, firsts, seconds = _as_batch(text, text_pair, is_split_into_words)
        details = return_offsets_mapping

        def encode_all(texts):
            if details or is_split_into_words:
                return [self._encode_sequence(t, is_split_into_words, details) for t in texts]
            return [(ids, None, None) for ids in self.encode_batch(texts, False, num_workers)]

        firsts = encode_all(firsts)
        seconds = encode_all(seconds) if seconds is not None else [None] * len(firsts)

        strategy = {True: "longest_first", False: None, "do_not_truncate": None}.get(truncation, truncation)
        if strategy not in (None, "longest_first", "only_first", "only_second"):
            raise ValueError(f"truncation={truncation!r}: use True, 'longest_first', 'only_first' or 'only_second'")
        if strategy and max_length is None:
            max_length = self.model_max_length
        rows = [
            self._assemble(a, b, add_special_tokens, strategy, max_length) for a, b in zip(firsts, seconds, strict=True)
        ]
        _pad(rows, padding, max_length or self.model_max_length, self.pad_token_id)

        keys = ["input_ids"]
        if return_attention_mask:
            keys.append("attention_mask")
        if return_offsets_mapping:
            keys.append("offset_mapping")
        if return_special_tokens_mask:
            keys.append("special_tokens_mask")
        data = {k: [row[k] for row in rows] for k in keys}
        if return_tensors is not None:
            data = _to_tensors(data, return_tensors)
        elif not batched:
            data = {k: v[0] for k, v in data.items()}
        word_ids = sequence_ids = None
        if details:
            word_ids = [row["word_ids"] for row in rows]
            sequence_ids = [row["sequence_ids"] for row in rows]
        batched_out = batched or return_tensors is not None
        if not batched_out and details:
            word_ids, sequence_ids = word_ids[0], sequence_ids[0]
        redo = partial(
            self,
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_offsets_mapping=True,
            is_split_into_words=is_split_into_words,
            return_tensors=return_tensors,
        )
        return BatchEncoding(data, word_ids, sequence_ids, batched=batched_out, details=None if details else redo)

    def _assemble(
        self, first, second, add_special_tokens: bool, truncation: str | None = None, max_length: int | None = None
    ) -> dict:
        """One row: truncate, then wrap in special tokens. `first`/`second` are (ids, spans, words)."""
        a_ids, a_spans, a_words = first
        b_ids, b_spans, b_words = second if second is not None else ([], None, None)
        n_special = (2 if second is None else 4) if add_special_tokens else 0
        if truncation:
            budget = max_length - n_special
            if budget < 0:
                raise ValueError(
                    f"max_length={max_length} is smaller than the {n_special} special tokens "
                    f"a {'pair' if second is not None else 'single text'} needs"
                )
            n_a, n_b = _truncated_lengths(len(a_ids), len(b_ids), budget, truncation, second is not None)
            a_ids, b_ids = a_ids[:n_a], b_ids[:n_b]
            a_spans, b_spans = a_spans and a_spans[:n_a], b_spans and b_spans[:n_b]
            a_words, b_words = a_words and a_words[:n_a], b_words and b_words[:n_b]

        # Each piece: (ids, is special, sequence index, spans, words).
        a, b = (a_ids, 0, 0, a_spans, a_words), (b_ids, 0, 1, b_spans, b_words)
        if add_special_tokens:
            cls = ([self._require(self.cls_token)], 1, None, None, None)
            sep = ([self._require(self.sep_token)], 1, None, None, None)
            pieces = [cls, a, sep] if second is None else [cls, a, sep, sep, b, sep]  # <s> A </s></s> B </s>
        else:
            pieces = [a] if second is None else [a, b]
        row = {
            "input_ids": [i for ids, *_ in pieces for i in ids],
            "special_tokens_mask": [special for ids, special, *_ in pieces for _ in ids],
        }
        row["attention_mask"] = [1] * len(row["input_ids"])
        if a_spans is not None:  # details were asked for
            row["offset_mapping"] = [s for ids, _, _, spans, _ in pieces for s in (spans or [(0, 0)] * len(ids))]
            row["word_ids"] = [w for ids, _, _, _, words in pieces for w in (words or [None] * len(ids))]
            row["sequence_ids"] = [seq for ids, _, seq, _, _ in pieces for _ in ids]
        return row

    def _require(self, token: str) -> int:
        if token not in self.special_tokens:
            raise ValueError(f"this vocabulary has no {token!r} token; use add_special_tokens=False")
        return self.special_tokens[token]

    # ---- decoding helpers shared by subclasses -------------------------------------------

    def _as_id_list(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):  # a tensor or an array
            ids = ids.tolist()
        if ids is None or isinstance(ids, (str, bytes)):
            raise TypeError(f"expected a list of ids to decode, got {type(ids).__name__}")
        return list(ids)


# ---- helpers for batches --------------------------------------------------------------


def _as_batch(text, text_pair, is_split_into_words: bool):
    """(batched, firsts, seconds or None): normalise every accepted input shape to lists."""
    if text is None:
        raise TypeError("text must be a str or a list of str, got None")

    def is_single(x) -> bool:
        if is_split_into_words:
            return isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x)
        return isinstance(x, str)

    if is_single(text) and (text_pair is None or is_single(text_pair)):
        return False, [text], None if text_pair is None else [text_pair]
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    texts = list(text)
    pairs_in_text = texts and all(isinstance(t, tuple) and len(t) == 2 for t in texts)
    if text_pair is None and not is_split_into_words and pairs_in_text:
        return True, [a for a, _ in texts], [b for _, b in texts]
    if text_pair is not None:
        if isinstance(text_pair, str) or len(text_pair) != len(texts):
            raise ValueError("text_pair must be a list with one entry per text")
        return True, texts, list(text_pair)
    return True, texts, None


def _truncated_lengths(n_a: int, n_b: int, budget: int, strategy: str, is_pair: bool) -> tuple[int, int]:
    """Lengths of the two texts after truncation to `budget` tokens (special tokens excluded).

    longest_first, as in the reference: cut the longer text down to the
    shorter one's length first; if both are still too long, give each half the
    budget, the odd token going to the longer text (to the second on a tie).
    """
    if n_a + n_b <= budget:
        return n_a, n_b
    if not is_pair:
        if strategy == "only_second":
            raise ValueError("truncation='only_second' needs a text pair")
        return budget, 0
    # As in the reference, the text that is cut keeps at least one token.
    if strategy == "only_first":
        if n_b >= budget:
            raise ValueError(
                f"cannot truncate only the first text: the second alone has {n_b} of the {budget} tokens allowed"
            )
        return budget - n_b, n_b
    if strategy == "only_second":
        if n_a >= budget:
            raise ValueError(
                f"cannot truncate only the second text: the first alone has {n_a} of the {budget} tokens allowed"
            )
        return n_a, budget - n_a
    shorter, longer = sorted((n_a, n_b))
    longer = max(shorter, budget - shorter)
    if shorter + longer > budget:
        shorter, longer = budget // 2, budget - budget // 2
    return (longer, shorter) if n_a > n_b else (shorter, longer)


def _pad(rows: list[dict], padding, max_length: int, pad_id: int | None) -> None:
    if padding in (False, None, "do_not_pad") or not rows:
        return
    if padding in (True, "longest"):
        target = max(len(row["input_ids"]) for row in rows)
    elif padding == "max_length":
        target = max_length
    else:
        raise ValueError(f"padding={padding!r}: use True, 'longest', 'max_length' or False")
    if pad_id is None:
        raise ValueError("this vocabulary has no '<pad>' token to pad with")
    for row in rows:
        n = target - len(row["input_ids"])
        if n <= 0:
            continue
        row["input_ids"] += [pad_id] * n
        row["attention_mask"] += [0] * n
        row["special_tokens_mask"] += [1] * n
        if "offset_mapping" in row:
            row["offset_mapping"] += [(0, 0)] * n
            row["word_ids"] += [None] * n
            row["sequence_ids"] += [None] * n


def _to_tensors(data: dict, return_tensors: str) -> dict:
    if return_tensors != "pt":
        raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' (torch) is supported")
    import torch

    lengths = {len(row) for row in data["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(f"rows have different lengths {sorted(lengths)}; pass padding=True to make tensors")
    return {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}


def read_config(directory: Path) -> dict:
    """The settings in a tokenizer directory's tokenizer_config.json ({} when there is none)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def write_config(directory: Path, tok: Tokenizer, tokenizer_class: str, **extra) -> None:
    """tokenizer_config.json, in the format `transformers` reads (so `<mask>` keeps its lstrip there too)."""
    mask = {
        "__type": "AddedToken",
        "content": tok.mask_token,
        "lstrip": True,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
        "special": True,
    }
    config = {"tokenizer_class": tokenizer_class, "model_max_length": tok.model_max_length, **extra}
    if tok.mask_token in tok.special_tokens:
        config["mask_token"] = mask
    additional = [t for t in tok.special_tokens if t not in SPECIAL_TOKENS]
    if additional:
        config["additional_special_tokens"] = additional
    with atomic_write(Path(directory) / CONFIG_FILE, "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")


# ---- worker processes -------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _set_worker_tokenizer(tok: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok


def _encode_all(tok: Tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if add_special_tokens:
        return [tok.encode(t) for t in texts]
    return [tok._encode_text(t) for t in texts]


def _encode_in_worker(texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return _encode_all(_worker_tokenizer, texts, add_special_tokens)


def _encode_packed(texts: list[str], add_special_tokens: bool):
    """In a worker: the ids of `texts` as one flat int32 array and the lengths (cheap to send back)."""
    import numpy as np

    rows = _encode_all(_worker_tokenizer, texts, add_special_tokens)
    return np.fromiter(chain.from_iterable(rows), dtype=np.int32), np.array([len(r) for r in rows], dtype=np.int64)


def _unpack(flat, lengths) -> list:
    """The rows _encode_packed flattened, as int32 arrays (views, no copy)."""
    import numpy as np

    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _worker_pool(tok: Tokenizer, num_workers: int):
    # fork (Linux) hands each worker the tokenizer, warm cache included, without pickling it.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ctx.Pool(num_workers, initializer=_set_worker_tokenizer, initargs=(tok,))


def _available_cpus() -> int:
    if multiprocessing.current_process().daemon:  # a pool's worker may not start processes of its own
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
