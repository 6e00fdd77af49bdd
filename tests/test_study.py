"""`roberta-scratch study`: the downstream task's split, the noise rule, and a whole (tiny) study:
its outputs, a rerun that trains nothing, an interrupted study that resumes, changed settings."""

import dataclasses
import json
import math
import os
import signal

import pytest

from roberta_scratch.cli import main
from roberta_scratch.study import runner as study_mod
from roberta_scratch.study.report import noise_verdict, summarize
from roberta_scratch.study.runner import PRESETS, StudyError, run_study
from roberta_scratch.study.tasks import TaskSpec, build_task, split_files

# Smaller than `ci` (which stays a few-minute pipeline check): seconds per run.
TEST_PRESET = dataclasses.replace(
    PRESETS["ci"],
    name="test",
    model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    vocab_size=400,
    seq_len=32,
    batch_size=8,
    micro_batch=8,
    steps=8,
    lr=1e-3,
    evals=2,
    eval_blocks=16,
    max_documents=200,
    seeds=2,
    task=TaskSpec(max_classes=3, train_per_class=12, test_per_class=6),
    ft_epochs=1.0,
    ft_batch=8,
    ft_max_length=32,
    batch_scales=(1, 8, 32),
    lr_grid=((1.0,), (10.0,), (10.0,)),  # one rate each: the sweep has its own test
    smoke=False,  # the tables' comparisons are what is tested
)


# ----------------------------------------------------------------------------- the downstream task


def write_module(path, docstrings):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = "".join(f'def f{i}():\n    """{d}"""\n\n' for i, d in enumerate(docstrings))
    with open(path, "w") as f:
        f.write(body)


def fake_stdlib(root):
    """Three packages of several modules, one too small to be a class, and a skipped test folder."""
    for pkg in ("alpha", "beta", "gamma"):
        for m in range(5):
            write_module(
                root / pkg / f"mod{m}.py",
                [f"{pkg} module {m} function {i} does a documented thing here." for i in range(4 + m)],
            )
    write_module(
        root / "alpha" / "shared.py", ["This exact docstring is repeated in two different packages, verbatim."]
    )
    write_module(root / "beta" / "shared.py", ["This exact docstring is repeated in two different packages, verbatim."])
    write_module(root / "tiny" / "only.py", ["A package with a single module cannot be split by module file."])
    write_module(root / "alpha" / "tests" / "test_x.py", ["Tests are skipped, as the default corpus skips them."])


def test_downstream_split_is_by_module_and_deterministic(tmp_path):
    fake_stdlib(tmp_path / "lib")
    spec = TaskSpec(min_files=3, min_docs=10, test_fraction=0.3, train_per_class=100, test_per_class=100)
    summary, held_out = build_task(str(tmp_path / "task"), spec, stdlib=str(tmp_path / "lib"))
    assert summary["classes"] == ["alpha", "beta", "gamma"]  # tiny has one file; tests/ is skipped
    rows = {s: [json.loads(line) for line in open(tmp_path / "task" / f"{s}.jsonl")] for s in ("train", "test")}
    for label in summary["classes"]:
        files = summary["files"][label]
        assert files["train"] and files["test"] and not set(files["train"]) & set(files["test"])
    modules = {s: {r["module"] for r in rows[s]} for s in rows}
    assert not modules["train"] & modules["test"]  # no module in both splits
    assert not {r["text"] for r in rows["train"]} & {r["text"] for r in rows["test"]}  # nor any document
    assert {r["text"] for r in rows["test"]} <= held_out
    assert all("tests/" not in m for m in modules["train"] | modules["test"])
    before = {s: (tmp_path / "task" / f"{s}.jsonl").read_bytes() for s in rows}
    build_task(str(tmp_path / "task2"), spec, stdlib=str(tmp_path / "lib"))
    assert before == {s: (tmp_path / "task2" / f"{s}.jsonl").read_bytes() for s in rows}


