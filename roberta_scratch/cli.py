"""`roberta-scratch ...` / `python -m roberta_scratch ...`: one subcommand per job.

Each subcommand parses its arguments here and calls into the library, so the
library stays importable without argparse and the commands stay discoverable
in one file.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from .config import PRESETS, RobertaConfig
    from .model import RobertaForMaskedLM
    from .trainer import flops_per_token

    cfg = RobertaConfig.preset(args.config) if args.config in PRESETS else RobertaConfig.load(args.config)
    with torch.device("meta"):
        model = RobertaForMaskedLM(cfg)
    params = {"embeddings": 0, "attention": 0, "feed_forward": 0, "mlm_head": 0}
    for name, p in model.named_parameters():
        part = ("embeddings" if ".embeddings." in name else "attention" if ".attn" in name
                else "feed_forward" if ".ffn" in name else "mlm_head")
        params[part] += p.numel()
    flops = flops_per_token(cfg, args.seq_len)
    print(f"RoBERTa {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"feed-forward {cfg.intermediate_size}, vocab {cfg.vocab_size}; FLOPs at seq_len {args.seq_len}")
    print(f"{'component':14s} {'parameters':>14s} {'share':>7s} {'fwd FLOPs/token':>16s} {'share':>7s}")
    total_p, total_f = sum(params.values()), sum(flops.values())
    for part in params:
        print(f"{part:14s} {params[part]:>14,} {params[part] / total_p:>7.1%} {flops[part]:>16,} "
              f"{flops[part] / total_f:>7.1%}")
    print(f"{'total':14s} {total_p:>14,} {'':>7s} {total_f:>16,}")
    print("(the decoder is tied to the word embeddings; training costs about 3x the forward FLOPs)")
    return 0


def _add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="parameters and FLOPs per token by component, for studying the architecture")
    p.add_argument("--config", default="base", help="a preset (tiny, small, base, large), a config.json or a model dir")
    p.add_argument("--seq-len", type=int, default=512, help="sequence length for the attention FLOPs (default 512)")
    p.set_defaults(func=_cmd_inspect)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare

    prepare(args.corpus, args.tokenizer, args.out, seq_len=args.seq_len, val_fraction=args.val_fraction,
            num_workers=args.workers)
    return 0


def _add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus into packed on-disk shards for pretraining")
    p.add_argument("--corpus", nargs="+", default=None,
                   help=".txt/.jsonl files or directories (default: the standard library's docstrings)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (vocab.json + merges.txt)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: one per CPU)")
    p.set_defaults(func=_cmd_prepare)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .trainer import TrainArgs, TrainingError, pretrain

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    try:
        return pretrain(TrainArgs(**fields))
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _add_pretrain_parser(sub) -> None:
    from .trainer import TrainArgs

    d = TrainArgs(data="", out="")
    p = sub.add_parser("pretrain", help="MLM pretraining (single process, or DDP under torchrun)")
    p.add_argument("--data", required=True, help="a directory made by `roberta-scratch prepare`")
    p.add_argument("--out", required=True, help="run directory: ckpt/, metrics.jsonl, loss.png, model/")
    p.add_argument("--config", default=d.config, help="tiny|small|base|large or a config.json")
    for name in ("steps", "batch_size", "grad_accum", "warmup", "seed", "seq_len", "log_every", "eval_every",
                 "eval_blocks", "save_every", "keep_last"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"default {getattr(d, name)}" + (" (the data's)" if name == "seq_len" else ""))
    for name in ("lr", "weight_decay", "clip", "mlm_probability"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=f"default {getattr(d, name)}")
    p.add_argument("--attention", choices=["eager", "sdpa", "triton"], default=None, help="default sdpa")
    p.add_argument("--packing", choices=["full", "doc"], default=None, help="FULL- or DOC-SENTENCES (default full)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    for flag, help_ in (("resume", "continue from the last checkpoint in OUT/ckpt"),
                        ("compile", "torch.compile the model"),
                        ("whole-word", "mask whole words"),
                        ("static-masking", "BERT's static masks instead of dynamic ones (ablation)")):
        p.add_argument("--" + flag, action="store_true", default=None, help=help_)
    p.set_defaults(func=_cmd_pretrain)


def _cmd_fill_mask(args: argparse.Namespace) -> int:
    import torch

    from .model import RobertaForMaskedLM
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.model)
    model = RobertaForMaskedLM.from_pretrained(args.model).eval()
    for text in args.text:
        ids = tok.encode(text)
        positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
        if not positions:
            print(f"error: no {tok.mask_token} in {text!r}", file=sys.stderr)
            return 2
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        print(text)
        for pos in positions:
            probs = logits[pos].softmax(-1)
            top = probs.topk(args.top_k)
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                print(f"  {p:6.1%}  {tok.decode([i])!r}")
    return 0


def _add_fill_mask_parser(sub) -> None:
    p = sub.add_parser("fill-mask", help="top-k completions of <mask> with their probabilities")
    p.add_argument("--model", required=True, help="a model directory that also holds its tokenizer")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("text", nargs="+", help="text with <mask> in it")
    p.set_defaults(func=_cmd_fill_mask)


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .data import iter_documents
    from .tokenizer import ByteLevelBPETokenizer

    # the same reader as `prepare`: .txt, .jsonl, directories, or the default corpus
    tok = ByteLevelBPETokenizer.train(iter_documents(args.corpus), vocab_size=args.vocab_size,
                                      min_frequency=args.min_frequency)
    tok.save_pretrained(args.out)
    print(f"saved a {tok.vocab_size}-token byte-level BPE tokenizer ({len(tok.merges)} merges) to {args.out}")
    return 0


def _cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.tokenizer)
    for ids in tok.encode_file(args.file, num_workers=args.workers):
        print(" ".join(map(str, ids)))
    return 0


def _add_tokenizer_parser(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer, or encode a file with one")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="learn vocab.json + merges.txt from text files")
    t.add_argument("--corpus", nargs="+", default=None,
                   help=".txt/.jsonl files or directories (default: the standard library's docstrings)")
    t.add_argument("--vocab-size", type=int, required=True, help="tokens in all: specials, 256 bytes and merges")
    t.add_argument("--min-frequency", type=int, default=2, help="stop merging below this pair count (default 2)")
    t.add_argument("--out", required=True, help="output directory")
    t.set_defaults(func=_cmd_tokenizer_train)
    e = tsub.add_parser("encode", help="print the ids of each line of FILE, one line of ids per line")
    e.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    e.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    e.add_argument("file", help="a text file")
    e.set_defaults(func=_cmd_tokenizer_encode)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneArgs, finetune
    from .trainer import TrainingError

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    try:
        return finetune(FinetuneArgs(**fields))
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _add_finetune_parser(sub) -> None:
    from .finetune import FinetuneArgs

    d = FinetuneArgs(task="", model="", train="", out="")
    p = sub.add_parser("finetune", help="train a task head end to end (seq-cls, token-cls, qa) with metrics")
    p.add_argument("--task", required=True, choices=["seq-cls", "token-cls", "qa"])
    p.add_argument("--model", required=True, help="a pretrained model dir (ours or Hugging Face) with its tokenizer")
    p.add_argument("--train", required=True, help="seq-cls: .csv/.jsonl; token-cls: CoNLL or .jsonl; qa: SQuAD .json")
    p.add_argument("--eval", default=None, help="the eval file, same format; metrics after each epoch")
    p.add_argument("--out", required=True, help="run directory: ckpt/, metrics.jsonl, best/, model/")
    p.add_argument("--epochs", type=float, default=None, help=f"default {d.epochs:g}")
    for name in ("batch_size", "grad_accum", "max_length", "stride", "max_answer_length", "seed", "log_every",
                 "eval_every", "save_every", "keep_last"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"default {getattr(d, name)}" + (" (512; qa 384)" if name == "max_length" else "")
                       + (" (once per epoch)" if name in ("eval_every", "save_every") else ""))
    for name in ("lr", "warmup_ratio", "weight_decay", "clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=f"default {getattr(d, name)}")
    p.add_argument("--label-type", choices=["auto", "class", "regression"], default=None,
                   help="seq-cls: auto (default) makes numeric labels regression")
    p.add_argument("--on-bad-row", choices=["skip", "stop"], default=None,
                   help="skip bad rows with a count (default), or stop at the first")
    p.add_argument("--attention", choices=["eager", "sdpa", "triton"], default=None, help="default sdpa")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint in OUT/ckpt")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.set_defaults(func=_cmd_finetune)


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .finetune import predict
    from .trainer import TrainingError

    try:
        if args.file == "-":
            lines = sys.stdin.readlines()
        else:
            with open(args.file, encoding="utf-8") as f:
                lines = f.readlines()
        results = predict(args.model, lines, batch_size=args.batch_size, device=args.device)
    except (TrainingError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in results:
        print(json.dumps(r, ensure_ascii=False))
    return 0


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="run a fine-tuned model: labels, entities or answers, one JSON line per input")
    p.add_argument("--model", required=True, help="a directory written by `roberta-scratch finetune` (RUN/model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("file", help="one input per line (plain text, or JSON: text/text_pair, tokens, "
                                "question/context), a SQuAD file for qa, or - for stdin")
    p.set_defaults(func=_cmd_predict)


def _cmd_features(args: argparse.Namespace) -> int:
    from .probe import features, save_features

    ids, states = features(args.model, args.text, args.layers)
    save_features(ids, states, args.out)
    shape = next(iter(states.values())).shape
    print(f"wrote {len(states)} layer(s) of hidden states {tuple(shape)} for {len(ids)} tokens to {args.out}")
    return 0


def _add_features_parser(sub) -> None:
    p = sub.add_parser("features", help="hidden states of every (or some) layer for a text, to .npy or .safetensors")
    p.add_argument("--model", required=True)
    p.add_argument("--layers", default="all", help="all (default), or indices such as 0,6,-1 (0 = embeddings)")
    p.add_argument("--out", default="features.npy", help=".npy (layers, T, H) or .safetensors (layer_i, input_ids)")
    p.add_argument("text")
    p.set_defaults(func=_cmd_features)


def _cmd_attention(args: argparse.Namespace) -> int:
    from .probe import attention_maps, plot_attention

    tokens, att = attention_maps(args.model, args.text)
    plot_attention(tokens, att, args.out)
    print(f"drew {att.shape[0]} layers x {att.shape[1]} heads of attention over {len(tokens)} tokens to {args.out}")
    return 0


def _add_attention_parser(sub) -> None:
    p = sub.add_parser("attention", help="draw the attention maps of a text: a layer x head grid (needs matplotlib)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="attn.png")
    p.add_argument("text")
    p.set_defaults(func=_cmd_attention)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(out=args.out, steps=args.steps)


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="tokenizer, data, a few minutes of pretraining and fill-mask, on the "
                                    "default corpus")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=4000)
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roberta-scratch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inspect_parser(sub)
    _add_prepare_parser(sub)
    _add_pretrain_parser(sub)
    _add_fill_mask_parser(sub)
    _add_demo_parser(sub)
    _add_tokenizer_parser(sub)
    _add_finetune_parser(sub)
    _add_predict_parser(sub)
    _add_features_parser(sub)
    _add_attention_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
