"""Run folders and --resume: one run per folder, resume compares content not strings, a
damaged checkpoint or metrics line falls back instead of stopping, SIGTERM saves like SIGINT."""

import json
import os
import re
import shutil
import signal
import time

import pytest
import torch
from pretraining_helpers import WORDS, args_for, losses, small_config

from roberta_scratch.data.packed import prepare
from roberta_scratch.errors import TrainingError
from roberta_scratch.pretrain import Trainer, pretrain
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer


def metric_rows(run):
    with open(run / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- one run per folder


def test_a_finished_folder_is_not_silently_reused(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path)) == 0
    with pytest.raises(
        TrainingError,
        match=r"already holds files \(ckpt, loss.png, metrics.jsonl, model\).*"
        r"--resume.*--overwrite",
    ):
        pretrain(args_for(prepared, tmp_path))
    with pytest.raises(TrainingError, match="pass one of them"):
        pretrain(args_for(prepared, tmp_path, resume=True, overwrite=True))
    first = metric_rows(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")  # not the run's: --overwrite leaves it
    assert pretrain(args_for(prepared, tmp_path, overwrite=True)) == 0
    again = metric_rows(tmp_path)
    assert [r["step"] for r in again] == [r["step"] for r in first]  # started over: no rows appended
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_two_runs_on_one_folder_are_refused(prepared, tmp_path):
    pid = os.fork()
    if pid == 0:  # a long run holding the folder
        try:
            pretrain(args_for(prepared, tmp_path, steps=100_000, save_every=100_000, eval_every=0))
        finally:
            os._exit(0)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            lock = tmp_path / ".lock"
            if lock.exists() and lock.read_text().strip() == str(pid):
                break
            time.sleep(0.05)
        with pytest.raises(TrainingError, match=f"in use by another process \\(pid {pid}\\)"):
            pretrain(args_for(prepared, tmp_path, resume=True))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# ----------------------------------------------------------------------------- resume compares content


def test_resume_accepts_the_same_data_under_another_path(prepared, tmp_path, capsys):
    assert pretrain(args_for(prepared, tmp_path, steps=4, save_every=4)) == 0
    same = str(prepared) + "/./data"  # another string, the same directory
    capsys.readouterr()
    assert pretrain(args_for(prepared, tmp_path, data=same, steps=6, resume=True)) == 0
    assert "resumed from step 4 (" in capsys.readouterr().out  # not started over
    assert [r["step"] for r in metric_rows(tmp_path) if "loss" in r] == list(range(1, 7))


def test_resume_refuses_data_prepared_again_with_another_tokenizer(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared / "data", data)
    run = tmp_path / "run"
    assert pretrain(args_for(prepared, run, data=str(data), steps=4, save_every=4)) == 0
    other = ByteLevelBPETokenizer.train(iter([" ".join(WORDS)] * 50), vocab_size=380, show_progress=False)
    other.save_pretrained(str(tmp_path / "tok2"))
    with pytest.warns(UserWarning, match="latin1"):
        prepare(
            [str(prepared / "corpus")],
            str(tmp_path / "tok2"),
            str(data),
            seq_len=32,
            val_fraction=0.1,
            show_progress=False,
            num_workers=1,
        )
    with pytest.raises(TrainingError, match="the training data differ from the saved run's"):
        pretrain(args_for(prepared, run, data=str(data), steps=8, resume=True))


def test_resume_refuses_an_edited_config(prepared, tmp_path):
    config = small_config(tmp_path / "cfg.json")
    assert pretrain(args_for(prepared, tmp_path / "run", config=config, steps=4, save_every=4)) == 0
    edited = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**edited, "intermediate_size": 96}))  # the same path, edited
    with pytest.raises(TrainingError, match=r"model config differs.*'intermediate_size': \(64, 96\)"):
        pretrain(args_for(prepared, tmp_path / "run", config=config, steps=8, resume=True))


def test_extending_steps_follows_the_longer_schedule_and_says_so(prepared, tmp_path, capsys):
    assert pretrain(args_for(prepared, tmp_path / "run", steps=8, save_every=4)) == 0
    assert pretrain(args_for(prepared, tmp_path / "run", steps=12, save_every=4, resume=True)) == 0
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "linear decay to 0 at step 12)" in out and "at step 8 (it was" in out
    rows = [r for r in metric_rows(tmp_path / "run") if "lr" in r]
    lr = {r["step"]: r["lr"] for r in rows}
    # steps 9..12 run at the 12-step schedule's rates: warmup 2, then decay to 0 at 12
    for step in range(9, 13):
        assert lr[step] == pytest.approx(3e-3 * (12 - (step - 1)) / (12 - 2)), step
    with pytest.raises(TrainingError, match="it is at step 12, and the run would now end at step 10"):
        pretrain(args_for(prepared, tmp_path / "run", steps=10, resume=True))


