"""`make demo`'s settings learn: the whole demo, shortened to a few dozen steps.

The full demo (as many steps as fit its budget) is measured, not tested: see docs/benchmarks.md for its time
and accuracy.
"""

import json


def test_demo_settings_lower_the_held_out_loss_within_a_few_steps(tmp_path, capsys, monkeypatch):
    from roberta_scratch import demo

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert demo.run(out=str(tmp_path), steps=60) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        evals = [json.loads(line) for line in f if '"val_loss"' in line]
    assert [e["step"] for e in evals] == [0, 20, 40, 60]
    # chance level is ln(4096) = 8.32: the first evaluation sits there, and 60 steps get well below it
    assert evals[0]["val_loss"] > 8.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    # every probe is printed with its expected answer and five candidates with probabilities
    for text, answer in demo.PROBES:
        assert f"{text}   (the corpus says {answer.strip()!r}: " in out
    assert out.count("%  '") >= 5 * len(demo.PROBES)
    assert "30% masked (held out: 15%" in out
    # bench_demo reads the same log: the steps and the final accuracy, as printed
    from benchmarks.bench_demo import summarize

    said = summarize(out)
    assert said["steps"] == 60 and said["steps_per_s_measured"] is None
    assert said["masked_accuracy"] == round(round(evals[-1]["val_acc"] * 100, 1) / 100, 3)


def test_without_steps_the_demo_fits_its_budget_at_the_measured_speed_and_keeps_its_choice(
    tmp_path, monkeypatch, capsys
):
    """The step count is the rest of the budget times the measured steps/s (rounded down to 100, at
    least MIN_STEPS), said with why, and saved: a rerun of the same folder reuses it, so that it
    continues the same run instead of measuring (and choosing) again."""
    import time

    import pytest

    from roberta_scratch import demo

    monkeypatch.setattr(demo, "calibrate", lambda *a: 10.0)
    monkeypatch.setattr(demo, "SPEED_MARGIN", 0.85)
    steps = demo.choose_steps(str(tmp_path), "data", "config.json", demo.RESERVE_S + 100, time.monotonic())
    assert steps == 800  # 99.9 s left x 10 steps/s x 0.85, rounded down to the hundred
    said = capsys.readouterr().out
    assert "chose 800 steps (1,638,400 tokens): 10.0 steps/s measured over 30 steps (planned at 85% of it)" in said
    from benchmarks.bench_demo import summarize

    assert summarize(said)["steps_per_s_measured"] == 10.0
    saved = json.loads((tmp_path / demo.CHOICE_FILE).read_text())
    assert saved["steps"] == 800 and saved["steps_per_s"] == 10.0

    def no_second_measure(*a):
        raise AssertionError("measured again")

    monkeypatch.setattr(demo, "calibrate", no_second_measure)
    assert demo.choose_steps(str(tmp_path), "data", "config.json", 1e6, time.monotonic()) == 800
    assert "chosen before" in capsys.readouterr().out
    (tmp_path / demo.CHOICE_FILE).unlink()
    monkeypatch.setattr(demo, "calibrate", lambda *a: 10.0)
    assert demo.choose_steps(str(tmp_path), "data", "config.json", 1.0, time.monotonic()) == demo.MIN_STEPS
    assert "(the minimum)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        from roberta_scratch import cli

        cli.build_parser().parse_args(["demo", "--budget", "x"])


def test_calibration_times_real_steps_and_writes_nothing(prepared, tmp_path, monkeypatch):
    from roberta_scratch import demo

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tmp_path / "config.json"
    demo.model_config().save(str(config))
    rate = demo.calibrate(str(prepared / "data"), str(config), str(tmp_path / "scratch"))
    assert 0.5 < rate < 10_000  # steps per second of a real tiny step on any machine
    assert not (tmp_path / "scratch").exists()


def test_a_damaged_choice_file_is_an_error_naming_it(tmp_path):
    import time

    import pytest

    from roberta_scratch import demo

    for text in ('{"steps": "many"}', "{not json", '{"budget_s": 3}'):
        (tmp_path / demo.CHOICE_FILE).write_text(text)
        with pytest.raises(ValueError, match=r"demo\.json is not a step count the demo saved .*delete it"):
            demo.choose_steps(str(tmp_path), "data", "config.json", 100.0, time.monotonic())
