"""Checkpoint formats: this project's, Hugging Face's and fairseq's.

Each foreign format has one explicit key map onto our state dict, written as
    our key  ->  their key
with "{}" standing for the layer index. A tuple of their keys is concatenated
along dim 0 (their separate query/key/value -> our fused qkv), and split back
on the way out. Keys of theirs that we deliberately drop are listed with why.

Our canonical state dict is RobertaForMaskedLM's and friends': encoder keys
under "roberta.", head keys ("lm_head.", "classifier.", "qa_outputs.") at the
top level. A file may hold several heads at once; each model class takes the
keys it has and says which it ignored.

Loading never unpickles arbitrary objects: safetensors, or torch.load with
weights_only=True and, for fairseq's configs, an allowlist of inert stand-ins.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import tempfile
import typing
import warnings
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from .config import RobertaConfig

ENCODER_PREFIX = "roberta."
HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.")

# ----------------------------------------------------------------------------- key maps

# ours (without the "roberta." prefix) <- Hugging Face (without its "roberta." prefix).
HF_ENCODER_MAP = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    "layers.{}.attn.qkv.weight": ("encoder.layer.{}.attention.self.query.weight",
                                  "encoder.layer.{}.attention.self.key.weight",
                                  "encoder.layer.{}.attention.self.value.weight"),
    "layers.{}.attn.qkv.bias": ("encoder.layer.{}.attention.self.query.bias",
                                "encoder.layer.{}.attention.self.key.bias",
                                "encoder.layer.{}.attention.self.value.bias"),
    "layers.{}.attn.proj.weight": "encoder.layer.{}.attention.output.dense.weight",
    "layers.{}.attn.proj.bias": "encoder.layer.{}.attention.output.dense.bias",
    "layers.{}.attn_norm.weight": "encoder.layer.{}.attention.output.LayerNorm.weight",
    "layers.{}.attn_norm.bias": "encoder.layer.{}.attention.output.LayerNorm.bias",
    "layers.{}.ffn.fc1.weight": "encoder.layer.{}.intermediate.dense.weight",
    "layers.{}.ffn.fc1.bias": "encoder.layer.{}.intermediate.dense.bias",
    "layers.{}.ffn.fc2.weight": "encoder.layer.{}.output.dense.weight",
    "layers.{}.ffn.fc2.bias": "encoder.layer.{}.output.dense.bias",
    "layers.{}.ffn_norm.weight": "encoder.layer.{}.output.LayerNorm.weight",
    "layers.{}.ffn_norm.bias": "encoder.layer.{}.output.LayerNorm.bias",
}
HF_HEAD_MAP = {
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.norm.weight": "lm_head.layer_norm.weight",
    "lm_head.norm.bias": "lm_head.layer_norm.bias",
    "lm_head.bias": "lm_head.bias",
    "classifier.dense.weight": "classifier.dense.weight",  # sequence classification
    "classifier.dense.bias": "classifier.dense.bias",
    "classifier.out_proj.weight": "classifier.out_proj.weight",
    "classifier.out_proj.bias": "classifier.out_proj.bias",
    "classifier.weight": "classifier.weight",  # token classification
    "classifier.bias": "classifier.bias",
    "qa_outputs.weight": "qa_outputs.weight",
    "qa_outputs.bias": "qa_outputs.bias",
}
HF_DROPPED = {
    "lm_head.decoder.weight": "tied to the word embeddings",
    "lm_head.decoder.bias": "the same parameter as lm_head.bias",
    "roberta.embeddings.position_ids": "a buffer of arange(max_positions)",
    "roberta.embeddings.token_type_ids": "a buffer of zeros",
    "roberta.pooler.dense.weight": "BERT's pooler, which no RoBERTa head uses",
    "roberta.pooler.dense.bias": "BERT's pooler, which no RoBERTa head uses",
}

# ours (without the "roberta." prefix) <- fairseq >= 0.10 (RobertaModel.encoder.sentence_encoder).
FAIRSEQ_ENCODER_MAP = {
    "embeddings.word_embeddings.weight": "embed_tokens.weight",
    "embeddings.position_embeddings.weight": "embed_positions.weight",
    "embeddings.token_type_embeddings.weight": None,  # fairseq has no token types: a zero row
    "embeddings.norm.weight": "layernorm_embedding.weight",
    "embeddings.norm.bias": "layernorm_embedding.bias",
    "layers.{}.attn.qkv.weight": ("layers.{}.self_attn.q_proj.weight",
                                  "layers.{}.self_attn.k_proj.weight",
                                  "layers.{}.self_attn.v_proj.weight"),
    "layers.{}.attn.qkv.bias": ("layers.{}.self_attn.q_proj.bias",
                                "layers.{}.self_attn.k_proj.bias",
                                "layers.{}.self_attn.v_proj.bias"),
    "layers.{}.attn.proj.weight": "layers.{}.self_attn.out_proj.weight",
    "layers.{}.attn.proj.bias": "layers.{}.self_attn.out_proj.bias",
    "layers.{}.attn_norm.weight": "layers.{}.self_attn_layer_norm.weight",
    "layers.{}.attn_norm.bias": "layers.{}.self_attn_layer_norm.bias",
    "layers.{}.ffn.fc1.weight": "layers.{}.fc1.weight",
    "layers.{}.ffn.fc1.bias": "layers.{}.fc1.bias",
    "layers.{}.ffn.fc2.weight": "layers.{}.fc2.weight",
    "layers.{}.ffn.fc2.bias": "layers.{}.fc2.bias",
    "layers.{}.ffn_norm.weight": "layers.{}.final_layer_norm.weight",
    "layers.{}.ffn_norm.bias": "layers.{}.final_layer_norm.bias",
}
FAIRSEQ_LM_HEAD_MAP = {
    "lm_head.dense.weight": "encoder.lm_head.dense.weight",
    "lm_head.dense.bias": "encoder.lm_head.dense.bias",
    "lm_head.norm.weight": "encoder.lm_head.layer_norm.weight",
    "lm_head.norm.bias": "encoder.lm_head.layer_norm.bias",
    "lm_head.bias": "encoder.lm_head.bias",
}
FAIRSEQ_CLASSIFIER_MAP = {  # classification_heads.<name>.*
    "classifier.dense.weight": "dense.weight",
    "classifier.dense.bias": "dense.bias",
    "classifier.out_proj.weight": "out_proj.weight",
    "classifier.out_proj.bias": "out_proj.bias",
}
FAIRSEQ_SENTENCE_ENCODER = "encoder.sentence_encoder."
# Old releases (fairseq 0.9, the 2019 roberta.base/large files) named things differently.
# Each rename brings an old key to the current name; fused in_proj is split separately.
FAIRSEQ_LEGACY_RENAMES = (
    (re.compile(r"^decoder\."), "encoder."),
    (re.compile(r"\.emb_layer_norm\."), ".layernorm_embedding."),
)
# fairseq 0.12 also stores copies of each layer's weights for its BetterTransformer fast
# path ("layers.N.in_proj_weight", "layers.N.fc1_weight", ...); its forward pass reads the
# ordinary modules, so the copies are dropped. Version counters are buffers.
FAIRSEQ_DROPPED = re.compile(
    r"(\.version$|_float_tensor$|^encoder\.lm_head\.weight$"
    r"|\.layers\.\d+\.(in_proj_weight|in_proj_bias|out_proj_weight|out_proj_bias|fc1_weight|fc1_bias"
    r"|fc2_weight|fc2_bias|norm1_weight|norm1_bias|norm2_weight|norm2_bias)$)")


def expand(key_map: dict, num_layers: int) -> dict:
    """Replace "{}" by each layer index: {ours: theirs} with concrete keys."""
    out = {}
    for ours, theirs in key_map.items():
        layers = range(num_layers) if "{}" in ours else [None]
        for i in layers:
            fill = (lambda k: k.format(i)) if i is not None else (lambda k: k)
            out[fill(ours)] = (None if theirs is None else
                               tuple(fill(t) for t in theirs) if isinstance(theirs, tuple) else fill(theirs))
    return out


def _take(sd: dict, theirs, *, source: str) -> torch.Tensor:
    """Pop their tensor(s) for one of our keys, concatenating a tuple along dim 0."""
    keys = theirs if isinstance(theirs, tuple) else (theirs,)
    missing = [k for k in keys if k not in sd]
    if missing:
        raise KeyError(f"{source} checkpoint is missing {missing}")
    tensors = [sd.pop(k) for k in keys]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


# ------------------------------------------------------------------------ Hugging Face

def is_hf_state_dict(sd: dict) -> bool:
    return any(".attention.self.query." in k or k.endswith("embeddings.LayerNorm.weight") for k in sd)


def hf_to_ours(sd: dict, num_layers: int) -> dict:
    """A Hugging Face roberta state dict (any head, with or without "roberta.") -> ours."""
    sd = {k if k.startswith((ENCODER_PREFIX,) + HEAD_PREFIXES) else ENCODER_PREFIX + k: v for k, v in sd.items()}
    pooler = sorted(k for k in sd if k.startswith(ENCODER_PREFIX + "pooler."))
    if pooler:
        warnings.warn(f"dropping {pooler}: BERT's pooler, which no RoBERTa head uses", stacklevel=3)
    for k in HF_DROPPED:
        sd.pop(k, None)
    out = {}
    for ours, theirs in expand(HF_ENCODER_MAP, num_layers).items():
        theirs = tuple(ENCODER_PREFIX + t for t in theirs) if isinstance(theirs, tuple) else ENCODER_PREFIX + theirs
        out[ENCODER_PREFIX + ours] = _take(sd, theirs, source="Hugging Face")
    for ours, theirs in HF_HEAD_MAP.items():
        if theirs in sd:
            out[ours] = sd.pop(theirs)
    if sd:
        raise KeyError(f"Hugging Face checkpoint has keys this converter does not know: {sorted(sd)}")
    return out


def ours_to_hf(sd: dict, num_layers: int) -> dict:
    """Our canonical state dict -> Hugging Face names (with the "roberta." prefix)."""
    sd = normalise_prefix(dict(sd))
    out = {}
    for ours, theirs in expand(HF_ENCODER_MAP, num_layers).items():
        tensor = sd.pop(ENCODER_PREFIX + ours)
        if isinstance(theirs, tuple):
            for key, part in zip(theirs, tensor.chunk(len(theirs), dim=0)):
                out[ENCODER_PREFIX + key] = part.contiguous()
        else:
            out[ENCODER_PREFIX + theirs] = tensor
    for ours, theirs in HF_HEAD_MAP.items():
        if ours in sd:
            out[theirs] = sd.pop(ours)
    if sd:
        raise KeyError(f"no Hugging Face name for {sorted(sd)}")
    return out


def hf_architecture(sd: dict) -> str:
    """The transformers class a canonical state dict is for, judged by its heads."""
    if "qa_outputs.weight" in sd:
        return "RobertaForQuestionAnswering"
    if "classifier.out_proj.weight" in sd:
        return "RobertaForSequenceClassification"
    if "classifier.weight" in sd:
        return "RobertaForTokenClassification"
    if "lm_head.bias" in sd:
        return "RobertaForMaskedLM"
    return "RobertaModel"


# ------------------------------------------------------------------------------ fairseq

def fairseq_to_ours(sd: dict, num_layers: int, classification_head: Optional[str] = None) -> dict:
    """A fairseq RobertaModel state dict (any release) -> ours.

    Old releases are first brought to current names: "decoder." -> "encoder.",
    "emb_layer_norm" -> "layernorm_embedding", and fused self_attn.in_proj_{weight,bias}
    split into q/k/v (which our fused qkv then concatenates right back).
    """
    sd = dict(sd)
    for old in list(sd):
        new = old
        for pattern, repl in FAIRSEQ_LEGACY_RENAMES:
            new = pattern.sub(repl, new)
        if new != old:
            sd[new] = sd.pop(old)
    for key in [k for k in sd if k.endswith(("self_attn.in_proj_weight", "self_attn.in_proj_bias"))]:
        stem, kind = key.rsplit(".in_proj_", 1)
        for name, part in zip(("q_proj", "k_proj", "v_proj"), sd.pop(key).chunk(3, dim=0)):
            sd[f"{stem}.{name}.{kind}"] = part

    embed = sd.get(FAIRSEQ_SENTENCE_ENCODER + "embed_tokens.weight")
    lm_weight = sd.get("encoder.lm_head.weight")
    if embed is not None and lm_weight is not None and not torch.equal(embed, lm_weight):
        raise ValueError("fairseq checkpoint has an LM head weight that is not tied to the embeddings "
                         "(untie_weights_roberta); this architecture ties them")
    for k in [k for k in sd if FAIRSEQ_DROPPED.search(k)]:
        del sd[k]

    out = {}
    for ours, theirs in expand(FAIRSEQ_ENCODER_MAP, num_layers).items():
        if theirs is None:  # the token-type row: zeros, as the original conversion does
            out[ENCODER_PREFIX + ours] = torch.zeros(1, embed.shape[1], dtype=embed.dtype)
            continue
        theirs = (tuple(FAIRSEQ_SENTENCE_ENCODER + t for t in theirs) if isinstance(theirs, tuple)
                  else FAIRSEQ_SENTENCE_ENCODER + theirs)
        out[ENCODER_PREFIX + ours] = _take(sd, theirs, source="fairseq")
    if all(v in sd for v in FAIRSEQ_LM_HEAD_MAP.values()):
        for ours, theirs in FAIRSEQ_LM_HEAD_MAP.items():
            out[ours] = sd.pop(theirs)

    heads = sorted({k.split(".")[1] for k in sd if k.startswith("classification_heads.")})
    if heads:
        name = classification_head or (heads[0] if len(heads) == 1 else None)
        if name not in heads:
            raise ValueError(f"fairseq checkpoint has classification heads {heads}; choose one with "
                             f"classification_head=... (got {classification_head!r})")
        for ours, theirs in FAIRSEQ_CLASSIFIER_MAP.items():
            out[ours] = sd.pop(f"classification_heads.{name}.{theirs}")
        for k in [k for k in sd if k.startswith("classification_heads.")]:
            del sd[k]  # the heads not chosen
    if sd:
        raise KeyError(f"fairseq checkpoint has keys this converter does not know: {sorted(sd)}")
    return out


def fairseq_config(args: dict, sd: dict) -> RobertaConfig:
    """RobertaConfig from a fairseq model config (cfg.model or the old args) and its weights."""
    def get(name, default=None):
        return args.get(name, default) if args.get(name) is not None else default

    if get("encoder_normalize_before", False):
        raise ValueError("fairseq checkpoint is pre-LN (encoder_normalize_before=True); RoBERTa is post-LN")
    if not get("no_scale_embedding", True):
        raise ValueError("fairseq checkpoint scales embeddings by sqrt(dim) (no_scale_embedding=False); "
                         "RoBERTa does not")
    vocab, hidden = sd[ENCODER_PREFIX + "embeddings.word_embeddings.weight"].shape
    act = get("activation_fn", "gelu")
    return RobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=int(get("encoder_layers")),
        num_attention_heads=int(get("encoder_attention_heads")),
        intermediate_size=sd[ENCODER_PREFIX + "layers.0.ffn.fc1.weight"].shape[0],
        hidden_act={"gelu_fast": "gelu_new", "gelu_accurate": "gelu_new"}.get(act, act),
        hidden_dropout_prob=float(get("dropout", 0.1)),
        attention_probs_dropout_prob=float(get("attention_dropout", 0.1)),
        max_position_embeddings=sd[ENCODER_PREFIX + "embeddings.position_embeddings.weight"].shape[0],
        num_labels=sd["classifier.out_proj.weight"].shape[0] if "classifier.out_proj.weight" in sd else 2,
    )


def fairseq_num_layers(sd: dict) -> int:
    layers = {int(m.group(1)) for k in sd for m in [re.search(r"sentence_encoder\.layers\.(\d+)\.", k)] if m}
    return len(layers)


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
    _inert(m, n) for m, n in (
        ("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.base", "ContainerMetadata"), ("omegaconf.base", "Metadata"),
        ("omegaconf.nodes", "AnyNode"), ("omegaconf.nodes", "StringNode"), ("omegaconf.nodes", "IntegerNode"),
        ("omegaconf.nodes", "FloatNode"), ("omegaconf.nodes", "BooleanNode"), ("omegaconf.nodes", "EnumNode"),
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
            f"{str(e).splitlines()[0][:300]})") from None


def read_fairseq(path: str, classification_head: Optional[str] = None) -> tuple[RobertaConfig, dict]:
    """(config, canonical state dict) from a fairseq model.pt."""
    ckpt = safe_torch_load(path, FAIRSEQ_SAFE_GLOBALS)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    cfg = plain(ckpt.get("cfg")) or {}
    args = (cfg.get("model") if isinstance(cfg, dict) else None) or plain(ckpt.get("args")) or {}
    sd = fairseq_to_ours(ckpt["model"], fairseq_num_layers(ckpt["model"]), classification_head)
    return fairseq_config(args, sd), sd


def read_fairseq_dict(path: str) -> int:
    """Number of model ids a fairseq dict.txt implies: 4 specials + its lines + <mask>."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for i, line in enumerate(lines):
        if len(line.split()) < 2:
            raise ValueError(f"{path}:{i + 1}: expected '<symbol> <count>', got {line.strip()!r}")
    return 4 + len(lines) + 1


