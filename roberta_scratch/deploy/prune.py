"""Structured pruning: `roberta-scratch prune` removes attention heads or whole layers for real.

    roberta-scratch prune --model RUN/model --data dev.csv --report              # study: which heads matter
    roberta-scratch prune --model RUN/model --data dev.csv --heads 6 --out SMALL  # keep 6 heads per layer
    roberta-scratch prune --model RUN/model --data dev.csv --heads-by-importance 0.4 --out SMALL
    roberta-scratch prune --model RUN/model --layers 6 --layer-choice first --out SMALL --finetune-epochs 2

Head importance is Michel et al. 2019's ("Are Sixteen Heads Really Better than One?"): a
mask xi_h multiplies each head's output before the layer's output projection (all ones, so the
model is unchanged), and I_h = mean over examples of |dL/dxi_h|, the loss L being the task's on
the task's data (the masked-LM loss, with fixed seeded masks, for an MLM model). As their code
does, scores are normalised per layer to unit L2 norm before heads are ranked.

Pruning is physical: a removed head's rows of the fused qkv projection and its columns of the
output projection are cut out, a dropped layer's weights are gone and the layers renumbered, so
the saved model is smaller and faster. config.json records `pruned_heads` ({layer: [heads]}, in
the original numbering, as transformers 4.x does) composed with any earlier pruning, so a pruned
model can be pruned again. Dropping layers follows "Poor Man's BERT" (Sajjad et al. 2020), which
found dropping the top layers best: --layer-choice first keeps the bottom K.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import torch

from ..checkpoints.formats import find_model_dir, read_checkpoint, save_ours
from ..checkpoints.keymaps import hf_architecture
from ..config import RobertaConfig
from ..errors import TrainingError
from ..fileio import atomic_write, iter_lines, new_directory
from ..finetune.predict import HEAD_TASKS, load_finetuned
from ..finetune.readers import BadRows, DataError
from ..finetune.trainer import TASK_FILE
from ..model import MODEL_CLASSES, build_model
from ..progress import progress
from ..tokenization.byte_level import load_tokenizer

LAYER_CHOICES = ("even", "first", "importance")


# --------------------------------------------------------------------------- pruning a model


def encoder(model):
    """The RobertaModel inside any of the model classes (or the model itself)."""
    return getattr(model, "roberta", model)


def kept_heads(cfg: RobertaConfig, layer: int) -> list[int]:
    """The original numbers of the heads layer `layer` still has, in the order its weights hold them."""
    gone = set((cfg.pruned_heads or {}).get(layer, ()))
    return [h for h in range(cfg.num_attention_heads) if h not in gone]


def _rebuilt(model, cfg: RobertaConfig, sd: dict):
    """A model of the same class for `cfg` holding the tensors of `sd` (no fresh initialisation:
    it is built on the meta device and takes the tensors as they are)."""
    with torch.device("meta"):
        new = type(model)(cfg)
    new.load_state_dict(sd, strict=True, assign=True)
    return new.train(model.training)


def prune_heads(model, remove: dict[int, list[int]]):
    """A new model without the heads `remove` names: {layer: [head positions in that layer now]}.

    Positions count the heads a layer has now (0..n_head-1); config.pruned_heads keeps the
    original numbers, so pruning a pruned model composes. Each removed head takes its hs rows
    of q, k and v out of the fused qkv projection and its hs columns out of the output projection.
    """
    cfg, d = model.config, model.config.head_dim
    prefix = "roberta.layers." if hasattr(model, "roberta") else "layers."
    sd = dict(model.state_dict())
    pruned = {i: list(h) for i, h in (cfg.pruned_heads or {}).items()}
    for layer, drop in remove.items():
        if not 0 <= layer < cfg.num_hidden_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{cfg.num_hidden_layers - 1}")
        current = kept_heads(cfg, layer)
        if any(not 0 <= j < len(current) for j in drop):
            raise ValueError(f"layer {layer} has heads 0..{len(current) - 1} now, cannot remove {sorted(drop)}")
        keep = [j for j in range(len(current)) if j not in set(drop)]
        if not keep:
            raise ValueError(
                f"pruning would remove every head of layer {layer}: a layer needs at least one "
                "(drop whole layers with --layers instead)"
            )
        rows = torch.cat([torch.arange(j * d, (j + 1) * d) for j in keep])  # the kept heads' hs-wide slices
        inner = len(current) * d
        qkv_rows = torch.cat([rows + part * inner for part in range(3)])  # the same slices of q, of k, of v
        p = f"{prefix}{layer}.attn."
        sd[p + "qkv.weight"] = sd[p + "qkv.weight"][qkv_rows.to(sd[p + "qkv.weight"].device)]
        sd[p + "qkv.bias"] = sd[p + "qkv.bias"][qkv_rows.to(sd[p + "qkv.bias"].device)]
        sd[p + "proj.weight"] = sd[p + "proj.weight"][:, rows.to(sd[p + "proj.weight"].device)]
        pruned[layer] = sorted(set(pruned.get(layer, [])) | {current[j] for j in drop})
    return _rebuilt(model, cfg.replace(pruned_heads=dict(sorted(pruned.items())) or None), sd)


def drop_layers(model, keep: list[int]):
    """A new model with only the layers `keep` (indices now), renumbered 0..len(keep)-1 in order;
    config.pruned_heads follows its layers to their new numbers."""
    cfg = model.config
    keep = sorted(set(keep))
    if not keep or not all(0 <= i < cfg.num_hidden_layers for i in keep):
        raise ValueError(f"cannot keep layers {keep}: the model has layers 0..{cfg.num_hidden_layers - 1}")
    prefix = "roberta.layers." if hasattr(model, "roberta") else "layers."
    sd = {}
    for k, v in model.state_dict().items():
        if not k.startswith(prefix):
            sd[k] = v
            continue
        i, rest = k[len(prefix) :].split(".", 1)
        if int(i) in keep:
            sd[f"{prefix}{keep.index(int(i))}.{rest}"] = v
    pruned = {keep.index(i): h for i, h in sorted((cfg.pruned_heads or {}).items()) if i in keep}
    return _rebuilt(model, cfg.replace(num_hidden_layers=len(keep), pruned_heads=pruned or None), sd)


# --------------------------------------------------------------------------- head importance


@contextlib.contextmanager
def head_masks(model, masks: list[torch.Tensor]):
    """Multiply each head's output by a mask before its layer's output projection, for the block.

    masks[i] is layer i's: (n_head,) for every example alike, or (B, n_head), one row per example
    (how head_importance gets per-example gradients from one backward pass). A forward pre-hook
    on attn.proj does it: the model itself is unchanged.
    """
    handles = []
    for layer, m in zip(encoder(model).layers, masks, strict=True):
        hs = layer.attn.head_dim

        def scale(module, args, m=m, hs=hs):
            (y,) = args  # (B, T, nh * hs)
            B, T, _ = y.shape
            w = m[:, None, :, None] if m.dim() == 2 else m[None, None, :, None]  # (B or 1, 1, nh, 1)
            return ((y.view(B, T, -1, hs) * w.to(y.dtype)).view(B, T, -1),)

        handles.append(layer.attn.proj.register_forward_pre_hook(scale))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def example_shares(batch: dict) -> torch.Tensor:
    """(B,): each example's weight in the model's batch loss. The losses are means over the
    batch's examples (sequence classification, QA) or over its labelled tokens (token
    classification, masked LM), where an example with n_b of the batch's N tokens weighs n_b / N."""
    labels = batch.get("labels")
    if labels is not None and labels.dim() == 2 and not labels.is_floating_point():
        n = (labels != -100).sum(dim=1).double()
        return n / n.sum().clamp(min=1)
    B = batch["input_ids"].shape[0]
    return torch.full((B,), 1.0 / B, dtype=torch.float64)


