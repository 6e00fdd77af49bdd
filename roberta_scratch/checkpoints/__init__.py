"""Checkpoints on disk: Hugging Face's, fairseq's and ours, read safely, written, converted.

keymaps.py     one explicit key map per format ({} for the layer index, None for buffers to drop)
formats.py     reading and writing each format (fairseq pickles through a restricted unpickler)
converter.py   `roberta-scratch convert` / checkpoints_convert.py: a checkpoint and its tokenizer, verified
"""
