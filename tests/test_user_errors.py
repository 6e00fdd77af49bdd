"""Every command as a new user meets it, with bad input on purpose: one `error:` line that
names the file and the problem (the traceback behind --debug), `note:` lines for warnings,
and nothing guessed quietly."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model_folder

from roberta_scratch import RobertaForMaskedLM, RobertaForSequenceClassification, cli

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sat on the mat and the dog ran to the house"] * 30


def model_dir(path, cls=RobertaForMaskedLM, max_positions=20, **kw):
    return tiny_model_folder(path, cls, TEXTS, max_positions=max_positions, **kw)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ----------------------------------------------------------------------------- damaged model folders


def test_a_corrupt_safetensors_file_is_one_line_naming_it(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00\x01not safetensors at all")
    code, _, err = run(capsys, "fill-mask", "--model", path, "the <mask> sat")
    assert code == 2  # fill-mask's code for input it cannot use
    line = one_error_line(err)
    assert "model.safetensors: not a readable safetensors file" in line


def test_a_config_that_is_not_json_or_has_a_string_value_is_named(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    good = json.loads(config.read_text())
    config.write_text("{ this is not json")
    assert run(capsys, "features", "--model", path, "the cat")[0] == 1
    assert f"{config}: not a JSON file" in one_error_line(
        capsys.readouterr().err or run(capsys, "features", "--model", path, "x")[2]
    )
    config.write_text(json.dumps({**good, "hidden_size": "32"}))
    code, _, err = run(capsys, "features", "--model", path, "the cat")
    assert (
        code == 1
        and f"{config}: invalid RobertaConfig: hidden_size must be a positive int, got '32'" in one_error_line(err)
    )
    config.write_text(json.dumps({**good, "hidden_dropout_prob": "0.1"}))
    assert "hidden_dropout_prob must be a number, got str '0.1'" in one_error_line(
        run(capsys, "features", "--model", path, "x")[2]
    )


def test_a_vocab_that_is_not_json_is_named(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    (tmp_path / "m" / "vocab.json").write_text("[1, 2")
    code, _, err = run(capsys, "fill-mask", "--model", path, "the <mask> sat")
    assert code == 2 and "vocab.json: not a JSON file" in one_error_line(err)


def test_a_linked_file_outside_the_folder_is_not_quoted(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    secret = tmp_path / "secret.txt"
    secret.write_text("the password is hunter2\n")
    merges = tmp_path / "m" / "merges.txt"
    merges.unlink()
    merges.symlink_to(secret)
    code, _, err = run(capsys, "fill-mask", "--model", path, "the <mask> sat")
    line = one_error_line(err)
    assert code == 2 and "merges.txt:1: expected two tokens" in line and "hunter2" not in err
    assert "a link to outside its folder" in line


def test_debug_shows_the_traceback(tmp_path):
    path = model_dir(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{")
    proc = subprocess.run(
        [sys.executable, "-m", "roberta_scratch", "features", "--model", path, "x", "--debug"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "not a JSON file" in proc.stderr


# ----------------------------------------------------------------------------- bad requests


def test_top_k_larger_than_the_vocabulary(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    code, _, err = run(capsys, "fill-mask", "--model", path, "--top-k", "100000", "the <mask> sat")
    assert code == 2 and "--top-k 100000 must be between 1 and the vocabulary's" in one_error_line(err)


def test_fill_mask_on_text_longer_than_the_model(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    code, _, err = run(capsys, "fill-mask", "--model", path, "the cat sat " * 20 + "<mask>")
    assert code == 2 and "longer than the 18 this model takes" in one_error_line(err)


def test_features_says_when_it_cuts_a_long_text_and_which_layers_it_wrote(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    code, out, err = run(
        capsys,
        "features",
        "--model",
        path,
        "--layers",
        "0,-1",
        "--out",
        tmp_path / "f.safetensors",
        "the cat sat " * 20,
    )
    assert code == 0 and err.count("note: the text is") == 1 and "only the first 18 are used" in err
    assert "layers 0, 1 (asked as -1)" in out


def test_input_ids_of_the_wrong_dtype_and_odd_masks_are_errors(tiny):
    cfg = tiny()
    model = RobertaForMaskedLM(cfg)
    ids = torch.randint(4, 50, (2, 5))
    for dtype in (torch.bool, torch.uint8, torch.int16, torch.float32):
        with pytest.raises(ValueError, match="input_ids must be an int64 or int32 tensor"):
            model(ids.to(dtype))
    model(ids.int())  # int32 is fine
    for bad in (2, -1, float("nan")):
        mask = torch.ones(2, 5)
        mask[0, 3] = bad
        with pytest.raises(ValueError, match="attention_mask must hold only 1"):
            model(ids, attention_mask=mask)
    model(ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    model(ids, attention_mask=torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))


def test_fairseq_args_without_encoder_layers_are_read_from_the_weights():
    from roberta_scratch.checkpoints.keymaps import ENCODER_PREFIX, fairseq_config

    sd = {
        ENCODER_PREFIX + "embeddings.word_embeddings.weight": torch.zeros(50, 32),
        ENCODER_PREFIX + "embeddings.position_embeddings.weight": torch.zeros(20, 32),
        ENCODER_PREFIX + "layers.0.ffn.fc1.weight": torch.zeros(64, 32),
        ENCODER_PREFIX + "layers.1.ffn.fc1.weight": torch.zeros(64, 32),
    }
    assert fairseq_config({"encoder_attention_heads": 2}, sd).num_hidden_layers == 2
    with pytest.raises(ValueError, match="no encoder_attention_heads"):
        fairseq_config({}, sd)


# ----------------------------------------------------------------------------- predict guesses nothing


def test_predict_on_a_model_without_a_task_head_is_an_error(tmp_path, capsys):
    path = model_dir(tmp_path / "m")
    (tmp_path / "in.txt").write_text("the cat sat\n")
    code, out, err = run(capsys, "predict", "--model", path, tmp_path / "in.txt")
    assert (
        code == 1 and out == "" and "has no fine-tuned task head (its weights hold an MLM head)" in one_error_line(err)
    )


def test_predict_takes_a_run_folder_and_says_which_model(tmp_path, capsys):
    model_dir(tmp_path / "run" / "model", RobertaForSequenceClassification)
    model_dir(tmp_path / "run" / "best", RobertaForSequenceClassification)
    (tmp_path / "in.txt").write_text("the cat sat\n" + "the cat sat on the mat " * 10 + "\n")
    code, out, err = run(capsys, "predict", "--model", tmp_path / "run", tmp_path / "in.txt")
    assert code == 0 and len(out.splitlines()) == 2
    assert f"note: {tmp_path / 'run'} is a run folder: using {tmp_path / 'run' / 'best'}" in err
    assert "note: 1 input(s) are longer than the 18 tokens this model takes (the first: input 2)" in err
    (tmp_path / "blank.txt").write_text("\n  \n")
    code, _, err = run(capsys, "predict", "--model", tmp_path / "run", tmp_path / "blank.txt")
    assert code == 1 and f"{tmp_path / 'blank.txt'} holds no inputs" in one_error_line(err)


def test_warnings_become_notes_said_once(tmp_path, capsys):
    path = model_dir(tmp_path / "m", RobertaForSequenceClassification)
    (tmp_path / "in.txt").write_text(("the cat sat on the mat " * 10 + "\n") * 3)
    code, _, err = run(capsys, "predict", "--model", path, tmp_path / "in.txt")
    assert code == 0 and err.count("note: 3 input(s) are longer") == 1 and "UserWarning" not in err


# ----------------------------------------------------------------------------- small things


def test_attention_maps_have_a_scale_per_head_and_a_colour_bar():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from roberta_scratch.probe import attention_figure

    att = torch.softmax(torch.randn(2, 3, 5, 5), -1) * torch.tensor([1.0, 0.1, 0.01])[None, :, None, None]
    fig = attention_figure(list("abcde"), att, scale="per-head")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6 and len(fig.axes) == 12  # a colour bar beside each map
    highs = [im.get_clim()[1] for im in images]
    assert highs[0] > 5 * highs[1] > 25 * highs[2]  # each head on its own scale
    # the default: one scale from 0 for every panel and one colour bar, so a flat head looks flat
    fig = attention_figure(list("abcde"), att)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6 and len(fig.axes) == 7
    assert {im.get_clim() for im in images} == {(0.0, float(att.max()))}


def test_the_attention_picture_is_bounded_and_near_uniform_heads_show_it():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from roberta_scratch.probe import MAX_FIGURE_INCHES, attention_entropy, attention_figure

    T = 300  # made a 13,288 px square picture
    att = torch.full((12, 12, T, T), 1.0 / T)
    att[0, 0] = torch.eye(T)  # one head that looks at one token
    fig = attention_figure([f"t{i}" for i in range(T)], att)
    width, height = fig.get_size_inches()
    assert max(width, height) <= MAX_FIGURE_INCHES + 1 and not fig.axes[0].get_xticks().size
    entropy = attention_entropy(att)
    assert float(entropy[0, 0]) == pytest.approx(0.0, abs=1e-9)
    assert float(entropy[5, 5]) == pytest.approx(math.log(T))


def test_training_without_a_terminal_logs_lines_not_bars(prepared, tmp_path, capfd, monkeypatch):
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import pretrain

    monkeypatch.setenv("ROBERTA_SCRATCH_PROGRESS_SECONDS", "0")
    assert pretrain(args_for(prepared, tmp_path, progress=True)) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    assert "pretraining: 8/8 steps (100%)" in err and "loss=" in err
    assert f"the metrics are in {tmp_path / 'metrics.jsonl'}, the loss curve in {tmp_path / 'loss.png'}" in out + err


def test_the_readme_says_how_to_reach_the_command():
    readme = (REPO / "README.md").read_text()
    assert ". .venv/bin/activate" in readme


@pytest.mark.parametrize(
    "argv,message",
    [
        (["pretrain", "--data", "d", "--out", "o", "--steps", "-1"], "--steps must be at least 1, got -1"),
        (["pretrain", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["pretrain", "--data", "d", "--out", "o", "--lr", "0"], "--lr must be more than 0, got 0.0"),
        (["pretrain", "--data", "d", "--out", "o", "--lr", "nan"], "--lr must be a number, got nan"),
        (
            ["finetune", "--task", "qa", "--model", "m", "--train", "t", "--out", "o", "--stride", "-5"],
            "--stride must be at least 0, got -5",
        ),
        (
            ["finetune", "--task", "seq-cls", "--model", "m", "--train", "t", "--out", "o", "--epochs", "0"],
            "--epochs must be more than 0, got 0.0",
        ),
    ],
)
def test_numbers_out_of_range_name_the_flag(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 1 and one_error_line(err) == f"error: {message} (--debug shows where)"
    assert not (tmp_path / "o").exists()


def test_converting_onto_an_existing_file_is_one_line(tmp_path):
    path = model_dir(tmp_path / "m")
    (tmp_path / "taken").write_text("mine")
    proc = subprocess.run(
        [sys.executable, str(REPO / "checkpoints_convert.py"), path, str(tmp_path / "taken")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: DST {tmp_path / 'taken'} is a file: the converted model is a "
        "folder (config.json, model.safetensors and the tokenizer); name a "
        "folder, new or existing"
    ]
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_model_with_nan_weights_is_refused_naming_the_tensor(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    path = model_dir(tmp_path / "m")
    weights = load_file(f"{path}/model.safetensors")
    name = "roberta.layers.0.attn.proj.weight"
    weights[name][0, 0] = float("nan")
    save_file(weights, f"{path}/model.safetensors", metadata={"format": "pt"})
    for argv in (["fill-mask", "--model", path, "the <mask> sat"], ["convert", path, tmp_path / "out"]):
        code, out, err = run(capsys, *argv)
        assert code != 0 and "nan%" not in out
        assert f"the weights {name} hold NaN or infinite values" in err, err
    assert not (tmp_path / "out").exists()
