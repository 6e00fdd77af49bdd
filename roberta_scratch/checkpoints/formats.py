"""Checkpoint files: reading and writing this project's, Hugging Face's and fairseq's.

    read_checkpoint(path)         -> (config, canonical state dict), whatever the format
    save_ours(cfg, sd, path)      config.json + model.safetensors, this project's names
    save_hf(cfg, sd, path)        a directory transformers loads unchanged

Loading never unpickles arbitrary objects: safetensors, or torch.load with
weights_only=True and, for fairseq's configs, an allowlist of inert stand-ins.
Writing goes through fileio.atomic_files: a directory holds the old checkpoint or
the new one, never half of one. The key maps are in checkpoints/keymaps.py; loading a state
dict into a model is in model.py.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pickle
import typing

import torch
from safetensors.torch import load_file, save_file

from ..config import RobertaConfig
from ..fileio import atomic_files, iter_lines, quote_line
from . import adapter
from .keymaps import (
    ENCODER_PREFIX,
    fairseq_config,
    fairseq_num_layers,
    fairseq_to_ours,
    hf_architecture,
    hf_to_ours,
    is_hf_state_dict,
    normalise_prefix,
    ours_to_hf,
)


def weights_fingerprint(sd: dict) -> str:
    """sha256 over a canonical state dict: every key, dtype, shape and byte, in key order.

    Computed from the weights rather than a file, so the same model converted to Hugging Face's
    layout (or read from fairseq's model.pt) has the same fingerprint as ours."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------- safe unpickling


class _Inert:
    """Stands in for a class a checkpoint's config was pickled with; keeps only its state."""

    def __init__(self, *args, **kwargs):
        self.args, self.state = args, kwargs or None

    def __setstate__(self, state):
        self.state = state


def _inert(module: str, name: str) -> type:
    cls = type(name, (_Inert,), {"__module__": module, "__qualname__": name})
    return cls


# What fairseq puts beside the tensors: an argparse.Namespace (old releases, and cfg.model
# in 0.12) or an omegaconf DictConfig (a config re-saved after loading). omegaconf is not a
# dependency, and its classes need not be trusted: each is replaced by an inert stand-in
# that runs no code of the checkpoint's. The plain types appear in omegaconf's metadata.
FAIRSEQ_SAFE_GLOBALS = [argparse.Namespace, dict, list, int, collections.defaultdict, typing.Any] + [
    _inert(m, n)
    for m, n in (
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.base", "Metadata"),
        ("omegaconf.nodes", "AnyNode"),
        ("omegaconf.nodes", "StringNode"),
        ("omegaconf.nodes", "IntegerNode"),
        ("omegaconf.nodes", "FloatNode"),
        ("omegaconf.nodes", "BooleanNode"),
        ("omegaconf.nodes", "EnumNode"),
    )
]


def plain(obj):
    """Turn stand-ins, Namespaces and containers into plain dicts/lists/values."""
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, _Inert):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:  # a DictConfig, ListConfig or value node
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        return None
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def safe_torch_load(path: str, extra_globals=()) -> dict:
    """torch.load that refuses any pickle needing code beyond tensors and `extra_globals`."""
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load {path}: it is a pickle that asks for objects beyond tensors, which could "
            f"run arbitrary code. If you trust it, convert it to safetensors first. (torch said: "
            f"{str(e).splitlines()[0][:300]})"
        ) from None


def read_fairseq(path: str, classification_head: str | None = None) -> tuple[RobertaConfig, dict]:
    """(config, canonical state dict) from a fairseq model.pt."""
    ckpt = safe_torch_load(path, FAIRSEQ_SAFE_GLOBALS)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    cfg = plain(ckpt.get("cfg")) or {}
    args = (cfg.get("model") if isinstance(cfg, dict) else None) or plain(ckpt.get("args")) or {}
    sd = fairseq_to_ours(ckpt["model"], fairseq_num_layers(ckpt["model"]), classification_head)
    return fairseq_config(args, sd), sd


def read_fairseq_dict(path: str) -> list[str]:
    """The symbols of a fairseq dict.txt, in order: model id 4 + i is symbols[i]."""
    symbols = []
    for i, line in enumerate((line for line in iter_lines([path]) if line.strip()), start=1):
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{i}: expected '<symbol> <count>', got {quote_line(path, line.strip())}")
        symbols.append(parts[0])
    return symbols


# ---------------------------------------------------------------- our directory format


def read_state_dict(path: str) -> tuple[dict, str]:
    """(state dict, "ours" | "hf") from a directory holding model.safetensors or pytorch_model.bin."""
    st = os.path.join(path, "model.safetensors")
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        sd = _load_safetensors(st)
    elif os.path.isfile(pt):
        sd = safe_torch_load(pt)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    elif os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for shard in shards:
            sd.update(_load_safetensors(os.path.join(path, shard)))
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
    return sd, ("hf" if is_hf_state_dict(sd) else "ours")


def _load_safetensors(path: str) -> dict:
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error type for a bad header or a short file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a readable safetensors file, it is damaged or truncated ({reason[:200]})"
        ) from None


