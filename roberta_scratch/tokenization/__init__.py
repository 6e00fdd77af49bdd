"""Text to token ids and back: RoBERTa's byte-level BPE and SentencePiece, and training them.

base.py         what every tokenizer shares: special tokens, saving, encode/decode verbs
batch.py        the batch API: tok(texts, padding=..., truncation=..., return_tensors=...)
pool.py         encoding many texts on several processes
bpe.py          the merge algorithm and GPT-2's byte-to-unicode table and pre-tokeniser
bpe_train.py    learning merges from a corpus
byte_level.py   ByteLevelBPETokenizer (roberta-base's), and load_tokenizer for any saved kind
spm.py          SentencePieceTokenizer
"""
