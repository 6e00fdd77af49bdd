"""Using a fine-tuned model: `roberta-scratch predict`, one JSON result per input.

    roberta-scratch predict --model RUN/model texts.txt

The directory tells which task it was trained for (finetune.json, or for a Hugging Face
directory the head its weights carry), and that task reads the inputs and shapes the
results: labels with probabilities, entities with character spans, or answers.
"""

from __future__ import annotations

import json
import os
import warnings

from ..checkpoints.formats import find_model_dir, read_checkpoint
from ..errors import TrainingError
from ..model import build_model
from ..onnx_model import OnnxModel
from ..tokenization.byte_level import load_tokenizer
from .readers import DataError
from .registry import TASKS
from .trainer import TASK_FILE, FinetuneArgs

# Which task a checkpoint's head keys say it was trained for, for folders without finetune.json.
HEAD_TASKS = (
    ("qa_outputs.weight", "qa"),
    ("classifier.out_proj.weight", "seq-cls"),
    ("classifier.weight", "token-cls"),
)


def task_info(path: str, cfg, sd: dict, required: bool = True) -> dict | None:
    """What the folder was fine-tuned for: its finetune.json, or for a folder without one (a
    Hugging Face folder) the task its head keys say. A folder with no task head is a
    TrainingError, or None when not `required`."""
    if os.path.isfile(os.path.join(path, TASK_FILE)):
        with open(os.path.join(path, TASK_FILE), encoding="utf-8") as f:
            return json.load(f)
    task = next((t for key, t in HEAD_TASKS if key in sd), None)
    if task is not None:
        return {"task": task, "max_length": cfg.max_tokens}
    if not required:
        return None
    raise TrainingError(
        f"{path} has no fine-tuned task head (its weights hold "
        f"{'an MLM head' if 'lm_head.bias' in sd else 'the encoder alone'}): fine-tune it "
        "first with `roberta-scratch finetune`, or use fill-mask or features with it"
    )


def make_task(path: str, cfg, info: dict):
    """The Task a folder was fine-tuned for, from task_info(), with its tokenizer."""
    args = FinetuneArgs(
        task=info["task"],
        model=path,
        train="",
        out="",
        max_length=min(info.get("max_length") or cfg.max_tokens, cfg.max_tokens),
        stride=info.get("stride", 128),
        max_answer_length=info.get("max_answer_length", 30),
        **TASKS[info["task"]].saved_args(info),
    )
    return TASKS[info["task"]].from_saved(info, args, load_tokenizer(path), cfg)


def load_finetuned(path: str, device=None, trust_code: bool = False, backend: str = "torch", onnx: str | None = None):
    """(task, model) from a folder written by finetune, a run folder (its best/, else model/),
    or a Hugging Face folder whose weights carry a task head.

    backend="onnx" runs the file `roberta-scratch export` wrote (`onnx`, default FOLDER/model.onnx)
    in ONNX Runtime instead of the torch model, after checking it was exported from this folder."""
    path, note = find_model_dir(path)
    if note:
        warnings.warn(note, stacklevel=2)
    cfg, sd = read_checkpoint(path, trust_code=trust_code, attention="sdpa")
    info = task_info(path, cfg, sd)
    if backend == "onnx" and not TASKS[info["task"]].runs_in_onnx:
        raise TrainingError(f"{path}: a {info['task']} model runs in torch only; predict without --backend onnx")
    if backend == "onnx":
        model = OnnxModel(onnx or os.path.join(path, "model.onnx"), device).check_source(cfg, sd, path)
    else:
        model = build_model(TASKS[info["task"]].model_class, cfg, sd)
        model = model.eval().to(device or "cpu")
    return make_task(path, cfg, info), model


def predict(
    path: str,
    lines: list[str],
    batch_size: int = 32,
    device=None,
    source: str = "the input",
    trust_code: bool = False,
    backend: str = "torch",
    onnx: str | None = None,
) -> list[dict]:
    """One result per input line (or per question of a SQuAD file), from a fine-tuned model
    (backend "torch", or "onnx" for the file `roberta-scratch export` wrote)."""
    task, model = load_finetuned(path, device, trust_code=trust_code, backend=backend, onnx=onnx)
    rows = task.read_inputs(lines)
    if not rows:
        raise DataError(f"{source} holds no inputs: it is empty or blank")
    good = [r for r in rows if "_unreadable" not in r]  # a line that could not be read keeps its place
    results = iter(task.predict(model, good, batch_size, device or "cpu") if good else [])
    return [{"error": r["_unreadable"]} if "_unreadable" in r else next(results) for r in rows]
