"""Byte-level BPE, the tokenizer of GPT-2 and RoBERTa, in pure Python on `regex`.

How text becomes ids (`encode`):

1. Special tokens written in the text (`<s>`, `</s>`, `<mask>`, ...) are cut out
   first and keep their own ids. `<mask>` also takes the whitespace before it,
   as in the original RoBERTa tokenizer.
2. Each stretch of ordinary text is split into words by GPT-2's regex: letters,
   digits or punctuation with at most one leading space, English contractions,
   and runs of whitespace.
3. Each word's UTF-8 bytes are written as printable characters
   (`bytes_to_unicode`: a space is "Ġ", a newline "Ċ") and adjacent pairs are
   merged, the earliest-learned merge first, until no merge applies. The
   resulting symbols are looked up in the vocabulary.

With the roberta-base files (vocab.json + merges.txt):

    >>> tok = ByteLevelBPETokenizer.from_pretrained("roberta-base/")
    >>> tok.tokenize("Hello world!")
    ['Hello', 'Ġworld', '!']
    >>> tok.encode("Hello world!")
    [0, 31414, 232, 328, 2]
    >>> tok.encode("Hello", "world")            # a pair: <s> A </s></s> B </s>
    [0, 31414, 2, 2, 8331, 2]
    >>> tok.decode([0, 31414, 232, 328, 2])
    '<s>Hello world!</s>'

Because every byte has a symbol, nothing is ever unknown and
`decode(encode(s, add_special_tokens=False)) == s` for every valid string
(except for the whitespace a `<mask>` swallows; `split_special_tokens=True`
reads special tokens as plain text).

`Tokenizer` (tokenization/base.py) holds everything that does not depend on BPE
(special tokens, pairs, batches with padding and truncation, offsets,
multi-process and streaming encoding), so that `SentencePieceTokenizer`
(tokenization/spm.py) shares it. `load_tokenizer(dir)` picks the kind a
directory holds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import regex

from ..fileio import atomic_write, iter_lines, quote_line
from .base import (
    CONFIG_FILE,
    LSTRIP_TOKENS,
    SPECIAL_TOKENS,
    Tokenizer,
    write_config,
)
from .batch import BatchEncoding
from .bpe import GPT2_SPLIT_PATTERN, GPT2_SPLIT_PATTERN_FAST, MergeTable, apply_merges, bytes_to_unicode, split_words
from .bpe_train import count_words, learn_merges
from .pool import ForkedMap, can_fork, collector_paused
from .spm import SentencePieceTokenizer

VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"


# tok(texts) below pool.PARALLEL_MIN_CHARS: the texts are split this many characters at a time, and
# children are forked to share the BPE of the batch's new words once the batch looks likely to
# have this many (see _encode_texts).
SHARED_BPE_ROUND_CHARS = 16_000
SHARED_BPE_MIN_WORDS = 3500


def _rounds(texts: list, chars: int) -> Iterator[tuple[range, int]]:
    """The indices of `texts` in runs of about `chars` characters (at least one text each), with
    the characters of the texts up to the end of each run."""
    start, size, total = 0, 0, 0
    for i, text in enumerate(texts):
        size += len(text) if isinstance(text, str) else 0
        if size >= chars or i == len(texts) - 1:
            total += size
            yield range(start, i + 1), total
            start, size = i + 1, 0


class ByteLevelBPETokenizer(Tokenizer):
    """GPT-2 / RoBERTa byte-level BPE. See the module docstring for a worked example.

    vocab: token string -> id, as in vocab.json (tokens written with `bytes_to_unicode`).
    merges: (left, right) token pairs, in the order they were learned (merges.txt).
    add_prefix_space: put a space before text that does not start with one, so
        that the first word is encoded like any other ("Hello" -> "ĠHello").
    split_special_tokens: treat "<s>", "<mask>", ... written in the text as plain text.
    cache_size: how many distinct words keep their ids in memory; when full the
        cache starts over, so memory stays bounded on any corpus.
    """

    files = (VOCAB_FILE, MERGES_FILE, CONFIG_FILE)
    model_files = (VOCAB_FILE, MERGES_FILE)

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        *,
        add_prefix_space: bool = False,
        split_special_tokens: bool = False,
        special_tokens: Iterable[str] = SPECIAL_TOKENS,
        model_max_length: int = 512,
        cache_size: int = 100_000,
    ):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.add_prefix_space = add_prefix_space
        self.cache_size = cache_size
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        missing = [c for c in self.byte_encoder.values() if c not in self.vocab]
        if missing:
            raise ValueError(
                f"vocab lacks {len(missing)} of the 256 byte tokens (first: {missing[0]!r}); "
                "a byte-level BPE vocabulary needs all of them"
            )
        # Merges as ids, for apply_merges; a pair listed twice keeps its last rank, as a dict would.
        vocab = self.vocab
        try:
            triples = [(vocab[a], vocab[b], vocab[a + b]) for a, b in self.merges]
        except KeyError:  # say which merge, and which of its tokens
            rank, token = next((r, t) for r, (a, b) in enumerate(self.merges) for t in (a, b, a + b) if t not in vocab)
            raise ValueError(f"merge #{rank} {self.merges[rank]!r} uses {token!r}, which is not in the vocab") from None
        self._merge_table = MergeTable(triples, len(vocab) and max(vocab.values()) + 1)
        self._byte_ids = [self.vocab[self.byte_encoder[b]] for b in range(256)]
        self.pattern = regex.compile(GPT2_SPLIT_PATTERN_FAST)
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        self._cache: dict[str, tuple[int, ...]] = {}
        super().__init__(
            {t: self.vocab[t] for t in special_tokens if t in self.vocab}, split_special_tokens, model_max_length
        )

    @functools.cached_property
    def _id_to_bytes(self) -> dict[int, bytes]:
        """Each id's bytes, for decoding and offsets: built on first use, so that loading a
        tokenizer only to encode (prepare's workers, the benchmarks' cold case) does not pay for it."""
        return {i: self._token_bytes(t) for t, i in self.vocab.items()}

    def _token_bytes(self, token: str) -> bytes:
        try:
            return bytes(self.byte_decoder[c] for c in token)
        except KeyError:  # not written in byte symbols (a special token such as "<s>" is): its UTF-8
            return token.encode("utf-8")

    # ---- files ------------------------------------------------------------------------

    @classmethod
    def _from_directory(cls, directory: Path, config: dict, **kwargs) -> ByteLevelBPETokenizer:
        if not cls.holds(directory):
            raise FileNotFoundError(
                f"{str(directory)!r} holds no {VOCAB_FILE} + {MERGES_FILE}: not a byte-level "
                "BPE tokenizer (load_tokenizer(dir) picks the kind a directory holds)"
            )
        settings = {
            "model_max_length": config.get("model_max_length", 512),
            "add_prefix_space": config.get("add_prefix_space", False),
            "special_tokens": SPECIAL_TOKENS + tuple(config.get("additional_special_tokens", ())),
        }
        return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE, **{**settings, **kwargs})

    @classmethod
    def from_files(
        cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, **kwargs
    ) -> ByteLevelBPETokenizer:
        """Load vocab.json and merges.txt in the format of Hugging Face's roberta checkpoints."""
        for path in (vocab_file, merges_file):
            if not Path(path).is_file():
                raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        with collector_paused():  # 300k small objects, none in a cycle (pool.py)
            return cls._from_files(vocab_file, merges_file, **kwargs)

    @classmethod
    def _from_files(cls, vocab_file, merges_file, **kwargs) -> ByteLevelBPETokenizer:
        try:
            vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{vocab_file}: not a JSON file ({e})") from None
        if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()
        ):
            raise ValueError(f"{vocab_file}: expected a JSON object from token strings to integer ids")
        lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
        merges = [line.split(" ") for line in lines if line and not line.startswith("#version") and not line.isspace()]
        if any(len(pair) != 2 for pair in merges):  # one C-speed pass; the slow one only to name the line
            n, line = next(
                (n, line)
                for n, line in enumerate(lines, start=1)
                if len(line.split(" ")) != 2 and line and not line.startswith("#version") and not line.isspace()
            )
            raise ValueError(
                f"{merges_file}:{n}: expected two tokens separated by a space, got {quote_line(merges_file, line)}"
            )
        return cls(vocab, merges, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write vocab.json, merges.txt and tokenizer_config.json (readable by `transformers` too)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # The bytes of json.dumps(indent=2, sort_keys=True), from the C encoder: indent makes
        # json fall back to pure Python, and 50k entries then cost prepare a quarter of a second.
        # (A JSON string never holds a raw newline, so the separator cannot occur inside a key.)
        flat = json.dumps(self.vocab, sort_keys=True, ensure_ascii=False, separators=(",\n  ", ": "))
        with atomic_write(directory / VOCAB_FILE, "w") as f:
            f.write("{\n  " + flat[1:-1] + "\n}\n")
        with atomic_write(directory / MERGES_FILE, "w") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        write_config(directory, self, "RobertaTokenizer", add_prefix_space=self.add_prefix_space)

    def fingerprint(self) -> str:
        """sha256 of the vocabulary, the merges and every setting that changes the ids."""
        state = {
            "kind": "byte-level-bpe",
            "vocab": sorted(self.vocab.items()),
            "merges": self.merges,
            "add_prefix_space": self.add_prefix_space,
            "special_tokens": sorted(self.special_tokens.items()),
            "split_special_tokens": self.split_special_tokens,
        }
        return hashlib.sha256(json.dumps(state, ensure_ascii=False).encode("utf-8")).hexdigest()

    def word_start_mask(self) -> list[bool]:
        """True for the tokens that begin with a space ("Ġ"): GPT-2's pattern puts a word's
        space in front of it, so a word is a "Ġ" token and the tokens after it."""
        space = self.byte_encoder[ord(" ")]
        mask = [False] * self.vocab_size
        for token, i in self.vocab.items():
            mask[i] = token.startswith(space) and i not in self._special_ids
        return mask

    # ---- training ---------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        files_or_iterator,
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: Iterable[str] = SPECIAL_TOKENS,
        show_progress: bool = True,
        **kwargs,
    ) -> ByteLevelBPETokenizer:
        """Learn a vocabulary of `vocab_size` tokens from a corpus.

        files_or_iterator: a path or a list of paths (read line by line; bytes
            that are not UTF-8 become U+FFFD with a warning), or an iterator of
            strings, e.g. `iter(texts)`.
        The vocabulary is the special tokens, then the 256 bytes, then one
        token per merge; `<mask>` goes last as in roberta-base. Merging stops
        early when no pair occurs `min_frequency` times. See bpe_train.py.

            >>> tok = ByteLevelBPETokenizer.train(["corpus.txt"], vocab_size=8000)
            >>> tok.save_pretrained("my-tokenizer/")
        """
        special_tokens = list(dict.fromkeys(special_tokens))
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} leaves no room for the 256 bytes and {len(special_tokens)} special tokens"
            )
        if isinstance(files_or_iterator, (str, os.PathLike)):
            files_or_iterator = [files_or_iterator]
        if isinstance(files_or_iterator, (list, tuple)):
            for path in files_or_iterator:
                if not os.path.isfile(path):
                    raise FileNotFoundError(
                        f"training file {str(path)[:80]!r} does not exist "
                        "(to train on strings, pass an iterator: train(iter(texts), ...))"
                    )
            texts = iter_lines(files_or_iterator)
        else:
            texts = files_or_iterator
        word_counts = count_words(texts, split_words, show_progress=show_progress)
        symbols = bytes_to_unicode()
        byte_order = sorted(symbols, key=symbols.get)  # the order of the bytes in the vocabulary
        merges = learn_merges(word_counts, num_merges, min_frequency, byte_order, show_progress=show_progress)

        def as_token(b: bytes) -> str:
            return "".join(symbols[x] for x in b)

        head = [t for t in special_tokens if t not in LSTRIP_TOKENS]
        tail = [t for t in special_tokens if t in LSTRIP_TOKENS]
        tokens = head + sorted(symbols.values()) + [as_token(a + b) for a, b in merges] + tail
        vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
        return cls(vocab, [(as_token(a), as_token(b)) for a, b in merges], special_tokens=special_tokens, **kwargs)

    # ---- encoding ---------------------------------------------------------------------

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised word: its bytes' symbols, then the learned merges applied,
        the lowest-ranked pair present first, until none applies (bpe.apply_merges).

            " lower" -> [Ġ l o w e r] -> [Ġ l o w er] -> [Ġl o w er] -> [Ġl ow er] -> [Ġl ower] -> [Ġlower]
            (with roberta-base's merges: e+r is learned first, then Ġ+l, o+w, ow+er, Ġl+ower)
        """
        return tuple(apply_merges(list(map(self._byte_ids.__getitem__, word.encode("utf-8"))), self._merge_table))

    def _encode_words(self, words: list[str]) -> list[int]:
        cache = self._cache
        try:
            # hot path: every word seen before, so the whole loop runs in C.
            return list(chain.from_iterable(map(cache.__getitem__, words)))
        except KeyError:
            pass
        new = set(words).difference(cache)
        if len(cache) + len(new) > self.cache_size:
            # subtle: start over rather than evict one by one (cheap, and memory stays bounded),
            # but keep every word of this text, or the lookup below would miss.
            cache.clear()
            new = set(words)
        for word in new:
            cache[word] = self._bpe(word)
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def _encode_texts(self, texts: list, processes: int, around: tuple = ()) -> list[list[int]]:
        """[[*head, *self._encode_text(t), *tail] for t in texts], as in Tokenizer, with the BPE of the
        words new to the cache, most of a cold batch's time, shared with forked children
        (pool.ForkedMap) once there are enough.

        The texts are split here a round at a time; each round's new words go to the children
        as soon as it is split, so they encode while this process splits the rest; at the end this
        process takes its share, the results go in the cache, and each text's ids are looked up.
        A warm batch starts no process. Texts with special tokens written in them, or surrogates,
        or that are not str, go through _encode_text as they would one by one.
        """
        cache = self._cache
        known = cache.__getitem__
        head, tail = around or ((), ())
        rows: list = [None] * len(texts)
        missed: list[tuple[int, list[str]]] = []  # (index, words) of the texts that wait for BPE
        others: list[int] = []  # the texts _encode_text encodes, one by one
        new: set[str] = set()  # their words not in the cache
        helpers, chars = None, sum(len(t) for t in texts if isinstance(t, str))
        try:
            for round_, chars_done in _rounds(texts, SHARED_BPE_ROUND_CHARS):
                first_missed = len(missed)
                for i in round_:
                    words = self._plain_words(texts[i])
                    if words is None:
                        others.append(i)
                        continue
                    try:
                        rows[i] = [*head, *chain.from_iterable(map(known, words)), *tail]
                    except KeyError:
                        missed.append((i, words))
                found = set(chain.from_iterable(w for _, w in missed[first_missed:])).difference(cache, new)
                new |= found
                # Distinct words grow with text length as a power below 1 (Heaps' law; 0.6-0.8 on the
                # stdlib's docstrings): the square root projects the batch's new words conservatively.
                likely = len(new) * (chars / max(chars_done, 1)) ** 0.5
                if helpers is None and processes > 1 and likely >= SHARED_BPE_MIN_WORDS and can_fork():
                    # a process for every SHARED_BPE_MIN_WORDS words likely: each costs ~10 ms to start
                    children = min(processes, int(likely // SHARED_BPE_MIN_WORDS) + 1) - 1
                    helpers, found = ForkedMap(self._bpe, children), new
                if helpers is not None:
                    helpers.put(list(found))
            if helpers is not None and len(new) <= self.cache_size:
                done = helpers.finish()
                if len(cache) + len(new) > self.cache_size:
                    cache.clear()  # as _encode_words does: start over rather than evict one by one
                for words, ids in done:
                    cache.update(zip(words, ids, strict=True))
        finally:
            if helpers is not None:
                helpers.close()  # after finish, nothing to do; after an error, the children stop
        for i, words in missed:  # what the cache lacks is encoded here, one text at a time
            rows[i] = [*head, *self._encode_words(words), *tail]
        for i in others:
            rows[i] = [*head, *self._encode_text(texts[i]), *tail]
        return rows

    def _plain_words(self, text) -> list[str] | None:
        """The words _encode_text would BPE, for a text it encodes that way, else None."""
        if not isinstance(text, str) or self._has_special(text):
            return None
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # surrogates, which _encode_text replaces
                return None
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text
        return split_words(text)

    def _encode_plain(self, text: str) -> list[int]:
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        return self._encode_words(split_words(text))

    def _encode_plain_details(self, text: str, start: int):
        prefixed = self.add_prefix_space and not text.startswith(" ")
        if prefixed:
            text = " " + text
        ids, spans, words = [], [], []
        for w, m in enumerate(self.pattern.finditer(text)):
            piece = m.group()
            piece_ids = self._encode_words([piece])
            # For each byte of the piece, the index of the character it belongs to.
            char_of = range(len(piece)) if piece.isascii() else [c for c, ch in enumerate(piece) for _ in ch.encode()]
            b = 0
            for i in piece_ids:
                n = len(self._id_to_bytes[i])
                s, e = m.start() + char_of[b], m.start() + char_of[b + n - 1] + 1
                if prefixed:
                    # The added space stands for the first character, as in the reference tokenizer.
                    s, e = max(s - 1, 0), max(e - 1, 1)
                ids.append(i)
                spans.append((start + s, start + e))
                words.append(w)
                b += n
        return ids, spans, words

    def _postprocess_spans(self, ids, spans):
        """Drop the spaces at the edges of each token from its span (`trim_offsets` of the original).

        " world" covers "world" only, and " <mask>" covers "<mask>". subtle: with
        add_prefix_space a single leading space of the first token (of the text, or
        of a word given pre-split) is kept, as in the original.
        """
        trimmed = []
        for k, (i, (s, e)) in enumerate(zip(ids, spans, strict=True)):
            if i in self._special_ids:  # its span also holds the whitespace it swallowed
                lead, trail = (e - s) - len(self._id_to_token[i]), 0
            else:
                token = self._id_to_bytes[i]
                lead = len(token) - len(token.lstrip(b" "))
                trail = len(token) - len(token.rstrip(b" "))
            if lead and not (self.add_prefix_space and lead == 1 and (k == 0 or s == 0)):
                s = min(s + lead, e)
            if trail and e >= trail:
                e = max(e - trail, s)
            trimmed.append((s, e))
        return trimmed

    # ---- decoding ---------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a list of ids. Byte sequences that are not UTF-8 become U+FFFD.

        >>> tok.decode([0, 31414, 232, 328, 2], skip_special_tokens=True)
        'Hello world!'
        """
        ids = self._as_id_list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        try:
            data = b"".join(map(self._id_to_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self._id_to_bytes)
            raise ValueError(f"cannot decode id {bad!r}: not in the vocabulary (size {self.vocab_size})") from None
        return data.decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        return self._id_to_token[i]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __getstate__(self):
        # The word cache can be large; a copy sent to a worker process starts empty.
        return {**self.__dict__, "_cache": {}}


# The kinds of tokenizer a directory can hold, in the order load_tokenizer looks for them.
TOKENIZER_CLASSES = (SentencePieceTokenizer, ByteLevelBPETokenizer)


def load_tokenizer(directory: str | os.PathLike, **kwargs) -> Tokenizer:
    """The tokenizer a directory holds, whichever kind it is.

    `sentencepiece.bpe.model` gives a `SentencePieceTokenizer` (XLM-R, CamemBERT);
    `vocab.json` + `merges.txt` a `ByteLevelBPETokenizer` (RoBERTa, GPT-2). Settings
    saved in `tokenizer_config.json` are read; keyword arguments override them.

        >>> load_tokenizer("roberta-base/").encode("Hello world!")
        [0, 31414, 232, 328, 2]
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    for cls in TOKENIZER_CLASSES:
        if cls.holds(directory):
            return cls.from_pretrained(directory, **kwargs)
    kinds = " nor ".join(f"{' + '.join(c.model_files)} ({c.__name__})" for c in TOKENIZER_CLASSES)
    raise FileNotFoundError(f"{str(directory)!r} holds no tokenizer: it holds neither {kinds}")


__all__ = [
    "ByteLevelBPETokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "BatchEncoding",
    "load_tokenizer",
    "bytes_to_unicode",
    "GPT2_SPLIT_PATTERN",
    "SPECIAL_TOKENS",
    "VOCAB_FILE",
    "MERGES_FILE",
    "CONFIG_FILE",
]
