#!/usr/bin/env python
"""Convert official RoBERTa checkpoints to this project's format, or ours to Hugging Face's.

    python checkpoints_convert.py SRC DST [--to ours|hf] [--verify] [--dict DICT]

The same command as `roberta-scratch convert` (roberta_scratch/converter.py), run through the
same entry point, so that every failure is the same one `error:` line.
"""

import sys

from roberta_scratch import cli


def main(argv=None) -> int:
    return cli.main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
