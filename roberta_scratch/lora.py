"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), for fine-tuning.

The pretrained weights stay frozen; each adapted projection learns a low-rank update instead:

    y = W x + b  +  (alpha / r) * B A dropout(x)        A: (r, in)    B: (out, r)

A starts like an nn.Linear's weight (Kaiming-uniform) and B at zero, so training starts from
exactly the pretrained model. With r = 8 on query and value, `base` trains 0.3M numbers
instead of 125M: the adapter saved (checkpoints/adapter.py) is about 1 MB plus the task head,
AdamW keeps state for those alone, and backward skips every frozen weight's gradient.

    model = RobertaForSequenceClassification.from_pretrained(path, num_labels=2)
    add_lora(model, r=8, alpha=8, targets=["query", "value"])     # freezes the encoder
    ...train...
    lora_tensors(model)   # what the adapter file holds: every (A, B) pair and the head

query, key and value share one fused matmul here (model.SelfAttention.qkv), so their updates
add to a third of its output each; the merged weight is the same one a separate-projection
model (Hugging Face's, peft's) would get, which tests/test_lora.py checks against peft.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints.adapter import LORA_KEY, TARGETS, merge_state_dict, target_rows
from .checkpoints.formats import read_adapter_parts
from .checkpoints.keymaps import hf_architecture
from .model import MODEL_CLASSES, build_model


class LoRA(nn.Module):
    """One low-rank update, (alpha / r) * B A dropout(x), for a block of a linear's output rows."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's init, as the paper and peft do
        self.scale, self.dropout = alpha / r, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)
        return (x @ self.A.t() @ self.B.t()) * self.scale


class LoRALinear(nn.Module):
    """An nn.Linear (the same frozen weight and bias Parameters, under the same names, so the
    state dict's keys do not change) plus the LoRA updates of some of its output rows, one per
    target in `lora`."""

    def __init__(self, linear: nn.Linear, targets: list[str], r: int, alpha: float, dropout: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.rows = {t: target_rows(t, self.out_features) for t in targets}
        self.lora = nn.ModuleDict(
            {t: LoRA(self.in_features, rows.stop - rows.start, r, alpha, dropout) for t, rows in self.rows.items()}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if len(self.rows) == 1 and next(iter(self.rows.values())) == slice(0, self.out_features):
            return y + next(iter(self.lora.values()))(x)  # the update covers every row (proj, fc1, fc2)
        pieces, start = [], 0  # qkv: add each target's update to its third, keep the others as they are
        for target, rows in sorted(self.rows.items(), key=lambda kv: kv[1].start):
            pieces += [y[..., start : rows.start], y[..., rows] + self.lora[target](x)]
            start = rows.stop
        pieces.append(y[..., start:])
        return torch.cat(pieces, dim=-1)


def parse_targets(spec: str | list[str]) -> list[str]:
    """--lora-targets "query,value" as a list, checked: a ValueError names an unknown target."""
    names = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [t for t in names if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        problem = f"no module is called {', '.join(unknown)}" if unknown else "no target named"
        raise ValueError(
            f"--lora-targets {spec if isinstance(spec, str) else ','.join(spec)!r}: {problem}; "
            f"a target is one of {', '.join(TARGETS)} (Hugging Face's query, key, value, attention.output.dense, "
            "intermediate.dense, output.dense)"
        )
    return sorted(set(names), key=list(TARGETS).index)


def add_lora(model: nn.Module, r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> int:
    """Freeze the encoder (model.roberta, or a bare RobertaModel) and give every layer's targeted
    projections a LoRA update. The task head is left as it was (it trains in full, as peft's
    modules_to_save). Returns the number of LoRA parameters added."""
    encoder = model.roberta if hasattr(model, "roberta") else model
    encoder.requires_grad_(False)
    added = 0
    by_linear: dict = {}
    for t in parse_targets(targets):
        by_linear.setdefault(TARGETS[t][0], []).append(t)
    for layer in encoder.layers:
        for path, names in by_linear.items():
            parent_name, attr = path.split(".")
            parent = getattr(layer, parent_name)
            wrapped = LoRALinear(getattr(parent, attr), names, r, alpha, dropout)
            setattr(parent, attr, wrapped)
            added += sum(p.numel() for p in wrapped.lora.parameters())
    return added


def lora_tensors(model: nn.Module) -> dict:
    """What an adapter file holds: every parameter that trains (the LoRA pairs and the task
    head), by its name in the model's state dict. Frozen weights are left out."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_unmerged(path: str, base: str | None = None, trust_code: bool = False, cls: type | None = None) -> nn.Module:
    """The model an adapter folder stands for, as it trained: its base (checked by fingerprint)
    with the LoRA modules added and the adapter's tensors loaded, nothing folded in. An eval
    model of class `cls` (default: the one its head's weights say); `lora merge` compares its
    outputs with the merged weights'."""
    meta, cfg, sd, tensors = read_adapter_parts(path, trust_code, base)
    head = {k: v for k, v in tensors.items() if not LORA_KEY.match(k)}
    sd = merge_state_dict(sd, head, meta, where=path)
    model = build_model(cls or MODEL_CLASSES[hf_architecture(sd)], cfg, sd)
    add_lora(model, meta["r"], meta["alpha"], meta["targets"], meta.get("dropout", 0.0))
    lora = {k: v for k, v in tensors.items() if LORA_KEY.match(k)}
    expected = {k for k in model.state_dict() if LORA_KEY.match(k)}
    if set(lora) != expected:
        missing, extra = sorted(expected - set(lora)), sorted(set(lora) - expected)
        raise ValueError(
            f"{path}: the adapter's LoRA tensors do not fit (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    model.load_state_dict(lora, strict=False)
    return model.eval()
