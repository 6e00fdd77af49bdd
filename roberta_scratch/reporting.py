"""Where a run's metrics go besides metrics.jsonl: `--report-to jsonl,tensorboard`.

metrics.jsonl is always written: --resume, loss.png and the study's report read it back. The
Reporter mirrors each of its rows elsewhere; today that is TensorBoard, as event files written by
torch.utils.tensorboard.SummaryWriter into OUT/tensorboard/ (`tensorboard --logdir OUT`).

Naming: every numeric field of a row becomes a scalar at global step = the row's "step", tagged
by who wrote the row:

    train/<field>   the training loop's rows: train/loss, train/lr, train/grad_norm,
                    train/tokens_per_s, train/tokens (and step 0's train/trainable_params)
    eval/<field>    held-out evaluations: eval/val_loss, eval/val_ppl, eval/val_acc (pretraining),
                    eval/accuracy, eval/macro_f1, eval/f1 ... (fine-tuning)

Strings (`skipped`, `stopped_early`) and booleans are not scalars and stay in metrics.jsonl only.
A tag gets at most one value per step, the first: the early-stop row repeats the step's tokens.

Resuming: a run killed after its last checkpoint wrote events that the resumed run does again.
The resumed writer opens a new event file with SummaryWriter's purge_step (the checkpoint's
step + 1): TensorBoard then drops the earlier files' events from that step on, so the curves
continue without a repeated step, as metrics.jsonl does after it is cut back to the checkpoint.
Nothing is deleted: the older event files stay, and TensorBoard reads them in order.
"""

from __future__ import annotations

import glob
import math
import os
import time

from .errors import TrainingError

REPORTERS = ("jsonl", "tensorboard")
INSTALL_TENSORBOARD = "pip install 'roberta-scratch[tensorboard]'"
EVENTS_PREFIX = "events.out.tfevents."  # SummaryWriter's file names: events.out.tfevents.<seconds>.<host>...


def parse_report_to(value: str) -> tuple[str, ...]:
    """`--report-to`'s comma-separated names, checked: each one known, and TensorBoard importable
    when asked for (here, before a run builds anything, rather than after its data are read).
    jsonl is always on, named or not."""
    names = tuple(dict.fromkeys(n.strip() for n in str(value).split(",")))  # in order, once each
    unknown = [n for n in names if n not in REPORTERS]
    if unknown or not names:
        raise TrainingError(
            f"--report-to: unknown {', '.join(repr(n) for n in unknown) or 'empty value'}: "
            f"choose from {', '.join(REPORTERS)}, comma-separated (e.g. jsonl,tensorboard)"
        )
    if "tensorboard" in names:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (needs the tensorboard package)
        except ImportError:
            raise TrainingError(
                f"--report-to tensorboard needs the tensorboard package: {INSTALL_TENSORBOARD}"
            ) from None
    return names


def scalars(row: dict, section: str) -> dict:
    """A metrics row's scalars by tag: {"train/loss": 2.3, ...}; the step is the row's own."""
    return {
        f"{section}/{k}": float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class Reporter:
    """Mirrors metrics rows to the reporters `--report-to` names, besides metrics.jsonl (which
    BaseTrainer writes itself). Does nothing until open(), which only rank 0 calls."""

    def __init__(self, report_to: str):
        self.names = parse_report_to(report_to)
        self.writer = None
        self._last_step: dict = {}  # tag -> the last step written: one value per tag and step

    @property
    def wants_tensorboard(self) -> bool:
        return "tensorboard" in self.names

    def open(self, out: str, purge_step: int | None = None) -> None:
        """Start writing into OUT/tensorboard/. purge_step (on --resume): the first step the run
        will write again; TensorBoard hides what earlier files hold from there on."""
        if not self.wants_tensorboard or self.writer is not None:
            return
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.path.join(out, "tensorboard")
        _wait_to_sort_last(log_dir)
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)
        self._last_step = {}

    def add(self, row: dict, section: str) -> None:
        """Write a metrics row (section "train" or "eval": see the module's docstring for the tags)."""
        if self.writer is None:
            return
        step = row["step"]
        for tag, value in scalars(row, section).items():
            if self._last_step.get(tag, -math.inf) < step:
                self.writer.add_scalar(tag, value, global_step=step)
                self._last_step[tag] = step

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _wait_to_sort_last(log_dir: str) -> None:
    """subtle: TensorBoard reads a folder's event files in name order, and a name starts with the
    second its file was opened, then the host and the process id. A run resumed within the same
    second as the file it continues could sort before it, and its purge would then come first
    and hide nothing. So a new file waits for a second no earlier file was opened in (at most
    one second, and only when a resume follows that quickly)."""
    seconds = []
    for path in glob.glob(os.path.join(log_dir, EVENTS_PREFIX + "*")):
        stamp = os.path.basename(path)[len(EVENTS_PREFIX) :].split(".")[0]
        if stamp.isdigit():
            seconds.append(int(stamp))
    latest = max(seconds, default=None)
    if latest is None or latest > time.time() + 1:  # none, or a clock set back since: waiting cannot help
        return
    while int(time.time()) <= latest:
        time.sleep(0.05)