def test_safe_changes_are_allowed_with_a_note(prepared, tmp_path, capsys):
    assert pretrain(args_for(prepared, tmp_path, steps=4, save_every=4)) == 0
    assert pretrain(args_for(prepared, tmp_path, steps=4, log_every=2, attention="eager", resume=True)) == 0
    out = capsys.readouterr()
    assert "settings changed, which is safe" in out.out + out.err and "log_every 1 -> 2" in out.out + out.err
    with pytest.raises(TrainingError, match=r"--weight-decay was 0.01, now 0.02\."):
        pretrain(args_for(prepared, tmp_path, steps=6, weight_decay=0.02, resume=True))


def test_the_nan_stop_advice_can_be_followed(prepared, tmp_path, capsys):
    """The NaN stop says to resume with a lower --lr or --clip: both may change on resume, and
    --warmup too, with a note; the schedule of the new settings applies from the resume step."""
    assert pretrain(args_for(prepared, tmp_path, steps=8, save_every=4)) == 0
    os.remove(tmp_path / "ckpt" / "step_00000008.pt")  # as if it had stopped after step 4
    capsys.readouterr()
    assert pretrain(args_for(prepared, tmp_path, steps=8, save_every=4, lr=1e-3, clip=0.5, warmup=6, resume=True)) == 0
    out = capsys.readouterr().out
    assert "clip 1.0 -> 0.5" in out and "lr 0.003 -> 0.001" in out and "warmup 2 -> 6" in out
    assert "peak 0.001, warmup 6 steps, linear decay to 0 at step 8): 0.000833 at step 4 (it was 0.002)" in out
    lr = {r["step"]: r["lr"] for r in metric_rows(tmp_path) if "lr" in r}
    for step in range(5, 9):  # the rate of step s is the schedule's at s - 1
        want = 1e-3 * step / 6 if step <= 6 else 1e-3 * (8 - (step - 1)) / (8 - 6)
        assert lr[step] == pytest.approx(want), step


# ----------------------------------------------------------------------------- damaged files


def test_a_run_resumed_with_no_checkpoint_writes_its_rows_once(prepared, tmp_path, capsys):
    assert pretrain(args_for(prepared, tmp_path, steps=2, eval_every=0)) == 0
    shutil.rmtree(tmp_path / "ckpt")  # as if killed before its first checkpoint
    assert pretrain(args_for(prepared, tmp_path, steps=2, eval_every=0, resume=True)) == 0
    assert "nothing to resume from: starting at step 0" in capsys.readouterr().out
    assert [r["step"] for r in metric_rows(tmp_path)] == [0, 1, 2]  # step 0's row not kept and written again


def test_a_partial_last_metrics_line_is_dropped(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path, steps=4, save_every=4)) == 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 3.1')  # power went out mid-line
    assert pretrain(args_for(prepared, tmp_path, steps=8, resume=True)) == 0
    assert [r["step"] for r in metric_rows(tmp_path) if "loss" in r] == list(range(1, 9))


