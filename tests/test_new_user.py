"""What a new user trips over: integer labels, --version, a closed pipe, an occupied convert
destination, data without held-out documents."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model_folder

from roberta_scratch import cli

REPO = Path(__file__).resolve().parents[1]


def test_version_answers_without_a_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("roberta-scratch 0.")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`tokenizer encode ... | head -1`: no `error: [Errno 32] Broken pipe`."""
    tiny_model_folder(tmp_path / "m")
    (tmp_path / "lines.txt").write_text("the cat sat on the mat\n" * 20000)
    encode = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roberta_scratch",
            "tokenizer",
            "encode",
            "--tokenizer",
            str(tmp_path / "m"),
            str(tmp_path / "lines.txt"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = encode.stdout.readline()
    encode.stdout.close()  # what head does after its line
    err = encode.stderr.read().decode()
    assert encode.wait(timeout=120) == 141 and first.strip()
    assert err == "", err


def test_convert_refuses_a_destination_that_holds_files(tmp_path, capsys):
    src = tiny_model_folder(tmp_path / "m")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    assert cli.main(["convert", src, str(tmp_path / "dst")]) == 2
    assert "already holds files (notes.txt): pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["notes.txt"]
    assert cli.main(["convert", src, str(tmp_path / "dst"), "--overwrite"]) == 0
    assert (tmp_path / "dst" / "notes.txt").read_text() == "mine" and (tmp_path / "dst" / "config.json").is_file()


def test_data_without_held_out_documents_says_so(prepared, tmp_path, capsys):
    import warnings

    from pretraining_helpers import args_for

    from roberta_scratch.data.packed import prepare
    from roberta_scratch.pretrain import pretrain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(
            [str(prepared / "corpus")],
            str(prepared / "tok"),
            str(tmp_path / "data"),
            seq_len=32,
            val_fraction=0.0,
            show_progress=False,
            num_workers=1,
        )
    capsys.readouterr()
    assert pretrain(args_for(prepared, tmp_path / "run", data=str(tmp_path / "data"), steps=2, eval_every=1)) == 0
    assert "holds no held-out documents" in capsys.readouterr().out


# ----------------------------------------------------------------------------- integer labels


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("labels") / "model", max_positions=66)


def csv_file(path, labels):
    texts = ["the cat sat on the mat", "the dog ran to the house", "a cat and a dog", "the mat and the house"]
    path.write_text("text,label\n" + "".join(f"{texts[i % 4]} {i},{label}\n" for i, label in enumerate(labels)))
    return str(path)


def finetune_args(pretrained, train, out, **kw):
    from roberta_scratch.finetune.trainer import FinetuneArgs

    base = dict(
        task="seq-cls",
        model=pretrained,
        train=str(train),
        out=str(out),
        epochs=1,
        batch_size=8,
        progress=False,
        max_length=32,
    )
    return FinetuneArgs(**{**base, **kw})


@pytest.mark.parametrize(
    "labels,kind",
    [
        ([0, 1] * 8, "2 classes (0, 1)"),  # GLUE's and SST-2's convention: classes
        ([0.0, 0.5, 1.0, 0.25] * 4, "regression"),  # fractions: a score to regress on
    ],
)
def test_integer_labels_are_classes_and_the_run_says_what_it_chose(pretrained, tmp_path, capsys, labels, kind):
    from roberta_scratch.config import RobertaConfig
    from roberta_scratch.finetune.trainer import finetune

    train = csv_file(tmp_path / "train.csv", labels)
    assert finetune(finetune_args(pretrained, train, tmp_path / "run")) == 0
    assert f"labels: {kind}" in capsys.readouterr().out
    cfg = RobertaConfig.load(str(tmp_path / "run" / "model"))
    if kind == "regression":
        assert cfg.problem_type == "regression" and cfg.num_labels == 1
    else:
        assert cfg.num_labels == 2 and cfg.label_names == ["0", "1"]
        (tmp_path / "in.txt").write_text("the cat sat\n")
        assert cli.main(["predict", "--model", str(tmp_path / "run" / "model"), str(tmp_path / "in.txt")]) == 0
        result = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert result["label"] in ("0", "1") and set(result["probabilities"]) == {"0", "1"}


