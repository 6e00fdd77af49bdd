"""Looking inside a model: masked-token predictions, hidden states per layer, attention maps.

roberta-scratch fill-mask --model DIR "The capital of France is <mask>."
roberta-scratch features --model DIR "some text" --layers all --out feats.npy
roberta-scratch attention --model DIR "some text" --out attn.png
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch

from .checkpoints.formats import find_model_dir
from .model import RobertaForMaskedLM, RobertaModel
from .tokenization.byte_level import load_tokenizer


def _load(path: str, trust_code: bool = False, **overrides):
    path, note = find_model_dir(path)
    if note:
        warnings.warn(note, stacklevel=3)
    with warnings.catch_warnings():  # a fine-tuned or MLM dir has a head the bare encoder ignores
        warnings.simplefilter("ignore")
        model = RobertaModel.from_pretrained(path, trust_code=trust_code, **overrides).eval()
    return _tokenizer(path), model


def _tokenizer(path: str):
    try:
        return load_tokenizer(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}: the model's tokenizer belongs in its folder (roberta-scratch convert carries it across)"
        ) from None


def _encode(tok, text: str, limit: int) -> list[int]:
    """The ids of one text, cut to `limit` tokens with a warning when longer."""
    ids = tok.encode(text)
    if len(ids) > limit:
        warnings.warn(
            f"the text is {len(ids)} tokens, longer than the {limit} this model takes: only the first {limit} are used",
            stacklevel=3,
        )
        ids = ids[: limit - 1] + [tok.sep_token_id]
    return ids


@torch.no_grad()
def fill_mask(path: str, texts: list[str], top_k: int = 5, trust_code: bool = False) -> list[dict]:
    """For each text, the top-k tokens and probabilities at each <mask> in it.

    >>> fill_mask("roberta-base/", ["The capital of France is <mask>."], top_k=1)
    [{'text': 'The capital of France is <mask>.', 'masks': [[(' Paris', 0.3...)]]}]
    """
    path, note = find_model_dir(path)
    if note:
        warnings.warn(note, stacklevel=2)
    tok = _tokenizer(path)
    model = RobertaForMaskedLM.from_pretrained(path, trust_code=trust_code).eval()
    if not 1 <= top_k <= model.config.vocab_size:
        raise ValueError(f"--top-k {top_k} must be between 1 and the vocabulary's {model.config.vocab_size}")
    results = []
    for text in texts:
        ids = tok.encode(text)
        positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
        if not positions:
            raise ValueError(f"no {tok.mask_token} in {text!r}")
        if len(ids) > model.config.max_tokens:
            raise ValueError(
                f"the text is {len(ids)} tokens, longer than the {model.config.max_tokens} this model "
                f"takes: shorten it around the {tok.mask_token}"
            )
        logits = model(torch.tensor([ids])).logits[0]
        masks = []
        for pos in positions:
            top = logits[pos].float().softmax(-1).topk(top_k)
            masks.append([(tok.decode([i]), p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)])
        results.append({"text": text, "masks": masks})
    return results


def print_fill_mask(results: list[dict]) -> None:
    """Each text, then per <mask> its candidates, one a line: probability and token."""
    for r in results:
        print(r["text"])
        for candidates in r["masks"]:
            for token, p in candidates:
                print(f"  {p:6.1%}  {token!r}")


def parse_layers(spec: str, n: int) -> list[int]:
    """ "all" or comma-separated indices into the n + 1 hidden states (0 = embeddings, -1 = last).

    >>> parse_layers("0,-1", 13)
    [0, 12]
    """
    if spec == "all":
        return list(range(n))
    try:
        picked = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ValueError(f"--layers {spec!r}: use 'all' or comma-separated integers such as 0,6,-1") from None
    bad = [i for i in picked if not -n <= i < n]
    if bad:
        raise ValueError(f"--layers {bad}: this model has hidden states 0..{n - 1} (0 is the embeddings)")
    return [i % n for i in picked]


@torch.no_grad()
def features(
    path: str, text: str, layers: str = "all", trust_code: bool = False
) -> tuple[list[int], dict[int, np.ndarray]]:
    """(token ids, {layer: hidden states (T, H) float32}) for one text; layer 0 is the embeddings."""
    tok, model = _load(path, trust_code=trust_code)
    ids = _encode(tok, text, model.config.max_tokens)
    out = model(torch.tensor([ids]), output_hidden_states=True)
    picked = parse_layers(layers, len(out.hidden_states))
    return ids, {i: out.hidden_states[i][0].float().numpy() for i in picked}


def save_features(ids: list[int], states: dict[int, np.ndarray], out: str) -> None:
    """.npy: one array (layers, T, H) in the order asked; .safetensors: `layer_{i}` (T, H) and `input_ids`."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.endswith(".safetensors"):
        from safetensors.numpy import save_file

        tensors = {f"layer_{i}": np.ascontiguousarray(a) for i, a in states.items()}
        tensors["input_ids"] = np.asarray(ids, dtype=np.int64)
        save_file(tensors, out, metadata={"layers": ",".join(map(str, states))})
    elif out.endswith(".npy"):
        np.save(out, np.stack(list(states.values())))
    else:
        raise ValueError(f"--out {out}: use a .npy or .safetensors file name")


