"""The training loop every task shares (BaseTrainer). Its settings are in run_args.py, what it
writes into OUT in run_files.py, its loss plot in plots.py.

BaseTrainer owns everything a run needs whatever it learns: optimizer and schedule,
accumulation, clipping, checkpoints, resume, NaN stop, SIGINT, metrics and progress.
A task is a subclass with a few hooks: MLM pretraining in pretrain.py, fine-tuning in
finetune/trainer.py. Their settings are dataclasses that extend RunArgs, and `roberta-scratch`
builds each command's flags from those fields (cli.add_dataclass_arguments).

Everything random is a function of (seed, step) or is checkpointed, so a run resumed
from RUN/ckpt continues exactly as if it had never stopped:
  - which examples form step s's global batch: a per-epoch permutation seeded by (seed, epoch);
  - anything a task draws per micro-batch (MLM masks): a generator seeded by (seed, step, m);
  - dropout: torch's global RNG, saved in every checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .errors import TrainingError
from .fileio import DirectoryBusy, atomic_write, lock_dir
from .flops import peak_flops
from .machine import cpu_threads
from .progress import progress
from .reporting import Reporter
from .run_args import args_dict
from .run_files import CheckpointUnusable, non_finite, overwrite_run, read_training_checkpoint

# Scores, fractions from 0 to 1 in metrics.jsonl (every task), shown as percents in the log.
PERCENT_METRICS = ("accuracy", "macro_f1", "f1", "precision", "recall", "exact_match", "val_acc", "val_nsp_acc")


# ----------------------------------------------------------------------------- helpers


def linear_schedule(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warmup to lr over `warmup` steps, then linear decay to 0 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (steps - step) / max(1, steps - warmup))


class LinearSchedule:
    """The learning-rate factor of each step: linear_schedule as an object, so that torch's
    LambdaLR saves and restores `warmup` and `total` with its own state, and a resumed run
    can set a new total (see RESUMING)."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        return linear_schedule(step, 1.0, self.warmup, self.total)


