"""`roberta-scratch study`: the RoBERTa paper's pretraining ablations, at the scale a machine allows.

    roberta-scratch study masking --preset ci  --out runs/study-ci      # Table 1: a smoke test, a few CPU minutes
    roberta-scratch study all     --preset cpu --out runs/study-cpu     # Tables 1-3, about an hour on 2 cores
    roberta-scratch study formats --preset gpu-small --out runs/study-gpu

The paper (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach") asks
what BERT's recipe needs, one change at a time:

    masking   Table 1: one static mask, BERT's static copies (each mask seen 4 times), dynamic masking
    formats   Table 2: SEGMENT-PAIR+NSP, SENTENCE-PAIR+NSP, FULL-SENTENCES, DOC-SENTENCES
    batch     Table 3: bigger batches at one token budget (fewer steps), each with a small
              learning-rate sweep at seed 0; each batch size's best rate gets every seed
    all       the three; the arms they share (the baseline) are run once

Every arm is an ordinary `pretrain` run under OUT/runs/<arm>-s<seed>/ (checkpoints,
metrics.jsonl, model/), then an ordinary `finetune` run of the downstream task from its
model into OUT/runs/<arm>-s<seed>/downstream/. The baseline is FULL-SENTENCES with dynamic
masking and the smallest batch, RoBERTa's recipe; each arm changes one thing from it, and
every arm of a study gets the same data, model size, token budget and held-out evaluation.

What makes it safe to stop and rerun:
  - OUT/runs/<run>/study.json records the run's settings hash before it trains, and its
    results once it is done (written atomically). A rerun skips a done run whose hash still
    matches, resumes an unfinished one from its last checkpoint, and refuses a run whose
    settings changed (--overwrite deletes what differs and trains it again);
  - the tokenizer, the prepared data and the downstream task are rebuilt only when their
    inputs change, and OUT is locked while a study runs in it.

Output: OUT/table.md (the paper's layout, median [range] and mean ± std over seeds, the paper's
numbers beside ours, the unigram floor, Welch's t-test against the baseline, the findings against
the paper's), OUT/results.json (everything) and OUT/curves.png (held-out loss against training
tokens); see study/report.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

from ..data.corpus import iter_documents
from ..data.packed import prepare
from ..data.packed_dataset import PackedDataset
from ..errors import TrainingError
from ..fileio import DirectoryBusy, atomic_write, lock_dir
from ..finetune.trainer import FinetuneArgs, finetune
from ..machine import cpu_threads
from ..pretrain import TrainArgs, pretrain
from ..progress import progress
from ..reporting import parse_report_to
from ..tokenization.byte_level import ByteLevelBPETokenizer
from .report import sweep_winners, write_report
from .tasks import TaskSpec, build_task, write_if_changed

SUBSTUDIES = ("masking", "formats", "batch")
STUDIES = SUBSTUDIES + ("all",)


class StudyError(TrainingError):
    """A study that cannot go on as asked (changed settings, a bad name); the message says what to do."""


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """The size of a study: the model, the data, the token budget, the downstream task.

    The baseline arm trains `steps` steps of `batch_size` sequences of `seq_len` tokens: that
    token budget is every arm's. Arms with shorter examples (DOC-SENTENCES, the pair
    formats) get proportionally bigger batches, as in the paper; the batch arms trade steps
    for batch size at the same budget.
    """

    name: str
    description: str
    model: dict  # RobertaConfig fields; the vocabulary, positions and special ids come from the data
    vocab_size: int  # the byte-level BPE trained on the corpus
    seq_len: int
    batch_size: int  # sequences per optimizer step, baseline arm
    micro_batch: int  # most sequences per forward pass; gradient accumulation makes up the rest
    steps: int
    lr: float
    seeds: int
    warmup: float = 0.06  # share of each run's steps (RoBERTa: 24K of 500K; BERT 10K of 1M)
    evals: int = 8  # held-out evaluations along each run: the points of curves.png
    eval_blocks: int = 256  # the fixed held-out set, in blocks of seq_len
    val_fraction: float = 0.05  # share of the corpus' documents held out for it
    max_documents: int | None = None  # pretrain on every k-th document only (sizes the passes, keeps `ci` tiny)
    static_repeats: int = 4  # BERT saw each of its 10 static masks 4 times (40 epochs): the copies follow
    batch_scales: tuple = (1, 8, 32)  # the paper's 256 / 2K / 8K
    # Table 3's learning-rate sweep: for each batch scale, the rates tried (x the preset's lr); the
    # best by seed 0's held-out loss gets every seed. The baseline's rate (1.0 at scale 1) is one of them.
    lr_grid: tuple = ((0.5, 1.0, 2.0), (3.5, 7.0, 14.0), (5.0, 10.0, 20.0))
    smoke: bool = False  # a pipeline check: the table says so and draws no conclusions
    task: TaskSpec = field(default_factory=TaskSpec)
    ft_epochs: float = 3.0
    ft_lr: float = 1e-4
    ft_batch: int = 16
    ft_max_length: int = 128
    attention: str = "sdpa"  # "auto": the fused Triton kernels where the registry says they run, else sdpa
    device: str | None = None  # None: cuda when available, else cpu


PRESETS = {
    # Proves the pipeline: `study masking --preset ci` in a few minutes on 2 CPU cores.
    "ci": Preset(
        name="ci",
        description="a pipeline check, not an experiment: a hidden-64, 2-layer encoder, "
        "a quarter of the corpus, about two passes over it",
        model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
        vocab_size=2048,
        seq_len=64,
        batch_size=16,
        micro_batch=64,
        steps=300,
        lr=1e-3,
        seeds=2,
        evals=5,
        eval_blocks=128,
        max_documents=1600,
        task=TaskSpec(train_per_class=60, test_per_class=20),
        ft_epochs=3.0,
        ft_lr=1e-3,
        ft_max_length=64,
        batch_scales=(1, 4),
        lr_grid=((0.5, 1.0, 2.0), (1.0, 2.0, 4.0)),
        smoke=True,
    ),
    # Sized to run `study all` (32 runs) within 90 min on 2 cores with 2 threads (measured: the runs
    # took 55 min of their own wall time, docs/study.md): the demo's recipe
    # (no dropout, lr 2e-3, 64-token blocks of 32) at the paper's 15% masking, 2.5M tokens a run, 3
    # seeds. The corpus is thinned so that those tokens are 8+ passes: BERT's static copies can then
    # each be seen 4 times. Probed and timed arm by arm: see docs/study.md.
    "cpu": Preset(
        name="cpu",
        description="hidden 128, 2 layers, no dropout; 2.5M tokens a run (about 9 passes over 3,000 "
        "stdlib docstrings), 3 seeds",
        model=dict(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        vocab_size=4096,
        seq_len=64,
        batch_size=32,
        micro_batch=256,
        steps=1200,
        lr=2e-3,
        seeds=3,
        val_fraction=0.08,
        max_documents=3000,
        # Measured (docs/study.md): 8x the batch at 150 steps stays at the unigram floor at every
        # rate tried (1e-3 to 8e-3), 4x at 300 steps learns; so 2x and 4x, each still 300+ steps.
        batch_scales=(1, 2, 4),
        # 1e-3, 2e-3, 4e-3 for each: a first grid of 2e-3, 4e-3, 8e-3 for the big batches put their
        # best at its lowest rate, the two higher ones collapsing to predicting one token
        lr_grid=((0.5, 1.0, 2.0), (0.5, 1.0, 2.0), (0.5, 1.0, 2.0)),
        task=TaskSpec(),
        ft_epochs=3.0,
        ft_lr=3e-4,
        ft_max_length=128,
    ),
    # About an hour on one GPU: a 4-layer, hidden-512 encoder, bf16 autocast (the trainer's
    # default on CUDA), the fused Triton attention and LayerNorm where they run.
    "gpu-small": Preset(
        name="gpu-small",
        description="hidden 512, 4 layers, 8 heads; 33M tokens a run (about 50 passes over "
        "the stdlib docstrings, as BERT made 40), 5 seeds, bf16",
        model=dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048),
        vocab_size=8192,
        seq_len=256,
        batch_size=64,
        micro_batch=256,
        steps=2000,
        lr=5e-4,
        seeds=5,
        batch_scales=(1, 4, 8),  # the largest still takes 250 steps
        lr_grid=((0.5, 1.0, 2.0), (1.0, 2.0, 4.0), (1.5, 3.0, 6.0)),
        evals=10,
        eval_blocks=512,
        task=TaskSpec(),
        ft_epochs=3.0,
        ft_lr=5e-5,
        ft_batch=32,
        ft_max_length=256,
        attention="auto",
    ),
}


# ----------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    """One pretraining recipe: the baseline with one thing changed."""

    name: str  # the run folder's stem
    packing: str = "full"
    static_copies: int = 0  # 0: dynamic masking; 1: one fixed mask; K: BERT's K static copies
    batch_scale: int = 1  # x the preset's batch, / the preset's steps
    lr_ratio: float = 1.0  # x the preset's learning rate
    sweep: bool = False  # a point of Table 3's lr sweep: seed 0 only, unless it is its batch size's best

    @property
    def nsp(self) -> bool:
        return self.packing in ("segment-pair", "sentence-pair")


def arms_of(substudy: str, preset: Preset, static_copies: int) -> list[tuple[Arm, str]]:
    """(arm, its row label in the paper's wording) of one sub-study, in the paper's row order.
    `static_copies` is BERT's dupe factor at this study's passes (Study.static_copies)."""
    base = Arm("baseline")
    if substudy == "masking":
        return [
            (Arm("static", static_copies=1), "static, 1 mask"),
            (Arm(f"static-x{static_copies}", static_copies=static_copies), f"static, {static_copies} copies (BERT)"),
            (base, "dynamic"),
        ]
    if substudy == "formats":
        return [
            (Arm("segment-pair", packing="segment-pair"), "SEGMENT-PAIR + NSP"),
            (Arm("sentence-pair", packing="sentence-pair"), "SENTENCE-PAIR + NSP"),
            (base, "FULL-SENTENCES"),
            (Arm("doc", packing="doc"), "DOC-SENTENCES"),
        ]
    if substudy == "batch":
        if len(preset.lr_grid) != len(preset.batch_scales):
            raise StudyError(f"preset {preset.name}: lr_grid needs one list of rates per batch scale")
        rows = []
        for scale, ratios in zip(preset.batch_scales, preset.lr_grid, strict=True):
            bsz = preset.batch_size * scale
            for ratio in ratios:
                lr = preset.lr * ratio
                is_base = scale == 1 and ratio == 1.0
                arm = base if is_base else Arm(f"bsz{bsz}-lr{lr:g}", batch_scale=scale, lr_ratio=ratio, sweep=True)
                rows.append((arm, f"bsz {bsz}, lr {lr:g}"))
        return rows
    raise StudyError(f"unknown sub-study {substudy!r}: choose one of {', '.join(STUDIES)}")


def resolve_attention(choice: str, device: str | None, head_dim: int) -> str:
    """ "auto": our fused Triton attention (and with it the fused LayerNorm) when CUDA, Triton and
    the registry's capabilities allow it for bf16 with dropout at this head dim; else sdpa."""
    if choice != "auto":
        return choice
    import torch

    import roberta_kernels

    on_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if not on_cuda:
        return "sdpa"
    try:
        impl = roberta_kernels.get_implementation("attention", "triton")
        ok = impl.unsupported(dtype=torch.bfloat16, head_dim=head_dim, dropout_p=0.1, device="cuda") is None
    except (ValueError, ImportError, AttributeError):
        ok = False
    return "triton" if ok else "sdpa"


# ----------------------------------------------------------------------------- the study's folder

STUDY_MARK = ".roberta-scratch-study"  # in every folder a study writes: the proof that it is one
# What a study writes at the top of OUT (runs/<arm>-s<seed>/ hold pretrain's and finetune's runs).
STUDY_FILES = (
    "tokenizer",
    "data",
    "downstream",
    "runs",
    "corpus.jsonl",
    "data_settings.json",
    "model_config.json",
    "table.md",
    "results.json",
    "curves.png",
)


class Study:
    """One study folder: OUT/tokenizer, OUT/data, OUT/downstream, OUT/runs/<arm>-s<seed>."""

    def __init__(
        self,
        out: str,
        preset: Preset,
        corpus: list[str] | None = None,
        text_field: str = "text",
        overwrite: bool = False,
        show_progress: bool = True,
        report_to: str = "jsonl",
    ):
        self.out, self.preset, self.corpus, self.text_field = out, preset, corpus, text_field
        self.overwrite, self.show_progress = overwrite, show_progress
        self.report_to = report_to  # every stage's --report-to: each run folder gets its own tensorboard/
        self.tok_dir, self.data_dir, self.task_dir, self.runs_dir = (
            os.path.join(out, d) for d in ("tokenizer", "data", "downstream", "runs")
        )
        self._lengths: dict = {}
        # One CPU thread count for every run of the study, chosen once (the trainer would otherwise
        # pick per run from the machine's load, and wall/run mixed 1- and 2-thread runs).
        self.threads, self.threads_why = cpu_threads(None)
        self.attention = resolve_attention(
            preset.attention, preset.device, preset.model["hidden_size"] // preset.model["num_attention_heads"]
        )

    # ---- data: the downstream task, the pretraining corpus, the tokenizer, prepare ----

    def data_settings(self) -> dict:
        p = self.preset
        from ..data.corpus import inputs_fingerprint

        return {
            "corpus": inputs_fingerprint(self.corpus),
            "text_field": self.text_field,
            "vocab_size": p.vocab_size,
            "seq_len": p.seq_len,
            "val_fraction": p.val_fraction,
            "max_documents": p.max_documents,
            "task": dataclasses.asdict(p.task),
        }

    def claim_out(self) -> None:
        """OUT is a study folder (it holds STUDY_MARK), or becomes one. A folder that is not a
        study is refused while it holds anything (--overwrite: write beside it), and always
        while it holds a name the study writes: those are not the study's to replace."""
        marker = os.path.join(self.out, STUDY_MARK)
        if os.path.isfile(marker):
            return
        if os.path.isfile(os.path.join(self.out, "data_settings.json")):  # a study from before the mark
            open(marker, "w").close()
            return
        present = sorted(n for n in os.listdir(self.out) if n != ".lock")
        taken = [n for n in present if n in STUDY_FILES]
        if taken:
            raise StudyError(
                f"{self.out} is not a study folder (no {STUDY_MARK}) but holds {', '.join(taken)}, which "
                "a study writes: nothing was changed. Choose an empty or new --out, or move them"
            )
        if present and not self.overwrite:
            raise StudyError(
                f"{self.out} is not a study folder (no {STUDY_MARK}) and is not empty "
                f"({', '.join(present[:3])}{' ...' if len(present) > 3 else ''}): choose an empty or new "
                "--out, or pass --overwrite to write the study beside them (none of them is deleted)"
            )
        with atomic_write(marker, "w") as f:
            f.write(
                "written by roberta-scratch study: this folder is a study, and --overwrite may delete "
                "its tokenizer/, data/, downstream/ and runs/\n"
            )

    def prepare_data(self) -> None:
        """The downstream task, then the pretraining corpus (the default one less the test
        modules' docstrings), the tokenizer trained on it, and its `prepare --sentences`."""
        p = self.preset
        self.claim_out()
        settings = self.data_settings()
        state_path = os.path.join(self.out, "data_settings.json")
        state = _read_json(state_path) or {}
        previous = state.get("settings")
        if previous is not None and previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            if not self.overwrite:
                raise StudyError(
                    f"{self.out} holds a study prepared from other data settings ({', '.join(changed)} "
                    "differ): pass --overwrite to delete its tokenizer, data and runs and start over, "
                    "or choose another --out"
                )
            for d in (self.tok_dir, self.data_dir, self.task_dir, self.runs_dir):
                shutil.rmtree(d, ignore_errors=True)
            print(f"--overwrite: deleted the study in {self.out} ({', '.join(changed)} changed)")
        names = ("split.json", "train.jsonl", "test.jsonl", "pairs-train.jsonl", "pairs-test.jsonl")
        task_files = [os.path.join(self.task_dir, n) for n in names]
        if previous == settings and all(os.path.exists(f) for f in task_files + state["pretrain_corpus"]):
            # as built before: skip re-reading the standard library (seconds)
            self.task, self.corpus_note = _read_json(task_files[0]), state["corpus_note"]
            self.pretrain_corpus = state["pretrain_corpus"]
        else:
            if previous is None:  # a tokenizer left by a setup that never finished: of unknown settings
                shutil.rmtree(self.tok_dir, ignore_errors=True)
            self.task, held_out = build_task(self.task_dir, p.task)
            self.corpus_note = self._write_corpus(held_out)
        if not os.path.isfile(os.path.join(self.tok_dir, "vocab.json")):
            print(f"training a {p.vocab_size}-token byte-level BPE on the pretraining corpus")
            docs = iter_documents(self.pretrain_corpus, text_field=self.text_field)
            ByteLevelBPETokenizer.train(
                docs, vocab_size=p.vocab_size, show_progress=self.show_progress
            ).save_pretrained(self.tok_dir)
        self.meta = prepare(
            self.pretrain_corpus,
            self.tok_dir,
            self.data_dir,
            seq_len=p.seq_len,
            val_fraction=p.val_fraction,
            text_field=self.text_field,
            show_progress=self.show_progress,
            sentences=True,
        )  # the pair formats need them
        with atomic_write(state_path, "w") as f:
            json.dump(
                {"settings": settings, "corpus_note": self.corpus_note, "pretrain_corpus": self.pretrain_corpus},
                f,
                indent=1,
            )
        self.model_config = os.path.join(self.out, "model_config.json")
        write_if_changed(self.model_config, json.dumps(p.model, indent=1, sort_keys=True) + "\n")

    def _write_corpus(self, held_out: set) -> str:
        """Decide the pretraining corpus; returns what table.md says about it. The default corpus
        is written to OUT/corpus.jsonl without the downstream test modules' docstrings (and
        thinned to max_documents); a user's corpus is used as it is unless it must be thinned."""
        p = self.preset
        if self.corpus is not None and p.max_documents is None:
            self.pretrain_corpus = self.corpus
            return (
                "your corpus, as given: if it holds the standard library's docstrings, the downstream "
                "test documents may be in it (without their labels)"
            )
        docs = [d for d in iter_documents(self.corpus, text_field=self.text_field) if d not in held_out]
        removed = "" if self.corpus is not None else " less the docstrings of the downstream test modules"
        if p.max_documents and len(docs) > p.max_documents:
            step = len(docs) / p.max_documents
            docs = [docs[int(i * step)] for i in range(p.max_documents)]
            removed += f", thinned to every {step:.3g}th document"
        path = os.path.join(self.out, "corpus.jsonl")
        write_if_changed(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
        self.pretrain_corpus = [path]
        source = "the standard library's docstrings" if self.corpus is None else "your corpus"
        return f"{source}{removed}: {len(docs):,} documents"

    # ---- one arm x seed ----------------------------------------------------------

    def run_name(self, arm: Arm, seed: int) -> str:
        return f"{arm.name}-s{seed}"

    def example_length(self, packing: str) -> float:
        """The mean length in tokens of a training example of a packing (pairs are short)."""
        if packing not in self._lengths:
            self._lengths[packing] = self._example_length(packing)
        return self._lengths[packing]

    def _example_length(self, packing: str) -> float:
        if packing in ("full", "doc"):
            spans = PackedDataset(self.data_dir, "train", self.preset.seq_len, packing).spans
            return float((spans[:, 1] - spans[:, 0]).mean()) + 2
        from ..data import pairs  # the pair formats (issue 15's foundations)

        ds = pairs.PairDataset(self.data_dir, "train", self.preset.seq_len, packing)
        return float(ds.mean_length)

    def passes(self) -> float:
        """Passes over the training split in the baseline's token budget (measured from the data)."""
        p = self.preset
        train_tokens = self.meta["splits"]["train"]["tokens"]
        return p.steps * p.batch_size * self.example_length("full") / max(1, train_tokens)

    def static_copies(self) -> int:
        """BERT's dupe factor at this study's scale: as many static copies as let each mask be seen
        `static_repeats` times (BERT: 10 copies over 40 epochs), and never fewer than 2 (1 is the
        `static, 1 mask` arm). Too few passes for that: the table's `mask seen` column says so."""
        return max(2, int(self.passes() // self.preset.static_repeats))

    def train_args(self, arm: Arm, seed: int) -> TrainArgs:
        """The arm's `pretrain` settings: the token budget split into steps and batches, the
        learning rate scaled, evaluation and checkpoints spaced over the run."""
        p = self.preset
        steps = max(1, round(p.steps / arm.batch_scale))
        scale = arm.batch_scale
        if arm.packing != "full":  # shorter examples: a bigger batch, so each step holds about as many tokens
            scale *= self.example_length("full") / self.example_length(arm.packing)
        batch = max(1, round(p.batch_size * scale))
        accum = math.ceil(batch / p.micro_batch)
        micro = math.ceil(batch / accum)
        every = max(1, steps // p.evals)
        kw = dict(
            data=self.data_dir,
            out=os.path.join(self.runs_dir, self.run_name(arm, seed)),
            config=self.model_config,
            steps=steps,
            warmup=max(1, round(p.warmup * steps)),
            seq_len=p.seq_len,
            packing=arm.packing,
            lr=p.lr * arm.lr_ratio,
            batch_size=micro,
            grad_accum=accum,
            seed=seed,
            eval_every=every,
            save_every=every,
            log_every=max(1, steps // 50),
            keep_last=1,
            eval_blocks=p.eval_blocks,
            attention=self.attention,
            device=p.device,
            resume=True,
            progress=self.show_progress,
            static_copies=arm.static_copies,
            threads=self.threads,
            report_to=self.report_to,
        )
        return TrainArgs(**kw)

    # the downstream tasks: (stage name, its files in OUT/downstream, the run folder in the arm's run)
    DOWNSTREAM = (("finetune", "", "downstream"), ("finetune_pairs", "pairs-", "downstream-pairs"))

    def finetune_args(self, run_dir: str, seed: int, files: str = "", folder: str = "downstream") -> FinetuneArgs:
        p = self.preset
        return FinetuneArgs(
            task="seq-cls",
            model=os.path.join(run_dir, "model"),
            train=os.path.join(self.task_dir, f"{files}train.jsonl"),
            eval=os.path.join(self.task_dir, f"{files}test.jsonl"),
            out=os.path.join(run_dir, folder),
            epochs=p.ft_epochs,
            lr=p.ft_lr,
            batch_size=p.ft_batch,
            max_length=p.ft_max_length,
            seed=seed,
            keep_last=1,
            attention=self.attention,
            device=p.device,
            resume=True,
            progress=self.show_progress,
            log_every=10,
            threads=self.threads,
            report_to=self.report_to,
        )

    def downstream_args(self, run_dir: str, seed: int) -> dict[str, FinetuneArgs]:
        """Every downstream task's fine-tuning, by stage name."""
        return {stage: self.finetune_args(run_dir, seed, files, folder) for stage, files, folder in self.DOWNSTREAM}

    def settings_hash(self, args: TrainArgs, fts: dict[str, FinetuneArgs]) -> tuple[str, dict]:
        """What a run's results depend on, by content: its settings (not paths, devices or
        progress bars), the prepared data's fingerprint, the model config, the task's files."""
        volatile = {
            "out",
            "data",
            "model",
            "train",
            "eval",
            "config",
            "progress",
            "threads",
            "device",
            "resume",
            "overwrite",
            "attention",
            "report_to",  # where metrics are mirrored changes no result (and studies from before it stay done)
        }
        settings = {
            "pretrain": {k: v for k, v in dataclasses.asdict(args).items() if k not in volatile},
            "finetune": {k: v for k, v in dataclasses.asdict(fts["finetune"]).items() if k not in volatile},
            "data_fingerprint": self.meta.get("fingerprint"),
            "model": self.preset.model,
            "task": _files_sha256([p for ft in fts.values() for p in (ft.train, ft.eval)]),
        }
        settings = json.loads(json.dumps(settings))  # tuples as lists, as they come back from disk
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(), settings

    def run(self, arm: Arm, seed: int) -> dict:
        """Pretrain then fine-tune one arm x seed, or skip what is already done. Returns its
        study.json record; status "done", "failed" (a TrainingError, kept: delete the folder to
        retry) or "interrupted" (with the exit code)."""
        args = self.train_args(arm, seed)
        fts = self.downstream_args(args.out, seed)
        digest, settings = self.settings_hash(args, fts)
        record_path = os.path.join(args.out, "study.json")
        record = _read_json(record_path)
        if os.path.isdir(args.out) and os.listdir(args.out) and (record is None or record["hash"] != digest):
            if not self.overwrite:
                why = (
                    "holds a run this study did not start"
                    if record is None
                    else "was trained with other settings: " + _diff(record.get("settings", {}), settings)
                )
                raise StudyError(
                    f"{args.out} {why}. Pass --overwrite to delete it and train it again, or choose another --out"
                )
            shutil.rmtree(args.out)
            record = None
        if record is not None:
            self._forget_missing(record, args, fts)
            if record["status"] in ("done", "failed"):
                return {**record, "reused": True}  # not saved: says this call trained nothing
        record = record or {
            "run": self.run_name(arm, seed),
            "arm": arm.name,
            "seed": seed,
            "hash": digest,
            "settings": settings,
            "wall_s": {"pretrain": 0.0} | {stage: 0.0 for stage in fts},
            "tokens_per_step": args.batch_size * args.grad_accum * self.example_length(arm.packing),
        }
        record["status"] = "training"
        self._save(record_path, record)
        stages = [("pretrain", pretrain, args)] + [(stage, finetune, ft) for stage, ft in fts.items()]
        for stage, fn, stage_args in stages:
            if stage in record:
                continue
            start = time.perf_counter()
            try:
                code = fn(stage_args)
            except TrainingError as e:
                code, record["error"] = None, f"{stage}: {str(e).strip().splitlines()[0]}"
            record["wall_s"][stage] = record["wall_s"].get(stage, 0.0) + time.perf_counter() - start
            if code != 0:
                record["status"] = "failed" if code is None else "interrupted"
                if code is not None:
                    record["exit_code"] = code
                self._save(record_path, record)
                return record
            record[stage] = _final_metrics(os.path.join(stage_args.out, "metrics.jsonl"), stage)
            self._save(record_path, record)
        record["status"] = "done"
        if "exit_code" in record:  # an earlier attempt was interrupted: history, not this run's result
            record["interrupted_before"] = record.get("interrupted_before", []) + [record.pop("exit_code")]
        self._save(record_path, record)
        return record

    @staticmethod
    def _forget_missing(record: dict, args: TrainArgs, fts: dict[str, FinetuneArgs]) -> None:
        """A stage whose model folder is gone is not done (the fine-tunings depend on the
        pretrained model): it runs again, resuming from its checkpoints."""
        outs = [("pretrain", args.out)] + [(stage, ft.out) for stage, ft in fts.items()]
        for stage, out in outs:
            if stage in record and not os.path.isfile(os.path.join(out, "model", "config.json")):
                record.pop(stage)
                if stage == "pretrain":
                    for downstream in fts:
                        record.pop(downstream, None)
                if record["status"] == "done":
                    record["status"] = "training"

    @staticmethod
    def _save(path: str, record: dict) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(record, f, indent=1)


def _final_metrics(metrics_path: str, stage: str) -> dict:
    """A finished run's last held-out evaluation, its curve (pretraining: held-out loss at each
    evaluation against the training tokens so far) and its token count."""
    with open(metrics_path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    key = "val_loss" if stage == "pretrain" else "accuracy"
    evals = [r for r in rows if key in r]
    if not evals:
        raise StudyError(f"{metrics_path} holds no held-out evaluation: the run evaluated nothing")
    result = dict(evals[-1])
    if stage == "pretrain":
        result["curve"] = [[r["step"], r.get("tokens"), r["val_loss"]] for r in evals]
        train = [r for r in rows if "loss" in r and "tokens" in r]
        result["train_tokens"] = train[-1]["tokens"] if train else None
    return result


# ----------------------------------------------------------------------------- the command


def plan(study: str, preset: Preset, static_copies: int) -> list[tuple[str, Arm, str]]:
    """(sub-study, arm, row label) for every row of the tables asked for."""
    subs = SUBSTUDIES if study == "all" else (study,)
    return [(s, arm, label) for s in subs for arm, label in arms_of(s, preset, static_copies)]


def _arms(rows: list[tuple[str, Arm, str]]) -> list[Arm]:
    return list({arm.name: arm for _, arm, _ in rows}.values())  # each shared arm once


def later_seeds(rows: list[tuple[str, Arm, str]], records: dict) -> list[Arm]:
    """The arms that get seeds 1..n: every arm but the lr sweep's, plus the sweep's best rate of
    each batch size (chosen by seed 0, so call it once those are in `records`)."""
    winners = set(sweep_winners(rows, records).values())
    return [arm for arm in _arms(rows) if not arm.sweep or arm.name in winners]


def run_study(
    study: str,
    preset,
    out: str,
    seeds: int | None = None,
    corpus: list[str] | None = None,
    text_field: str = "text",
    overwrite: bool = False,
    show_progress: bool = True,
    command: list[str] | None = None,
    report_to: str = "jsonl",
) -> int:
    """Run (or continue) a study into `out` and write its table, results and curves. `preset`
    is a name in PRESETS or a Preset; `report_to` is every stage's --report-to (TensorBoard:
    `tensorboard --logdir OUT` shows every arm). Returns 0, or the exit code of an interrupted run."""
    parse_report_to(report_to)  # a bad name, or tensorboard missing: said before any data are prepared
    if study not in STUDIES:
        raise StudyError(f"unknown study {study!r}: choose one of {', '.join(STUDIES)}")
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise StudyError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    n_seeds = preset.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise StudyError(f"--seeds must be at least 1, got {n_seeds}")
    os.makedirs(out, exist_ok=True)
    try:
        with lock_dir(out, f"a {study} study"):
            s = Study(out, preset, corpus, text_field, overwrite, show_progress, report_to)
            s.prepare_data()
            rows = plan(study, preset, s.static_copies())
            records, code = _run_all(s, study, rows, n_seeds, show_progress)
            write_report(s, study, rows, n_seeds, records, command)
            return code
    except DirectoryBusy as e:
        raise StudyError(str(e)) from None


def _run_all(s: Study, study: str, rows: list, n_seeds: int, show_progress: bool) -> tuple[dict, int]:
    """Every arm's seed 0 first (a partial study is already a table, and it picks the lr sweeps'
    rates), then seeds 1..n of later_seeds. Returns the runs' records and 0, or the exit code of
    an interrupted run."""
    records: dict = {}
    arms = _arms(rows)
    # the count, until seed 0 has picked the sweeps' rates, assumes the baseline's rate wins its sweep
    swept = {a.batch_scale for a in arms if a.sweep} - {a.batch_scale for _, a, _ in rows if a.name == "baseline"}
    total = len(arms) + (n_seeds - 1) * (len([a for a in arms if not a.sweep]) + len(swept))
    bar = progress(total=total, desc=f"study {study}", unit="runs", disable=not show_progress)
    todo = [(arm, 0) for arm in arms]
    i = 0
    while i < len(todo):
        arm, seed = todo[i]
        i += 1
        print(f"== study {study}: run {i}/{total}: {s.run_name(arm, seed)}", flush=True)
        record = s.run(arm, seed)
        if record.pop("reused", False):  # finished by an earlier call: its results are kept
            print(f"   {record['status']} before: kept, not trained again", flush=True)
            bar.total -= 1  # the bar's rate and time left count the runs trained now
        else:
            bar.update(1)
        records[record["run"]] = record
        if record["status"] == "interrupted":
            print(f"stopped in {s.run_name(arm, seed)}: run the same command again to continue")
            bar.close()
            return records, record.get("exit_code", 130)
        if i == len(arms):  # seed 0 is in: the sweeps' rates are chosen, and the count is exact
            todo += [(arm, seed) for seed in range(1, n_seeds) for arm in later_seeds(rows, records)]
            bar.total += len(todo) - total
            total = len(todo)
    bar.close()
    return records, 0


# ----------------------------------------------------------------------------- helpers


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _files_sha256(paths: list[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    """The settings that differ, as `key old -> new`, for the refusal message."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _diff(a, b, f"{prefix}{k}.")
            if inner:
                out.append(inner)
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return ", ".join(out)
