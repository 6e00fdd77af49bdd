"""LoRA adapter folders: what `finetune --lora-r` saves, and how a model is read back from one.

    RUN/model/
        adapter_config.json   r, alpha, targets, the base model's path and weights fingerprint
        adapter.safetensors   the low-rank pairs (A, B) and the task head, nothing else
        finetune.json, vocab.json, merges.txt, ...   the task and the tokenizer, as any model folder

An adapter holds only what trained, so it is a few MB where the model is hundreds. It is not
a model by itself: formats.read_adapter() reads its base (checking by fingerprint that it is the
very model the adapter was trained on, not another one at the same path) and folds each
update into the weight it adapts,

    W[rows]  +=  (alpha / r) * B @ A

so every command that reads a model folder (predict, serve, quantize, export, convert) takes
an adapter folder too (read_checkpoint calls read_adapter), and `roberta-scratch lora merge`
writes the merged folder out once.
The nn.Module side of LoRA, for training, is roberta_scratch/lora.py.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..fileio import atomic_files
from .keymaps import HEAD_PREFIXES

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "roberta-scratch LoRA adapter"

# What --lora-targets may name, and where each is in a layer: (the nn.Linear in roberta.layers.N,
# which part of its output rows, of how many parts). query, key and value share one fused
# matmul (model.SelfAttention.qkv), so each adapts a third of its rows. Hugging Face and peft
# call them query, key, value, attention.output.dense, intermediate.dense and output.dense.
TARGETS = {
    "query": ("attn.qkv", 0, 3),
    "key": ("attn.qkv", 1, 3),
    "value": ("attn.qkv", 2, 3),
    "proj": ("attn.proj", 0, 1),
    "fc1": ("ffn.fc1", 0, 1),
    "fc2": ("ffn.fc2", 0, 1),
}
# An adapter tensor's name: the adapted nn.Linear, then lora.TARGET.A or .B (lora.LoRALinear)
LORA_KEY = re.compile(r"^(?P<linear>roberta\.layers\.\d+\.\w+\.\w+)\.lora\.(?P<target>\w+)\.(?P<part>[AB])$")


def is_adapter(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def target_rows(target: str, out_features: int) -> slice:
    """The output rows of its nn.Linear that a target adapts."""
    _, part, parts = TARGETS[target]
    size = out_features // parts
    return slice(part * size, (part + 1) * size)


def save_adapter(path: str, meta: dict, tensors: dict, write_extra=None) -> None:
    """Write an adapter folder atomically: adapter_config.json (meta) and adapter.safetensors
    (tensors); write_extra(tmp_dir) adds the task and tokenizer files in the same commit."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_files(path) as tmp:
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump({"format": FORMAT, **meta}, f, indent=2)
        save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if write_extra is not None:
            write_extra(tmp)


def adapter_meta(path: str) -> dict:
    """adapter_config.json, checked: a ValueError names what is wrong with it."""
    file = os.path.join(path, ADAPTER_CONFIG)
    try:
        with open(file, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a readable adapter config ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f'{file}: not a roberta-scratch LoRA adapter config (no "format": {FORMAT!r})')
    missing = [k for k in ("r", "alpha", "targets", "base_model", "base_fingerprint") if k not in meta]
    if missing:
        raise ValueError(f"{file}: missing {', '.join(missing)}")
    unknown = [t for t in meta["targets"] if t not in TARGETS]
    if unknown or not (isinstance(meta["r"], int) and meta["r"] > 0):
        raise ValueError(f"{file}: r must be a positive integer and targets among {list(TARGETS)}")
    return meta


def find_base(path: str, meta: dict, base: str | None = None) -> str:
    """The base model folder: `base` if given, else the path recorded at training time, else the
    same path relative to the adapter (a tree moved as a whole)."""
    tried = [base] if base else [meta["base_model"], os.path.join(path, meta.get("base_model_relative") or "")]
    for candidate in tried:
        if candidate and os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"{path} is a LoRA adapter of {meta['base_model']}, which is not there any more: pass the base "
        "model's folder (`roberta-scratch lora merge --adapter ADAPTER --base DIR --out DIR`)"
    )


def read_tensors(path: str) -> dict:
    file = os.path.join(path, ADAPTER_WEIGHTS)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file}: not a readable safetensors file, it is damaged or truncated ({e})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{file}: the tensors {', '.join(bad[:3])} hold NaN or infinite values")
    return tensors


def merge_state_dict(sd: dict, tensors: dict, meta: dict, where: str = "the adapter") -> dict:
    """The base state dict `sd` with each (A, B) pair folded into its weight and every other
    adapter tensor (the trained head) in place. A ValueError names a tensor that fits nowhere."""
    scale = meta["alpha"] / meta["r"]
    # The adapter's head replaces the base's: an MLM base fine-tuned for classification leaves no
    # MLM head behind, as a fine-tuned folder has none (prompt-cls trains the MLM head itself).
    heads = {k.split(".")[0] + "." for k in tensors if k.startswith(HEAD_PREFIXES)}
    merged = {
        k: v for k, v in sd.items() if not (heads and k.startswith(HEAD_PREFIXES) and not k.startswith(tuple(heads)))
    }
    pairs: dict = {}
    for key, value in tensors.items():
        m = LORA_KEY.match(key)
        if m is None:
            merged[key] = value  # the task head, trained in full
            continue
        if m["target"] not in TARGETS or TARGETS[m["target"]][0] != m["linear"].split(".", 3)[3]:
            raise ValueError(f"{where}: {key} is not a LoRA target ({', '.join(TARGETS)})")
        pairs.setdefault((m["linear"], m["target"]), {})[m["part"]] = value
    for (linear, target), ab in sorted(pairs.items()):
        weight = merged.get(linear + ".weight")
        A, B = ab.get("A"), ab.get("B")
        rows = target_rows(target, weight.shape[0]) if weight is not None else None
        if A is None or B is None or weight is None or not _fits(weight[rows], A, B, meta["r"]):
            raise ValueError(f"{where}: the LoRA pair {linear}.lora.{target} does not fit the base model's {linear}")
        weight = weight.clone()
        weight[rows] += scale * (B.to(torch.float64) @ A.to(torch.float64)).to(weight.dtype)
        merged[linear + ".weight"] = weight
    return merged


def _fits(rows: torch.Tensor, A: torch.Tensor, B: torch.Tensor, r: int) -> bool:
    return A.shape == (r, rows.shape[1]) and B.shape == (rows.shape[0], r) and rows.is_floating_point()


def describe(meta: dict) -> str:
    """One line for the log: r=8, alpha 16 (scale 2) on query, value."""
    scale = meta["alpha"] / meta["r"]
    return f"r={meta['r']}, alpha {meta['alpha']:g} (scale {scale:g}) on {', '.join(meta['targets'])}"
