#!/usr/bin/env python
"""Convert official RoBERTa checkpoints to this project's format, or ours to Hugging Face's.

    python checkpoints_convert.py SRC DST [--to ours|hf] [--verify] [--dict DICT]

The same command as `roberta-scratch convert`; see roberta_scratch/converter.py.
"""
import sys

from roberta_scratch.converter import main

if __name__ == "__main__":
    sys.exit(main())
