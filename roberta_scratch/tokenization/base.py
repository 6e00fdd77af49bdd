"""What every tokenizer here shares: special tokens, pairs, encoding one text or many, saving.

A tokenizer kind (byte-level BPE in tokenization/byte_level.py, SentencePiece in tokenization/spm.py)
subclasses `Tokenizer` and supplies the vocabulary: how plain text becomes ids, how
ids become text, which files it owns, and which tokens start a word. Everything
else lives here once:

- special tokens written in the text (`<s>`, `<mask>`, ...) keep their ids, and
  `<mask>` swallows the whitespace before it, as in the original RoBERTa tokenizer;
- `encode` with `<s> A </s>` / `<s> A </s></s> B </s>` around the text;
- `__call__` over batches (the mixin in tokenization/batch.py): padding, truncation,
  offsets, special-tokens mask, `word_ids()`, tensors;
- `encode_batch` and `encode_batches` over worker processes (tokenization/pool.py, where the
  one parallel strategy is described), and `encode_file` streaming a file.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import regex

from ..fileio import atomic_write, chunked, iter_lines
from .batch import BatchAPI
from .pool import encode_list, encode_stream

# RoBERTa's special tokens; roberta-base gives them ids 0, 1, 2, 3 and 50264.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# Special tokens that swallow the whitespace before them ("is <mask>." -> "is", "<mask>", ".").
LSTRIP_TOKENS = ("<mask>",)

CONFIG_FILE = "tokenizer_config.json"  # settings every kind saves beside its vocabulary


def _replace_surrogates(text: str) -> str:
    # A str can hold UTF-16 surrogates, which have no UTF-8 form; like tiktoken we
    # encode them as U+FFFD. One for one, so character offsets stay valid.
    return regex.sub(r"[\ud800-\udfff]", "\ufffd", text)


class Tokenizer(BatchAPI):
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

    def _has_special(self, text: str) -> bool:
        """Whether special tokens written in `text` must be cut out before it is encoded."""
        # subtle: map over str.__contains__, not a generator: the search is the same, but a
        # generator's frames cost 1.3 us a call, a tenth of a warm encode of a 200-byte text.
        return self._special_pattern is not None and any(map(text.__contains__, self._special_names))

    def _encode_texts(self, texts: list, processes: int, around: tuple = ()) -> list[list[int]]:
        """[[*head, *self._encode_text(t), *tail] for t in texts], where around is () or the
        (head, tail) tuples of ids that wrap every row; a subclass may share part of the work among
        `processes` processes (byte-level BPE shares the BPE of the batch's new words)."""
        head, tail = around or ((), ())
        return [[*head, *self._encode_text(t), *tail] for t in texts]

    def _encode_text_unchecked(self, text: str) -> list[int]:
        if not self._has_special(text):
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

        num_workers: None picks a worker per available CPU once the batch holds
        `pool.PARALLEL_MIN_CHARS` characters or more; below, this process encodes and
        forked children share only the BPE of the words new to its cache, once there
        are enough (tokenization/pool.py). An explicit number is obeyed.

            >>> tok.encode_batch(["Hello world!", "Hi"])
            [[0, 31414, 232, 328, 2], [0, 30086, 2]]
        """
        texts = texts if isinstance(texts, list) else list(texts)
        return encode_list(self, texts, add_special_tokens, num_workers)

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
        self,
        batches: Iterable[list[str]],
        add_special_tokens: bool = False,
        num_workers: int = 1,
        meanwhile: Callable[[], None] | None = None,
    ) -> Iterator[list[list[int]]]:
        """The ids of each batch of texts, in order, encoded over `num_workers` processes.

        A stream of any length: at most `2 * num_workers` batches are in flight,
        so memory stays bounded, and the output is the same whatever the
        number of workers (`prepare --workers` relies on both). Rows come back
        as lists in this process, as int32 arrays from workers. `meanwhile()`, when
        given, runs once while the workers encode (tokenization/pool.py): `prepare`
        saves the tokenizer then, instead of before or after the encoding.
        """
        return encode_stream(self, batches, add_special_tokens, num_workers, meanwhile)

    # ---- decoding helpers shared by subclasses -------------------------------------------

    def _as_id_list(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):  # a tensor or an array
            ids = ids.tolist()
        if ids is None or isinstance(ids, (str, bytes)):
            raise TypeError(f"expected a list of ids to decode, got {type(ids).__name__}")
        return list(ids)


# ---- the settings file every kind writes ------------------------------------------------


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