def test_the_pair_task_asks_whether_two_docstrings_share_a_module(tmp_path):
    fake_stdlib(tmp_path / "lib")
    spec = TaskSpec(min_files=3, min_docs=10, test_fraction=0.3, pair_train=24, pair_test=12)
    summary, held_out = build_task(str(tmp_path / "task"), spec, stdlib=str(tmp_path / "lib"))
    pairs = {s: [json.loads(line) for line in open(tmp_path / "task" / f"pairs-{s}.jsonl")] for s in ("train", "test")}
    # which module each docstring of the fake library came from
    module_of = {f"{p} module {m} function {i} does a documented thing here.": (p, m) for p in "alpha beta gamma".split()
                 for m in range(5) for i in range(4 + m)}  # fmt: skip
    for split, rows in pairs.items():
        labels = [r["label"] for r in rows]
        assert rows and labels.count("same") == labels.count("different")  # half and half
        assert summary["pairs"][split] == {"same": labels.count("same"), "different": labels.count("different")}
        for r in rows:
            # the docstring repeated verbatim in alpha/shared.py and beta/shared.py: its partner says which
            a, b = module_of.get(r["text"]), module_of.get(r["text_pair"])
            a, b = a or (b[0], "shared"), b or (a[0], "shared")
            assert a[0] == b[0] and (a == b) == (r["label"] == "same")  # one package; same file or not
    test_docs = {d for r in pairs["test"] for d in (r["text"], r["text_pair"])}
    train_docs = {d for r in pairs["train"] for d in (r["text"], r["text_pair"])}
    assert test_docs <= held_out and not train_docs & held_out  # the module split holds for pairs too


def test_split_files_keeps_a_training_file_and_a_share_near_the_target():
    files = {f"p/m{i}.py": ["d"] * 10 for i in range(10)}
    train, test = split_files(files, 0.3)
    assert len(test) == 3 and len(train) == 7 and not set(train) & set(test)
    train, test = split_files({"p/big.py": ["d"] * 50, "p/small.py": ["d"]}, 0.3)
    assert train == ["p/big.py"] and test == ["p/small.py"]


def test_the_real_stdlib_task_has_no_module_in_both_splits(tmp_path):
    summary, _ = build_task(str(tmp_path), TaskSpec())
    assert 2 <= len(summary["classes"]) <= 10
    for label, files in summary["files"].items():
        assert not set(files["train"]) & set(files["test"]), label
        assert all(f.split("/")[0] == label for f in files["train"] + files["test"])


# ----------------------------------------------------------------------------- the noise rule


def test_the_t_distribution_matches_its_tables():
    from roberta_scratch.study.report import t_quantile, t_two_sided_p

    # two-sided 5% points of Student's t (any statistics table): df 1, 2, 4, 30
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)):
        assert abs(t_two_sided_p(t, df) - 0.05) < 1e-4 and abs(t_quantile(0.975, df) - t) < 1e-3
    assert abs(t_two_sided_p(2.1213, 2) - (1 - 2.1213 / math.sqrt(2 + 2.1213**2))) < 1e-6  # df 2 in closed form
    assert t_two_sided_p(0.0, 3) == 1.0


def test_an_arm_learned_only_when_every_seed_is_clearly_below_the_floor():
    from roberta_scratch.study.report import LEARN_MARGIN, learned

    floor = {"loss": 6.0}
    assert learned({"loss": summarize([5.0, 5.5])}, floor) is True
    assert learned({"loss": summarize([5.0, 6.0 - LEARN_MARGIN / 2])}, floor) is False  # one seed at the floor
    assert learned({"loss": None}, floor) is None and learned({"loss": summarize([5.0])}, None) is None