@contextlib.contextmanager
def _frozen(model):
    """No gradients for the weights during the block: importance needs only the masks'."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)


def head_importance(model, batches: list[dict], device="cpu", show_progress: bool = True):
    """(raw, normalised, examples): per layer, a (n_head,) tensor of I_h = mean over the examples
    of |dL_x/dxi_h|, and how many examples that mean is over.

    Each batch gets a mask of shape (B, n_head) per layer, so one backward pass gives every
    example's own gradient: example b's mask touches only its loss, which the batch loss weighs
    by example_shares(batch)[b]. Examples without a loss (nothing labelled) are left out.
    normalised divides each layer's scores by their L2 norm, as Michel et al.'s code does.
    """
    model.eval()
    layers = encoder(model).layers
    total = [torch.zeros(layer.attn.n_head, dtype=torch.float64) for layer in layers]
    count = 0
    bar = progress(total=len(batches), desc="head importance", unit="batch", disable=not show_progress)
    with _frozen(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            B = batch["input_ids"].shape[0]
            masks = [torch.ones(B, layer.attn.n_head, device=device, requires_grad=True) for layer in layers]
            with head_masks(model, masks):
                loss = model(**batch).loss
            grads = torch.autograd.grad(loss, masks)
            share = example_shares(batch)
            has = share > 0
            for t, g in zip(total, grads, strict=True):
                t += (g.detach().double().cpu()[has].abs() / share[has, None]).sum(dim=0)
            count += int(has.sum())
            bar.update(1)
    bar.close()
    if count == 0:
        raise DataError("no example has a loss to take gradients of (for an MLM model: no token was masked)")
    raw = [t / count for t in total]
    return raw, [r / (r.norm() + 1e-20) for r in raw], count


# --------------------------------------------------------------------------- choosing what to remove


def keep_top_heads(importance: list[torch.Tensor], n: int) -> dict[int, list[int]]:
    """{layer: head positions to remove} keeping the n most important heads of every layer
    (a layer with n or fewer heads is left whole); ties go to the lower position."""
    remove = {}
    for i, imp in enumerate(importance):
        order = sorted(range(len(imp)), key=lambda j: (-float(imp[j]), j))
        if len(order) > n:
            remove[i] = sorted(order[n:])
    return remove


def remove_least_important(importance: list[torch.Tensor], fraction: float) -> dict[int, list[int]]:
    """{layer: head positions to remove}: round(fraction * all heads) of them, least important
    first across the whole model, skipping any that is the last head left in its layer."""
    target = round(fraction * sum(len(x) for x in importance))
    ranked = sorted((float(imp[j]), i, j) for i, imp in enumerate(importance) for j in range(len(imp)))
    left = [len(x) for x in importance]
    remove: dict[int, list[int]] = {}
    for _, i, j in ranked:
        if sum(map(len, remove.values())) == target:
            break
        if left[i] > 1:
            remove.setdefault(i, []).append(j)
            left[i] -= 1
    return {i: sorted(v) for i, v in remove.items()}


def choose_layers(num_layers: int, k: int, choice: str, raw: list[torch.Tensor] | None = None) -> list[int]:
    """The k layers to keep, in order. even: evenly spaced, the first and the last among them;
    first: the bottom k ("Poor Man's BERT": dropping the top layers hurts least); importance:
    the k whose heads' raw importance sums highest (raw, because normalised scores have norm 1
    in every layer and so say nothing about one layer against another)."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"--layers {k}: the model has {num_layers} layers; keep 1..{num_layers}")
    if choice == "first":
        return list(range(k))
    if choice == "even":
        return [0] if k == 1 else [math.floor(i * (num_layers - 1) / (k - 1) + 0.5) for i in range(k)]
    if choice == "importance":
        if raw is None:
            raise ValueError("--layer-choice importance needs head importance scores (--data)")
        sums = [float(r.sum()) for r in raw]
        return sorted(sorted(range(num_layers), key=lambda i: (-sums[i], i))[:k])
    raise ValueError(f"--layer-choice {choice!r} is not one of {LAYER_CHOICES}")


