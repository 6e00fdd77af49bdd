"""The checkpoint converter: `roberta-scratch convert` and `python checkpoints_convert.py`, one command.

    roberta-scratch convert SRC DST [--to ours|hf] [--verify] [--dict DICT]

SRC is detected: this project's directory, a Hugging Face roberta directory
(model.safetensors or pytorch_model.bin), or a fairseq model.pt (or the
directory holding it) with its dict.txt beside it. Every release's fairseq
names are understood (see checkpoints/keymaps.py for the key maps).

--verify runs this implementation and transformers' on the same padded batch
and prints the max abs difference of every hidden state and of the logits;
it exits 1 above 1e-4. It needs `transformers`, which the package itself
never imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings

import torch

from ..config import RobertaConfig, add_trust_code_argument
from ..model import MODEL_CLASSES, check_state_dict, load_state
from ..testing import padded_batch
from ..tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer
from .formats import read_checkpoint, read_fairseq_dict, save_hf, save_ours
from .keymaps import fairseq_vocab, hf_architecture

TOLERANCE = 1e-4


# The GPT-2 BPE files fairseq's RoBERTa uses, under the names they are downloaded with.
GPT2_ENCODER_FILES = ("encoder.json", "gpt2-encoder.json")
GPT2_MERGES_FILES = ("vocab.bpe", "merges.txt")


def find_tokenizer(src: str):
    """(tokenizer, None) for the tokenizer that belongs with a checkpoint, or (None, why not).

    A model directory (ours or Hugging Face's) holds its tokenizer's files. A fairseq
    model.pt has dict.txt beside it; with GPT-2's encoder.json and vocab.bpe there too,
    the byte-level BPE is rebuilt with fairseq's ids (convert.fairseq_vocab).
    """
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    try:
        return load_tokenizer(folder), None
    except FileNotFoundError:
        pass
    found = {
        kind: next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)
        for kind, names in (("dict", ("dict.txt",)), ("encoder", GPT2_ENCODER_FILES), ("merges", GPT2_MERGES_FILES))
    }
    if found["dict"] is None:
        return None, f"{folder} holds no tokenizer files (vocab.json + merges.txt, sentencepiece.bpe.model)"
    if found["encoder"] is None or found["merges"] is None:
        return None, (
            f"{folder} has fairseq's dict.txt but not GPT-2's encoder.json and vocab.bpe beside it, "
            "which the tokenizer is rebuilt from"
        )
    try:
        with open(found["encoder"], encoding="utf-8") as f:
            encoder = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{found['encoder']}: not valid JSON ({e})") from None
    vocab = fairseq_vocab(read_fairseq_dict(found["dict"]), encoder)
    merges = ByteLevelBPETokenizer.from_files(found["encoder"], found["merges"]).merges
    return ByteLevelBPETokenizer(vocab, merges), None


def transformers_cannot_prune(cfg: RobertaConfig) -> str | None:
    """Why the installed transformers cannot load this model, for a head-pruned one (None: it can).
    transformers 4.x builds a model with fewer heads from config.json's pruned_heads; 5.0 removed
    head pruning, so it would find the smaller weights the wrong shape."""
    if not cfg.pruned_heads:
        return None
    try:
        import transformers
    except ImportError:
        return None  # verify says that it needs transformers
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        return None
    return (
        f"this model has pruned heads (pruned_heads in config.json), which transformers >= 5 cannot load "
        f"(installed: {transformers.__version__}; 4.x can)"
    )


def verify_against_transformers(cfg: RobertaConfig, sd: dict) -> dict:
    """Max abs diff between our model and transformers' on one padded batch, per output."""
    try:
        import transformers
    except ImportError:
        raise SystemExit("--verify needs transformers: pip install transformers") from None
    arch = hf_architecture(sd)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(cfg, sd, tmp)
        theirs = getattr(transformers, arch).from_pretrained(tmp, attn_implementation="eager").eval()
    ours = MODEL_CLASSES[arch](cfg.replace(attention="eager")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heads other than arch's are expected to be unused here
        load_state(ours, sd)

    T = min(16, cfg.max_tokens)
    ids, mask = padded_batch(
        cfg.vocab_size, (T, max(T // 2, 3), 3), cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id
    )
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, output_hidden_states=True)
        b = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if len(a.hidden_states) != len(b.hidden_states):
        raise SystemExit(f"hidden state count differs: ours {len(a.hidden_states)} vs {len(b.hidden_states)}")
    diff = {
        f"hidden_states[{i}]": (x - y).abs().max().item()
        for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states, strict=True))
    }
    for name in ("logits", "start_logits", "end_logits"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is not None and y is not None:
            diff[name] = (x - y).abs().max().item()
    return diff


def convert(
    src: str,
    dst: str,
    to: str = "ours",
    verify: bool = False,
    dict_path: str | None = None,
    trust_code: bool = False,
    overwrite: bool = False,
) -> int:
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ValueError(
            f"DST {dst} is a file: the converted model is a folder (config.json, model.safetensors "
            "and the tokenizer); name a folder, new or existing"
        )
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise ValueError(
            f"DST {dst} already holds files ({', '.join(sorted(os.listdir(dst))[:3])}"
            f"{' ...' if len(os.listdir(dst)) > 3 else ''}): pass --overwrite to write the converted "
            "model's files over theirs, or name a new folder"
        )
    cfg, sd = read_checkpoint(src, trust_code=trust_code)
    if cfg.quantization is not None:  # int8 weights and their scales have no place in either format
        raise ValueError(
            f"{src} holds an int8 model ({cfg.quantization.get('method')}): convert the float model it was "
            "quantized from"
        )
    fairseq_file = src if os.path.isfile(src) else os.path.join(src, "model.pt")
    if os.path.isfile(fairseq_file) and not os.path.isfile(os.path.join(src, "config.json")):
        dict_path = dict_path or os.path.join(os.path.dirname(fairseq_file), "dict.txt")
        if os.path.isfile(dict_path):
            n = 4 + len(read_fairseq_dict(dict_path)) + 1
            if n != cfg.vocab_size:
                raise ValueError(
                    f"{dict_path} implies {n} ids (4 specials + its entries + <mask>) but the "
                    f"checkpoint's embedding has {cfg.vocab_size} rows"
                )
        else:
            print(f"note: no dict.txt at {dict_path}; the vocabulary size is not cross-checked")
    check_state_dict(cfg, sd)
    tok, why_not = find_tokenizer(src)
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"the tokenizer beside {src} has {tok.vocab_size} tokens but the model's embedding has "
            f"only {cfg.vocab_size} rows: they do not belong together"
        )
    if to == "hf":
        save_hf(cfg, sd, dst)
    else:
        save_ours(cfg, sd, dst)
    if tok is not None:
        tok.save_pretrained(dst)  # vocab.json + merges.txt (or the sentencepiece model) + tokenizer_config.json
    print(
        f"wrote {dst} ({to}): {hf_architecture(sd)}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}, {sum(v.numel() for v in sd.values()):,} parameters"
        + (f", and its {type(tok).__name__} ({tok.vocab_size} tokens)" if tok is not None else "")
    )
    if tok is None:
        print(f"note: {why_not}; {dst} holds the model only, and fill-mask and predict need a tokenizer there")
    if to == "hf" and cfg.pruned_heads:
        print(
            "note: transformers >= 5 cannot load a head-pruned model (it removed head pruning); "
            "transformers 4.x loads this folder, and this project loads it with any version"
        )
    if not verify:
        return 0
    cannot = transformers_cannot_prune(cfg)
    if cannot:
        print(f"note: --verify skipped: {cannot}")
        return 0
    diff = verify_against_transformers(cfg, sd)
    for name, value in diff.items():
        print(f"  max abs diff {name:20s} {value:.3e}")
    worst = max(diff.values())
    print(f"{'OK' if worst <= TOLERANCE else 'FAILED'}: worst {worst:.3e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="this project's dir, a Hugging Face roberta dir, or a fairseq model.pt (or its dir)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=["ours", "hf"], default="ours", help="output format (default: ours)")
    p.add_argument("--dict", default=None, help="fairseq dict.txt (default: next to model.pt)")
    p.add_argument(
        "--verify",
        action="store_true",
        help=f"compare against transformers on a padded batch; exit 1 above {TOLERANCE:g}",
    )
    add_trust_code_argument(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a DST that already holds files (the model's files are replaced, others kept)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return convert(
            args.src, args.dst, args.to, args.verify, args.dict, trust_code=args.trust_code, overwrite=args.overwrite
        )
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
