"""The settings every training run shares (RunArgs), as a dataclass whose fields are also flags.

Each task's settings extend RunArgs (pretrain.TrainArgs, finetune.trainer.FinetuneArgs), and
`roberta-scratch` builds each command's flags from those fields (cli.add_dataclass_arguments):
`option` puts a field's help, bounds and argparse extras in its metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import TrainingError
from .reporting import parse_report_to


def option(default=dataclasses.MISSING, help: str = "", **cli):
    """A settings field that is also a command-line flag: `help` and argparse extras (choices,
    cli=False to keep it off the command line) go in its metadata, and so do its bounds
    (minimum=, above=, maximum=), which RunArgs checks."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(kw_only=True)
class RunArgs:
    """The settings every training run shares; each task's settings extend these."""

    out: str = option(help="run directory: ckpt/, metrics.jsonl, model/")
    lr: float = option(5e-4, "peak learning rate", above=0)
    batch_size: int = option(16, "sequences per rank per micro-batch", minimum=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", minimum=1)
    weight_decay: float = option(0.01, "AdamW weight decay (never on biases and LayerNorm weights)", minimum=0)
    betas: tuple = option((0.9, 0.98), cli=False)
    eps: float = option(1e-6, cli=False)
    clip: float = option(1.0, "max gradient norm; 0 turns clipping off", minimum=0)
    seed: int = option(0, "seeds the weights, the data order, the masks and dropout")
    attention: str = option(
        "sdpa",
        "attention implementation: eager, sdpa, triton, flex, one registered with "
        "roberta_kernels.register, or MODULE:FUNCTION",
    )
    trust_code: bool = option(
        False,
        "let the model's config.json name its kernels as MODULE:FUNCTION, which "
        "imports that module (off: a file runs no code, as Hugging Face's "
        "trust_remote_code)",
    )
    compile: bool = option(False, "torch.compile the model")
    log_every: int = option(10, "steps between metrics.jsonl rows", minimum=1)
    eval_every: int | None = option(100, "steps between held-out evaluations (0: none)", minimum=0)
    save_every: int | None = option(100, "steps between checkpoints", minimum=1)
    keep_last: int = option(3, "checkpoints kept in OUT/ckpt", minimum=1)
    resume: bool = option(False, "continue from the last checkpoint in OUT/ckpt")
    overwrite: bool = option(
        False, "start over in an OUT that already holds a run, deleting its checkpoints, metrics and models"
    )
    device: str | None = option(None, "default: cuda when available, else cpu")
    threads: int | None = option(
        None,
        "CPU threads for torch (default: OMP_NUM_THREADS if set, else the usable "
        "cores less the machine's load, shared among torchrun's local ranks)",
        minimum=1,
    )
    report_to: str = option(
        "jsonl",
        "where metrics go, comma-separated: jsonl (OUT/metrics.jsonl, always written: --resume, "
        "loss.png and the study read it), tensorboard (adds event files in OUT/tensorboard/, for "
        "`tensorboard --logdir OUT`; needs the [tensorboard] extra)",
    )
    progress: bool = option(True, cli=False)

    def __post_init__(self):
        """Numbers out of range are one clear error naming the flag (`--steps -1` was accepted, and
        `--batch-size 0` ended in a range() error), from the bounds in each field's metadata."""
        for f in dataclasses.fields(self):
            value, low, above = getattr(self, f.name), f.metadata.get("minimum"), f.metadata.get("above")
            high = f.metadata.get("maximum")
            if value is None or (low is None and above is None and high is None):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TrainingError(f"{flag} must be a number, got {value!r}")
            if low is not None and value < low:
                raise TrainingError(f"{flag} must be at least {low}, got {value}")
            if above is not None and value <= above:
                raise TrainingError(f"{flag} must be more than {above}, got {value}")
            if high is not None and value > high:
                raise TrainingError(f"{flag} must be at most {high}, got {value}")
        parse_report_to(self.report_to)  # a name it does not know, or tensorboard not installed

    # The settings a resumed run must share with the run it continues (a task adds its own). The
    # data and the model are compared by content (BaseTrainer.load), not by these strings, and
    # the length of the run may change (the schedule is re-anchored): see RESUMING.
    RESUME_KEYS = ("batch_size", "grad_accum", "lr", "weight_decay", "betas", "eps", "clip", "seed")
    # Of those, the ones a resumed run may change, with a note: what the NaN stop advises changing.
    ADJUSTABLE = ("lr", "clip")


RESUMING = """What --resume checks. A resumed run must continue the saved one:
  - the same data, by content: the prepared data's fingerprint (every file's sha256), or the
    fine-tuning features; the same path re-prepared with another tokenizer is refused, while
    ./data and data are the same;
  - the same model config (the attention backend may change: the same math);
  - the same optimisation settings (RESUME_KEYS).
Safe to change, with a note: where and how often to log, evaluate and save, the device, compile,
the length of the run (--steps, --epochs), and the settings a diverged run is told to lower
(--lr, --clip, --warmup; ADJUSTABLE). The schedule is then the one the new settings describe
(warmup to the peak rate, then linear decay to 0 at the last step), from the step the run
resumes at on: a finished run extended from 1000 to 2000 steps goes on at half the peak rate,
as a 2000-step run would be at step 1000. The note says the rate before and after. With
nothing changed, the resumed run continues bit for bit."""


def args_dict(args: RunArgs) -> dict:
    d = dataclasses.asdict(args)
    d["betas"] = list(d["betas"])
    return d
