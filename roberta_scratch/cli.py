"""`roberta-scratch ...` / `python -m roberta_scratch ...`: one subcommand per job.

Each subcommand parses its arguments here and calls into the library, so the
library stays importable without argparse and the commands stay discoverable
in one file.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .config import PRESETS, RobertaConfig
    from .convert import read_checkpoint
    from .model import RobertaForMaskedLM

    if args.source in PRESETS:
        cfg, n = RobertaConfig.preset(args.source), None
    else:
        cfg, sd = read_checkpoint(args.source)
        n = sum(v.numel() for v in sd.values())
    if n is None:
        with torch.device("meta"):
            n = RobertaForMaskedLM(cfg).num_parameters()
    for key, value in cfg.to_dict().items():
        print(f"{key:30s} {value}")
    print(f"{'parameters':30s} {n:,}")
    return 0


def _add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="print a preset's or a checkpoint's config and parameter count")
    p.add_argument("source", help="a preset (tiny, small, base, large) or a checkpoint directory / fairseq .pt")
    p.set_defaults(func=_cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roberta-scratch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