@torch.no_grad()
def attention_maps(path: str, text: str, trust_code: bool = False) -> tuple[list[str], torch.Tensor]:
    """(token strings, probabilities (layers, heads, T, T)): the eager backend materialises them."""
    tok, model = _load(path, trust_code=trust_code, attention="eager")
    ids = _encode(tok, text, model.config.max_tokens)
    out = model(torch.tensor([ids]), output_attentions=True)
    labels = [tok.decode([i]) for i in ids]
    return labels, torch.stack([a[0] for a in out.attentions]).float()


MAX_LABELLED_TOKENS = 96  # beyond this the token labels are unreadable: the axes go unlabelled
MAX_FIGURE_INCHES = 40  # at 100 dpi: no side of the picture beyond 4,000 px (300 tokens made 13,288)


def pick_attention(att: torch.Tensor, layers: str = "all", heads: str = "all") -> tuple[list[int], list[int]]:
    """The layers and heads to draw. Layers are numbered as in `features`: 1 is the first
    transformer layer (0, the embeddings, has no attention), -1 the last; heads from 0."""
    n_layers, n_heads = att.shape[0], att.shape[1]
    picked_layers = list(range(1, n_layers + 1)) if layers == "all" else parse_layers(layers, n_layers + 1)
    if 0 in picked_layers:
        raise ValueError(
            "--layers: layer 0 is the embeddings, which have no attention; the transformer "
            f"layers are 1..{n_layers} (as in `features`)"
        )
    if heads == "all":
        picked_heads = list(range(n_heads))
    else:
        try:
            picked_heads = [int(h) for h in heads.split(",")]
        except ValueError:
            raise ValueError(f"--heads {heads!r}: use 'all' or comma-separated integers such as 0,3") from None
        bad = [h for h in picked_heads if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"--heads {bad}: this model has heads 0..{n_heads - 1}")
    return picked_layers, picked_heads


def attention_entropy(att: torch.Tensor) -> torch.Tensor:
    """(layers, heads): the mean entropy in nats of each head's attention rows. A head that
    attends uniformly over T tokens has log T; one that looks at a single token has 0."""
    p = att.double()
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)


def plot_attention(
    tokens: list[str], att: torch.Tensor, out: str, scale: str = "shared", layers: str = "all", heads: str = "all"
) -> list[str]:
    """Save a layer x head grid of heatmaps (queries down, keys across) to `out`; returns notes
    for the user (one line per head drawn, with its entropy, and what the picture leaves out)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("drawing attention maps needs matplotlib: pip install 'roberta-scratch[plot]'") from None
    picked_layers, picked_heads = pick_attention(att, layers, heads)
    fig = attention_figure(tokens, att, scale, picked_layers, picked_heads)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    entropy, uniform = attention_entropy(att), math.log(len(tokens))
    notes = [
        f"layer {layer} head {head}: entropy {float(entropy[layer - 1, head]):.2f} nats "
        f"(uniform over {len(tokens)} tokens: {uniform:.2f})"
        for layer in picked_layers
        for head in picked_heads
    ]
    if len(tokens) > MAX_LABELLED_TOKENS:
        notes.append(f"{len(tokens)} tokens: the axes are not labelled beyond {MAX_LABELLED_TOKENS}")
    return notes


def attention_figure(tokens: list[str], att: torch.Tensor, scale: str = "shared", layers=None, heads=None):
    """The matplotlib figure plot_attention saves: one heatmap per layer (numbered from 1, as in
    `features`) and head. scale="shared": one colour scale, from 0 to the largest probability
    shown, so near-uniform heads look uniform; "per-head": each head on its own scale, with its
    own colour bar, to see the structure inside a flat head."""
    import matplotlib.pyplot as plt

    if scale not in ("shared", "per-head"):
        raise ValueError(f"--scale {scale!r}: use shared or per-head")
    layers = layers or list(range(1, att.shape[0] + 1))
    heads = heads or list(range(att.shape[1]))
    T = att.shape[-1]
    size = min(max(1.6, 0.22 * min(T, MAX_LABELLED_TOKENS)), MAX_FIGURE_INCHES / max(len(layers), len(heads)))
    fig, axes = plt.subplots(
        len(layers),
        len(heads),
        figsize=(size * len(heads) + 1, size * len(layers)),
        squeeze=False,
        layout="constrained",
    )  # room for the colour bars and labels
    vmax = float(max(att[layer - 1, head].max() for layer in layers for head in heads))
    labelled = T <= MAX_LABELLED_TOKENS
    for row, layer in enumerate(layers):
        for col, head in enumerate(heads):
            ax = axes[row][col]
            limits = {} if scale == "per-head" else {"vmin": 0.0, "vmax": vmax}
            image = ax.imshow(att[layer - 1, head].numpy(), cmap="viridis", **limits)
            if scale == "per-head":
                fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=5)
            if labelled:
                ax.set_xticks(range(T))
                ax.set_yticks(range(T))
                ax.set_xticklabels(tokens, rotation=90, fontsize=6)
                ax.set_yticklabels(tokens, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
    if scale == "shared":  # one bar for the whole grid
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01).ax.tick_params(labelsize=6)
    return fig
