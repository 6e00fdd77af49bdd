"""Key maps between checkpoint formats: this project's, Hugging Face's and fairseq's.

Each foreign format has one explicit key map onto our state dict, written as
    our key  ->  their key
with "{}" standing for the layer index. A tuple of their keys is concatenated
along dim 0 (their separate query/key/value -> our fused qkv), and split back
on the way out. Keys of theirs that we deliberately drop are listed with why.

Our canonical state dict is RobertaForMaskedLM's and friends': encoder keys
under "roberta.", head keys ("lm_head.", "classifier.", "qa_outputs.", and
RobertaForPreTraining's next-sentence head "nsp.") at the top level. A file may
hold several heads at once; each model class takes the keys it has and says
which it ignored.

Everything here maps a state dict (or a config) to another: no files. Reading and
writing them is checkpoints/formats.py's job, and loading into a model is model.py's.
"""

from __future__ import annotations

import re
import warnings
from functools import partial

import torch

from ..config import RobertaConfig

ENCODER_PREFIX = "roberta."
HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.", "nsp.")
# RobertaForPreTraining's next-sentence head (pooler + classifier): no Hugging Face RoBERTa
# class has one, so an export drops it, with a warning, and keeps the encoder and the MLM head.
NSP_PREFIX = "nsp."

# ----------------------------------------------------------------------------- key maps

# ours (without the "roberta." prefix) <- Hugging Face (without its "roberta." prefix).
HF_ENCODER_MAP = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    "layers.{}.attn.qkv.weight": (
        "encoder.layer.{}.attention.self.query.weight",
        "encoder.layer.{}.attention.self.key.weight",
        "encoder.layer.{}.attention.self.value.weight",
    ),
    "layers.{}.attn.qkv.bias": (
        "encoder.layer.{}.attention.self.query.bias",
        "encoder.layer.{}.attention.self.key.bias",
        "encoder.layer.{}.attention.self.value.bias",
    ),
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
    "layers.{}.attn.qkv.weight": (
        "layers.{}.self_attn.q_proj.weight",
        "layers.{}.self_attn.k_proj.weight",
        "layers.{}.self_attn.v_proj.weight",
    ),
    "layers.{}.attn.qkv.bias": (
        "layers.{}.self_attn.q_proj.bias",
        "layers.{}.self_attn.k_proj.bias",
        "layers.{}.self_attn.v_proj.bias",
    ),
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
    r"|fc2_weight|fc2_bias|norm1_weight|norm1_bias|norm2_weight|norm2_bias)$)"
)


def _at_layer(key: str, layer: int | None) -> str:
    return key if layer is None else key.format(layer)


def expand(key_map: dict, num_layers: int) -> dict:
    """Replace "{}" by each layer index: {ours: theirs} with concrete keys."""
    out = {}
    for ours, theirs in key_map.items():
        layers = range(num_layers) if "{}" in ours else [None]
        for i in layers:
            fill = partial(_at_layer, layer=i)
            out[fill(ours)] = (
                None
                if theirs is None
                else tuple(fill(t) for t in theirs)
                if isinstance(theirs, tuple)
                else fill(theirs)
            )
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
            for key, part in zip(theirs, tensor.chunk(len(theirs), dim=0), strict=True):
                out[ENCODER_PREFIX + key] = part.contiguous()
        else:
            out[ENCODER_PREFIX + theirs] = tensor
    for ours, theirs in HF_HEAD_MAP.items():
        if ours in sd:
            out[theirs] = sd.pop(ours)
    nsp = sorted(k for k in sd if k.startswith(NSP_PREFIX))
    if nsp:
        warnings.warn(
            f"dropping {nsp}: the next-sentence head of RobertaForPreTraining, which no Hugging Face "
            "RoBERTa class has; the encoder and the MLM head are exported",
            stacklevel=3,
        )
        for k in nsp:
            del sd[k]
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


