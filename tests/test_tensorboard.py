"""--report-to tensorboard: event files that TensorBoard's own reader reads back as metrics.jsonl,
one value per step after a resume, the flag checked, and carried by the study to every stage."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from helpers import SMALL_TEXTS, tiny_model_folder
from pretraining_helpers import args_for

from roberta_scratch.cli import main
from roberta_scratch.errors import TrainingError
from roberta_scratch.finetune.trainer import FinetuneArgs, finetune
from roberta_scratch.pretrain import pretrain
from roberta_scratch.reporting import parse_report_to, scalars

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def metric_rows(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def section(row: dict) -> str:
    """Which rows are the loop's (train/...) and which held-out ones (eval/...), read off the row:
    the loop's carry lr, the parameter counts or the early stop; an evaluation carries none."""
    return "train" if {"lr", "skipped", "trainable_params", "stopped_early"} & set(row) else "eval"


def expected(out) -> dict:
    """tag -> [(step, value)] as metrics.jsonl says, one value per tag and step (the first)."""
    curves: dict = {}
    for row in metric_rows(out):
        for tag, value in scalars(row, section(row)).items():
            points = curves.setdefault(tag, [])
            if not points or points[-1][0] < row["step"]:
                points.append((row["step"], value))
    return curves


def read_back(out) -> dict:
    """tag -> [(step, value)] as TensorBoard reads OUT/tensorboard (purges applied)."""
    acc = event_accumulator.EventAccumulator(os.path.join(out, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_curves(out):
    want, got = expected(out), read_back(out)
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == [s for s, _ in points], tag  # one value per step, in order
        # TensorBoard stores float32
        np.testing.assert_array_equal(
            np.float32([v for _, v in got[tag]]), np.float32([v for _, v in points]), err_msg=tag
        )


def test_pretraining_writes_every_metric_as_a_scalar(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path, report_to="jsonl,tensorboard")) == 0
    assert_same_curves(tmp_path)
    curves = read_back(tmp_path)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_ppl", "eval/val_acc"):
        assert tag in curves, tag
    assert [s for s, _ in curves["train/loss"]] == list(range(1, 9))
    assert [s for s, _ in curves["eval/val_acc"]] == [0, 4, 8]  # a baseline at the start, then every 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tb") / "model")


def finetune_args(model_dir, tmp_path, **kw):
    train = tmp_path / "train.jsonl"
    if not train.exists():
        rows = [{"text": t, "label": ["yes", "no"][i % 2]} for i, t in enumerate(SMALL_TEXTS[:16])]
        train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dict(task="seq-cls", model=model_dir, train=str(train), eval=str(train), out=str(tmp_path / "run"))
    base.update(epochs=2, batch_size=4, lr=1e-3, log_every=2, eval_every=4, save_every=4, progress=False)
    return FinetuneArgs(**{**base, "report_to": "tensorboard", **kw})


def test_finetuning_writes_every_metric_as_a_scalar(model_dir, tmp_path):
    assert finetune(finetune_args(model_dir, tmp_path)) == 0
    assert_same_curves(tmp_path / "run")
    curves = read_back(tmp_path / "run")
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/accuracy", "eval/macro_f1"} <= set(curves)
    assert os.path.isfile(tmp_path / "run" / "metrics.jsonl")  # always written


def test_a_resumed_run_continues_the_curves_without_a_repeated_step(prepared, tmp_path):
    """A run that died after its step-3 checkpoint had written events up to step 6: the resumed
    run hides them (purge_step 4) and writes steps 4..6 again, once each. It evaluates no more,
    so the dead run's evaluation at step 6 must be hidden by the purge, not by being rewritten."""
    args = dict(report_to="tensorboard", steps=6, save_every=3, eval_every=3, keep_last=10)
    assert pretrain(args_for(prepared, tmp_path, **args)) == 0
    os.remove(tmp_path / "ckpt" / "step_00000006.pt")  # as if killed just after saving step 3
    assert pretrain(args_for(prepared, tmp_path, resume=True, **{**args, "eval_every": 0})) == 0
    assert len(os.listdir(tmp_path / "tensorboard")) == 2  # nothing deleted: the new file hides the old steps
    assert_same_curves(tmp_path)
    assert [s for s, _ in read_back(tmp_path)["train/loss"]] == list(range(1, 7))
    assert [s for s, _ in read_back(tmp_path)["eval/val_loss"]] == [0, 3]
    # and resumed once more, from the end, extending the run: still one value per step
    assert pretrain(args_for(prepared, tmp_path, resume=True, **{**args, "steps": 7})) == 0
    assert_same_curves(tmp_path)
    assert [s for s, _ in read_back(tmp_path)["train/loss"]] == list(range(1, 8))


def test_a_checkpoint_from_before_report_to_resumes_without_a_note(prepared, tmp_path, capsys):
    assert pretrain(args_for(prepared, tmp_path, steps=2, eval_every=0)) == 0
    path = tmp_path / "ckpt" / "step_00000002.pt"
    state = torch.load(path, weights_only=True)
    for settings in (state["settings"], state["args"]):
        del settings["report_to"]
    torch.save(state, path)
    capsys.readouterr()
    assert pretrain(args_for(prepared, tmp_path, steps=3, eval_every=0, resume=True)) == 0
    assert "report_to" not in capsys.readouterr().out  # metrics.jsonl only, as before: nothing changed


def test_overwrite_deletes_the_event_files_it_wrote(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path, steps=2, eval_every=0, report_to="tensorboard")) == 0
    (tmp_path / "tensorboard" / "notes.txt").write_text("mine")
    assert pretrain(args_for(prepared, tmp_path, steps=2, eval_every=0, overwrite=True)) == 0
    assert os.listdir(tmp_path / "tensorboard") == ["notes.txt"]  # not the run's: kept


