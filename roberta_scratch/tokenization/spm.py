"""SentencePiece with fairseq's ids, for XLM-R and CamemBERT style RoBERTa checkpoints.

Those checkpoints ship `sentencepiece.bpe.model` (despite the name, XLM-R's is
a unigram model) and number tokens as fairseq does: its four specials first,
then the spm pieces shifted by one, then `<mask>`:

    fairseq id   0     1      2      3      4 ...         n + 1
    token        <s>   <pad>  </s>   <unk>  spm piece 3   <mask>
                                            (spm id + 1)

(spm's own `<unk>`, `<s>`, `</s>` take spm ids 0..2; its `<unk>` becomes 3.)
Everything else, pairs, batches, padding, truncation, `<mask>` swallowing
the space before it, is shared with the byte-level tokenizer.

    >>> tok = SentencePieceTokenizer("xlmr/sentencepiece.bpe.model")
    >>> tok.tokenize("Hello world")
    ['▁Hello', '▁world']
    >>> tok.decode(tok.encode("Hello world"))
    '<s> Hello world</s>'
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import sentencepiece

from ..fileio import atomic_write
from .base import CONFIG_FILE, Tokenizer, write_config

SPM_FILE = "sentencepiece.bpe.model"
FAIRSEQ_OFFSET = 1  # fairseq id = spm id + 1
WORD_START = "\u2581"  # "▁", sentencepiece's space: the first piece of every word starts with it


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model behind the same interface as `ByteLevelBPETokenizer`."""

    files = (SPM_FILE, CONFIG_FILE)
    model_files = (SPM_FILE,)

    @classmethod
    def _from_directory(cls, directory: Path, config: dict, **kwargs) -> SentencePieceTokenizer:
        if not cls.holds(directory):
            raise FileNotFoundError(
                f"{str(directory)!r} holds no {SPM_FILE}: not a SentencePiece tokenizer "
                "(load_tokenizer(dir) picks the kind a directory holds)"
            )
        settings = {"model_max_length": config.get("model_max_length", 512)}
        return cls(directory / SPM_FILE, **{**settings, **kwargs})

    def __init__(
        self, model_file: str | os.PathLike, *, split_special_tokens: bool = False, model_max_length: int = 512
    ):
        if not Path(model_file).is_file():
            raise FileNotFoundError(f"sentencepiece model {str(model_file)!r} does not exist")
        self.model_file = Path(model_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        n = self.sp.get_piece_size()
        specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": n + FAIRSEQ_OFFSET}
        self._id_to_special = {i: t for t, i in specials.items()}
        super().__init__(specials, split_special_tokens, model_max_length)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + FAIRSEQ_OFFSET + 1  # + <mask>

    def _to_fairseq(self, spm_ids: list[int]) -> list[int]:
        unk, spm_unk = self.unk_token_id, self.sp.unk_id()
        return [unk if i == spm_unk else i + FAIRSEQ_OFFSET for i in spm_ids]

    def _encode_plain(self, text: str) -> list[int]:
        try:
            return self._to_fairseq(self.sp.encode(text))
        except RuntimeError:
            # sentencepiece reports a surrogate as a RuntimeError; re-raise it as the
            # UnicodeEncodeError that the caller knows how to repair.
            text.encode("utf-8")
            raise

    def _encode_plain_details(self, text: str, start: int):
        out = self.sp.encode(text, return_type="offset_mapping")
        ids = self._to_fairseq(out["ids"])
        spans = [(start + s, start + e) for s, e in out["offsets"]]
        # A word starts at each piece that begins with "▁" (spm's space), as words are split at spaces.
        words, w = [], 0
        for k, piece in enumerate(out["pieces"]):
            if k and piece.startswith("▁"):
                w += 1
            words.append(w)
        return ids, spans, words

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a list of ids, "▁" read as a space, as the reference (Metaspace) decoder does.

        >>> tok.decode([0, 35378, 8999, 2], skip_special_tokens=True)
        'Hello world'
        """
        ids = self._as_id_list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        tokens = [self.id_to_token(i) for i in ids]
        text = "".join(tokens).replace("▁", " ")
        # The space spm puts before the text is dropped, but only when the first token holds it.
        return text[1:] if tokens and tokens[0].startswith("▁") else text

    def id_to_token(self, i: int) -> str:
        if i in self._id_to_special:
            return self._id_to_special[i]
        if not isinstance(i, int) or not 0 <= i < self.vocab_size:
            raise ValueError(f"cannot decode id {i!r}: not in the vocabulary (size {self.vocab_size})")
        return self.sp.id_to_piece(i - FAIRSEQ_OFFSET)

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        spm_id = self.sp.piece_to_id(token)
        return None if spm_id == self.sp.unk_id() else spm_id + FAIRSEQ_OFFSET

    def word_start_mask(self) -> list[bool]:
        """True for the pieces that begin with "▁": sentencepiece marks each word's start so."""
        mask = [False] * self.vocab_size
        for spm_id in range(self.sp.get_piece_size()):
            i = spm_id + FAIRSEQ_OFFSET
            if i not in self._special_ids and not self.sp.is_control(spm_id):
                mask[i] = self.sp.id_to_piece(spm_id).startswith(WORD_START)
        return mask

    def fingerprint(self) -> str:
        """sha256 of the serialized model and the settings that change the ids."""
        state = json.dumps({"kind": "sentencepiece", "split_special_tokens": self.split_special_tokens})
        return hashlib.sha256(self.sp.serialized_model_proto() + state.encode()).hexdigest()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the model as sentencepiece.bpe.model and tokenizer_config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.model_file.resolve() != (directory / SPM_FILE).resolve():
            with atomic_write(directory / SPM_FILE) as f:
                f.write(self.model_file.read_bytes())
        write_config(directory, self, "XLMRobertaTokenizer")
