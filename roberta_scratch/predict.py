"""Using a fine-tuned model: `roberta-scratch predict`, one JSON result per input.

    roberta-scratch predict --model RUN/model texts.txt

The directory tells which task it was trained for (finetune.json, or for a Hugging Face
directory the head its weights carry), and that task reads the inputs and shapes the
results: labels with probabilities, entities with character spans, or answers.
"""
from __future__ import annotations

import json
import os

from .config import RobertaConfig
from .finetune import TASK_FILE, FinetuneArgs
from .tasks import TASKS
from .tokenizer import load_tokenizer


def load_finetuned(path: str, device=None):
    """(task, model) from a directory written by finetune (or a Hugging Face one with a head)."""
    info = {}
    if os.path.isfile(os.path.join(path, TASK_FILE)):
        with open(os.path.join(path, TASK_FILE)) as f:
            info = json.load(f)
    else:  # not ours: guess the task from the model class the weights were saved as
        from safetensors import safe_open

        st = os.path.join(path, "model.safetensors")
        cls_name = ""
        if os.path.isfile(st):
            with safe_open(st, "pt") as f:
                cls_name = (f.metadata() or {}).get("model_class", "")
        cfg = RobertaConfig.load(path)
        task = {"RobertaForTokenClassification": "token-cls", "RobertaForQuestionAnswering": "qa"}.get(cls_name)
        info = {"task": task or "seq-cls", "max_length": cfg.max_tokens}
    task_cls = TASKS[info["task"]]
    model = task_cls.model_class.from_pretrained(path, attention="sdpa").eval().to(device or "cpu")
    cfg = model.config
    args = FinetuneArgs(task=info["task"], model=path, train="", out="",
                        max_length=min(info.get("max_length") or cfg.max_tokens, cfg.max_tokens),
                        stride=info.get("stride", 128), max_answer_length=info.get("max_answer_length", 30))
    task = task_cls.from_saved(info, args, load_tokenizer(path), cfg)
    return task, model


def predict(path: str, lines: list[str], batch_size: int = 32, device=None) -> list[dict]:
    task, model = load_finetuned(path, device)
    return task.predict(model, task.read_inputs(lines), batch_size, device or "cpu")