@pytest.mark.parametrize("value", ["wandb", "jsonl,tensorbord", ""])
def test_an_unknown_reporter_is_one_error_line_naming_the_choices(model_dir, tmp_path, capsys, value):
    argv = ["finetune", "--task", "seq-cls", "--model", model_dir, "--train", "x.jsonl", "--out", str(tmp_path)]
    assert main(argv + ["--report-to", value]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --report-to: unknown") and len(err.splitlines()) == 1
    assert "choose from jsonl, tensorboard" in err
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_tensorboard_missing_is_said_before_training(prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(TrainingError, match=r"pip install 'roberta-scratch\[tensorboard\]'"):
        parse_report_to("jsonl,tensorboard")
    argv = ["pretrain", "--data", str(prepared / "data"), "--out", str(tmp_path / "run"), "--report-to", "tensorboard"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'roberta-scratch[tensorboard]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert parse_report_to("jsonl") == ("jsonl",)  # jsonl alone needs nothing


def test_the_study_passes_report_to_to_every_stage(monkeypatch, tmp_path):
    from roberta_scratch.study import runner as study_mod

    seen, run_study = {}, study_mod.run_study
    monkeypatch.setattr(study_mod, "run_study", lambda *a, **kw: seen.update(kw) or 0)
    assert main(["study", "masking", "--preset", "ci", "--out", str(tmp_path), "--report-to", "tensorboard"]) == 0
    assert seen["report_to"] == "tensorboard"

    s = study_mod.Study(str(tmp_path), study_mod.PRESETS["ci"], show_progress=False, report_to="jsonl,tensorboard")
    s.model_config, s.meta = "config.json", {}
    baseline = next(arm for arm, _ in study_mod.arms_of("masking", s.preset, 2) if arm.name == "baseline")
    args, fts = s.train_args(baseline, 0), s.downstream_args(str(tmp_path / "runs" / "baseline-s0"), 0)
    assert args.report_to == "jsonl,tensorboard" and {ft.report_to for ft in fts.values()} == {"jsonl,tensorboard"}
    # where metrics go changes no result: a study run with TensorBoard or without is the same run
    monkeypatch.setattr(study_mod, "_files_sha256", lambda paths: "the task files")
    s.report_to = "jsonl"
    assert s.settings_hash(s.train_args(baseline, 0), fts)[0] == s.settings_hash(args, fts)[0]
    with pytest.raises(TrainingError, match="--report-to: unknown 'wandb'"):
        run_study("masking", "ci", str(tmp_path / "study"), report_to="wandb")
    assert not (tmp_path / "study").exists()