# ---------------------------------------------------------------- our directory format

def normalise_prefix(sd: dict) -> dict:
    """Give encoder keys the "roberta." prefix (a bare RobertaModel saves them without)."""
    return {k if k.startswith((ENCODER_PREFIX,) + HEAD_PREFIXES) else ENCODER_PREFIX + k: v for k, v in sd.items()}


def read_state_dict(path: str) -> tuple[dict, str]:
    """(state dict, "ours" | "hf") from a directory holding model.safetensors or pytorch_model.bin."""
    st = os.path.join(path, "model.safetensors")
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        sd = load_file(st)
    elif os.path.isfile(pt):
        sd = safe_torch_load(pt)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    elif os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for shard in shards:
            sd.update(load_file(os.path.join(path, shard)))
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
    return sd, ("hf" if is_hf_state_dict(sd) else "ours")


def read_checkpoint(path: str, **config_overrides) -> tuple[RobertaConfig, dict]:
    """(config, canonical state dict) from any supported checkpoint: ours, HF dir, fairseq model.pt."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) \
            and os.path.isfile(os.path.join(path, "model.pt")):
        path = os.path.join(path, "model.pt")
    if os.path.isfile(path) and path.endswith(".pt"):
        cfg, sd = read_fairseq(path)
        return cfg.replace(**config_overrides) if config_overrides else cfg, sd
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is neither a model directory nor a fairseq .pt file")
    cfg = RobertaConfig.load(path, **config_overrides)
    sd, fmt = read_state_dict(path)
    sd = hf_to_ours(sd, cfg.num_hidden_layers) if fmt == "hf" else normalise_prefix(sd)
    return cfg, sd


def _atomic_dir_write(path: str, write) -> None:
    """Write files into a temp dir next to `path`, then move them in: no half-written checkpoint."""
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path, prefix=".tmp-") as tmp:
        names = write(tmp)
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(path, name))


def save_checkpoint(model, path: str) -> None:
    """config.json + model.safetensors (a tied weight is stored once: the decoder has none)."""
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(tmp):
        model.config.save(os.path.join(tmp, "config.json"))
        save_file(sd, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt", "model_class": type(model).__name__})
        return ["config.json", "model.safetensors"]

    _atomic_dir_write(path, write)


def save_hf(cfg: RobertaConfig, sd: dict, path: str) -> None:
    """A directory transformers loads unchanged: HF config.json + model.safetensors."""
    hf = ours_to_hf(sd, cfg.num_hidden_layers)
    hf = {k: v.contiguous() for k, v in hf.items()}
    arch = hf_architecture(sd)
    if arch == "RobertaForQuestionAnswering":  # transformers sizes qa_outputs by num_labels
        cfg = cfg.replace(num_labels=2, label_names=None)
    config = {**cfg.to_hf_dict(), "architectures": [arch]}
    if arch == "RobertaModel":  # a bare model's keys carry no prefix in HF
        hf = {k[len(ENCODER_PREFIX):]: v for k, v in hf.items()}

    def write(tmp):
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(hf, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        return ["config.json", "model.safetensors"]

    _atomic_dir_write(path, write)


def save_ours(cfg: RobertaConfig, sd: dict, path: str) -> None:
    def write(tmp):
        cfg.save(os.path.join(tmp, "config.json"))
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        return ["config.json", "model.safetensors"]

    _atomic_dir_write(path, write)


# --------------------------------------------------------------------- loading a model

def load_state(model, sd: dict, reinit_mismatched_heads: bool = False) -> None:
    """Load a canonical state dict into `model`, reporting every problem by name.

    Errors: encoder keys missing or unexpected, any shape mismatch. Warnings: a head the
    checkpoint lacks (initialised fresh, as the original does) and heads it has that this
    model does not (ignored). reinit_mismatched_heads=True also starts a head afresh whose
    shape differs (a classifier fine-tuned for another label set). Then
    load_state_dict(strict=True).
    """
    from .model import RobertaModel

    sd = normalise_prefix(sd)
    bare = isinstance(model, RobertaModel)
    if bare:
        ignored_heads = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
        sd = {k[len(ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}
    target = model.state_dict()
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    if not bare:
        ignored_heads = [k for k in unexpected if k.startswith(HEAD_PREFIXES)]
    unexpected = [k for k in unexpected if k not in ignored_heads]
    fresh = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    missing = [k for k in missing if k not in fresh]
    mismatched = [k for k in sorted(set(sd) & set(target)) if sd[k].shape != target[k].shape]
    reshaped = [k for k in mismatched if reinit_mismatched_heads and k.startswith(HEAD_PREFIXES)]
    misshaped = [k for k in mismatched if k not in reshaped]

    def shapes(keys):
        return [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}" for k in keys]

    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys: {shapes(misshaped)}")
    if problems:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    if fresh:
        warnings.warn(f"{type(model).__name__}: the checkpoint has no weights for {fresh}; they are newly "
                      "initialised. Train the model on a downstream task before using it.", stacklevel=3)
    if reshaped:
        warnings.warn(f"{type(model).__name__}: checkpoint heads of another shape are newly initialised: "
                      f"{shapes(reshaped)}. Train the model on a downstream task before using it.", stacklevel=3)
    if ignored_heads:
        warnings.warn(f"{type(model).__name__}: checkpoint weights not used by this model: {ignored_heads}",
                      stacklevel=3)
    full = {k: sd[k] if k in sd and k not in reshaped else target[k] for k in target}
    model.load_state_dict(full, strict=True)


def load_pretrained(cls, path: str, reinit_mismatched_heads: bool = False, **config_overrides):
    cfg, sd = read_checkpoint(path, **config_overrides)
    model = cls(cfg)
    load_state(model, sd, reinit_mismatched_heads)
    return model


# ---------------------------------------------------------------------- the converter

def check_against_model(cfg: RobertaConfig, sd: dict) -> None:
    """Every key the checkpoint's heads imply, with the right shape, and nothing else."""
    from .model import MODEL_CLASSES

    wanted = {}
    with torch.device("meta"):
        for name, cls in MODEL_CLASSES.items():
            if name == "RobertaModel":
                continue
            wanted.update({k: v.shape for k, v in cls(cfg).state_dict().items()})
    encoder = {k for k in wanted if k.startswith(ENCODER_PREFIX)}
    missing = sorted(encoder - set(sd))
    unknown = sorted(set(sd) - set(wanted))
    misshaped = [f"{k}: {tuple(sd[k].shape)} vs {tuple(wanted[k])}" for k in sd if k in wanted
                 and sd[k].shape != wanted[k]]
    if missing or unknown or misshaped:
        raise ValueError(f"converted checkpoint is inconsistent: missing {missing}, unknown {unknown}, "
                         f"mis-shaped {misshaped}")