# --------------------------------------------------------------------------- the model and its data


@dataclass
class Source:
    """What prune works on: the model folder, its config as saved, the model, and for a
    fine-tuned model its task (which reads the data and defines the loss and the metric)."""

    path: str
    cfg: RobertaConfig
    model: torch.nn.Module
    task: object | None
    tok: object | None


def load_source(path: str, device, trust_code: bool = False) -> Source:
    """A fine-tuned model (finetune.json or a task head in its weights) through predict's loader;
    otherwise the MLM model (or bare encoder) its weights hold. A quantized model is refused."""
    folder, note = find_model_dir(path)
    if note:
        warnings.warn(note, stacklevel=2)
    cfg, sd = read_checkpoint(folder, trust_code=trust_code)
    if cfg.quantization is not None:
        raise ValueError(
            f"{folder} is quantized ({cfg.quantization.get('method')}): int8 weights cannot be pruned; "
            "prune the float model, then quantize"
        )
    if os.path.isfile(os.path.join(folder, TASK_FILE)) or any(key in sd for key, _ in HEAD_TASKS):
        task, model = load_finetuned(folder, device, trust_code=trust_code)
        return Source(folder, cfg, model, task, task.tok)
    model = build_model(MODEL_CLASSES[hf_architecture(sd)], cfg, sd)
    try:
        tok = load_tokenizer(folder)
    except (FileNotFoundError, OSError, ValueError):
        tok = None
    return Source(folder, cfg, model.eval().to(device), None, tok)


