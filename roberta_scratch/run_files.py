"""What a training run writes into OUT, read back safely, and deleted for --overwrite: only that."""

from __future__ import annotations

import contextlib
import os
import re
import shutil

import torch

from .errors import TrainingError

# What a run writes into OUT: what --overwrite deletes, by name, and nothing else.
RUN_FILES = ("ckpt", "metrics.jsonl", "loss.png", "model", "best", "tensorboard")


# What a run writes inside ckpt/, model/, best/ and tensorboard/ (the model and its tokenizer,
# finetune's task file, the temp names of atomic_write and atomic_files, SummaryWriter's event
# files); a user's file there is left alone.
RUN_FOLDER_FILES = re.compile(
    r"step_\d{8}\.pt(\.tmp-\d+|\.unusable)?|\.tmp-\w+|config\.json|model\.safetensors|"
    r"vocab\.json|merges\.txt|tokenizer_config\.json|sentencepiece\.bpe\.model|"
    r"finetune\.json|[\w.]+\.tmp-\d+|events\.out\.tfevents\.\d+\.[\w.-]+"
)


class CheckpointUnusable(Exception):
    """A checkpoint file that cannot be resumed from; the message says why."""


def non_finite(state: dict) -> list[str]:
    """The names of the floating-point tensors in a state dict that hold NaN or inf."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def overwrite_run(out: str) -> str:
    """Delete the previous run in `out` for --overwrite: only the files a run writes (RUN_FILES,
    and inside its folders RUN_FOLDER_FILES), all checked before anything is deleted. Returns
    what it did, for the log; a user's file inside a run folder stays, with the folder."""
    plan, kept = [], []
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if not os.path.lexists(path):
            continue
        if os.path.islink(path):
            raise TrainingError(
                f"--overwrite: {path} is a symbolic link, which this run did not write; nothing "
                "was deleted. Remove or move it yourself, then run again"
            )
        if os.path.isdir(path):
            inside = os.listdir(path)
            ours = [n for n in inside if RUN_FOLDER_FILES.fullmatch(n)]
            kept += [os.path.join(name, n) for n in inside if n not in ours]
            plan += [os.path.join(path, n) for n in ours] + [path]
        else:
            plan.append(path)
    for path in plan:  # files and temp folders first, then each run folder if nothing else is in it
        if os.path.isdir(path) and not os.path.islink(path):
            if os.path.basename(path) in RUN_FILES:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            else:
                shutil.rmtree(path)
        else:
            os.remove(path)
    done = "deleted the previous run's files" if plan else "there was no previous run to delete"
    return done + (f"; kept what the run did not write: {', '.join(sorted(kept)[:5])}" if kept else "")


def read_training_checkpoint(path: str) -> dict:
    """A checkpoint's state, or CheckpointUnusable saying why not (empty, truncated, not
    ours, weights that are not finite). Nothing beyond tensors is ever unpickled."""
    if os.path.getsize(path) == 0:
        raise CheckpointUnusable("it is empty (0 bytes): the disk filled up or the save was cut short")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, never unpickle further
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointUnusable(f"it cannot be read ({reason[:200]}): it is truncated or not a checkpoint") from None
    missing = (
        [k for k in ("step", "model", "optimizer", "scheduler", "rng", "args") if k not in state]
        if isinstance(state, dict)
        else ["everything"]
    )
    if missing:
        raise CheckpointUnusable(f"it is not a training checkpoint of this project (no {missing})")
    bad = non_finite(state["model"])
    if bad:
        raise CheckpointUnusable(f"its weights are not finite ({bad[:3]})")
    return state