def fairseq_to_ours(sd: dict, num_layers: int, classification_head: str | None = None) -> dict:
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
        for name, part in zip(("q_proj", "k_proj", "v_proj"), sd.pop(key).chunk(3, dim=0), strict=True):
            sd[f"{stem}.{name}.{kind}"] = part

    embed = sd.get(FAIRSEQ_SENTENCE_ENCODER + "embed_tokens.weight")
    lm_weight = sd.get("encoder.lm_head.weight")
    if embed is not None and lm_weight is not None and not torch.equal(embed, lm_weight):
        raise ValueError(
            "fairseq checkpoint has an LM head weight that is not tied to the embeddings "
            "(untie_weights_roberta); this architecture ties them"
        )
    for k in [k for k in sd if FAIRSEQ_DROPPED.search(k)]:
        del sd[k]

    out = {}
    for ours, theirs in expand(FAIRSEQ_ENCODER_MAP, num_layers).items():
        if theirs is None:  # the token-type row: zeros, as the original conversion does
            out[ENCODER_PREFIX + ours] = torch.zeros(1, embed.shape[1], dtype=embed.dtype)
            continue
        theirs = (
            tuple(FAIRSEQ_SENTENCE_ENCODER + t for t in theirs)
            if isinstance(theirs, tuple)
            else FAIRSEQ_SENTENCE_ENCODER + theirs
        )
        out[ENCODER_PREFIX + ours] = _take(sd, theirs, source="fairseq")
    if all(v in sd for v in FAIRSEQ_LM_HEAD_MAP.values()):
        for ours, theirs in FAIRSEQ_LM_HEAD_MAP.items():
            out[ours] = sd.pop(theirs)

    heads = sorted({k.split(".")[1] for k in sd if k.startswith("classification_heads.")})
    if heads:
        name = classification_head or (heads[0] if len(heads) == 1 else None)
        if name not in heads:
            raise ValueError(
                f"fairseq checkpoint has classification heads {heads}; choose one with "
                f"classification_head=... (got {classification_head!r})"
            )
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
        raise ValueError(
            "fairseq checkpoint scales embeddings by sqrt(dim) (no_scale_embedding=False); RoBERTa does not"
        )
    vocab, hidden = sd[ENCODER_PREFIX + "embeddings.word_embeddings.weight"].shape
    act = get("activation_fn", "gelu")
    if get("encoder_attention_heads") is None:  # the one number the weights cannot tell
        raise ValueError(
            "fairseq checkpoint's config has no encoder_attention_heads (the weights do not say "
            "how the attention is split into heads)"
        )
    layers = len({k.split(".")[2] for k in sd if k.startswith(ENCODER_PREFIX + "layers.")})
    return RobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=int(get("encoder_layers", layers)),
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


def fairseq_vocab(symbols: list[str], gpt2_encoder: dict[str, int]) -> dict[str, int]:
    """The byte-level BPE vocabulary (token -> model id) of a fairseq RoBERTa.

    fairseq numbers tokens by its dict.txt: <s> <pad> </s> <unk> take 0..3, line i of the
    dict takes 4 + i, <mask> comes last. Each line names a GPT-2 id (fairseq's BPE step
    turns text into GPT-2 ids written as numbers); GPT-2's encoder.json gives its token
    string. Other symbols (madeupword0000, ...) stand for themselves.
    """
    token_of = {i: token for token, i in gpt2_encoder.items()}
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i, symbol in enumerate(symbols):
        token = token_of[int(symbol)] if symbol.isdigit() and int(symbol) in token_of else symbol
        vocab.setdefault(token, 4 + i)
    vocab["<mask>"] = 4 + len(symbols)
    return vocab


def normalise_prefix(sd: dict) -> dict:
    """Give encoder keys the "roberta." prefix (a bare RobertaModel saves them without)."""
    return {k if k.startswith((ENCODER_PREFIX,) + HEAD_PREFIXES) else ENCODER_PREFIX + k: v for k, v in sd.items()}
