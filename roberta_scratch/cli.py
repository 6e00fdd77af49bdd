"""`roberta-scratch ...` / `python -m roberta_scratch ...`: one subcommand per job.

Each subcommand parses its arguments here and calls into the library, so the
library stays importable without argparse and the commands stay discoverable
in one file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
import typing
import warnings

from .config import add_trust_code_argument


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from .config import PRESETS, RobertaConfig
    from .flops import flops_per_token
    from .model import RobertaForMaskedLM

    cfg = (
        RobertaConfig.preset(args.config)
        if args.config in PRESETS
        else RobertaConfig.load(args.config, trust_code=args.trust_code)
    )
    with torch.device("meta"):
        model = RobertaForMaskedLM(cfg)
    params = {"embeddings": 0, "attention": 0, "feed_forward": 0, "mlm_head": 0}
    for name, p in model.named_parameters():
        part = (
            "embeddings"
            if ".embeddings." in name
            else "attention"
            if ".attn" in name
            else "feed_forward"
            if ".ffn" in name
            else "mlm_head"
        )
        params[part] += p.numel()
    flops = flops_per_token(cfg, args.seq_len)
    print(
        f"RoBERTa {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
        f"feed-forward {cfg.intermediate_size}, vocab {cfg.vocab_size}; FLOPs at seq_len {args.seq_len}"
    )
    print(f"{'component':14s} {'parameters':>14s} {'share':>7s} {'fwd FLOPs/token':>16s} {'share':>7s}")
    total_p, total_f = sum(params.values()), sum(flops.values())
    for part in params:
        print(
            f"{part:14s} {params[part]:>14,} {params[part] / total_p:>7.1%} {flops[part]:>16,} "
            f"{flops[part] / total_f:>7.1%}"
        )
    print(f"{'total':14s} {total_p:>14,} {'':>7s} {total_f:>16,}")
    print("(the decoder is tied to the word embeddings; training costs about 3x the forward FLOPs)")
    return 0


def _add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="parameters and FLOPs per token by component, for studying the architecture")
    p.add_argument("--config", default="base", help="a preset (tiny, small, base, large), a config.json or a model dir")
    p.add_argument("--seq-len", type=int, default=512, help="sequence length for the attention FLOPs (default 512)")
    add_trust_code_argument(p)
    p.set_defaults(func=_cmd_inspect)


CORPUS_HELP = (
    ".txt, .jsonl or .json lines (plain, .gz, .bz2 or .xz), .parquet, datasets save_to_disk folders, or "
    "directories of them (default: the standard library's docstrings)"
)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.packed import prepare

    prepare(
        args.corpus,
        args.tokenizer,
        args.out,
        seq_len=args.seq_len,
        val_fraction=args.val_fraction,
        num_workers=args.workers,
        text_field=args.text_field,
        sentences=args.sentences,
        overwrite=args.overwrite,
    )
    return 0


def _add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus into packed on-disk shards for pretraining")
    p.add_argument("--corpus", nargs="+", default=None, help=CORPUS_HELP)
    p.add_argument("--text-field", default="text", help="the JSON key or column holding the text (default text)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (vocab.json + merges.txt)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--seq-len", type=int, default=512, help="block length the data is checked for (default 512)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="tokenizer processes (default: one per usable core); the output is the same for any number",
    )
    p.add_argument(
        "--sentences",
        action="store_true",
        help="also record where each sentence ends (rule-based, see sentences.py): what the pair "
        "packings of pretrain (segment-pair, sentence-pair) need; the tokens are the same",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that holds no prepared data (nothing there is deleted)",
    )
    p.set_defaults(func=_cmd_prepare)


def add_dataclass_arguments(p: argparse.ArgumentParser, settings: type) -> None:
    """One flag per field of a settings dataclass (RunArgs and its subclasses): --batch-size for
    batch_size, its type, its choices and its help from the field; a bool is a switch (with
    its --no-X opposite when the field says negatable=True).

    Every default is None, so only the flags given reach the dataclass and its own defaults
    apply to the rest; the help text shows them.
    """
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        if not f.metadata.get("cli", True):
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        flag = "--" + f.name.replace("_", "-")
        helps = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True, help=helps)
        elif kind is bool:  # a switch; negatable=True adds its --no-X opposite
            action = argparse.BooleanOptionalAction if f.metadata.get("negatable") else "store_true"
            p.add_argument(flag, action=action, default=None, help=helps)
        else:
            default = (
                f" (default {f.default:g})"
                if isinstance(f.default, float)
                else f" (default {f.default})"
                if f.default is not None
                else ""
            )
            p.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"), help=helps + default)


def _given(args: argparse.Namespace) -> dict:
    """The settings given on the command line (the dataclass fills in the rest)."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import TrainArgs, pretrain

    return pretrain(TrainArgs(**_given(args)))  # a TrainingError is main()'s error line