def test_a_metrics_line_that_is_not_ours_is_dropped_with_a_note(prepared, tmp_path, capsys):
    assert pretrain(args_for(prepared, tmp_path, steps=4, save_every=4)) == 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": "abc"}\n[1, 2]\n{"step": null}\n')
    assert pretrain(args_for(prepared, tmp_path, steps=6, resume=True)) == 0
    assert "dropped 3 unreadable line(s)" in capsys.readouterr().out
    assert [r["step"] for r in metric_rows(tmp_path) if "loss" in r] == list(range(1, 7))


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "cannot be read"),
        ("empty", r"empty \(0 bytes\)"),
        ("nan", "weights are not finite"),
    ],
)
def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(prepared, tmp_path, capsys, damage, reason):
    uninterrupted = tmp_path / "straight"
    assert pretrain(args_for(prepared, uninterrupted, steps=8, save_every=2, keep_last=3)) == 0
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    last = run / "ckpt" / "step_00000008.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        state = torch.load(last, weights_only=True)
        next(v for k, v in state["model"].items() if k.endswith("fc1.weight")).fill_(float("nan"))
        torch.save(state, last)
    capsys.readouterr()
    assert pretrain(args_for(prepared, run, steps=8, save_every=2, keep_last=3, resume=True)) == 0
    out = capsys.readouterr()
    assert f"skipping {last}" in out.out + out.err and "resumed from step 6" in out.out + out.err
    assert len(re.findall(reason, out.out + out.err)) == 1
    assert (run / "ckpt" / "step_00000008.pt.unusable").exists()
    # steps 7 and 8 again, from step 6: exactly what the uninterrupted run did
    assert losses(run) == losses(uninterrupted)
    a = torch.load(run / "ckpt" / "step_00000008.pt", weights_only=True)["model"]
    b = torch.load(uninterrupted / "ckpt" / "step_00000008.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_that_are_not_finite_are_never_saved(prepared, tmp_path):
    trainer = Trainer(args_for(prepared, tmp_path))
    with torch.no_grad():
        trainer.raw_model.lm_head.bias.fill_(float("inf"))
    with pytest.raises(TrainingError, match=r"weights \['lm_head.bias'\] are not finite"):
        trainer.save()
    assert not (tmp_path / "ckpt").exists() or not os.listdir(tmp_path / "ckpt")


def test_cpu_threads_follow_the_request_then_omp_then_the_free_cores(monkeypatch):
    from roberta_scratch import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(machine, "busy_elsewhere", lambda: 0.1)
    assert machine.cpu_threads(None) == (4, "4 usable cores")
    monkeypatch.setattr(machine, "busy_elsewhere", lambda: 1.8)  # two cores busy elsewhere
    assert machine.cpu_threads(None) == (2, "4 usable cores, 1.8 busy with other work")
    monkeypatch.setattr(machine, "busy_elsewhere", lambda: 9.0)
    assert machine.cpu_threads(None)[0] == 1  # never fewer than one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(machine, "busy_elsewhere", lambda: 0.0)
    assert machine.cpu_threads(None) == (2, "4 usable cores over 2 local ranks")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert machine.cpu_threads(None) == (3, "OMP_NUM_THREADS")
    assert machine.cpu_threads(5) == (5, "--threads")


def test_busy_elsewhere_does_not_count_this_process(monkeypatch):
    from roberta_scratch import machine

    # 4 cores, 0.2 s = 80 ticks: 20 idle, so 60 busy, of which 30 are this process's own
    samples = iter([(1000, 500, 100), (1080, 520, 130)])
    monkeypatch.setattr(machine, "_cpu_ticks", lambda: next(samples))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 4)
    assert machine.busy_elsewhere(0.0) == pytest.approx((60 - 30) / 80 * 4)


def test_a_resumed_run_keeps_the_saved_thread_count(prepared, tmp_path, capsys, monkeypatch):
    before = torch.get_num_threads()
    try:
        assert pretrain(args_for(prepared, tmp_path, steps=4, save_every=4, threads=1)) == 0
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr("roberta_scratch.machine.busy_elsewhere", lambda: 0.0)
        torch.set_num_threads(2)
        assert pretrain(args_for(prepared, tmp_path, steps=6, resume=True)) == 0
        assert torch.get_num_threads() == 1
        assert "torch uses 1 CPU threads, as the saved run did" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_busy_elsewhere_counts_normal_priority_work_not_niced_or_our_own(monkeypatch):
    """Over the interval: other processes run 100 ticks at normal priority and 100 niced, we run 50,
    on 2 cores (250 ticks, 0 idle besides): one core is busy elsewhere, since niced work yields."""
    import io

    from roberta_scratch import machine

    snapshots = iter(
        [
            ("cpu  1000 500 200 3000 0 0 0 0 0 0\n", "1 (python) R " + "0 " * 10 + "40 10 0"),
            ("cpu  1150 600 200 3000 0 0 0 0 0 0\n", "1 (python) R " + "0 " * 10 + "80 20 0"),
        ]
    )
    current = {}

    def fake_open(path, *args, **kwargs):
        if path == "/proc/stat":
            current["stat"], current["self"] = next(snapshots)
            return io.StringIO(current["stat"])
        if path == "/proc/self/stat":
            return io.StringIO(current["self"])
        raise FileNotFoundError(path)

    monkeypatch.setattr(machine, "open", fake_open, raising=False)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine.time, "sleep", lambda s: None)
    monkeypatch.setattr(machine.os, "nice", lambda inc: 0)
    # 250 ticks: 150 user (ours 50 of them), 100 nice -> (250 - 100 niced - 50 ours) / 250 * 2 cores
    assert machine.busy_elsewhere() == pytest.approx(100 / 250 * 2)
