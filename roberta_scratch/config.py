"""RobertaConfig: every hyper-parameter of the architecture, in one dataclass.

The field names are those of the original (Hugging Face's RobertaConfig), so a
`config.json` shipped with an official checkpoint maps onto this class field
for field. `RobertaConfig.preset(name)` gives the standard sizes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
IGNORE_INDEX = -100  # label value for "nothing to predict here", as in torch's cross_entropy


@dataclass
class RobertaConfig:
    # 50,265 = 4 specials (<s> <pad> </s> <unk>) + 50,260 GPT-2 BPE tokens from fairseq's
    # dict.txt (the last 3 of them padding words that make the count a multiple of 8) + <mask>.
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # 4 x hidden, as in BERT
    hidden_act: str = "gelu"  # the exact erf GELU; "gelu_new" is the tanh approximation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # 514 = 512 real positions + padding_idx + 1: position ids start at pad_token_id + 1
    # (see RobertaEmbeddings), so rows 0 and 1 are never used by real tokens.
    max_position_embeddings: int = 514
    type_vocab_size: int = 1  # RoBERTa dropped BERT's segment embeddings; one row stays for compatibility
    layer_norm_eps: float = 1e-5  # fairseq's default; BERT used 1e-12
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    initializer_range: float = 0.02
    # Which attention implementation runs: a name in kernels' registry (eager, sdpa, triton,
    # flex, or one you registered) or MODULE:FUNCTION; see model.SelfAttention. Not part of the
    # architecture: any backend loads any checkpoint.
    attention: str = "sdpa"
    # The residual + dropout + LayerNorm step, likewise: None means triton's with attention="triton",
    # else torch's.
    layer_norm: str | None = None
    # Task heads. classifier_dropout=None means "use hidden_dropout_prob", as in the original.
    classifier_dropout: float | None = None
    num_labels: int = 2
    problem_type: str | None = None
    label_names: list | None = field(default=None)
    # Structured pruning (roberta-scratch prune): {layer: [head, ...]} of the heads removed, in the
    # original numbering, as transformers 4.x records them. Layer i keeps
    # num_attention_heads - len(pruned_heads[i]) heads of head_dim each.
    pruned_heads: dict | None = field(default=None)
    # Int8 quantization (roberta-scratch quantize): what the weights hold, e.g.
    # {"method": "dynamic-int8", "embeddings": "int8"}; None for a float model. See int8.py.
    quantization: dict | None = field(default=None)

    def __post_init__(self):
        if isinstance(self.pruned_heads, dict):  # JSON object keys are strings; empty layers say nothing
            self.pruned_heads = _normalise_pruned_heads(self.pruned_heads)
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"invalid RobertaConfig: {msg}")

        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "num_labels",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive int, got {value!r}",
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            need(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{name} must be a number, got {type(value).__name__} {value!r}",
            )
        for name in ("hidden_act", "attention"):
            value = getattr(self, name)
            need(isinstance(value, str), f"{name} must be a string, got {type(value).__name__} {value!r}")
        need(
            self.classifier_dropout is None
            or (isinstance(self.classifier_dropout, (int, float)) and not isinstance(self.classifier_dropout, bool)),
            f"classifier_dropout must be a number or null, got {self.classifier_dropout!r}",
        )
        need(
            self.label_names is None
            or (isinstance(self.label_names, list) and all(isinstance(n, str) for n in self.label_names)),
            f"label_names must be a list of strings, got {self.label_names!r}",
        )
        need(
            self.hidden_size % self.num_attention_heads == 0,
            f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads ({self.num_attention_heads})",
        )
        need(self.hidden_act in ACTIVATIONS, f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        need(
            self.layer_norm is None or isinstance(self.layer_norm, str),
            f"layer_norm must be a string or null, got {type(self.layer_norm).__name__} {self.layer_norm!r}",
        )
        # subtle: the kernel names are only checked as strings here. They are resolved in the
        # registry when a model is built (model.SelfAttention), because MODULE:FUNCTION imports
        # a module, and reading a config must never run code (see load's trust_code).
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            need(0.0 <= p < 1.0, f"{name} must be in [0, 1), got {p}")
        need(
            self.classifier_dropout is None or 0.0 <= self.classifier_dropout < 1.0,
            f"classifier_dropout must be None or in [0, 1), got {self.classifier_dropout}",
        )
        need(self.layer_norm_eps > 0, f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            idx = getattr(self, name)
            need(
                isinstance(idx, int) and 0 <= idx < self.vocab_size,
                f"{name} ({idx}) must be an id in [0, vocab_size={self.vocab_size})",
            )
        need(
            self.max_position_embeddings > self.pad_token_id + 1,
            f"max_position_embeddings ({self.max_position_embeddings}) leaves no room for a real "
            f"token: positions start at pad_token_id + 1 = {self.pad_token_id + 1}",
        )
        self._validate_deploy_fields(need)
        need(self.problem_type in PROBLEM_TYPES, f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        need(
            self.label_names is None or len(self.label_names) == self.num_labels,
            f"label_names has {len(self.label_names or [])} names but num_labels is {self.num_labels}",
        )

    def _validate_deploy_fields(self, need) -> None:
        """pruned_heads and quantization: what prune and quantize write."""
        need(
            self.pruned_heads is None or isinstance(self.pruned_heads, dict),
            f"pruned_heads must be an object {{layer: [heads]}} or null, got {self.pruned_heads!r}",
        )
        for layer, heads in (self.pruned_heads or {}).items():
            need(
                isinstance(layer, int) and 0 <= layer < self.num_hidden_layers,
                f"pruned_heads names layer {layer!r}, but the model has layers 0..{self.num_hidden_layers - 1}",
            )
            need(
                all(isinstance(h, int) and 0 <= h < self.num_attention_heads for h in heads),
                f"pruned_heads[{layer}] = {heads!r}: heads are numbered 0..{self.num_attention_heads - 1}",
            )
            need(
                len(heads) < self.num_attention_heads,
                f"pruned_heads[{layer}] removes all {self.num_attention_heads} heads of layer {layer}: "
                "a layer needs at least one (remove the layer instead)",
            )
        q = self.quantization
        need(
            q is None or (isinstance(q, dict) and q.get("method") in QUANT_METHODS),
            f"quantization must be null or an object whose method is one of {QUANT_METHODS}, got {q!r}",
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def heads_in_layer(self, layer: int) -> int:
        """How many attention heads layer `layer` has after pruning."""
        return self.num_attention_heads - len((self.pruned_heads or {}).get(layer, ()))

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table can hold (512 for 514 rows)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides) -> RobertaConfig:
        """A standard size. Parameter counts are RobertaForMaskedLM's with the 50,265 vocab;
        about vocab_size * hidden_size of each is the (tied) word embedding."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes) -> RobertaConfig:
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RobertaConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown RobertaConfig fields: {unknown}")
        return cls(**d)

    def to_hf_dict(self) -> dict:
        """A Hugging Face `config.json` that transformers' RobertaConfig loads unchanged."""
        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("attention", "layer_norm", "label_names", "problem_type", "classifier_dropout", "pruned_heads")
        }
        if self.quantization is not None:
            raise ValueError(
                f"an int8 model ({self.quantization['method']}) has no Hugging Face form: convert the float "
                "model it was quantized from"
            )
        del d["quantization"]
        if self.pruned_heads:  # transformers 4.x prunes these heads when it builds the model
            d["pruned_heads"] = {str(k): v for k, v in self.pruned_heads.items()}
        d.update(model_type="roberta", position_embedding_type="absolute", classifier_dropout=self.classifier_dropout)
        if self.problem_type is not None:
            d["problem_type"] = self.problem_type
        names = self.label_names or [f"LABEL_{i}" for i in range(self.num_labels)]
        d["id2label"] = {str(i): n for i, n in enumerate(names)}
        d["label2id"] = {n: i for i, n in enumerate(names)}
        del d["num_labels"]  # transformers derives it from id2label
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> RobertaConfig:
        """Read a Hugging Face roberta `config.json` dict (extra HF-only keys are ignored)."""
        if d.get("model_type", "roberta") not in ("roberta", "xlm-roberta", "camembert"):
            raise ValueError(f"config.json has model_type {d.get('model_type')!r}, not a RoBERTa model")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {d['position_embedding_type']!r} is not supported "
                "(only RoBERTa's absolute positions)"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {
            "attention",
            "layer_norm",
            "label_names",
            "num_labels",
            "quantization",
        }
        kwargs = {k: d[k] for k in names if d.get(k) is not None}
        id2label = d.get("id2label")
        if id2label:
            ordered = [id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(len(id2label))]
            kwargs["num_labels"] = len(ordered)
            if ordered != [f"LABEL_{i}" for i in range(len(ordered))]:
                kwargs["label_names"] = ordered
        elif "num_labels" in d:
            kwargs["num_labels"] = d["num_labels"]
        kwargs.update(overrides)
        return cls(**kwargs)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"format": CONFIG_FORMAT, **self.to_dict()}, f, indent=2)

    @classmethod
    def load(cls, path: str, trust_code: bool = False, **overrides) -> RobertaConfig:
        """Read this project's config.json or a Hugging Face one (told apart by the `format` key).

        subtle: `attention` and `layer_norm` may name code as MODULE:FUNCTION, which building the
        model imports. A name read from a file is taken only when it is a plain name, looked up
        among the registered implementations; MODULE:FUNCTION from a file needs trust_code=True
        (`--trust-code`), as Hugging Face's trust_remote_code. Overrides come from the caller,
        not the file, so they are never refused.
        """
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        if not trust_code:
            for key in CODE_FIELDS:
                value = d.get(key)
                if key not in overrides and isinstance(value, str) and ":" in value:
                    raise UntrustedCode(
                        f"{path}: {key} is {value!r}, which names code to import (MODULE:FUNCTION); "
                        "a name read from a file must be a registered implementation. If you "
                        "trust this file, pass trust_code=True (--trust-code on the command line)"
                    )
        try:
            if d.pop("format", None) == CONFIG_FORMAT:
                return cls.from_dict({**d, **overrides})
            return cls.from_hf_dict(d, **overrides)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None