def test_label_type_regression_keeps_integer_targets_as_numbers(pretrained, tmp_path, capsys):
    from roberta_scratch.finetune.trainer import finetune

    train = csv_file(tmp_path / "train.csv", [1, 2, 3, 4, 5] * 3)
    assert finetune(finetune_args(pretrained, train, tmp_path / "run", label_type="regression")) == 0
    assert "labels: regression (chosen by --label-type)" in capsys.readouterr().out


def test_a_run_states_its_global_batch(prepared, tmp_path, capsys):
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import pretrain

    assert pretrain(args_for(prepared, tmp_path / "run", steps=1, batch_size=4, grad_accum=2)) == 0
    assert "global batch: 4 examples x 2 micro-batch(es) x 1 process(es) = 8 examples a step" in capsys.readouterr().out


def test_kernels_bench_off_the_gpu_names_no_data_sheet(tmp_path, capsys):
    assert (
        cli.main(["kernels", "bench", "--attention", "eager", "--out", str(tmp_path), "--dry-run", "--seq-lens", "64"])
        == 0
    )
    out = capsys.readouterr().out
    assert "no data sheet for this device" in out and "None" not in out


def test_slow_progress_reads_in_seconds_per_item():
    """A study's runs take minutes: "0.0 runs/s" (or "1,202.4 runs/s" for kept ones) said nothing."""
    import io
    import re

    from roberta_scratch.progress import LineProgress

    out = io.StringIO()
    bar = LineProgress(total=6, desc="study", unit="runs", every=1e9, file=out)
    bar.start -= 120  # two minutes for the first run
    bar.update(1)
    bar.close()
    assert re.search(r"1/6 runs \(17%\), 12\d\.\d s/run, 10m0\ds left", out.getvalue()), out.getvalue()


def test_tokenizer_encode_reads_a_jsonl_gz_as_prepare_does(tmp_path, capsys):
    """It encoded the raw JSON line, while train and prepare read the text field."""
    import gzip

    from roberta_scratch.tokenization.byte_level import load_tokenizer

    path = tiny_model_folder(tmp_path / "m")
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "the cat sat on the mat"}) + "\n" + json.dumps({"body": "the dog ran"}) + "\n")
    assert (
        cli.main(["tokenizer", "encode", "--tokenizer", path, "--text-field", "body", str(tmp_path / "docs.jsonl.gz")])
        == 0
    )
    tok = load_tokenizer(path, split_special_tokens=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        " ".join(map(str, tok.encode(t, add_special_tokens=False))) for t in ("the cat sat on the mat", "the dog ran")
    ]


def test_the_loss_plot_says_which_masking_each_curve_has(prepared, tmp_path, monkeypatch):
    """The demo trains at 30% masked and evaluates at 15%: one unlabelled axis made them look comparable."""
    from pretraining_helpers import args_for

    from roberta_scratch import pretrain as pretrain_mod

    drawn = {}
    monkeypatch.setattr(
        pretrain_mod, "plot_metrics", lambda path, png, train, val: drawn.update(train=train, val=val) or True
    )
    assert (
        pretrain_mod.pretrain(
            args_for(prepared, tmp_path / "run", steps=2, eval_every=2, mlm_probability=0.3, eval_mlm_probability=0.15)
        )
        == 0
    )
    assert drawn == {
        "train": "training MLM loss, 30% of tokens masked",
        "val": "held-out MLM loss, 15% masked (not comparable when the rates differ)",
    }
    pytest.importorskip("matplotlib")
    from roberta_scratch.plots import loss_figure

    fig = loss_figure([{"step": 1, "loss": 5.0}, {"step": 2, "val_loss": 4.0}], drawn["train"], drawn["val"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [drawn["train"], drawn["val"]]