def param_groups(model: torch.nn.Module, weight_decay: float, lr_scale=None) -> list:
    """AdamW's parameter groups. Decay matrices and embeddings; never biases or LayerNorm weights
    (the 1-D parameters). Only what trains: a frozen parameter (requires_grad=False) is in no group,
    so the optimizer keeps no state for it.

    lr_scale(name) -> the factor on the peak rate of a parameter (layer-wise decay, say; default 1).
    Each group keeps its factor as "lr_scale": the schedule multiplies the peak rate by it (see
    BaseTrainer.__init__ and _reanchor_schedule). The groups with the largest factor come first, so
    the first group's rate is the peak rate the log shows.
    """
    groups: dict = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((lr_scale(name) if lr_scale else 1.0, p.dim() >= 2), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (scale, decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers, e.g. (seed, step, micro-batch)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


# ----------------------------------------------------------------------------- the loop, shared by every task


@dataclass
class Built:
    """What a task's build() makes: the loop's inputs, given to it explicitly."""

    model: torch.nn.Module
    train_set: Sequence  # indexed by the loop's data order (see BaseTrainer)
    total_steps: int
    warmup_steps: int
    # settings the task resolved from their defaults (an unset --max-length from the model, say):
    # the run's effective settings are the given ones with these replaced (BaseTrainer.args)
    resolved: dict = field(default_factory=dict)


class BaseTrainer:
    """The training loop every task shares; a task subclass fills in five hooks.

        build()                     -> Built: the model, the training set, the run's length
        collate(examples, step, m)  -> one micro-batch: a dict of the model's keyword arguments, labels included
        evaluate()                  -> a dict of held-out metrics, or None
        describe(metrics)           -> one line for the log (on_evaluated(metrics) may act on them,
                                       and set self.stop_early to a reason to end the run there)
        export()                    -> what the run leaves behind in OUT when it finishes
        loss_parts(out) (optional)  -> named terms of the loss to log beside it (MLM and NSP)

    Two optional hooks say which parameters train and how fast: build() may freeze some
    (requires_grad=False: they get no optimizer group and no AdamW state), and lr_scale(name) gives
    a parameter's factor on the peak rate. metrics.jsonl's first row counts what trains.

    Everything else lives here once: AdamW with decay on matrices only, warmup then linear decay,
    gradient accumulation and clipping, DDP, atomic checkpoints (model, optimizer, scheduler, RNG,
    data position) with keep-last-K and bit-for-bit --resume, the NaN stop, the SIGINT save,
    metrics.jsonl (every row with "tokens", the training tokens seen so far), its mirror in
    TensorBoard (--report-to, reporting.py) and the progress bar. The data order is a function
    of (seed, step): step s reads global positions [s * global_batch, (s + 1) * global_batch) of
    an endless stream of training examples, permuted afresh each epoch with a generator seeded
    by (seed, epoch).
    """

    desc = "training"  # the progress bar's label
    eval_at_start = False  # evaluate the untrained model once (a baseline for the curve)
    extra_state_keys: tuple = ()  # attributes saved in checkpoints and restored on resume

    def __init__(self, args):
        self.given_args = args  # as the caller passed them; never changed
        self.args = args  # the effective settings, once build() has resolved its defaults
        self.reporter = Reporter(args.report_to)  # opened by fit(), on rank 0
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if args.device:
            self.device = torch.device(args.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.device.type == "cpu":
            threads, why = cpu_threads(args.threads)
            torch.set_num_threads(threads)
            self._log(f"torch uses {threads} CPU thread{'s' if threads > 1 else ''} ({why})")

        built = self.build()
        self.args = dataclasses.replace(args, **built.resolved) if built.resolved else args
        self.train_set, self.total_steps, self.warmup_steps = built.train_set, built.total_steps, built.warmup_steps
        self.raw_model = built.model.to(self.device)
        self.model = self.raw_model
        if self.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.forward = torch.compile(self.model) if args.compile else self.model
        groups = param_groups(self.raw_model, args.weight_decay, self.lr_scale)
        for group in groups:
            group["lr"] = args.lr * group["lr_scale"]  # LambdaLR keeps it as the group's peak (initial_lr)
        self.parameter_counts = self._count_parameters(groups)
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=args.lr,
            betas=tuple(args.betas),
            eps=args.eps,
            fused=self.device.type in ("cuda", "cpu"),
        )
        self.schedule = LinearSchedule(self.warmup_steps, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.step = 0
        self.tokens_seen = 0  # non-padding training tokens so far, over every rank (metrics.jsonl's "tokens")
        self.last_loss_parts: dict = {}  # the last step's loss_parts, for the log
        self.last_grad_norm = None  # the last step's gradient norm, before clipping (a tensor), for its row
        self._perms: dict = {}
        self._stop = False
        self.stop_early: str | None = None  # why the run stops before its last step (set by on_evaluated)

    # ---- the hooks -----------------------------------------------------------------

    def build(self) -> Built:
        raise NotImplementedError

    def collate(self, examples: list, step: int, micro_batch: int) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict | None:
        return None

    def describe(self, metrics: dict) -> str:
        """Metrics as the log shows them: every score is a fraction in metrics.jsonl, a percent here."""
        return ", ".join(
            f"{k} {v:.2%}" if k in PERCENT_METRICS else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
        )

    def on_evaluated(self, metrics: dict) -> None:
        pass

    def export(self) -> None:
        pass

    def data_fingerprint(self) -> str | None:
        """What the training data are, by content, for --resume to compare; None: not compared."""
        return None

    def loss_parts(self, out) -> dict:
        """Named terms of a micro-batch's loss to log beside it (e.g. {"mlm_loss": ..., "nsp_loss": ...}),
        as scalar tensors; each is averaged over the step like the loss itself."""
        return {}

    def lr_scale(self, name: str) -> float:
        """The factor on the peak learning rate of the parameter called `name` (1: the peak rate).
        A parameter that does not train is frozen by build() (requires_grad=False), never here."""
        return 1.0

    def train_flops_per_token(self) -> float | None:
        """Training FLOPs per token, for MFU on CUDA; None to leave MFU out."""
        return None

    def _count_parameters(self, groups: list) -> dict:
        """What trains (the optimizer's parameters) against the whole model; logged, and recorded in
        metrics.jsonl's first row."""
        trainable = sum(p.numel() for g in groups for p in g["params"])
        total = sum(p.numel() for p in self.raw_model.parameters())
        self._log(f"training {trainable:,} of {total:,} parameters ({trainable / max(total, 1):.1%})")
        return {"trainable_params": trainable, "total_params": total}

    # ---- data ----------------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        return self.args.batch_size * self.args.grad_accum * self.world

    def _example(self, position: int):
        """The training example at a global position of the (endless, epoch-permuted) stream."""
        n = len(self.train_set)
        epoch, i = divmod(position, n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(seed_for(self.args.seed, epoch))
            self._perms = {epoch: torch.randperm(n, generator=g)}  # keep one epoch's permutation
        return self.train_set[int(self._perms[epoch][i])]

    def micro_batches(self, step: int) -> list[dict]:
        """This rank's micro-batches of `step`: global micro-batch m = accum_index * world + rank."""
        a = self.args
        batches = []
        for k in range(a.grad_accum):
            m = k * self.world + self.rank
            start = step * self.global_batch + m * a.batch_size
            examples = [self._example(start + j) for j in range(a.batch_size)]
            batches.append(
                {k: v.to(self.device, non_blocking=True) for k, v in self.collate(examples, step, m).items()}
            )
        return batches

    # ---- one step ------------------------------------------------------------------

    def _autocast(self):
        return (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """How many items the batch's loss is the mean over: the batch size here; a task whose
        loss averages over labelled tokens (MLM, NER) counts those. The micro-batches of a
        step are weighted by it, so the step's loss is the mean over every item of the global
        batch, whatever the split into micro-batches and ranks."""
        return torch.tensor(batch["input_ids"].shape[0], device=self.device)

    def forward_backward(self, step: int) -> tuple[float, int]:
        """Accumulate gradients for `step`; returns (the step's loss, tokens).

        Each micro-batch's mean loss is weighted by its share of the step's items
        (loss_weight, summed over micro-batches and ranks), so gradients and loss are the
        mean over the whole global batch: the same for 1 rank x 4 micro-batches as for
        4 ranks x 1. A micro-batch with nothing to predict weighs 0; a step with nothing
        at all has loss 0 and zero gradients.
        """
        batches = self.micro_batches(step)
        weights = torch.stack([self.loss_weight(b) for b in batches]).float()
        total_weight = weights.sum()
        if self.distributed:
            dist.all_reduce(total_weight)
        # DDP averages gradients over ranks, hence the world size.
        scales = weights * (self.world / total_weight.clamp(min=1))
        total = torch.zeros((), device=self.device)
        tokens = torch.zeros((), dtype=torch.long, device=self.device)
        parts: dict = {}
        for k, batch in enumerate(batches):
            sync = k == len(batches) - 1 or not self.distributed
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx, self._autocast():
                out = self.forward(**batch)
                loss = out.loss
                (loss * scales[k]).backward()
            total += loss.detach().float() * weights[k]
            for name, value in self.loss_parts(out).items():
                parts[name] = parts.get(name, 0.0) + value.detach().float() * weights[k]
            tokens += batch["attention_mask"].sum()
        names = sorted(parts)
        sums = torch.stack([total] + [parts[n] for n in names])
        if self.distributed:
            dist.all_reduce(sums)
        means = sums / total_weight.clamp(min=1)
        # one device sync per step
        values = torch.cat([means.double(), tokens.double()[None], total_weight.double()[None]]).tolist()
        self.last_loss_parts = dict(zip(names, values[1:-2], strict=True))
        self.last_step_empty = values[-1] == 0  # nothing to predict in the whole global batch
        return values[0], int(values[-2]) * self.world

    def optimizer_step(self) -> None:
        if self.args.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.args.clip)
            if not torch.isfinite(norm):
                raise TrainingError(self._diverged(f"the gradient norm is {norm.item()}"))
        elif self._logged(self.step + 1):  # nothing to clip, but the metrics row reports the norm
            grads = [p.grad for p in self.raw_model.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        else:
            norm = None
        self.last_grad_norm = norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _diverged(self, what: str) -> str:
        """The NaN stop's message, with advice that fits the cause."""
        last = self.checkpoints()[-1] if self.checkpoints() else "none yet"
        where = f"{what} at step {self.step + 1}; stopping without saving (the last good checkpoint is {last}). "
        if not all(torch.isfinite(p).all() for p in self.raw_model.parameters()):
            return where + (
                "The weights themselves are no longer finite: training diverged in an earlier "
                "update. Resume from that checkpoint with a lower --lr or --clip."
            )
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in self.raw_model.parameters()):
            return where + (
                "The weights and gradients are finite, so the forward pass itself produced it: "
                "look at this step's data (labels, lengths), or at overflow under mixed precision. "
                "Lowering --lr will not help."
            )
        return where + (
            "The weights are finite but the gradients overflowed: the step was too large for "
            "this learning rate. Resume from that checkpoint with a lower --lr or --clip."
        )

    # ---- checkpoints ---------------------------------------------------------------

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.args.out, "ckpt")

    def checkpoints(self) -> list[str]:
        """Complete checkpoints, oldest first (a temp file left by a crash is not one)."""
        return sorted(glob.glob(os.path.join(self.ckpt_dir, "step_*.pt")))

    def save(self) -> str | None:
        if self.rank != 0:
            return None
        bad = non_finite(self.raw_model.state_dict())
        if bad:  # never a checkpoint that resuming or exporting would spread
            raise TrainingError(self._diverged(f"the weights {bad[:3]} are not finite"))
        os.makedirs(self.ckpt_dir, exist_ok=True)
        seen = self.step * self.global_batch
        state = {
            "step": self.step,
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "data": {"examples_seen": seen, "epoch": seen // len(self.train_set)},
            "config": self.raw_model.config.to_dict(),
            "args": args_dict(self.given_args),
            "settings": args_dict(self.args),  # what --resume compares: the effective settings
            "data_fingerprint": self.data_fingerprint(),
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "tokens_seen": self.tokens_seen,
            "extra": {k: getattr(self, k) for k in self.extra_state_keys},
        }
        path = os.path.join(self.ckpt_dir, f"step_{self.step:08d}.pt")
        with atomic_write(path) as f:
            torch.save(state, f)
        self.reporter.flush()  # the event files hold at least what the checkpoint covers
        for old in self.checkpoints()[: -self.args.keep_last] + glob.glob(path[: -len("step_00000000.pt")] + "*.tmp-*"):
            os.remove(old)  # old checkpoints, and what a save killed midway left behind
        return path

    def load(self, path: str, state: dict | None = None) -> None:
        """Continue from a checkpoint, after checking it continues this run (see RESUMING)."""
        state = read_training_checkpoint(path) if state is None else state
        saved, now = state.get("settings") or state["args"], args_dict(self.args)  # older ones: "args" only
        saved.setdefault("report_to", "jsonl")  # from before --report-to: what it did (no note that it changed)
        self._check_continues(path, state, saved, now)
        self._keep_saved_threads(state.get("threads"))
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for k, v in state.get("extra", {}).items():
            setattr(self, k, v)
        self.step = state["step"]
        self.tokens_seen = state.get("tokens_seen")  # None from a checkpoint older than the count: not logged
        self._note_safe_changes(saved, now)
        self._reanchor_schedule(path, saved, now)

    def _check_continues(self, path: str, state: dict, saved: dict, now: dict) -> None:
        """TrainingError unless the checkpoint continues this run: the same settings (RESUME_KEYS, less
        ADJUSTABLE), the same training data by content, the same model config."""
        changed = {
            k: (saved.get(k), now[k])
            for k in self.args.RESUME_KEYS
            if saved.get(k) != now[k] and k not in self.args.ADJUSTABLE
        }
        if changed:
            said = "; ".join(f"--{k.replace('_', '-')} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            free = ", ".join("--" + k.replace("_", "-") for k in self.args.ADJUSTABLE)
            raise TrainingError(
                f"cannot resume from {path}: {said}. A resumed run continues the saved one exactly, "
                f"so these must match ({free} and the run's length may change, with a note). Pass "
                "the saved values, or --overwrite to start over, or use another --out."
            )
        fingerprint = self.data_fingerprint()
        if state.get("data_fingerprint") and fingerprint and state["data_fingerprint"] != fingerprint:
            raise TrainingError(
                f"cannot resume from {path}: the training data differ from the saved run's "
                f"(fingerprint {state['data_fingerprint'][:12]} vs {fingerprint[:12]}): they were "
                "prepared again, from other files or with another tokenizer. Start a new run in "
                "another --out, or pass --overwrite to start this one over."
            )
        config = {k: v for k, v in self.raw_model.config.to_dict().items() if k != "attention"}
        saved_config = {k: v for k, v in state.get("config", {}).items() if k != "attention"}
        if saved_config and saved_config != config:
            diff = {
                k: (saved_config.get(k), config.get(k))
                for k in sorted(set(config) | set(saved_config))
                if saved_config.get(k) != config.get(k)
            }
            raise TrainingError(
                f"cannot resume from {path}: the model config differs from the saved run's (saved, now): {diff}"
            )

    def _keep_saved_threads(self, saved_threads: int | None) -> None:
        """subtle: CPU matmuls can round differently with another thread count, and a resumed run
        must continue exactly: keep the saved run's count unless --threads or OMP_NUM_THREADS say."""
        if (
            saved_threads
            and self.device.type == "cpu"
            and saved_threads != torch.get_num_threads()
            and cpu_threads(self.args.threads)[1] not in ("--threads", "OMP_NUM_THREADS")
        ):
            torch.set_num_threads(saved_threads)
            self._log(f"torch uses {saved_threads} CPU threads, as the saved run did (pass --threads to change)")

    def _reanchor_schedule(self, path: str, saved: dict, now: dict) -> None:
        """After loading: the schedule the current --steps/--epochs, --lr and warmup describe, from
        this step on (see RESUMING). Nothing changes when none of them did."""
        warmup_changed = any(saved.get(k) != now.get(k) for k in ("warmup", "warmup_ratio") if k in now)
        lr_changed = saved.get("lr") != now["lr"]
        if self.schedule.total == self.total_steps and not warmup_changed and not lr_changed:
            return
        if self.total_steps <= self.step:
            raise TrainingError(
                f"cannot resume from {path}: it is at step {self.step}, and the run would now "
                f"end at step {self.total_steps}"
            )
        old_lr = self.scheduler.get_last_lr()[0]
        self.schedule.total = self.total_steps
        if warmup_changed:
            self.schedule.warmup = self.warmup_steps
        for group in self.optimizer.param_groups:
            # the group's peak rate, which LambdaLR reads back as its base_lrs (checkpoints older than
            # layer-wise decay have no lr_scale: every group ran at the peak rate)
            group["initial_lr"] = self.args.lr * group.get("lr_scale", 1.0)
        # A scheduler made at this step sets every group's rate from the schedule, through the
        # public constructor (last_epoch = step - 1: it steps once, to `step`).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule, last_epoch=self.step - 1)
        self._log(
            f"note: the learning rate follows the schedule of the current settings from here (peak "
            f"{self.scheduler.base_lrs[0]:.3g}, warmup {self.schedule.warmup} steps, linear decay to 0 at "
            f"step {self.total_steps}): {self.scheduler.get_last_lr()[0]:.3g} at step {self.step} "
            f"(it was {old_lr:.3g})"
        )

    def _note_safe_changes(self, saved: dict, now: dict) -> None:
        strict = (set(self.args.RESUME_KEYS) - set(self.args.ADJUSTABLE)) | {"resume", "overwrite"}
        changed = {k: (saved.get(k), now[k]) for k in now if k not in strict and saved.get(k) != now[k]}
        if changed:
            self._log(
                "note: resuming with settings changed, which is safe (saved, now): "
                + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            )

    def _resume(self) -> None:
        """Load the newest usable checkpoint; an unusable one is set aside with a note."""
        for path in reversed(self.checkpoints()):
            try:
                state = read_training_checkpoint(path)
            except (CheckpointUnusable, OSError) as e:
                self._log(f"note: skipping {path}: {e}")
                if self.rank == 0 and os.path.exists(path):
                    os.replace(path, path + ".unusable")  # kept for a look, out of the way
                continue
            self.load(path, state)
            self._log(f"resumed from step {self.step} ({path})")
            return
        self._log("nothing to resume from: starting at step 0")

    def _claim_out(self) -> None:
        """OUT holds one run: refuse to start a second one over it unless told which way to go."""
        a = self.args
        if a.resume and a.overwrite:
            raise TrainingError("--resume continues the run in OUT and --overwrite deletes it: pass one of them")
        existing = sorted(n for n in os.listdir(a.out) if n != ".lock")
        if existing and not a.resume and not a.overwrite:
            raise TrainingError(
                f"{a.out} already holds files ({', '.join(existing[:5])}"
                f"{', ...' if len(existing) > 5 else ''}): pass --resume to continue that run, or "
                "--overwrite to delete it and start over"
            )
        if a.overwrite and self.rank == 0:
            self._log(f"--overwrite: {overwrite_run(a.out)}")

    def hold_inputs(self):
        """A context held for the whole run over the inputs a task reads from disk (none here)."""
        return contextlib.nullcontext()

    def _remove_temp_leftovers(self) -> None:
        """A run killed while it exported a model leaves model/.tmp-XXXX (atomic_files): the
        temp folders of this run's own writers, removed on start and on --resume."""
        if self.rank != 0:
            return
        for name in ("model", "best", "ckpt"):
            folder = os.path.join(self.args.out, name)
            if os.path.isdir(folder) and not os.path.islink(folder):
                for leftover in glob.glob(os.path.join(folder, ".tmp-*")):
                    if os.path.isdir(leftover) and not os.path.islink(leftover):
                        shutil.rmtree(leftover, ignore_errors=True)

    # ---- the loop ------------------------------------------------------------------

    def fit(self) -> int:
        """Train to self.total_steps. Returns 0 when done; 130 (SIGINT) or 143 (SIGTERM) when
        stopped by a signal, after saving a checkpoint."""
        a = self.args
        os.makedirs(a.out, exist_ok=True)
        lock = lock_dir(a.out, f"a {self.desc} run") if self.rank == 0 else contextlib.nullcontext()
        try:
            with lock, self.hold_inputs():
                self._claim_out()
                self._remove_temp_leftovers()
                self._log(f"{self.desc} into {a.out}: checkpoints in {self.ckpt_dir}, metrics in {self.metrics_path}")
                self._log(
                    f"global batch: {a.batch_size} examples x {a.grad_accum} micro-batch(es) x {self.world} "
                    f"process(es) = {a.batch_size * a.grad_accum * self.world} examples a step"
                )
                if a.resume:
                    self._resume()
                    self._truncate_metrics()
                if self.rank == 0:  # on --resume, TensorBoard hides what will be written again (reporting.py)
                    self.reporter.open(a.out, purge_step=self._redo_from if a.resume else None)
                handled = (signal.SIGINT, signal.SIGTERM) if self.rank == 0 else ()
                previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
                try:
                    return self._loop()
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)
                    self.reporter.close()
        except DirectoryBusy as e:
            raise TrainingError(str(e)) from None

    def close(self) -> None:
        """Leave the process group, after dropping the DDP wrapper.

        subtle: a DistributedDataParallel still alive when the interpreter exits can abort the
        process ("terminate called without an active exception", exit 134) after the work is
        done, which torchrun reports as a failed rank. It happened in about 1 run in 15 with gloo
        on CPU (torch 2.13); dropping the wrapper first removed it (0 in 150).
        """
        self.reporter.close()
        self.forward = self.model = self.raw_model
        gc.collect()  # the wrapper may sit in a reference cycle
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def _loop(self) -> int:
        a, steps = self.args, self.total_steps
        self.model.train()
        if self.step == 0:
            self._append_metrics({"step": 0, **self._tokens(), **self.parameter_counts})
        if self.step == 0 and a.eval_every and self.eval_at_start:
            self._record(self.evaluate(), "start")
        bar = progress(
            total=steps, initial=self.step, desc=self.desc, unit="steps", disable=not a.progress or self.rank != 0
        )
        flops = self.train_flops_per_token()
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < steps and not self.stop_early:
            loss, tokens = self.forward_backward(self.step)
            if not math.isfinite(loss):
                raise TrainingError(self._diverged(f"the loss is {loss}"))
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer_step()
            self.step += 1
            window_tokens += tokens
            if self.tokens_seen is not None:
                self.tokens_seen += tokens
            bar.update(1)
            if self._logged(self.step):
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / max(elapsed, 1e-9)
                row = {
                    "step": self.step,
                    "loss": loss,
                    **self.last_loss_parts,
                    "lr": lr,
                    **({} if self.last_grad_norm is None else {"grad_norm": float(self.last_grad_norm)}),
                    "tokens_per_s": tps,
                    **self._tokens(),
                }
                if self.last_step_empty:  # its loss of 0 means nothing: the row says so instead
                    row = {k: v for k, v in row.items() if k != "loss" and k not in self.last_loss_parts}
                    row["skipped"] = "nothing to predict in this step's batch (no token was masked or labelled)"
                if self.device.type == "cuda" and flops:
                    row["mfu"] = tps * flops / peak_flops(self.device) / self.world
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                self._append_metrics(row)
                window_tokens, window_start = 0, time.perf_counter()
            if a.eval_every and (self.step % a.eval_every == 0 or self.step == steps):
                self._record(self.evaluate(), f"step {self.step}")
            if self.stop_early:  # the row before the checkpoint: a resumed run keeps it or redoes it
                self._append_metrics({"step": self.step, **self._tokens(), "stopped_early": self.stop_early})
                self._log(f"stopped early at step {self.step}: {self.stop_early}")
            if self.step % a.save_every == 0 or self.step == steps or self.stop_early:
                self.save()
            if self._stopping():
                self.save()
                bar.close()
                self._log(f"interrupted: saved step {self.step} to {self.ckpt_dir}; resume with --resume")
                return 128 + (self._stop or signal.SIGINT)
        bar.close()
        if self.rank == 0:
            self.export()
        return 0

    def _logged(self, step: int) -> bool:
        """Whether `step` ends with a row in metrics.jsonl: every --log-every steps, and the last."""
        return step % self.args.log_every == 0 or step == self.total_steps

    def _on_signal(self, signum, frame):
        """SIGINT (Ctrl-C) and SIGTERM (what schedulers send): finish the step, save, exit."""
        if self._stop:  # a second signal: give up at once
            raise KeyboardInterrupt
        self._stop = signum
        self._log(
            f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint (send it again to abort)"
        )

    def _stopping(self) -> bool:
        if not self.distributed:
            return self._stop
        flag = torch.tensor([float(self._stop or 0)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._stop = int(flag.item())
        return bool(self._stop)

    # ---- output --------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.rank == 0:
            tqdm.write(message)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.args.out, "metrics.jsonl")

    def _append_metrics(self, row: dict, section: str = "train") -> None:
        """One row of metrics.jsonl (always written), mirrored by the reporter: section "train"
        for the loop's rows, "eval" for held-out ones (TensorBoard's train/... and eval/... tags)."""
        if self.rank == 0:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.reporter.add(row, section)

    def _record(self, metrics: dict | None, when: str) -> None:
        if metrics is None:
            return
        self._append_metrics({"step": self.step, **self._tokens(), **metrics}, "eval")
        if self.rank == 0:
            self.reporter.flush()  # an evaluation is worth seeing now, not at the next flush
        self._log(f"held-out at {when}: {self.describe(metrics)}")
        self.on_evaluated(metrics)

    def _tokens(self) -> dict:
        """{"tokens": training tokens seen so far} for a metrics row, so curves can be drawn
        against tokens; empty when resumed from a checkpoint that did not count them."""
        return {} if self.tokens_seen is None else {"tokens": self.tokens_seen}

    @property
    def _redo_from(self) -> int:
        """On --resume, the first step whose metrics the run writes again: the one after the
        checkpoint's (its rows were written before it was saved), or 0 when there was no
        checkpoint to resume from (a run is saved from step 1 on; at 0 everything is redone)."""
        return self.step + 1 if self.step else 0

    def _truncate_metrics(self) -> None:
        """Drop metric lines a killed run wrote after its last checkpoint (they will be redone),
        and a line cut short by a crash or a full disk."""
        if self.rank != 0 or not os.path.isfile(self.metrics_path):
            return
        rows, broken = [], 0
        with open(self.metrics_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    step = row["step"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    step = None
                if isinstance(step, bool) or not isinstance(step, int):  # cut short, or not a row of ours
                    broken += bool(line.strip())
                    continue
                if step < self._redo_from:
                    rows.append(json.dumps(row) + "\n")
        if broken:
            self._log(
                f"note: dropped {broken} unreadable line(s) of {self.metrics_path} (a write cut short, or "
                "not a metrics row: no whole-number step)"
            )
        with atomic_write(self.metrics_path, "w") as f:
            f.writelines(rows)