def _normalise_pruned_heads(d: dict) -> dict | None:
    """{"3": [2, 0, 2]} -> {3: [0, 2]}: int layers (JSON keys are strings), sorted unique heads,
    layers with none removed left out; None when nothing is pruned. Odd values pass through for
    validate() to name."""
    out = {}
    for k, v in d.items():
        layer = int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k
        heads = sorted(set(v)) if isinstance(v, (list, tuple)) and all(isinstance(h, int) for h in v) else v
        if heads != []:
            out[layer] = heads
    return out or None


QUANT_METHODS = ("dynamic-int8", "weight-only-int8")
CONFIG_FORMAT = "roberta-scratch"
CODE_FIELDS = ("attention", "layer_norm")  # may name MODULE:FUNCTION, which building a model imports


class UntrustedCode(ValueError):
    """A file names code to import and the caller did not opt in (trust_code=True / --trust-code)."""


def add_trust_code_argument(parser) -> None:
    """`--trust-code`, for every command that reads a config.json (RobertaConfig.load)."""
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="let the model's config.json name its kernels as MODULE:FUNCTION, which imports that "
        "module (off: a file runs no code, as Hugging Face's trust_remote_code)",
    )


PRESETS = {
    # 6.9M parameters (6.4M of them the embedding table): unit tests and CPU smoke runs.
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    # 38.9M parameters: pretraining experiments on one GPU or a patient CPU.
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048),
    # 124.7M parameters: roberta-base.
    "base": dict(),
    # 355.4M parameters: roberta-large.
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
