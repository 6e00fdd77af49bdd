"""Looking inside a model: masked-token predictions, hidden states per layer, attention maps.

    roberta-scratch fill-mask --model DIR "The capital of France is <mask>."
    roberta-scratch features --model DIR "some text" --layers all --out feats.npy
    roberta-scratch attention --model DIR "some text" --out attn.png
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .checkpoint import find_model_dir
from .model import RobertaForMaskedLM, RobertaModel
from .tokenizer import load_tokenizer


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
        raise FileNotFoundError(f"{e}: the model's tokenizer belongs in its folder (roberta-scratch convert "
                                "carries it across)") from None


def _encode(tok, text: str, limit: int) -> list[int]:
    """The ids of one text, cut to `limit` tokens with a warning when longer."""
    ids = tok.encode(text)
    if len(ids) > limit:
        warnings.warn(f"the text is {len(ids)} tokens, longer than the {limit} this model takes: only the first "
                      f"{limit} are used", stacklevel=3)
        ids = ids[:limit - 1] + [tok.sep_token_id]
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
            raise ValueError(f"the text is {len(ids)} tokens, longer than the {model.config.max_tokens} this model "
                             f"takes: shorten it around the {tok.mask_token}")
        logits = model(torch.tensor([ids])).logits[0]
        masks = []
        for pos in positions:
            top = logits[pos].float().softmax(-1).topk(top_k)
            masks.append([(tok.decode([i]), p) for p, i in zip(top.values.tolist(), top.indices.tolist())])
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
    """"all" or comma-separated indices into the n + 1 hidden states (0 = embeddings, -1 = last).

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
def features(path: str, text: str, layers: str = "all",
             trust_code: bool = False) -> tuple[list[int], dict[int, np.ndarray]]:
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


def plot_attention(tokens: list[str], att: torch.Tensor, out: str) -> None:
    """A layer x head grid of heatmaps: rows are layers, columns heads; queries down, keys across."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("drawing attention maps needs matplotlib: pip install 'roberta-scratch[plot]'") from None
    fig = attention_figure(tokens, att)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def attention_figure(tokens: list[str], att: torch.Tensor):
    """The matplotlib figure plot_attention saves: one heatmap per layer and head, each with its colour bar."""
    import matplotlib.pyplot as plt

    L, nh, T, _ = att.shape
    size = max(1.6, 0.22 * T)
    fig, axes = plt.subplots(L, nh, figsize=(size * nh, size * L), squeeze=False)
    for layer in range(L):
        for head in range(nh):
            ax = axes[layer][head]
            # each head on its own scale, with its colour bar: real maps span a small range of
            # probabilities, which a fixed 0-1 scale renders as flat dark purple
            image = ax.imshow(att[layer, head].numpy(), cmap="viridis")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=5)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(tokens, rotation=90, fontsize=6)
            ax.set_yticklabels(tokens, fontsize=6)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
    fig.tight_layout()
    return fig