# The folders a `finetune` or `pretrain` run leaves its models in, best first.
RUN_MODEL_DIRS = ("best", "model")


def find_model_dir(path: str) -> tuple[str, str | None]:
    """(the model folder, a note) for a model folder, a fairseq .pt, or a run folder: a run
    folder gives its best/ (the best on the eval set) or else its model/, with a note saying
    which; the note is None otherwise."""

    def is_model(p: str) -> bool:  # a model folder, or a LoRA adapter folder (checkpoints/adapter.py)
        return os.path.isfile(os.path.join(p, "config.json")) or os.path.isfile(os.path.join(p, "adapter_config.json"))

    if os.path.isfile(path) or is_model(path) or os.path.isfile(os.path.join(path, "model.pt")):
        return path, None
    for name in RUN_MODEL_DIRS:
        candidate = os.path.join(path, name)
        if is_model(candidate):
            return candidate, f"{path} is a run folder: using {candidate}"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} does not exist")
    raise FileNotFoundError(
        f"{path} holds no model: no config.json there, nor in a run's {' or '.join(n + '/' for n in RUN_MODEL_DIRS)}"
    )


def read_checkpoint(path: str, trust_code: bool = False, **config_overrides) -> tuple[RobertaConfig, dict]:
    """(config, canonical state dict) from any supported checkpoint: ours, HF dir, fairseq model.pt.
    trust_code: let config.json name its kernels as MODULE:FUNCTION (RobertaConfig.load).
    A LoRA adapter folder gives its base model with the adapter merged in (checkpoints/adapter.py)."""
    if adapter.is_adapter(path) and not os.path.isfile(os.path.join(path, "config.json")):
        return read_adapter(path, trust_code=trust_code, **config_overrides)
    if (
        os.path.isdir(path)
        and not os.path.isfile(os.path.join(path, "config.json"))
        and os.path.isfile(os.path.join(path, "model.pt"))
    ):
        path = os.path.join(path, "model.pt")
    if os.path.isfile(path) and path.endswith(".pt"):
        cfg, sd = read_fairseq(path)
        cfg = cfg.replace(**config_overrides) if config_overrides else cfg
    elif not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is neither a model directory nor a fairseq .pt file")
    else:
        cfg = RobertaConfig.load(path, trust_code=trust_code, **config_overrides)
        sd, fmt = read_state_dict(path)
        sd = hf_to_ours(sd, cfg.num_hidden_layers) if fmt == "hf" else normalise_prefix(sd)
    bad = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # fill-mask would print nan%, and convert would copy the damage on
        raise ValueError(
            f"{path}: the weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or "
            "infinite values: the checkpoint is damaged (a run that diverged?)"
        )
    return cfg, sd


def read_adapter(path: str, trust_code: bool = False, base: str | None = None, **config_overrides):
    """(config, state dict) of the model an adapter folder stands for: its base with every
    low-rank update folded in and the trained head in place, as read_checkpoint gives them."""
    meta, cfg, sd, tensors = read_adapter_parts(path, trust_code, base)
    cfg = cfg.replace(**config_overrides) if config_overrides else cfg
    return cfg, adapter.merge_state_dict(sd, tensors, meta, where=path)


def read_adapter_parts(path: str, trust_code: bool = False, base: str | None = None):
    """(meta, config, base state dict, adapter tensors), the base checked by fingerprint: an
    adapter fits only the exact weights it was trained against."""
    meta = adapter.adapter_meta(path)
    base_path = adapter.find_base(path, meta, base)
    cfg, sd = read_checkpoint(base_path, trust_code=trust_code)
    if weights_fingerprint(sd) != meta["base_fingerprint"]:
        raise ValueError(
            f"{base_path} is not the model the adapter {path} was trained on (its weights differ: "
            "fine-tuned or converted since?); an adapter only fits the exact weights it was trained against"
        )
    return meta, cfg.replace(**meta.get("config_overrides", {})), sd, adapter.read_tensors(path)


def save_hf(cfg: RobertaConfig, sd: dict, path: str) -> None:
    """A directory transformers loads unchanged: HF config.json + model.safetensors."""
    hf = ours_to_hf(sd, cfg.num_hidden_layers)
    hf = {k: v.contiguous() for k, v in hf.items()}
    arch = hf_architecture(sd)
    if arch == "RobertaForQuestionAnswering":  # transformers sizes qa_outputs by num_labels
        cfg = cfg.replace(num_labels=2, label_names=None)
    config = {**cfg.to_hf_dict(), "architectures": [arch]}
    if arch == "RobertaModel":  # a bare model's keys carry no prefix in HF
        hf = {k[len(ENCODER_PREFIX) :]: v for k, v in hf.items()}

    with atomic_files(path) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(hf, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})


def save_ours(cfg: RobertaConfig, sd: dict, path: str, model_class: str | None = None) -> None:
    """config.json + model.safetensors in this project's names (a tied weight is stored once:
    the decoder has none). `model_class` is recorded in the file's metadata."""
    metadata = {"format": "pt", **({"model_class": model_class} if model_class else {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    with atomic_files(path) as tmp:
        cfg.save(os.path.join(tmp, "config.json"))
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata=metadata)