@dataclass
class Data:
    """The examples prune scores on: the batches for the loss and, for a task, what its metric needs."""

    path: str
    batches: list
    examples: list | None = None
    features: list | None = None


def _sample(items: list, n: int, seed: int) -> list:
    """At most n of `items`, a seeded choice kept in file order."""
    if len(items) <= n:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def task_data(task, path: str, max_examples: int, batch_size: int, seed: int) -> Data:
    """A fine-tuning task's file (the same formats as `finetune --train`) as batches of its collate."""
    if not os.path.isfile(path):
        raise DataError(f"--data {path}: no such file")
    bad = BadRows(path, "skip")
    examples = task.check_labels(task.read(path, bad), bad)
    if bad.summary():
        warnings.warn(bad.summary(), stacklevel=2)
    if not examples:
        raise DataError(f"--data {path}: no usable {task.name} examples for this model")
    examples = _sample(examples, max_examples, seed)
    features = task.features(examples)
    batches = [task.collate(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return Data(path, batches, examples, features)


def mlm_data(tok, path: str, max_examples: int, batch_size: int, seed: int, max_length: int) -> Data:
    """A text file, one example a non-blank line, with masks that depend only on the line and the
    seed (the static masking of data/masking.py), so every run scores the same masked tokens."""
    from ..data.masking import DynamicMaskingCollator

    if tok is None:
        raise ValueError("the model folder holds no tokenizer, which reading --data needs")
    lines = [line.strip() for line in iter_lines([path]) if line.strip()]
    if not lines:
        raise DataError(f"--data {path}: no text (an MLM model is scored on a text file, one example a line)")
    lines = _sample(lines, max_examples, seed)
    ids = tok(lines, truncation=True, max_length=max_length, num_workers=1)["input_ids"]
    collate = DynamicMaskingCollator.from_tokenizer(tok, static=True, static_seed=seed)
    batches = [collate([torch.tensor(x) for x in ids[i : i + batch_size]]) for i in range(0, len(ids), batch_size)]
    return Data(path, batches)


@torch.no_grad()
def measure(model, task, data: Data, batch_size: int, device) -> dict:
    """The loss on the data (a mean over the examples or labelled tokens, as the model's loss is)
    and, for a task, its metric."""
    model.eval()
    total = weight = 0.0
    for batch in data.batches:
        labels = batch.get("labels")
        token_level = labels is not None and labels.dim() == 2 and not labels.is_floating_point()
        w = float((labels != -100).sum()) if token_level else float(batch["input_ids"].shape[0])
        total += float(model(**{k: v.to(device) for k, v in batch.items()}).loss) * w
        weight += w
    out = {"loss": total / max(weight, 1.0)}
    if task is not None:
        m = task.evaluate(model, data.examples, data.features, batch_size, device)
        out[task.best_metric] = m[task.best_metric]
    return out


# --------------------------------------------------------------------------- the report


def format_report(cfg: RobertaConfig, raw: list, normalised: list, what: str) -> str:
    """The layer x head table of normalised importance ("-": a head pruned earlier), each layer's
    raw sum, and the least important heads."""
    H = cfg.num_attention_heads
    lines = [
        f"head importance (Michel et al. 2019): mean |dL/dxi_h| over {what}, normalised per layer (L2 norm 1)",
        "layer " + "".join(f"{'h' + str(h):>7s}" for h in range(H)) + "   raw sum",
    ]
    ranked = []
    for i in range(cfg.num_hidden_layers):
        cells = ["      -"] * H
        for pos, h in enumerate(kept_heads(cfg, i)):
            cells[h] = f"{float(normalised[i][pos]):7.3f}"
            ranked.append((float(normalised[i][pos]), i, h))
        lines.append(f"{i:>5d} " + "".join(cells) + f"   {float(raw[i].sum()):.3e}")
    least = ", ".join(f"layer {i} head {h} ({v:.3f})" for v, i, h in sorted(ranked)[:5])
    lines.append(f"least important: {least}")
    return "\n".join(lines)


def report_dict(cfg: RobertaConfig, raw: list, normalised: list, model: str, data: str, examples: int) -> dict:
    """The scores as JSON: per layer, its heads' original numbers and their scores in that order."""
    return {
        "method": "Michel et al. 2019: mean over examples of |dL/dxi_h|; normalised: divided by the layer's L2 norm",
        "model": model,
        "data": data,
        "examples": examples,
        "num_attention_heads": cfg.num_attention_heads,
        "layers": [
            {
                "layer": i,
                "heads": kept_heads(cfg, i),
                "importance": [round(float(x), 6) for x in normalised[i]],
                "raw": [float(x) for x in raw[i]],
            }
            for i in range(cfg.num_hidden_layers)
        ],
    }


# --------------------------------------------------------------------------- writing the result


def write_model(src: Source, model, path: str) -> None:
    """The pruned model as a model folder: config.json (the source's, with the new shape),
    model.safetensors, the tokenizer, and finetune.json for a fine-tuned model."""
    cfg = model.config.replace(attention=src.cfg.attention, layer_norm=src.cfg.layer_norm)
    save_ours(cfg, model.state_dict(), path, model_class=type(model).__name__)
    if src.tok is not None:
        src.tok.save_pretrained(path)
    if src.task is not None:
        saved = os.path.join(src.path, TASK_FILE)
        if os.path.isfile(saved):
            shutil.copyfile(saved, os.path.join(path, TASK_FILE))
        else:  # a Hugging Face folder with a task head: say which task, as finetune would
            with open(os.path.join(path, TASK_FILE), "w") as f:
                json.dump(src.task.info(), f, indent=2)


def recover(src: Source, pruned: str, work: str, args) -> str:
    """A short fine-tune of the pruned model (finetune's trainer, the task's recipe); returns the
    folder of its final model."""
    from ..finetune.trainer import FinetuneArgs, finetune

    task = src.task
    regression = task.info().get("label_type") == "regression"
    run = os.path.join(work, "run")
    code = finetune(
        FinetuneArgs(
            task=task.name,
            model=pruned,
            train=args.train or args.data,
            out=run,
            epochs=args.finetune_epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            max_length=task.args.max_length,
            stride=task.args.stride,
            max_answer_length=task.args.max_answer_length,
            label_type="regression" if regression else "class" if task.name == "seq-cls" else "auto",
        )
    )
    if code:
        raise TrainingError(f"the recovery fine-tune stopped (exit status {code}); nothing was written to --out")
    return os.path.join(run, "model")


# --------------------------------------------------------------------------- the command


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="a model folder: fine-tuned (RUN/model, or the RUN), MLM, or Hugging Face"
    )
    p.add_argument("--out", default=None, help="the new folder for the pruned model (must not exist)")
    p.add_argument(
        "--data",
        default=None,
        help="what importance and the before/after scores are measured on: for a fine-tuned model its task's "
        "file (the formats of `finetune --train`), for an MLM model a text file (one example a line)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--heads", type=int, metavar="N", help="keep the N most important heads of every layer")
    what.add_argument(
        "--heads-by-importance",
        type=float,
        metavar="FRACTION",
        help="remove this fraction of all heads, least important first across the whole model (never a "
        "layer's last head)",
    )
    what.add_argument("--layers", type=int, metavar="K", help="keep K layers, chosen by --layer-choice")
    p.add_argument(
        "--layer-choice",
        choices=LAYER_CHOICES,
        default="even",
        help="even: evenly spaced, the first and last kept; first: the bottom K (dropping the top layers hurts "
        "least, Sajjad et al. 2020); importance: the K whose heads matter most (needs --data). Default even",
    )
    p.add_argument("--report", action="store_true", help="print the layer x head importance table")
    p.add_argument("--report-json", metavar="FILE", default=None, help="write the importance scores as JSON")
    p.add_argument("--max-examples", type=int, default=512, help="examples of --data used, a seeded choice (512)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch, here and in the fine-tune (16)")
    p.add_argument("--max-length", type=int, default=None, help="MLM data: tokens per line (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="picks the examples and the MLM masks (0)")
    p.add_argument(
        "--finetune-epochs",
        type=float,
        default=0.0,
        help="recovery: fine-tune the pruned model this many epochs on --train; its final model is --out (0: none)",
    )
    p.add_argument("--train", default=None, help="the recovery fine-tune's training file (default: --data)")
    p.add_argument("--lr", type=float, default=2e-5, help="the recovery fine-tune's peak learning rate (2e-5)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def _action(args) -> str | None:
    """Which of the mutually exclusive pruning flags was given, if any."""
    given = {"heads": args.heads, "fraction": args.heads_by_importance, "layers": args.layers}
    return next((name for name, value in given.items() if value is not None), None)


def _needs_importance(args) -> bool:
    action = _action(args)
    return (
        args.report
        or args.report_json is not None
        or action in ("heads", "fraction")
        or (action == "layers" and args.layer_choice == "importance")
    )


def check_args(args) -> None:
    """The flags on their own, before any file is read: each problem one ValueError naming it."""
    action = _action(args)
    if action is None and not (args.report or args.report_json):
        raise ValueError(
            "say what to remove: --heads N, --heads-by-importance FRACTION or --layers K (or --report to "
            "study the heads' importance only)"
        )
    if action is not None and not args.out:
        raise ValueError("--out is required: the folder the pruned model is written to")
    if args.out and os.path.exists(args.out):
        raise ValueError(f"--out {args.out} already exists: name a new folder (nothing was written)")
    if args.heads is not None and args.heads < 1:
        raise ValueError(f"--heads {args.heads}: every layer keeps at least one head (drop layers with --layers)")
    f = args.heads_by_importance
    if f is not None and not 0 < f < 1:
        raise ValueError(f"--heads-by-importance {f}: the fraction of heads to remove must be in (0, 1)")
    if args.layers is not None and args.layers < 1:
        raise ValueError(f"--layers {args.layers}: a model keeps at least one layer")
    for flag, value in (("--max-examples", args.max_examples), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.finetune_epochs < 0 or (args.finetune_epochs > 0 and action is None):
        raise ValueError("--finetune-epochs must be >= 0, and fine-tunes the model pruning gives")
    if _needs_importance(args) and not args.data:
        raise ValueError(
            "--data FILE is needed: head importance is the gradient of the loss on the task's examples (the "
            "task's file for a fine-tuned model, a text file for an MLM model)"
        )
    if args.finetune_epochs > 0 and not (args.train or args.data):
        raise ValueError("--finetune-epochs needs training data: --train FILE (or --data)")


def check_against_model(args, src: Source) -> None:
    """The flags that depend on the model: sizes, a loss to take gradients of, a task to fine-tune."""
    cfg = src.cfg
    if args.heads is not None and args.heads > cfg.num_attention_heads:
        raise ValueError(f"--heads {args.heads}: the model has {cfg.num_attention_heads} heads per layer")
    if args.layers is not None and args.layers > cfg.num_hidden_layers:
        raise ValueError(f"--layers {args.layers}: the model has {cfg.num_hidden_layers} layers")
    if args.data and src.task is None and "MaskedLM" not in type(src.model).__name__:
        raise ValueError(f"{src.path} holds an encoder without a head: there is no loss to measure --data with")
    if args.finetune_epochs > 0 and src.task is None:
        raise ValueError(
            "--finetune-epochs fine-tunes a task model (seq-cls, token-cls, qa); this is an MLM model: "
            "continue its pretraining with `roberta-scratch pretrain` instead"
        )


def read_data(src: Source, args) -> Data:
    if src.task is not None:
        return task_data(src.task, args.data, args.max_examples, args.batch_size, args.seed)
    max_length = min(args.max_length or src.cfg.max_tokens, src.cfg.max_tokens)
    return mlm_data(src.tok, args.data, args.max_examples, args.batch_size, args.seed, max_length)


def apply(args, model, scores):
    """The pruned model the flags ask for; nothing to remove is an error, not a silent copy."""
    cfg = model.config
    if args.layers is not None:
        keep = choose_layers(cfg.num_hidden_layers, args.layers, args.layer_choice, scores[0] if scores else None)
        if len(keep) == cfg.num_hidden_layers:
            raise ValueError(f"--layers {args.layers} keeps every layer: nothing to prune")
        return drop_layers(model, keep)
    normalised = scores[1]
    if args.heads is not None:
        remove = keep_top_heads(normalised, args.heads)
    else:
        remove = remove_least_important(normalised, args.heads_by_importance)
    if not remove:
        raise ValueError("these settings remove no head: nothing to prune")
    return prune_heads(model, remove)


def _heads(cfg: RobertaConfig) -> int:
    return sum(cfg.heads_in_layer(i) for i in range(cfg.num_hidden_layers))


def summary(src: Source, pruned, out: str, scores: dict) -> str:
    """Heads, layers and parameters before and after; the loss and metric at each stage measured."""
    a, b = src.model.config, pruned.config
    n0, n1 = src.model.num_parameters(), pruned.num_parameters()
    lines = [
        f"wrote {out}: heads {_heads(a)} -> {_heads(b)}, layers {a.num_hidden_layers} -> {b.num_hidden_layers}, "
        f"parameters {n0:,} -> {n1:,} ({(n1 - n0) / n0:+.1%})"
    ]
    stages = list(scores)
    for key in scores[stages[0]] if stages else ():
        values = ", ".join(f"{scores[s][key]:.4f} {s}" for s in stages)
        lines.append(f"{key}: {values}")
    return "\n".join(lines)


def prune_command(args) -> int:
    check_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    src = load_source(args.model, device, args.trust_code)
    check_against_model(args, src)
    data = read_data(src, args) if args.data else None
    scores = {}
    if data is not None:
        scores["before"] = measure(src.model, src.task, data, args.batch_size, device)
    importance = None
    if _needs_importance(args):
        importance = head_importance(src.model, data.batches, device)
        what = f"{importance[2]} examples of {args.data}"
        if args.report:
            print(format_report(src.model.config, importance[0], importance[1], what))
        if args.report_json:
            d = report_dict(src.model.config, importance[0], importance[1], src.path, args.data, importance[2])
            with atomic_write(args.report_json, "w") as f:
                json.dump(d, f, indent=2)
    if _action(args) is None:
        return 0
    pruned = apply(args, src.model, importance)
    if data is not None:
        scores["after pruning"] = measure(pruned, src.task, data, args.batch_size, device)
    with new_directory(args.out) as path:  # `out` appears whole, or not at all
        write_model(src, pruned, path)
        if args.finetune_epochs > 0:
            with tempfile.TemporaryDirectory(dir=os.path.dirname(path), prefix=".recovery-") as work:
                tuned = recover(src, path, work, args)
                for name in os.listdir(path):  # the recovered model replaces the pruned one
                    os.remove(os.path.join(path, name))
                for name in os.listdir(tuned):
                    os.replace(os.path.join(tuned, name), os.path.join(path, name))
            if data is not None:
                task, model = load_finetuned(path, device)
                again = task_data(task, args.data, args.max_examples, args.batch_size, args.seed)
                scores[f"after {args.finetune_epochs:g} epoch(s) of recovery"] = measure(
                    model, task, again, args.batch_size, device
                )
    print(summary(src, pruned, args.out, scores))
    return 0