def _add_pretrain_parser(sub) -> None:
    from .pretrain import TrainArgs

    p = sub.add_parser("pretrain", help="MLM pretraining (single process, or DDP under torchrun)")
    add_dataclass_arguments(p, TrainArgs)
    p.set_defaults(func=_cmd_pretrain)


def _cmd_fill_mask(args: argparse.Namespace) -> int:
    from .probe import fill_mask, print_fill_mask

    try:
        results = fill_mask(args.model, args.text, top_k=args.top_k, trust_code=args.trust_code)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_fill_mask(results)
    return 0


def _add_fill_mask_parser(sub) -> None:
    p = sub.add_parser("fill-mask", help="top-k completions of <mask> with their probabilities")
    p.add_argument("--model", required=True, help="a model directory that also holds its tokenizer")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("text", nargs="+", help="text with <mask> in it")
    add_trust_code_argument(p)
    p.set_defaults(func=_cmd_fill_mask)


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .data.corpus import iter_documents
    from .tokenization.byte_level import ByteLevelBPETokenizer

    # the same reader as `prepare`: every format corpus.py reads, or the default corpus
    docs = iter_documents(args.corpus, text_field=args.text_field)
    tok = ByteLevelBPETokenizer.train(docs, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    tok.save_pretrained(args.out)
    print(f"saved a {tok.vocab_size}-token byte-level BPE tokenizer ({len(tok.merges)} merges) to {args.out}")
    return 0


def _cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from .data.corpus import file_format, iter_documents
    from .fileio import chunked
    from .tokenization.byte_level import load_tokenizer

    # a file is plain text, as prepare reads a corpus: "<s>" written in it is not the special id
    tok = load_tokenizer(args.tokenizer)
    tok = tok if args.special_tokens else tok.plain_text()
    if file_format(args.file) in (".jsonl", ".json", ".parquet", "arrow"):  # records: their text, as prepare
        docs = iter_documents([args.file], text_field=args.text_field)
        for rows in tok.encode_batches(chunked(docs, 256), num_workers=args.workers):
            for ids in rows:
                print(" ".join(map(str, ids if isinstance(ids, list) else ids.tolist())))
        return 0
    for ids in tok.encode_file(args.file, num_workers=args.workers):
        print(" ".join(map(str, ids)))
    return 0


def _add_tokenizer_parser(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer, or encode a file with one")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="learn vocab.json + merges.txt from text files")
    t.add_argument("--text-field", default="text", help="the JSON key or column holding the text (default text)")
    t.add_argument("--corpus", nargs="+", default=None, help=CORPUS_HELP)
    t.add_argument("--vocab-size", type=int, required=True, help="tokens in all: specials, 256 bytes and merges")
    t.add_argument("--min-frequency", type=int, default=2, help="stop merging below this pair count (default 2)")
    t.add_argument("--out", required=True, help="output directory")
    t.set_defaults(func=_cmd_tokenizer_train)
    e = tsub.add_parser(
        "encode",
        help="print the ids of each line of FILE (of each record's text for JSON lines "
        "and parquet, read as prepare reads them), one line of ids each",
    )
    e.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    e.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    e.add_argument("--text-field", default="text", help="the JSON key or column holding the text (default text)")
    e.add_argument(
        "--special-tokens",
        action="store_true",
        help="read <s>, </s>, <pad>, <mask> written in the text as the special tokens (default: as "
        "plain text, as prepare reads a corpus)",
    )
    e.add_argument("file", help="a text file")
    e.set_defaults(func=_cmd_tokenizer_encode)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune.trainer import FinetuneArgs, finetune

    return finetune(FinetuneArgs(**_given(args)))


def _add_finetune_parser(sub) -> None:
    from .finetune.trainer import FinetuneArgs

    p = sub.add_parser("finetune", help="fine-tune end to end (seq-cls, token-cls, qa, prompt-cls) with metrics")
    add_dataclass_arguments(p, FinetuneArgs)
    p.set_defaults(func=_cmd_finetune)


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .fileio import iter_lines
    from .finetune.predict import predict

    lines = sys.stdin.readlines() if args.file == "-" else list(iter_lines([args.file]))
    source = "standard input" if args.file == "-" else args.file
    results = predict(
        args.model,
        lines,
        batch_size=args.batch_size,
        device=args.device,
        source=source,
        trust_code=args.trust_code,
        backend=args.backend,
        onnx=args.onnx,
    )
    for r in results:
        print(json.dumps(r, ensure_ascii=False))
    return 0


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="run a fine-tuned model: labels, entities or answers, one JSON line per input")
    p.add_argument("--model", required=True, help="a directory written by `roberta-scratch finetune` (RUN/model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: run the file `roberta-scratch export` wrote, in ONNX Runtime (the same results)",
    )
    p.add_argument(
        "--onnx", default=None, metavar="FILE", help="the file for --backend onnx (default MODEL/model.onnx)"
    )
    add_trust_code_argument(p)
    p.add_argument(
        "file",
        help="one input per line (plain text, or JSON: text/text_pair, tokens, "
        "question/context), a SQuAD file for qa, or - for stdin",
    )
    p.set_defaults(func=_cmd_predict)


def _cmd_features(args: argparse.Namespace) -> int:
    from .probe import features, save_features

    ids, states = features(args.model, args.text, args.layers, trust_code=args.trust_code)
    save_features(ids, states, args.out)
    shape = next(iter(states.values())).shape
    asked = args.layers.split(",") if args.layers != "all" else [str(i) for i in states]
    which = ", ".join(str(i) if str(i) == a else f"{i} (asked as {a})" for i, a in zip(states, asked, strict=True))
    print(
        f"wrote the hidden states {tuple(shape)} of layers {which} for {len(ids)} tokens to {args.out}"
        " (layer 0 is the embeddings; .safetensors keys are layer_<number>)"
    )
    return 0


def _add_features_parser(sub) -> None:
    p = sub.add_parser("features", help="hidden states of every (or some) layer for a text, to .npy or .safetensors")
    p.add_argument("--model", required=True)
    p.add_argument("--layers", default="all", help="all (default), or indices such as 0,6,-1 (0 = embeddings)")
    p.add_argument("--out", default="features.npy", help=".npy (layers, T, H) or .safetensors (layer_i, input_ids)")
    add_trust_code_argument(p)
    p.add_argument("text")
    p.set_defaults(func=_cmd_features)


def _cmd_attention(args: argparse.Namespace) -> int:
    from .probe import attention_maps, pick_attention, plot_attention

    tokens, att = attention_maps(args.model, args.text, trust_code=args.trust_code)
    layers, heads = pick_attention(att, args.layers, args.heads)
    notes = plot_attention(tokens, att, args.out, scale=args.scale, layers=args.layers, heads=args.heads)
    print(
        f"drew {len(layers)} of {att.shape[0]} layers (numbered from 1, as in features) x {len(heads)} of "
        f"{att.shape[1]} heads of attention over {len(tokens)} tokens, on a {args.scale} colour scale, to {args.out}"
    )
    for note in notes:
        print(f"  {note}")
    return 0


def _add_attention_parser(sub) -> None:
    p = sub.add_parser("attention", help="draw the attention maps of a text: a layer x head grid (needs matplotlib)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="attn.png")
    p.add_argument(
        "--scale",
        choices=["shared", "per-head"],
        default="shared",
        help="one colour scale for every panel (default), or one per head",
    )
    p.add_argument(
        "--layers",
        default="all",
        help="all (default), or layers such as 1,6,-1 (1 = the first "
        "transformer layer; 0, the embeddings, has no attention)",
    )
    p.add_argument("--heads", default="all", help="all (default), or heads such as 0,3")
    add_trust_code_argument(p)
    p.add_argument("text")
    p.set_defaults(func=_cmd_attention)


def _add_kernels_parser(sub) -> None:
    """`roberta-scratch kernels check|bench|converge`: the kernel lab (see kernels/roberta_kernels/registry.py)."""
    p = sub.add_parser(
        "kernels",
        help="the kernel lab: check, benchmark, or train with an attention or LayerNorm "
        "implementation (built-in, registered, or MODULE:FUNCTION)",
    )
    ksub = p.add_subparsers(dest="kernels_command", required=True)
    from roberta_kernels import bench as kernel_bench
    from roberta_kernels import check as kernel_check

    from . import converge

    for name, module, help_ in (
        (
            "check",
            kernel_check,
            "the standard correctness suite against a float64 reference: forward and "
            "every gradient, odd lengths, padding, dtypes, dropout",
        ),
        ("bench", kernel_bench, "time implementations against every reference (on CUDA; --dry-run on the CPU)"),
        ("converge", converge, "train a tiny MLM with an implementation and with sdpa, and compare the losses"),
    ):
        q = ksub.add_parser(name, help=help_, description=help_)
        module.add_arguments(q)
        q.set_defaults(func=module.run)
    from .flops import card_peaks

    # kernels/ may not import the package: `kernels bench` learns data-sheet peaks through this hook
    ksub.choices["bench"].set_defaults(card_peaks=card_peaks)


def _add_convert_parser(sub) -> None:
    from .checkpoints import converter

    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (ours, Hugging Face, fairseq) to ours or Hugging "
        "Face's, optionally verified against transformers",
    )
    converter.add_arguments(p)
    p.set_defaults(func=converter.run)


# --------------------------------------------------------------------------- deploy: quantize, prune, export


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .deploy.quantize import quantize

    summary = quantize(
        args.model, args.out, method=args.method, calibration=args.calibration, trust_code=args.trust_code
    )
    print(summary)
    return 0


def _add_quantize_parser(sub) -> None:
    from .config import QUANT_METHODS

    p = sub.add_parser("quantize", help="int8 weights (per output channel) for every Linear: a smaller, faster model")
    p.add_argument("--model", required=True, help="a model folder: fine-tuned (any task), MLM, or Hugging Face")
    p.add_argument("--out", required=True, help="the new folder (must not exist)")
    p.add_argument(
        "--method",
        choices=QUANT_METHODS,
        default="dynamic-int8",
        help="dynamic-int8: int8 weights and int8 activations scaled per batch (fastest on CPU); "
        "weight-only-int8: int8 weights, float arithmetic (smaller only)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="a file of inputs (as predict reads them) on which quantize compares the int8 model with the float one",
    )
    add_trust_code_argument(p)
    p.set_defaults(func=_cmd_quantize)


def _cmd_lora_merge(args: argparse.Namespace) -> int:
    from .deploy.merge import merge_adapter

    print(merge_adapter(args.adapter, args.out, base=args.base, trust_code=args.trust_code))
    return 0


def _add_lora_parser(sub) -> None:
    p = sub.add_parser("lora", help="LoRA adapters (finetune --lora-r): fold one into its base model")
    lsub = p.add_subparsers(dest="lora_command", required=True)
    m = lsub.add_parser(
        "merge",
        help="write the adapter's base model with the adapter folded into its weights: an ordinary model folder",
    )
    m.add_argument("--adapter", required=True, help="an adapter folder, or the finetune run that wrote one")
    m.add_argument("--out", required=True, help="the new folder (must not exist)")
    m.add_argument("--base", default=None, help="the base model, if it is no longer where the adapter says")
    add_trust_code_argument(m)
    m.set_defaults(func=_cmd_lora_merge)


def _cmd_prune(args: argparse.Namespace) -> int:
    from .deploy.prune import prune_command

    return prune_command(args)


def _add_prune_parser(sub) -> None:
    from .deploy.prune import add_prune_arguments

    p = sub.add_parser("prune", help="remove attention heads or whole layers (Michel et al. 2019's importance)")
    add_prune_arguments(p)
    add_trust_code_argument(p)
    p.set_defaults(func=_cmd_prune)


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_command

    return export_command(args)


def _add_export_parser(sub) -> None:
    from .deploy.export import add_export_arguments

    p = sub.add_parser("export", help="an ONNX file with dynamic batch and length axes, for ONNX Runtime")
    add_export_arguments(p)
    add_trust_code_argument(p)
    p.set_defaults(func=_cmd_export)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import Settings
        from .serve.server import serve
    except ImportError as e:
        raise ImportError(f"serve needs {e.name}: pip install 'roberta-scratch[serve]'") from None
    return serve(Settings(**{k: v for k, v in vars(args).items() if k not in ("func", "command")}))


def _add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="an HTTP service for a model: /predict, /embed, /v1/embeddings, /fill-mask, with dynamic batching",
        description="Serve a model folder over HTTP (FastAPI + uvicorn); API docs at /docs. See docs/serving.md.",
    )
    p.add_argument("--model", required=True, help="any model folder: fine-tuned, MLM, int8, pruned or Hugging Face")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) answers this machine only")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (the first line says which)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per batch (inputs x the longest)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long an idle model waits for more inputs (0: never; under load batches fill while one runs)",
    )
    p.add_argument("--max-queue", type=int, default=512, help="inputs waiting; past it a request gets 429")
    p.add_argument("--max-client-batch-size", type=int, default=32, help="inputs in one request (413 past it)")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20, help="request body size (413 past it)")
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own model")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (or set ROBERTA_SCRATCH_API_KEY)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--pooling", default="mean", choices=("mean", "cls"), help="embeddings' default pooling")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds SIGTERM waits for requests")
    add_trust_code_argument(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(out=args.out, steps=args.steps, budget=args.budget)


def _add_demo_parser(sub) -> None:
    from .demo import BUDGET_S

    p = sub.add_parser(
        "demo", help="tokenizer, data, a few minutes of pretraining and fill-mask, on the default corpus"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="pretraining steps (default: as many as fit --budget at this machine's measured speed); "
        "the same N gives the same run",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=BUDGET_S,
        help=f"seconds the whole demo may take when --steps is not given (default {BUDGET_S:.0f}: `make demo` "
        "from a fresh clone, setup included, in 8 minutes)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_study(args: argparse.Namespace) -> int:
    from .study.runner import run_study

    return run_study(
        args.study,
        args.preset,
        args.out,
        seeds=args.seeds,
        corpus=args.corpus,
        text_field=args.text_field,
        overwrite=args.overwrite,
        command=["roberta-scratch"] + sys.argv[1:],
        report_to=args.report_to,
    )


def _add_study_parser(sub) -> None:
    from .study.runner import PRESETS, STUDIES

    p = sub.add_parser(
        "study",
        help="the RoBERTa paper's pretraining ablations (masking, input formats, batch size) "
        "as one resumable study: runs, table.md, results.json, curves.png",
    )
    p.add_argument("study", choices=STUDIES, help="masking (Table 1), formats (Table 2), batch (Table 3), or all")
    p.add_argument(
        "--preset",
        required=True,
        choices=list(PRESETS),
        help="ci (a few CPU minutes), cpu (study all under 45 min on 2 cores), gpu-small (about an hour on one GPU)",
    )
    p.add_argument("--out", required=True, help="the study folder: runs/, data/, table.md, results.json, curves.png")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the preset's)")
    p.add_argument("--corpus", nargs="+", default=None, help=CORPUS_HELP)
    p.add_argument("--text-field", default="text", help="the JSON key or column holding the text (default text)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the runs (or the whole study) whose settings differ, and train them again",
    )
    p.add_argument(
        "--report-to",
        default="jsonl",
        help="every run's --report-to: jsonl (metrics.jsonl, always written), tensorboard (adds event "
        "files in each run folder's tensorboard/: `tensorboard --logdir OUT` shows every arm) (default jsonl)",
    )
    p.set_defaults(func=_cmd_study)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("roberta-scratch")
    except PackageNotFoundError:
        return "(not installed: run from a checkout)"


# every subcommand, in the order --help lists them: its name and the function adding its parser
_SUBCOMMANDS = {
    "inspect": _add_inspect_parser,
    "prepare": _add_prepare_parser,
    "pretrain": _add_pretrain_parser,
    "fill-mask": _add_fill_mask_parser,
    "demo": _add_demo_parser,
    "study": _add_study_parser,
    "tokenizer": _add_tokenizer_parser,
    "finetune": _add_finetune_parser,
    "predict": _add_predict_parser,
    "features": _add_features_parser,
    "attention": _add_attention_parser,
    "convert": _add_convert_parser,
    "quantize": _add_quantize_parser,
    "prune": _add_prune_parser,
    "lora": _add_lora_parser,
    "export": _add_export_parser,
    "serve": _add_serve_parser,
    "kernels": _add_kernels_parser,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser; or, when `command` names one, that one alone.

    subtle: several parsers import torch for their flags (pretrain's and finetune's from their
    settings dataclasses), ~1.2 s that `prepare` or `tokenizer` would pay before any work.
    """
    parser = argparse.ArgumentParser(prog="roberta-scratch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"roberta-scratch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in [_SUBCOMMANDS[command]] if command in _SUBCOMMANDS else _SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A failure is one `error: ...` line (the traceback with --debug, which
    may go anywhere on the command line); warnings are `note: ...` lines, each said once."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)  # the first word not a flag
    args = build_parser(command).parse_args(argv)
    with _notes():
        if debug:
            return int(args.func(args) or 0)
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `... | head` closed the pipe: stop quietly, as Unix tools do
            _silence_stdout()
            return 141
        except Exception as e:  # noqa: BLE001 (every failure becomes one readable line)
            print(f"error: {_describe(e)} (--debug shows where)", file=sys.stderr)
            return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _describe(e: Exception) -> str:
    """An exception as one line: the message alone for the errors that speak to the user (bad
    input, a missing file, a refused run), with the exception's name for anything else."""
    from .errors import TrainingError
    from .fileio import DirectoryBusy

    if isinstance(e, TrainingError) and str(e).strip():
        return str(e).strip()  # written for the user, advice included (it may run to several lines)
    text = (str(e).strip().splitlines() or [""])[0]
    if text and isinstance(e, (ValueError, OSError, DirectoryBusy)):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _notes():
    """Show warnings as `note: ...` lines on stderr, each text once (not a UserWarning with a source line)."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in seen:
            seen.add(text)
            print(f"note: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
