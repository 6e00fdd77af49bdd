"""`roberta-scratch quantize`: a model folder with int8 weights, 4x smaller and faster on CPU.

    roberta-scratch quantize --model RUN/model --out RUN/int8 --calibration dev.txt

Every Linear of the encoder and of the task head gets int8 weights, one scale per output
channel (int8.py says how they run). The word embeddings are stored as int8 rows as well and
become float again when the model loads, so lookups, LayerNorms and the tied MLM decoder stay
float. config.json records what was done (`quantization`), and the tokenizer and finetune.json
come along: the folder works with from_pretrained, predict, fill-mask and features.

With --calibration, quantize runs both models on those inputs and reports how far the int8
one moved: the largest output difference and, for a fine-tuned model, how many predictions
stayed the same. (Dynamic int8 needs no calibration set: it measures each batch as it comes.)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings

import torch

from ..checkpoints.formats import find_model_dir, read_checkpoint, save_ours
from ..checkpoints.keymaps import hf_architecture
from ..fileio import iter_lines, new_directory
from ..finetune.trainer import TASK_FILE
from ..int8 import pack_embeddings, quantizable, swap_linears
from ..model import MODEL_CLASSES, build_model
from ..tokenization.byte_level import load_tokenizer

COMPARE_LIMIT = 256  # calibration inputs compared, at most

# Texts to compare the two models on when no --calibration file is given.
DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return a new list containing all items from the iterable in ascending order.",
    "RoBERTa is a robustly optimized BERT pretraining approach.",
    "Raise ValueError if the file does not exist or cannot be read.",
]


def quantize(
    model: str,
    out: str,
    method: str = "dynamic-int8",
    calibration: str | None = None,
    trust_code: bool = False,
) -> str:
    """Write `out`, an int8 copy of the model folder `model`; returns a summary line."""
    src, note = find_model_dir(model)
    if note:
        warnings.warn(note, stacklevel=2)
    if os.path.lexists(out):
        raise FileExistsError(f"{out} already exists: name a new folder (nothing was written)")
    cfg, sd = read_checkpoint(src, trust_code=trust_code)
    if cfg.quantization is not None:
        raise ValueError(
            f"{src} is already quantized ({cfg.quantization['method']}): quantize the float model it came from"
        )
    cls = MODEL_CLASSES[hf_architecture(sd)]
    float_model = build_model(cls, cfg, sd).eval()
    spec = {
        "method": method,
        "weights": "int8, symmetric, one scale per output channel",
        "activations": "int8, scaled per batch" if method == "dynamic-int8" else "float",
        "embeddings": "int8 rows on disk, float when loaded",
        "linear_layers": len(quantizable(float_model)),
    }
    int8_model = swap_linears(copy.deepcopy(float_model), spec, from_float=True).eval()
    before = _weights_size(src)
    with new_directory(out) as tmp:
        save_ours(cfg.replace(quantization=spec), pack_embeddings(int8_model.state_dict()), tmp, cls.__name__)
        _carry_files(src, tmp)
    after = os.path.getsize(os.path.join(out, "model.safetensors"))
    size = f"{after / 1e6:.1f} MB"
    if before:
        size = f"{before / 1e6:.1f} MB -> {size} ({after / before:.0%})"
    texts = _read_texts(calibration) if calibration else DEFAULT_TEXTS
    drift = compare_outputs(float_model, int8_model, load_tokenizer(out), texts)
    agree = _compare_predictions(src, out, calibration) if calibration and os.path.isfile(f"{src}/{TASK_FILE}") else ""
    on = f"{len(texts)} inputs of {calibration}" if calibration else f"{len(texts)} built-in sentences"
    return (
        f"wrote {out}: {method}, {spec['linear_layers']} Linear layers with int8 weights; model.safetensors "
        f"{size}; on {on}: largest output change {drift:.3g}{agree}"
    )


def _carry_files(src: str, dst: str) -> None:
    """The tokenizer (re-saved in its own format) and finetune.json, so `dst` works on its own."""
    try:
        tok = load_tokenizer(src)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}: quantize carries the model's tokenizer into --out") from None
    tok.save_pretrained(dst)
    if os.path.isfile(os.path.join(src, TASK_FILE)):
        shutil.copyfile(os.path.join(src, TASK_FILE), os.path.join(dst, TASK_FILE))


def _weights_size(src: str) -> int:
    """Bytes of the source's weights file (0 when it is none of the usual names)."""
    if not os.path.isdir(src):
        return os.path.getsize(src)  # a fairseq .pt
    paths = [os.path.join(src, n) for n in ("model.safetensors", "pytorch_model.bin")]
    return next((os.path.getsize(p) for p in paths if os.path.isfile(p)), 0)


def _read_texts(path: str) -> list[str]:
    """Up to COMPARE_LIMIT texts: plain lines, or the text field of JSON lines."""
    texts = []
    for line in iter_lines([path]):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            row = json.loads(line)
            line = row.get("text") or row.get("question") or " ".join(row.get("tokens", [])) or line
        texts.append(line)
        if len(texts) == COMPARE_LIMIT:
            break
    if not texts:
        raise ValueError(f"--calibration {path} holds no inputs")
    return texts


@torch.no_grad()
def compare_outputs(a, b, tok, texts: list[str], batch_size: int = 16) -> float:
    """The largest |a(x) - b(x)| over the real tokens' outputs (logits, or hidden states)."""
    worst = 0.0
    for i in range(0, len(texts), batch_size):
        texts_now = texts[i : i + batch_size]
        batch = tok(texts_now, padding=True, truncation=True, max_length=a.config.max_tokens, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for x, y in zip(_outputs(a(ids, attention_mask=mask)), _outputs(b(ids, attention_mask=mask)), strict=True):
            real = mask.bool() if x.dim() >= 2 and x.shape[:2] == mask.shape else slice(None)
            worst = max(worst, (x[real] - y[real]).abs().max().item())
    return worst


def _outputs(out) -> list[torch.Tensor]:
    names = ("logits", "start_logits", "end_logits", "last_hidden_state")
    return [getattr(out, n) for n in names if getattr(out, n, None) is not None]


def _compare_predictions(src: str, out: str, calibration: str) -> str:
    """'; predictions agree on 97 of 100' for a fine-tuned model: the task's own decoding."""
    from ..finetune.predict import predict

    lines = list(iter_lines([calibration]))
    a, b = predict(src, lines), predict(out, lines)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    return f"; predictions agree on {same} of {len(a)}"