def test_noise_verdict_is_welchs_t_test():
    """The 2-std rule with 2 seeds was about t > 2 at 2 degrees of freedom, p 0.1-0.2, and printed
    '2σ = 0.0' where neither arm varied. Welch's test at p < 0.05, with its interval, instead."""
    v = noise_verdict(summarize([10.0, 12.0]), summarize([13.0, 15.0]))  # t = -2.12, df = 2
    assert v["delta"] == -3.0 and abs(v["df"] - 2.0) < 1e-9 and abs(v["p"] - 0.1679) < 1e-3
    assert v["different"] is False  # what the 2-std rule called "beyond noise" (3.0 > 2.83)
    lo, hi = v["ci95"]
    assert lo < 0 < hi and abs((hi - lo) / 2 - 4.3027 * math.sqrt(2)) < 1e-3
    v = noise_verdict(summarize([10.0, 10.1, 9.9, 10.05, 9.95]), summarize([11.0, 11.1, 10.9, 11.05, 10.95]))
    assert v["different"] is True and v["p"] < 1e-5 and v["ci95"][1] < 0
    v = noise_verdict(summarize([10.0, 10.0, 10.0]), summarize([10.5, 10.5]))
    assert v["different"] is None and "no spread" in v["why"]  # never a zero-width band
    assert noise_verdict(summarize([1.0]), summarize([2.0]))["different"] is None  # one seed: no test
    assert summarize([None, None]) is None and noise_verdict(None, summarize([1.0, 2.0])) is None
    s = summarize([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)


# ----------------------------------------------------------------------------- a whole study


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "masking"
    assert run_study("masking", TEST_PRESET, str(out), show_progress=False) == 0
    return out


def test_study_writes_the_table_the_json_and_the_curves(finished):
    table = (finished / "table.md").read_text()
    assert "### Table 1: static vs dynamic masking" in table
    for row in ("| static, 1 mask", "| dynamic", "| static, 2 copies (BERT)", "| unigram (no model) |"):
        assert row in table
    assert "| 78.7 | 84.0 | 92.9 |" in table  # the paper's dynamic row beside ours
    assert "Gap to dynamic (the reference)" in table and "Welch's" in table
    assert "| mask seen |" in table and "| once (dynamic) |" in table and " times |" in table  # per static mask
    results = json.loads((finished / "results.json").read_text())
    assert results["preset"]["name"] == "test" and results["seeds"] == 2
    assert set(results["arms"]) == {"static", "static-x2", "baseline"}  # too few passes for more copies
    runs = results["arms"]["baseline"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["status"] == "done" for r in runs)
    agg = results["arms"]["baseline"]["aggregate"]
    assert agg["seeds_done"] == 2 and agg["ppl"]["std"] is not None and 0 <= agg["down_acc"]["mean"] <= 100
    assert results["versions"]["torch"] and results["machine"]["cpus"] and results["date"]
    assert results["threads"]["count"] >= 1  # one count for every run of the study
    assert {a["settings"]["threads"] for a in results["arms"].values()} == {results["threads"]["count"]}
    assert (finished / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from roberta_scratch.study.report import curve_points

    curve = runs[0]["pretrain"]["curve"]
    assert curve[0][0] == 0 and [p[0] for p in curve_points(runs[0])] == [t for s, t, _ in curve if s > 0]
    header = next(line for line in table.splitlines() if line.startswith("| arm |"))
    assert header.index("downstream acc %") < header.index("masked acc %") < header.index("held-out ppl")
    columns = [c.strip() for c in header.strip("|").split("|")]
    floor_row = next(line for line in table.splitlines() if line.startswith("| unigram (no model) |"))
    cells = dict(zip(columns, (c.strip() for c in floor_row.strip("|").split("|")), strict=True))
    assert (
        cells["held-out ppl"] == f"{results['unigram_floor']['ppl']:.2f}"
        and cells["masked acc %"] == f"{100 * results['unigram_floor']['acc']:.1f}"
    )
    assert cells["downstream acc %"] == "–"  # the floor row's numbers sit in their own columns
    floor = results["unigram_floor"]
    assert 1 < floor["ppl"] and abs(floor["ppl"] - math.exp(floor["loss"])) < 1e-9 and 0 < floor["acc"] < 1
    for name, arm in results["arms"].items():  # the floor decides, and the table says so
        worst = max(r["pretrain"]["val_loss"] for r in arm["runs"])
        assert arm["learned"] == (worst <= floor["loss"] - results["learn_margin_nats"]), name
        label = {"baseline": "dynamic", "static": "static, 1 mask", "static-x2": "static, 2 copies (BERT)"}[name]
        assert (f"| {label} **(did not learn)** |" in table) == (not arm["learned"])
    for seed in (0, 1):  # every arm x seed is an ordinary run: a model, metrics, checkpoints
        run = finished / "runs" / f"baseline-s{seed}"
        assert (run / "model" / "config.json").is_file() and (run / "metrics.jsonl").is_file()
        assert (run / "downstream" / "model" / "config.json").is_file()
        assert (run / "downstream-pairs" / "model" / "config.json").is_file()  # the pair task, fine-tuned too
    assert "same-module acc %" in table and "Pair task" in table
    assert all(0 <= r["finetune_pairs"]["accuracy"] <= 1 for r in runs)


def test_the_static_copies_follow_the_passes_and_the_table_measures_the_repeats(finished):
    """BERT saw each of its 10 masks 4 times; the copies are as many as let each be seen
    static_repeats times in the study's passes, 2 at least, and the table prints the measured repeats."""
    from roberta_scratch.study.runner import Study

    study = Study(str(finished), TEST_PRESET, None, "text", False, False)
    study.prepare_data()
    passes = study.passes()
    assert 0 < passes < 2 * TEST_PRESET.static_repeats and study.static_copies() == 2
    many = dataclasses.replace(TEST_PRESET, steps=TEST_PRESET.steps * math.ceil(40 / passes))
    big = Study(str(finished), many, None, "text", False, False)
    big.meta, big._lengths = study.meta, study._lengths
    assert big.passes() >= 40 and big.static_copies() == int(big.passes() // 4) >= 10
    results = json.loads((finished / "results.json").read_text())
    tokens = results["arms"]["static-x2"]["aggregate"]["tokens"]["mean"]
    seen = tokens / study.meta["splits"]["train"]["tokens"] / 2
    assert f"| {seen:.1f} times |" in (finished / "table.md").read_text()


def test_the_findings_state_each_gap_against_the_papers(finished):
    from roberta_scratch.study.report import Table, findings_markdown
    from roberta_scratch.study.runner import Arm

    def verdicts(**samples):  # metric -> (arm's values, reference's values)
        return {k: noise_verdict(summarize(a), summarize(b)) for k, (a, b) in samples.items()}

    rows = [(Arm("static", static_copies=1), "static, 1 mask"), (Arm("static-x2", static_copies=2), "static, 2 copies")]
    rows += [(Arm("baseline"), "dynamic")]
    table = Table("masking", rows, "baseline", {})
    table.verdicts["static"] = verdicts(down_acc=([10.0, 10.1, 9.9], [14.0, 14.1, 13.9]))  # clearly worse
    # a masked-LM gap alone does not decide Table 1: the paper's Table 1 reports end tasks only
    table.verdicts["static-x2"] = verdicts(
        down_acc=([14.0, 14.5, 13.5], [14.0, 14.2, 13.8]), ppl=([500.0, 501.0, 502.0], [400.0, 401.0, 402.0])
    )
    text = "\n".join(findings_markdown([table]))
    assert "The paper: dynamic masking is comparable to static" in text
    worse = next(x for x in text.splitlines() if x.startswith("- static, 1 mask against dynamic: "))
    assert "downstream acc % -4.00 (p = " in worse and "different" in worse and "So: **worse**" in worse
    same = next(x for x in text.splitlines() if x.startswith("- static, 2 copies against dynamic: "))
    assert "held-out ppl +100.00 (p = " in same and "So: **no difference beyond noise**" in same
    assert "the paper's gap for this row: SQuAD 2.0 -0.4, MNLI-m +0.3, SST-2 -0.4" in same

    formats = Table("formats", [(Arm("doc", packing="doc"), "DOC"), (Arm("baseline"), "FULL")], "baseline", {})
    formats.verdicts["doc"] = verdicts(down_acc=([60.0, 61.0, 62.0], [50.0, 51.0, 52.0]))  # better, as the paper
    text = "\n".join(findings_markdown([formats]))
    assert "So: **the paper's direction**" in text and "calls rest on the downstream tasks" in text
    formats.verdicts["doc"] = verdicts(down_acc=([40.0, 41.0, 42.0], [50.0, 51.0, 52.0]))
    assert "So: **against the paper's direction**" in "\n".join(findings_markdown([formats]))

    written = (finished / "table.md").read_text()  # a real study: every compared arm has its line
    results = json.loads((finished / "results.json").read_text())
    for name, label in (("static", "static, 1 mask"), ("static-x2", "static, 2 copies (BERT)")):
        line = next(x for x in written.splitlines() if x.startswith(f"- {label} against dynamic: "))
        learned = results["arms"][name]["learned"] and results["arms"]["baseline"]["learned"]
        assert ("left out: an arm did not learn" in line) == (not learned)


def test_a_smoke_preset_draws_no_conclusions(finished, tmp_path):
    import shutil

    copy = tmp_path / "smoke"
    shutil.copytree(finished, copy)
    smoke = dataclasses.replace(TEST_PRESET, smoke=True)  # not a training setting: every run is kept
    assert run_study("masking", smoke, str(copy), show_progress=False) == 0
    table = (copy / "table.md").read_text()
    assert "is a pipeline smoke test: it draws no conclusions" in table
    assert "Gap to" not in table and "Findings" not in table and "p = " not in table
    assert json.loads((copy / "results.json").read_text())["smoke_test"] is True
    assert PRESETS["ci"].smoke and not PRESETS["cpu"].smoke and not PRESETS["gpu-small"].smoke


def test_sweep_winners_take_the_lowest_seed_0_loss_of_each_batch_size():
    from roberta_scratch.study.report import sweep_winners
    from roberta_scratch.study.runner import Arm, later_seeds

    base, a, b = (
        Arm("baseline"),
        Arm("bsz8-lr0.002", lr_ratio=2, sweep=True),
        Arm("bsz8-lr0.004", lr_ratio=4, sweep=True),
    )
    c, d = Arm("bsz32-lr0.01", batch_scale=4, sweep=True), Arm("bsz32-lr0.02", batch_scale=4, sweep=True)
    rows = [("masking", Arm("static", static_copies=1), "s")] + [("batch", x, x.name) for x in (base, a, b, c, d)]

    def done(loss):
        return {"status": "done", "pretrain": {"val_loss": loss}}

    records = {"baseline-s0": done(5.0), "bsz8-lr0.002-s0": done(4.5), "bsz8-lr0.004-s0": done(float("nan"))}
    records |= {"bsz32-lr0.01-s0": {"status": "failed"}, "bsz32-lr0.02-s0": done(5.5)}
    assert sweep_winners(rows, records) == {1: "bsz8-lr0.002", 4: "bsz32-lr0.02"}  # NaN and failed: no candidates
    assert [x.name for x in later_seeds(rows, records)] == ["static", "baseline", "bsz8-lr0.002", "bsz32-lr0.02"]
    assert sweep_winners(rows, {}) == {}


def test_the_lr_sweep_runs_seed_0_then_every_seed_of_each_best_rate(tmp_path):
    preset = dataclasses.replace(TEST_PRESET, batch_scales=(1, 2), lr_grid=((1.0, 3.0), (1.0, 2.0)))
    out = tmp_path / "batch"
    assert run_study("batch", preset, str(out), seeds=2, show_progress=False) == 0
    results = json.loads((out / "results.json").read_text())
    best = results["tables"]["batch"]["lr_sweep_best"]
    seed0 = {a: v["runs"][0]["pretrain"]["val_loss"] for a, v in results["arms"].items()}
    for scale, names in (("1", ("baseline", "bsz8-lr0.003")), ("2", ("bsz16-lr0.001", "bsz16-lr0.002"))):
        assert best[scale] == min(names, key=seed0.get)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    later = {"baseline", best["1"], best["2"]}
    assert runs == sorted([f"{a}-s0" for a in seed0] + [f"{a}-s1" for a in later])
    assert results["tables"]["batch"]["reference"] == best["1"]
    assert results["arms"][best["2"]]["compared_with"] == best["1"]
    loser = next(a for a in ("bsz16-lr0.001", "bsz16-lr0.002") if a != best["2"])
    assert results["arms"][loser]["comparison"] is None  # one seed: shown, not tested
    table = (out / "table.md").read_text()
    assert table.count("**(best lr)**") == 2 and "bsz 16, lr 0.002" in table and "bsz 8, lr 0.003" in table


def test_a_second_invocation_trains_nothing(finished, monkeypatch, capsys):
    def refuse(args):
        raise AssertionError(f"trained {args.out} again")

    monkeypatch.setattr(study_mod, "pretrain", refuse)
    monkeypatch.setattr(study_mod, "finetune", refuse)
    checkpoints = {p: p.stat().st_mtime_ns for p in (finished / "runs").rglob("*.pt")}
    assert checkpoints
    capsys.readouterr()
    assert run_study("masking", TEST_PRESET, str(finished), show_progress=False) == 0
    assert checkpoints == {p: p.stat().st_mtime_ns for p in (finished / "runs").rglob("*.pt")}
    out = capsys.readouterr().out  # each run says it was kept, not trained
    assert out.count("done before: kept, not trained again") == out.count("== study masking: run ") > 0


def test_changed_settings_are_refused_then_overwritten(finished, monkeypatch):
    changed = dataclasses.replace(TEST_PRESET, steps=TEST_PRESET.steps + 2)
    with pytest.raises(StudyError, match=r"other settings: .*steps 8 -> 10.*--overwrite"):
        run_study("masking", changed, str(finished), seeds=1, show_progress=False)
    trained = []
    monkeypatch.setattr(study_mod, "pretrain", lambda args: trained.append(args.out) or 130)
    assert run_study("masking", changed, str(finished), seeds=1, overwrite=True, show_progress=False) == 130
    assert trained == [str(finished / "runs" / "static-s0")]  # deleted and trained again (stopped at once here)


def test_an_interrupted_study_resumes_where_it_stopped(tmp_path, monkeypatch):
    from roberta_scratch.pretrain import Trainer

    calls = []
    real_pretrain = study_mod.pretrain
    monkeypatch.setattr(
        study_mod, "pretrain", lambda args: calls.append(os.path.basename(args.out)) or real_pretrain(args)
    )
    real_step = Trainer.optimizer_step

    def stop_midway(self):  # what Ctrl-C does: finish the step, save a checkpoint, return 130
        real_step(self)
        if os.path.basename(self.args.out) == "baseline-s0" and self.step == 4:  # during step 5 (of 8)
            self._stop = signal.SIGINT

    monkeypatch.setattr(Trainer, "optimizer_step", stop_midway)
    out = tmp_path / "study"
    assert run_study("masking", TEST_PRESET, str(out), seeds=1, show_progress=False) == 130
    assert calls == ["static-s0", "static-x2-s0", "baseline-s0"]
    record = json.loads((out / "runs" / "baseline-s0" / "study.json").read_text())
    assert record["status"] == "interrupted" and "pretrain" not in record
    assert (out / "runs" / "baseline-s0" / "ckpt" / "step_00000005.pt").is_file()

    monkeypatch.setattr(Trainer, "optimizer_step", real_step)
    calls.clear()
    assert run_study("masking", TEST_PRESET, str(out), seeds=1, show_progress=False) == 0
    assert calls == ["baseline-s0"]  # the finished arm is not run again
    rows = [json.loads(line) for line in open(out / "runs" / "baseline-s0" / "metrics.jsonl")]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == TEST_PRESET.steps  # resumed, not restarted
    record = json.loads((out / "runs" / "baseline-s0" / "study.json").read_text())
    assert record["status"] == "done"
    assert "exit_code" not in record and record["interrupted_before"] == [130]  # history, not the result
    assert "| dynamic" in (out / "table.md").read_text()


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "sizes", "--preset", "ci"], "invalid choice: 'sizes'"),
        (["study", "masking", "--preset", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_cli_names_a_bad_study_or_preset(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "choose from" in err


def test_run_study_names_a_bad_preset_or_study(tmp_path):
    with pytest.raises(StudyError, match="unknown preset 'huge': choose one of ci, cpu, gpu-small"):
        run_study("masking", "huge", str(tmp_path))
    with pytest.raises(StudyError, match="unknown study 'sizes'"):
        run_study("sizes", "ci", str(tmp_path))


@pytest.mark.slow
def test_study_all_runs_every_arm_once_with_the_pair_formats(tmp_path):
    out = tmp_path / "all"
    assert run_study("all", TEST_PRESET, str(out), seeds=1, show_progress=False) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(
        f"{a}-s0"
        for a in (
            "static",
            "static-x2",
            "baseline",
            "segment-pair",
            "sentence-pair",
            "doc",
            "bsz64-lr0.01",
            "bsz256-lr0.01",
        )
    )  # the baseline once, for 3 tables
    table = (out / "table.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3"):
        assert f"### {title}:" in table
    for row in (
        "| SEGMENT-PAIR + NSP",
        "| SENTENCE-PAIR + NSP",
        "| FULL-SENTENCES",
        "| DOC-SENTENCES",
        "| bsz 8, lr 0.001",
        "| bsz 64, lr 0.01",
        "| bsz 256, lr 0.01",
    ):
        assert row in table
    results = json.loads((out / "results.json").read_text())
    pair = results["arms"]["sentence-pair"]["runs"][0]["pretrain"]
    assert 0 <= pair["val_nsp_acc"] <= 1  # NSP accuracy for the NSP arms
    assert pair["val_pair_ppl"] > 1 and "own-format ppl" in table  # and their own format's held-out score
    budget = [
        results["arms"][a]["aggregate"]["tokens"]["mean"] for a in ("baseline", "doc", "sentence-pair", "bsz64-lr0.01")
    ]
    assert max(budget) / min(budget) < 1.35  # about one token budget for every arm
    x32 = results["arms"]["bsz256-lr0.01"]["settings"]
    assert x32["batch_size"] * x32["grad_accum"] == 32 * TEST_PRESET.batch_size
    assert x32["lr"] == pytest.approx(10 * TEST_PRESET.lr)
