"""Pretraining data: corpora read, split into sentences, tokenized into packed shards, masked.

corpus.py      the corpus formats read (text, JSON lines, Parquet/Arrow, compressed) and the default corpus
sentences.py   sentence boundaries, for the paper's input formats
packed.py      `prepare`: a corpus tokenized into shards on disk; TokenStream reads them back
packed_dataset.py  PackedDataset: training blocks from them (apart: it needs torch, prepare does not)
masking.py     dynamic masking (80/10/10), per batch, as RoBERTa trains
pairs.py       sentence and segment pairs for the next-sentence-prediction ablation
"""
